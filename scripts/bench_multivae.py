#!/usr/bin/env python
"""Side by side with MultiVae: the same models, nets, batch and data, trained in one run; pairs/s and peak memory.

    PYTHONPATH=. .venv/bin/python scripts/bench_multivae.py                  # all four models, 50 steps x 3 repeats
    PYTHONPATH=. .venv/bin/python scripts/bench_multivae.py --quick --threads 1 --stand-in factorized

MultiVae (AgatheSenellart/MultiVae, pinned below) lives in its own virtual environment, `.bench/multivae-venv`,
made on first use with this interpreter's Python and the same torch (and torchvision) version from PyPI;
`--theirs-python` points at another interpreter with multivae installed instead. No network, no install:
a one-line error and exit status 2.

What is compared, per model (the table `PAIRINGS`): MultiVae's MVAE, MMVAE, MoPoE and DMVAE against our
families "mvae", "mmvae", "mopoe" and "dmvae" (`model.family`). A family that is not registered in
`mmvae.families.FAMILIES` is skipped with a note, or, with `--stand-in FAMILY`, replaced by that family with
no private factor (a pipeline check, not a comparison: the table marks it).

Same on both sides:
- data: one .npz of uint8 MNIST–SVHN-shaped pairs written here and read by every worker, turned into float32
  in [0, 1] before the clock: real MNIST (../shared/data/mnist) with the seeded street-digit stand-in for SVHN
  (data_prep/street_digits.py) paired by class, or seeded uniform noise (`--data synthetic`);
- nets: the MNIST–SVHN reference nets. MNIST: 784 -> 400 MLP encoder, linear expert head (mu, log-variance),
  mirrored decoder 400 -> 784, sigmoid. SVHN: convolutions 3 -> 32 -> 64 -> 128 (k4 s2 p1, 4x4 at the
  bottom), a linear expert head on the 2048 features, decoder Linear(., 2048) and the mirrored transposed
  convolutions, sigmoid. (Shi et al.'s 4x4 convolution to the latent and back is the same linear map.) On
  MultiVae's side these are its custom BaseEncoder/BaseDecoder classes with ModelOutput, layer for layer
  (bench_multivae_worker.py); on ours the same sizes in the config (`image_mlp` hidden [400], `image_conv`
  channels [32, 64, 128] with no extra hidden layer, linear experts: `fusion_hidden: []`, no label head). The
  table prints both sides' trainable-parameter counts: equal counts mean the same nets.
- joint latent 20; DMVAE also private latents mnist 4, svhn 8; batch 128; Adam, lr 1e-3;
- likelihood: Laplace with fixed scale 0.75 on both images (MultiVae decoders_dist "laplace",
  decoder_dist_params scale 0.75; ours likelihood laplace, likelihood_scale 0.75); reconstruction terms
  rescaled by size on both (MultiVae uses_likelihood_rescaling: max size / size; ours recon_weight "auto":
  min size / size, the same up to one constant factor);
- KL weight 1 from the first timed step (MultiVae MVAE warmup 0; ours is stepped past every weight warm-up);
- the timed loop: no trainer, only the optimisation step. MultiVae: out = model(DatasetOutput(data=...));
  optimizer.zero_grad(); out.loss.backward(); optimizer.step(). Ours: one mmvae.train_step.TrainStep call
  (forward, compute_loss, backward, clip_grad_norm_, optimizer step), what `mmvae train` runs per step.
- threads: torch.set_num_threads(--threads) and OMP/MKL_NUM_THREADS in each worker, equal on both sides;
  each measurement in its own process (its peak memory is that model's alone); the pairs interleaved.

Work per step, model by model (MultiVae 1.0.3 read from its source):
- MVAE: MultiVae's objective is the joint ELBO plus each unimodal ELBO (use_subsampling, k = 0 random subsets
  for two modalities), each subset's ELBO recomputing its encoders: 4 encoder and 4 decoder passes.
- MMVAE: MultiVae's defaults are K = 10 importance samples, the DReG estimator ("dreg_looser"), Laplace
  posteriors and a learnt Laplace prior. Here: K = 1, "iwae_looser" (with K = 1 the stratified ELBO, the usual
  reparameterised gradient), Gaussian posteriors and a fixed N(0, I) prior (prior_and_posterior_dist "normal",
  learn_prior False): 2 encoder and 4 decoder passes (every modality from every modality's sample).
- MoPoE: the mixture over the 3 non-empty subsets' PoE posteriors, one sample decoded per modality (MultiVae
  splits the batch among the subsets), KL by the experts' closed forms: 2 encoder, 2 decoder passes.
- DMVAE: the joint ELBO and the two unimodal (cross-modal) ELBOs, each decoding both modalities with the
  private latents: 2 encoder, 6 decoder passes.
Differences that remain (stated, not removed):
- Optimiser: `--optimizer own` (default) gives each side its own trainer's optimiser: ours
  AdamW(weight_decay 0, fused=True), as mmvae.train.Trainer builds it (Adam's update, one fused kernel),
  MultiVae torch.optim.Adam(lr) with torch's defaults, as its BaseTrainer builds it (a per-tensor loop on
  CPU). `--optimizer adam` gives both torch.optim.Adam(lr), to time the models alone.
- Ours computes the gradient norm (clip_grad_norm_; train.grad_clip null means no clipping but the norm is
  still taken) and keeps non-finite flags on every step: extra work on our side only.
- MultiVae sums some losses over the batch (MMVAE) where ours averages: a constant factor, no extra work.
- Peak memory is the peak resident set at the end minus the peak after the imports, the config and the data
  load, per worker process: torch's CPU allocator takes its memory through malloc, so RSS is what the process
  held (tracemalloc does not see torch's allocations). The high-water mark is VmHWM (/proc/self/status), the
  per-address-space value; ru_maxrss would be wrong here because Linux carries it across execve, so every
  worker would start at this parent's RSS. The imports differ (MultiVae pulls in pythae, pandas,
  scikit-learn...), which the baseline removes; the raw peaks are printed too. Ours imports torch._dynamo
  before the baseline when its fused AdamW is used (constructing it imports dynamo: ~110 MiB, in the raw peak).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
WORKER = REPO / "scripts" / "bench_multivae_worker.py"
DEFAULT_VENV = REPO / ".bench" / "multivae-venv"
SHARED_MNIST = REPO / ".." / "shared" / "data" / "mnist"
MULTIVAE_VERSION = "1.0.3"  # PyPI, 2025; models read: mvae, mmvae, mopoe, dmvae (unchanged since 1.0.2)
STAMP = ".bench-installed.json"

NETS = {"joint_dim": 20, "mnist_hidden": 400, "svhn_channels": [32, 64, 128], "likelihood": "laplace", "scale": 0.75}


@dataclass(frozen=True)
class Pairing:
    """One row of the comparison: MultiVae's model class and config against our family and overrides."""

    name: str  # MultiVae's class name (its config class is name + "Config")
    family: str  # our model.family
    theirs_config: dict = field(default_factory=dict)  # extra fields of MultiVae's config
    private: dict = field(default_factory=dict)  # private latent sizes, both sides
    ours_overrides: tuple[str, ...] = ()  # dotted overrides of our config (e.g. a family option)


