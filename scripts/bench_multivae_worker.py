#!/usr/bin/env python
"""One measurement for scripts/bench_multivae.py: train one model for warm-up + N steps and print the figures.

    python scripts/bench_multivae_worker.py SPEC.json        # prints one line: RESULT {...json...}

It runs in either virtual environment: `side` "ours" imports mmvae (our venv, PYTHONPATH at the repository),
`side` "theirs" imports multivae (the venv that bench_multivae.py creates). Only torch and numpy are imported
at the top, so this file is the same code on both sides; the two halves differ only where the libraries do.

SPEC (written by bench_multivae.py; tests write a small one):
    side, model         "ours" | "theirs"; the benchmark's model name (MVAE, MMVAE, MoPoE, DMVAE)
    data                .npz with uint8 arrays mnist (P, 1, 28, 28) and svhn (P, 3, 32, 32), P a multiple of batch
    batch, warmup, steps, threads, seed, lr, optimizer ("own" | "adam")
    nets                {joint_dim, mnist_hidden, svhn_channels, private: {modality: dim}, likelihood, scale}
    ours_config         ours: the full experiment-config tree (mmvae.api.make_config)
    theirs              theirs: {"class": "MVAE", "config": {...extra MVAEConfig fields...}}

Measured the same way on both sides: the library and the config are imported and validated, and the data
turned into float32 batches in [0, 1], before the memory baseline and the clock; the model is built after it;
`warmup` untimed steps, then `steps` steps under one perf_counter. pairs/s = steps * batch / seconds.
Memory: the peak resident set (VmHWM, see max_rss_mib) at the end minus the peak after the imports, the
config and the data (so the figure is what building and training the model added: weights, gradients,
optimiser state, activations, allocator caches), plus both raw values.
"""

from __future__ import annotations

import importlib
import json
import math
import resource
import sys
import time
from pathlib import Path

import numpy as np
import torch

MODALITIES = ("mnist", "svhn")
SHAPES = {"mnist": (1, 28, 28), "svhn": (3, 32, 32)}


def max_rss_mib() -> float:
    """Peak resident set size of this process so far, MiB: VmHWM from /proc/self/status.

    Not ru_maxrss: Linux carries ru_maxrss across execve, so a worker started by a parent holding 900 MiB
    would report at least 900 MiB whatever it did. VmHWM belongs to the process's own address space (reset
    at exec) and is otherwise the same high-water mark; ru_maxrss is the fallback where /proc is missing.
    """
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def load_batches(path: str | Path, batch: int) -> list[dict[str, torch.Tensor]]:
    """The pool of batches, float32 in [0, 1]: [{"mnist": (B, 1, 28, 28), "svhn": (B, 3, 32, 32)}, ...]."""
    with np.load(path) as f:
        arrays = {m: f[m] for m in MODALITIES}
    n = len(arrays["mnist"])
    if len(arrays["svhn"]) != n or n < batch or n % batch:
        raise ValueError(f"{path}: {n} MNIST and {len(arrays['svhn'])} SVHN images; need equal counts, a multiple of batch {batch}")
    floats = {m: torch.from_numpy(a).float().div_(255.0) for m, a in arrays.items()}
    del arrays
    return [{m: floats[m][i:i + batch].contiguous() for m in MODALITIES} for i in range(0, n, batch)]


# --- ours ---------------------------------------------------------------------------------------------------

def ours_config(spec: dict):
    """Our validated config (before the memory baseline: validation imports the dataset registry and its readers)."""
    from mmvae.api import make_config

    return make_config(spec["ours_config"])


def ours(spec: dict, cfg, batches: list[dict[str, torch.Tensor]]):
    """(model, step function, last loss) on our side: mmvae's model of `cfg`, one `TrainStep` call per step."""
    from mmvae import distributed
    from mmvae.families import build_model
    from mmvae.train_step import TrainStep

    torch.manual_seed(spec["seed"])
    model = build_model(cfg.model)
    groups = model.param_groups(cfg.train)
    lr_scales = [float(g.pop("lr_scale", 1.0)) for g in groups]
    if spec["optimizer"] == "own":  # what mmvae.train.Trainer builds (weight decay 0: Adam's update)
        tc = cfg.train
        opt = torch.optim.AdamW(groups, lr=spec["lr"], betas=tc.betas, weight_decay=tc.weight_decay, fused=True)
    else:
        opt = torch.optim.Adam(groups, lr=spec["lr"])
    env = distributed.DistEnv(rank=0, local_rank=0, world_size=1, device=torch.device("cpu"))
    train_step = TrainStep(model, opt, lr_scales, cfg, env)
    n = batches[0]["mnist"].shape[0]
    present = {m: torch.ones(n, dtype=torch.bool) for m in MODALITIES}
    ready = [{"x": b, "present": present} for b in batches]
    start = cfg.loss.schedules_end  # past every weight warm-up: the steady state of a run
    state = {"i": 0, "logged": None}

    def step() -> None:
        i = state["i"]
        state["logged"] = train_step([ready[i % len(ready)]], start + i, spec["lr"])
        state["i"] = i + 1

    def last_loss() -> float:
        names = train_step.log_names or []
        values = state["logged"]
        return float(values[names.index("loss/total")]) if values is not None and "loss/total" in names else math.nan

    return model, step, last_loss