PAIRINGS: tuple[Pairing, ...] = (
    Pairing("MVAE", "mvae", {"use_subsampling": True, "k": 0, "warmup": 0, "beta": 1.0}),
    Pairing("MMVAE", "mmvae", {"K": 1, "loss": "iwae_looser", "prior_and_posterior_dist": "normal",
                               "learn_prior": False, "beta": 1.0},
            ours_overrides=("model.family_options.K=1", "model.family_options.estimator=iwae",
                            "model.family_options.bound=looser")),
    Pairing("MoPoE", "mopoe", {"beta": 1.0}),
    Pairing("DMVAE", "dmvae", {"modalities_specific_dim": {"mnist": 4, "svhn": 8}, "beta": 1.0},
            private={"mnist": 4, "svhn": 8}),
)


# --- MultiVae's environment ---------------------------------------------------------------------------------

def die(message: str) -> None:
    print(f"error: {message}", file=sys.stderr, flush=True)
    sys.exit(2)


def public_version(version: str) -> str:
    """'2.11.0+cu130' -> '2.11.0'."""
    return version.split("+", 1)[0]


def install_spec() -> list[str]:
    """What goes into MultiVae's venv: multivae pinned, torch (and torchvision) at this interpreter's versions."""
    import torch

    spec = [f"torch=={public_version(torch.__version__)}"]
    try:
        import torchvision

        spec.append(f"torchvision=={public_version(torchvision.__version__)}")
    except ImportError:
        pass
    return spec + [f"multivae=={MULTIVAE_VERSION}"]


def ensure_venv(venv: Path) -> Path:
    """The venv's python, made and installed when absent (or when its stamp names other pins)."""
    python = venv / "bin" / "python"
    spec = install_spec()
    stamp = venv / STAMP
    if python.exists() and stamp.is_file():
        try:
            if json.loads(stamp.read_text()).get("spec") == spec:
                return python
        except (OSError, ValueError):
            pass
    venv.parent.mkdir(parents=True, exist_ok=True)
    log = venv.parent / f"{venv.name}-install.log"
    print(f"-- installing {' '.join(spec)} into {venv} (log: {log}); torch from PyPI is a few GB", file=sys.stderr, flush=True)
    started = time.perf_counter()
    with log.open("w") as out:
        if not python.exists():
            made = subprocess.run([sys.executable, "-m", "venv", str(venv)], stdout=out, stderr=subprocess.STDOUT)
            if made.returncode != 0:
                die(f"could not create the venv {venv} (python -m venv exited {made.returncode}; see {log})")
        pip = subprocess.run([str(python), "-m", "pip", "install", "--disable-pip-version-check", *spec],
                             stdout=out, stderr=subprocess.STDOUT, env={**os.environ, "OMP_NUM_THREADS": "1"})
    if pip.returncode != 0:
        tail = [ln for ln in log.read_text(errors="replace").splitlines() if ln.strip()][-1:] or [""]
        die(f"could not install {' '.join(spec)} into {venv} (pip exited {pip.returncode}: {tail[0][:200]}); "
            f"it needs PyPI once; log: {log}")
    seconds = time.perf_counter() - started
    stamp.write_text(json.dumps({"spec": spec, "install_s": round(seconds, 1)}) + "\n")
    print(f"-- installed in {seconds:.0f} s", file=sys.stderr, flush=True)
    return python