# --- theirs -------------------------------------------------------------------------------------------------

def multivae_nets(nets: dict, private: dict[str, int]):
    """MultiVae encoders and decoders ({modality: module}) with our reference nets' layers, one for one.

    MNIST: flatten, Linear(784, h), ReLU, Linear(h, 2 * latent) -> (mu, log-variance); decoder Linear(in, h),
    ReLU, Linear(h, 784), sigmoid. SVHN: Conv2d k4 s2 p1 3 -> c1 -> c2 -> c3 with ReLUs, flatten (c3 * 4 * 4),
    Linear(., 2 * latent); decoder Linear(in, c3 * 4 * 4), ReLU, ConvTranspose2d k4 s2 p1 c3 -> c2 -> c1 -> 3
    with ReLUs between, sigmoid. A private factor (DMVAE) adds Linear(features, 2 * private) to the encoder,
    as our private heads do, and widens the decoder's input to latent + private.
    """
    from pythae.models.base.base_utils import ModelOutput
    from pythae.models.nn.base_architectures import BaseDecoder, BaseEncoder

    from multivae.models.nn import BaseMultilatentEncoder

    latent = nets["joint_dim"]

    def mnist_body() -> tuple[torch.nn.Module, int]:
        h = nets["mnist_hidden"]
        return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(784, h), torch.nn.ReLU()), h

    def svhn_body() -> tuple[torch.nn.Module, int]:
        layers, prev = [], 3
        for ch in nets["svhn_channels"]:
            layers += [torch.nn.Conv2d(prev, ch, 4, 2, 1), torch.nn.ReLU()]
            prev = ch
        side = 32 // 2 ** len(nets["svhn_channels"])
        return torch.nn.Sequential(*layers, torch.nn.Flatten()), prev * side * side

    class Encoder(BaseMultilatentEncoder):
        """Body -> features -> Linear(features, 2 * latent) (mu, log-variance) [+ the private head]."""

        def __init__(self, modality: str):
            BaseMultilatentEncoder.__init__(self)
            self.body, features = mnist_body() if modality == "mnist" else svhn_body()
            self.latent_dim, self.style_dim = latent, private.get(modality, 0)
            self.head = torch.nn.Linear(features, 2 * latent)
            self.private_head = torch.nn.Linear(features, 2 * self.style_dim) if self.style_dim else None

        def forward(self, x: torch.Tensor) -> ModelOutput:
            h = self.body(x)
            mu, log_var = self.head(h).chunk(2, dim=-1)
            if self.private_head is None:
                return ModelOutput(embedding=mu, log_covariance=log_var)
            s_mu, s_log_var = self.private_head(h).chunk(2, dim=-1)
            return ModelOutput(embedding=mu, log_covariance=log_var, style_embedding=s_mu, style_log_covariance=s_log_var)

    class MnistDecoder(BaseDecoder):
        def __init__(self, z_dim: int):
            BaseDecoder.__init__(self)
            h = nets["mnist_hidden"]
            self.net = torch.nn.Sequential(torch.nn.Linear(z_dim, h), torch.nn.ReLU(), torch.nn.Linear(h, 784))

        def forward(self, z: torch.Tensor) -> ModelOutput:
            out = torch.sigmoid(self.net(z))
            return ModelOutput(reconstruction=out.reshape(*z.shape[:-1], 1, 28, 28))

    class SvhnDecoder(BaseDecoder):
        def __init__(self, z_dim: int):
            BaseDecoder.__init__(self)
            channels = list(nets["svhn_channels"])
            self.side = 32 // 2 ** len(channels)
            self.bottom = channels[-1]
            self.fc = torch.nn.Linear(z_dim, self.bottom * self.side * self.side)
            rev, layers = list(reversed(channels)), []
            for i, ch in enumerate(rev):
                last = i + 1 == len(rev)
                layers.append(torch.nn.ConvTranspose2d(ch, 3 if last else rev[i + 1], 4, 2, 1))
                if not last:
                    layers.append(torch.nn.ReLU())
            self.deconv = torch.nn.Sequential(*layers)

        def forward(self, z: torch.Tensor) -> ModelOutput:
            lead = z.shape[:-1]
            h = torch.relu(self.fc(z.reshape(-1, z.shape[-1]))).reshape(-1, self.bottom, self.side, self.side)
            out = torch.sigmoid(self.deconv(h))
            return ModelOutput(reconstruction=out.reshape(*lead, 3, 32, 32))

    encoders = {m: Encoder(m) for m in MODALITIES}
    decoders = {"mnist": MnistDecoder(latent + private.get("mnist", 0)), "svhn": SvhnDecoder(latent + private.get("svhn", 0))}
    assert all(isinstance(e, BaseEncoder) for e in encoders.values())
    return encoders, decoders