def theirs_versions(python: Path) -> dict:
    """torch, multivae and pythae versions of MultiVae's interpreter (multivae is not imported: it is slow)."""
    code = ("import json, importlib.metadata as md, torch; print(json.dumps({'torch': torch.__version__, "
            "'multivae': md.version('multivae'), 'pythae': md.version('pythae'), 'python': __import__('platform').python_version()}))")
    proc = subprocess.run([str(python), "-c", code], capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    if proc.returncode != 0:
        die(f"{python} cannot import torch or has no multivae/pythae: {(proc.stderr.strip().splitlines() or [''])[-1][:200]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# --- data ---------------------------------------------------------------------------------------------------

def make_data(kind: str, n: int, seed: int, path: Path) -> str:
    """Write the shared .npz (uint8 mnist (n, 1, 28, 28), svhn (n, 3, 32, 32)); returns its description."""
    import numpy as np

    if kind == "auto":
        kind = "mnist" if SHARED_MNIST.is_dir() else "synthetic"
    rng = np.random.default_rng(seed)
    if kind == "synthetic":
        mnist = rng.integers(0, 256, (n, 1, 28, 28), dtype=np.uint8)
        svhn = rng.integers(0, 256, (n, 3, 32, 32), dtype=np.uint8)
        described = f"seeded uniform noise (seed {seed}), {n} pairs"
    else:
        from data_prep.mnist import load_mnist_split
        from data_prep.street_digits import generate_street_digits

        if not SHARED_MNIST.is_dir():
            die(f"--data mnist needs the MNIST IDX files in {SHARED_MNIST.resolve()}")
        split = load_mnist_split(SHARED_MNIST, "train")
        pick = rng.choice(len(split.images), n, replace=False)
        mnist, labels = split.images[pick], split.labels[pick]
        street, street_labels = generate_street_digits(n, seed)
        by_label = {d: np.flatnonzero(street_labels == d) for d in range(10)}
        taken = {d: 0 for d in range(10)}
        index = np.empty(n, dtype=np.int64)
        for i, d in enumerate(labels):  # the k-th MNIST d gets the k-th street d (cycling)
            pool = by_label[int(d)]
            index[i] = pool[taken[int(d)] % len(pool)]
            taken[int(d)] += 1
        svhn = street[index]
        described = f"real MNIST train (random {n}, seed {seed}) paired by class with seeded street digits"
    np.savez(path, mnist=np.ascontiguousarray(mnist), svhn=np.ascontiguousarray(svhn))
    return described


# --- our side -----------------------------------------------------------------------------------------------

def ours_config(pairing: Pairing, family: str, args, private: dict) -> dict:
    """Our experiment-config tree for one pairing (the reference nets, no label head, no clipping)."""
    from mmvae.config import apply_override
    from mmvae.families import FAMILIES

    fusion = getattr(FAMILIES[family], "fusion_name", "") or "poe"  # mmvae: moe, mopoe: mopoe; the rest PoE

    def modality(kind: str, shape: list[int], hidden: list[int], name: str, options: dict | None = None) -> dict:
        entry = {"kind": kind, "shape": shape, "hidden": hidden, "private_dim": int(private.get(name, 0)),
                 "likelihood": NETS["likelihood"], "likelihood_scale": NETS["scale"], "recon_weight": "auto"}
        if options:
            entry["options"] = options
        return entry

    tree = {
        "name": f"bench_multivae_{pairing.name.lower()}", "seed": args.seed,
        "data": {"name": "mnist_svhn", "path": "unused-by-the-benchmark"},
        "model": {
            "family": family, "joint_dim": NETS["joint_dim"], "fusion": fusion, "fusion_hidden": [], "num_classes": 0,
            "modalities": {
                "mnist": modality("image_mlp", [1, 28, 28], [NETS["mnist_hidden"]], "mnist"),
                "svhn": modality("image_conv", [3, 32, 32], [], "svhn", {"channels": list(NETS["svhn_channels"])}),
            },
        },
        "loss": {"prior_match": "kl", "weights": {}},
        "train": {"batch_size": args.batch, "lr": args.lr, "grad_clip": None, "precision": "fp32", "compile": False,
                  "device": "cpu", "warmup_steps": 0, "schedule": "constant"},
        "logging": {"wandb_mode": "disabled", "progress_bar": False},
    }
    for override in pairing.ours_overrides if family == pairing.family else ():
        apply_override(tree, override)
    return tree


def resolve_ours(pairing: Pairing, stand_in: str | None) -> tuple[str | None, str]:
    """(family to run or None to skip, note)."""
    from mmvae.families import FAMILIES

    if pairing.family in FAMILIES:
        return pairing.family, ""
    registered = sorted(FAMILIES)
    if stand_in is None:
        return None, (f"{pairing.name}: our family {pairing.family!r} is not registered in mmvae.families.FAMILIES "
                      f"(registered: {registered}); skipped (--stand-in FAMILY times another family in its place)")
    if stand_in not in FAMILIES:
        die(f"--stand-in {stand_in!r} is not a registered family; registered: {registered}")
    return stand_in, (f"{pairing.name}: our family {pairing.family!r} is not registered; the {stand_in!r} family "
                      f"(no private factor) stands in: a pipeline check, NOT a comparison")


# --- running ------------------------------------------------------------------------------------------------

def spawn(python: Path, spec: dict, tmp: Path, timeout: float) -> dict:
    """One worker process; its RESULT line, or an error dict."""
    path = tmp / f"spec-{spec['side']}-{spec['model']}-{time.monotonic_ns()}.json"
    path.write_text(json.dumps(spec))
    threads = str(spec["threads"])
    env = {**os.environ, "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads, "PYTHONUNBUFFERED": "1"}
    if spec["side"] == "ours":
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    else:
        env.pop("PYTHONPATH", None)  # nothing of ours on MultiVae's side
    try:
        proc = subprocess.run([str(python), str(WORKER), str(path)], capture_output=True, text=True, env=env, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s"}
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT "):])
    tail = (proc.stderr or proc.stdout).strip().splitlines()
    return {"error": f"exit {proc.returncode}: " + (tail[-1] if tail else "no output"), "log": "\n".join(tail[-30:])}


def host_info() -> dict:
    info = {"nproc": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
            "cpu_count": os.cpu_count(), "cpu_model": platform.processor() or platform.machine(),
            "python": platform.python_version()}
    try:
        info["cpu_model"] = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                                 if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return info


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def table(rows: list[dict]) -> str:
    lines = ["| model | ours: family | ours pairs/s | MultiVae pairs/s | throughput ours/MultiVae "
             "| ours peak RSS Δ MiB (raw) | MultiVae peak RSS Δ MiB (raw) | memory ours/MultiVae | trainable params ours / MultiVae |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        if r.get("skipped"):
            lines.append(f"| {r['model']} | {r['family']} (not registered) | skipped | | | | | | |")
            continue
        o, t = r["ours"], r["theirs"]
        if "error" in o or "error" in t:
            lines.append(f"| {r['model']} | {r['family']} | {o.get('error', '')[:60]} | {t.get('error', '')[:60]} | | | | | |")
            continue
        family = r["family"] + (" (stand-in)" if r["stand_in"] else "")
        memory = f"{o['rss_delta_mib'] / t['rss_delta_mib']:.2f}×" if t["rss_delta_mib"] > 0 else "n/a"
        lines.append(
            f"| {r['model']} | {family} | {o['pairs_per_s']:,.0f} | {t['pairs_per_s']:,.0f} | {o['pairs_per_s'] / t['pairs_per_s']:.2f}× "
            f"| {o['rss_delta_mib']:,.0f} ({o['rss_peak_mib']:,.0f}) | {t['rss_delta_mib']:,.0f} ({t['rss_peak_mib']:,.0f}) "
            f"| {memory} | {o['params']:,} / {t['params']:,} |")
    return "\n".join(lines)


def summarise(pairing_rows: list[dict]) -> list[dict]:
    """Medians over the repeats, per side."""
    out = []
    for r in pairing_rows:
        if r.get("skipped"):
            out.append(r)
            continue
        row = dict(r)
        for side in ("ours", "theirs"):
            runs = r["runs"][side]
            good = [x for x in runs if "error" not in x]
            if len(good) < len(runs) or not good:
                row[side] = next(x for x in runs if "error" in x)
                continue
            row[side] = {key: median([x[key] for x in good]) for key in ("pairs_per_s", "rss_delta_mib", "rss_peak_mib",
                                                                           "step_ms_median")}
            row[side]["params"] = good[0]["params"]
            row[side]["finite"] = all(x["finite"] for x in good)
            row[side]["pairs_per_s_all"] = [x["pairs_per_s"] for x in good]
        out.append(row)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default=",".join(x.name for x in PAIRINGS),
                   help=f"comma-separated, from {[x.name for x in PAIRINGS]} (default: all)")
    p.add_argument("--steps", type=int, default=50, help="timed steps per measurement (default 50)")
    p.add_argument("--warmup", type=int, default=5, help="untimed steps first (default 5)")
    p.add_argument("--repeats", type=int, default=3, help="interleaved repeats; medians reported (default 3)")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--threads", type=int, default=2, help="torch threads on both sides (default 2)")
    p.add_argument("--pool", type=int, default=8, help="distinct batches, cycled (default 8)")
    p.add_argument("--data", choices=["auto", "mnist", "synthetic"], default="auto",
                   help="auto: real MNIST from ../shared/data/mnist with street digits when present, else synthetic")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--optimizer", choices=["own", "adam"], default="own",
                   help="own: each side's trainer's optimiser (ours fused AdamW wd 0, MultiVae Adam); adam: Adam on both")
    p.add_argument("--stand-in", default=None, metavar="FAMILY",
                   help="time this registered family (no private factor) where ours is not registered yet")
    p.add_argument("--venv", type=Path, default=DEFAULT_VENV, help=f"MultiVae's venv (default {DEFAULT_VENV.relative_to(REPO)})")
    p.add_argument("--theirs-python", type=Path, default=None, help="an interpreter with multivae installed (no venv made)")
    p.add_argument("--child-timeout", type=float, default=900.0)
    p.add_argument("--quick", action="store_true", help="pipeline check: 3 timed steps, 1 warm-up, 1 repeat, pool 2")
    p.add_argument("--out", type=Path, default=None, help="write the raw results as JSON here")
    args = p.parse_args(argv)
    if args.quick:
        args.steps, args.warmup, args.repeats, args.pool = 3, 1, 1, 2
    if min(args.steps, args.repeats, args.batch, args.threads, args.pool) < 1 or args.warmup < 0:
        p.error("--steps, --repeats, --batch, --threads and --pool must be >= 1, --warmup >= 0")
    names = [n.strip() for n in args.models.split(",") if n.strip()]
    known = {x.name.lower(): x for x in PAIRINGS}
    unknown = [n for n in names if n.lower() not in known]
    if unknown:
        p.error(f"unknown model(s) {unknown}; choose from {[x.name for x in PAIRINGS]}")
    pairings = [known[n.lower()] for n in names]

    sys.path.insert(0, str(REPO))
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    import torch

    command = shlex.join([sys.executable, *(sys.argv if argv is None else [str(Path(__file__)), *argv])])
    theirs_python = args.theirs_python or ensure_venv(args.venv)
    theirs_v = theirs_versions(theirs_python)
    if public_version(theirs_v["torch"]) != public_version(torch.__version__):
        print(f"warning: torch differs: ours {torch.__version__}, MultiVae side {theirs_v['torch']}", file=sys.stderr)

    notes, plan = [], []
    for pairing in pairings:
        family, note = resolve_ours(pairing, args.stand_in)
        if note:
            notes.append(note)
            print(f"note: {note}", file=sys.stderr, flush=True)
        plan.append((pairing, family))

    host, load_before = host_info(), os.getloadavg()
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench_multivae_") as tmp_name:
        tmp = Path(tmp_name)
        data_path = tmp / "pairs.npz"
        described = make_data(args.data, args.pool * args.batch, args.seed, data_path)
        common = {"data": str(data_path), "batch": args.batch, "warmup": args.warmup, "steps": args.steps,
                  "threads": args.threads, "seed": args.seed, "lr": args.lr, "optimizer": args.optimizer}
        for pairing, family in plan:
            if family is None:
                rows.append({"model": pairing.name, "family": pairing.family, "skipped": True})
                continue
            stand_in = family != pairing.family
            private = {} if stand_in else dict(pairing.private)
            nets = {**NETS, "private": dict(pairing.private)}
            specs = {
                "ours": {**common, "side": "ours", "model": pairing.name, "nets": nets,
                         "ours_config": ours_config(pairing, family, args, private)},
                "theirs": {**common, "side": "theirs", "model": pairing.name, "nets": nets,
                           "theirs": {"class": pairing.name, "config": pairing.theirs_config}},
            }
            rows.append({"model": pairing.name, "family": family, "stand_in": stand_in, "specs": specs,
                         "runs": {"ours": [], "theirs": []}})
        active = [r for r in rows if not r.get("skipped")]
        pythons = {"ours": Path(sys.executable), "theirs": theirs_python}
        for rep in range(args.repeats):
            order = ("ours", "theirs") if rep % 2 == 0 else ("theirs", "ours")  # ABBA: drift hits both sides alike
            for r in active:
                for side in order:
                    print(f"-- repeat {rep + 1}/{args.repeats} {r['model']} {side}", file=sys.stderr, flush=True)
                    result = spawn(pythons[side], r["specs"][side], tmp, args.child_timeout)
                    if "error" in result:
                        print(f"   {side} failed: {result['error']}\n{result.get('log', '')}", file=sys.stderr, flush=True)
                    else:
                        print(f"   {result['pairs_per_s']:,.0f} pairs/s, peak RSS +{result['rss_delta_mib']:,.0f} MiB",
                              file=sys.stderr, flush=True)
                    r["runs"][side].append(result)
    load_after = os.getloadavg()
    summary = summarise(rows)

    header = [
        f"Command: `{command}`",
        f"Host: {host['nproc']} CPUs available ({host['cpu_count']} in all), {host['cpu_model']}; "
        f"load average (1 min) {load_before[0]:.2f} before, {load_after[0]:.2f} after",
        f"torch: ours {torch.__version__} ({sys.executable}); MultiVae side {theirs_v['torch']} ({theirs_python}), "
        f"multivae {theirs_v['multivae']}, pythae {theirs_v['pythae']}; Python {host['python']} / {theirs_v['python']}",
        f"Settings: batch {args.batch}, {args.threads} thread(s) each side, {args.warmup} warm-up + {args.steps} timed steps, "
        f"{args.repeats} interleaved repeat(s) (medians), optimizer {args.optimizer}, data: {described}",
    ]
    text = "\n".join([*header, "", table(summary), *([""] + [f"- {n}" for n in notes] if notes else [])])
    unfinite = [f"{r['model']} {s}" for r in summary if not r.get("skipped") for s in ("ours", "theirs")
                if r[s].get("finite") is False]
    if unfinite:
        text += "\n\nwarning: non-finite loss at the end: " + ", ".join(unfinite)
    print(text, flush=True)
    if args.out:
        for r in summary:
            r.pop("specs", None)
        args.out.write_text(json.dumps({"command": command, "host": host, "load_before": load_before, "load_after": load_after,
                                        "ours_torch": torch.__version__, "theirs": theirs_v, "data": described,
                                        "notes": notes, "rows": summary}, indent=1, default=str) + "\n")
    failed = any("error" in r[s] for r in summary if not r.get("skipped") for s in ("ours", "theirs"))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