def theirs_config(spec: dict):
    """MultiVae's config object for the model (made before the memory baseline, as ours is)."""
    import multivae.models as mv

    nets, choice = spec["nets"], spec["theirs"]
    config_cls = getattr(mv, choice["class"] + "Config")
    return config_cls(
        n_modalities=len(MODALITIES), latent_dim=nets["joint_dim"], input_dims={m: SHAPES[m] for m in MODALITIES},
        uses_likelihood_rescaling=True,  # max size / own size: proportional to our "auto" reconstruction weights
        decoders_dist={m: nets["likelihood"] for m in MODALITIES},
        decoder_dist_params={m: {"scale": nets["scale"]} for m in MODALITIES},
        **choice.get("config", {}),
    )


def theirs(spec: dict, config, batches: list[dict[str, torch.Tensor]]):
    """(model, step function, last loss) on MultiVae's side: its model class with our nets, a plain loop (not its
    trainer): out = model(inputs); optimizer.zero_grad(); out.loss.backward(); optimizer.step()."""
    import multivae.models as mv
    from multivae.data.datasets.base import DatasetOutput

    nets, choice = spec["nets"], spec["theirs"]
    private = {m: int(d) for m, d in nets.get("private", {}).items() if d}
    model_cls = getattr(mv, choice["class"])
    torch.manual_seed(spec["seed"])
    encoders, decoders = multivae_nets(nets, private)
    model = model_cls(config, encoders=encoders, decoders=decoders)
    model.train()
    # Both optimizer settings: Adam(lr) with torch's defaults, which is what MultiVae's BaseTrainer builds.
    opt = torch.optim.Adam(model.parameters(), lr=spec["lr"])
    ready = [DatasetOutput(data=dict(b)) for b in batches]
    state = {"i": 0, "loss": None}

    def step() -> None:
        i = state["i"]
        out = model(ready[i % len(ready)], epoch=1)
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        state["loss"] = out.loss.detach()
        state["i"] = i + 1

    def last_loss() -> float:
        return float(state["loss"]) if state["loss"] is not None else math.nan

    return model, step, last_loss


# --- the measurement ----------------------------------------------------------------------------------------

def run(spec: dict) -> dict:
    """Import, load, baseline, build, warm up, time; the result dict (what RESULT prints)."""
    threads = int(spec["threads"])
    torch.set_num_threads(threads)
    side = spec["side"]
    if side == "ours":
        repo = str(Path(__file__).resolve().parents[1])
        if repo not in sys.path:
            sys.path.insert(0, repo)
        import mmvae.api  # noqa: F401  (imports before the baseline)
        import mmvae.families  # noqa: F401
        import mmvae.train_step  # noqa: F401
        if spec["optimizer"] == "own":
            # Making a fused AdamW on CPU imports torch._dynamo (and sympy): ~110 MiB of RSS that is an import,
            # not the model's memory, so it goes before the baseline (the raw peak still includes it).
            importlib.import_module("torch._dynamo")
        configure, build = ours_config, ours
    elif side == "theirs":
        import multivae.data.datasets.base  # noqa: F401
        import multivae.models  # noqa: F401
        configure, build = theirs_config, theirs
    else:
        raise ValueError(f"side must be 'ours' or 'theirs', got {side!r}")
    config = configure(spec)
    batches = load_batches(spec["data"], int(spec["batch"]))
    baseline = max_rss_mib()
    built = time.perf_counter()
    model, step, last_loss = build(spec, config, batches)
    params = sum(p.numel() for p in model.parameters() if p.requires_grad)
    for _ in range(int(spec["warmup"])):
        step()
    setup_s = time.perf_counter() - built
    steps = int(spec["steps"])
    step_times = []
    t0 = time.perf_counter()
    for _ in range(steps):
        t = time.perf_counter()
        step()
        step_times.append(time.perf_counter() - t)
    seconds = time.perf_counter() - t0
    loss = last_loss()
    peak = max_rss_mib()
    return {
        "side": side, "model": spec["model"], "torch": torch.__version__, "threads": torch.get_num_threads(),
        "batch": int(spec["batch"]), "warmup": int(spec["warmup"]), "steps": steps, "seconds": seconds,
        "pairs_per_s": steps * int(spec["batch"]) / seconds, "step_ms_median": 1e3 * float(np.median(step_times)),
        "setup_and_warmup_s": setup_s, "params": params, "rss_baseline_mib": baseline, "rss_peak_mib": peak,
        "rss_delta_mib": peak - baseline, "last_loss": loss, "finite": math.isfinite(loss),
    }


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: bench_multivae_worker.py SPEC.json", file=sys.stderr)
        return 2
    spec = json.loads(Path(argv[0]).read_text())
    result = run(spec)
    print("RESULT " + json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
