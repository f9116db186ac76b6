"""The zoo comparison table (issue 13) from run folders: one markdown row per run, read from its config.yaml,
eval/metrics.json (`mmvae evaluate`), summary.json (`mmvae train`) and zoo_times.json (scripts/zoo_compare.sh).

    python scripts/zoo_table.py RUN_DIR ...      (or a folder of run folders, e.g. runs/zoo)

A run folder without eval/metrics.json is a one-line error naming it (exit 2); a metric a run lacks prints "–".
Needs only PyYAML, not the package: it can be run on copied run folders.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import yaml

# Published MNIST–SVHN cross-modal coherence, in %: (M→S, S→M, joint).
# Source: the "Reproducibility statement" table of the MultiVae README (github.com/AgatheSenellart/MultiVae,
# README.md, last changed in commit 85f9ce50ddd8beca0473252eb218065f74d05b8c), columns "Paper" and "Ours":
#   |MMVAE|MnistSVHN|Coherences|86/69/42 | 88/67/41|
#   |DMVAE|MnistSVHN|Coherences|88.1/83.7/44.7|89.2/81.3/46.0|
# That table has no MNIST–SVHN row for the other zoo families: its MVAE row is an MNIST ELBO (188.8 / 188.3),
# its MoPoE and MMVAE+ rows are PolyMNIST coherences. None is recorded for them here.
# "paper": MMVAE, Shi et al. 2019 (NeurIPS); DMVAE, Lee & Pavlovic 2021 (CVPR workshops).
PUBLISHED: dict[str, dict[str, tuple[float, float, float]]] = {
    "mmvae": {"multivae": (88.0, 67.0, 41.0), "paper": (86.0, 69.0, 42.0)},
    "dmvae": {"multivae": (89.2, 81.3, 46.0), "paper": (88.1, 83.7, 44.7)},
}
PUBLISHED_SOURCE = ("MultiVae README, Reproducibility statement (github.com/AgatheSenellart/MultiVae, "
                    "commit 85f9ce50): 'MultiVae' is its re-implementation ('Ours'), 'paper' the original paper")

# Row order when a parent folder is given (scripts/zoo_compare.sh's FAMILIES); other folders follow by name.
ORDER = ["factorized", "factorized_unsupervised", "mvae", "mmvae", "mopoe", "dmvae", "mmvae_plus"]
MODALITIES = ("mnist", "svhn")
CROSS = ("coherence/mnist->svhn", "coherence/svhn->mnist", "coherence/joint")
DASH = "–"

COLUMNS = ["model", "M→S", "S→M", "joint", "probe Z_y", "probe private (mnist/svhn)", "swap acc",
           "IWAE (K, samples)", "train time", "published M→S/S→M/joint (MultiVae; paper)",
           "gap to MultiVae M→S/S→M/joint (points)"]


class TableError(Exception):
    """A run folder the table cannot read: one line naming it."""


def run_folders(args: list[str]) -> list[Path]:
    """The run folders named, a folder of run folders expanded (in ORDER, then by name)."""
    runs: list[Path] = []
    for arg in args:
        path = Path(arg)
        if not path.is_dir():
            raise TableError(f"{path}: no such folder")
        if (path / "config.yaml").is_file():
            runs.append(path)
            continue
        children = [p for p in path.iterdir() if (p / "config.yaml").is_file()]
        if not children:
            raise TableError(f"{path}: not a run folder (no config.yaml) and holds no run folders")
        rank = {n: i for i, n in enumerate(ORDER)}
        runs += sorted(children, key=lambda p: (rank.get(p.name, len(ORDER)), p.name))
    return runs


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise TableError(f"{path}: unreadable ({exc})") from None


def load_run(run: Path) -> dict:
    """config, metrics, summary and zoo_times of one run folder."""
    metrics_path = run / "eval" / "metrics.json"
    if not metrics_path.is_file():
        raise TableError(f"{run}: no eval/metrics.json (evaluate it first: mmvae evaluate {run})")
    try:
        config = yaml.safe_load((run / "config.yaml").read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise TableError(f"{run / 'config.yaml'}: unreadable ({str(exc).splitlines()[0]})") from None
    summary = _read_json(run / "summary.json") if (run / "summary.json").is_file() else {}
    times = _read_json(run / "zoo_times.json") if (run / "zoo_times.json").is_file() else {}
    return {"run": run, "config": config, "metrics": _read_json(metrics_path), "summary": summary, "times": times}


def _num(metrics: dict, key: str) -> float | None:
    v = metrics.get(key)
    if isinstance(v, bool) or not isinstance(v, (int, float)) or math.isnan(v):
        return None
    return float(v)


def _pct(v: float | None) -> str:
    return DASH if v is None else f"{100 * v:.1f}"


def family_of(config: dict) -> str:
    return (config.get("model") or {}).get("family") or "factorized"


def has_private(config: dict) -> bool:
    mods = (config.get("model") or {}).get("modalities") or {}
    return any((m or {}).get("private_dim", 0) > 0 for m in mods.values())


def model_label(config: dict) -> str:
    """family, with the label head said for factorized and K for the K-sample objectives."""
    model = config.get("model") or {}
    family = family_of(config)
    notes = []
    if family == "factorized":
        notes.append("label head" if (model.get("num_classes") or 0) > 0 else "no label head")
    k = (model.get("family_options") or {}).get("K")
    if k is not None:
        notes.append(f"K={k}")
    return family + (f" ({', '.join(notes)})" if notes else "")


def iwae_cell(metrics: dict) -> str:
    keys = [k for k in metrics if k.startswith("iwae_log_likelihood/K=")]
    if not keys:
        return DASH
    value = _num(metrics, keys[0])
    if value is None:
        return DASH
    k = keys[0].split("=", 1)[1]
    n = metrics.get("iwae_samples", "?")
    return f"{value:.1f} (K={k}, n={n})"


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.1f} min"


def time_cell(summary: dict, times: dict | None = None) -> str:
    """The training loop's seconds (summary.json), its steps, and the train command's wall time (zoo_times.json)."""
    seconds = _num(summary, "seconds")
    if seconds is None:
        return DASH
    steps = summary.get("steps")
    partial = steps is not None and summary.get("steps_this_session") not in (None, steps)
    cell = _duration(seconds) + ("*" if partial else "") + (f" / {steps} steps" if steps is not None else "")
    wall = _num(times or {}, "train_wall_seconds")
    return cell + (f" (wall {_duration(wall)})" if wall is not None else "")


def published_cell(family: str) -> str:
    pub = PUBLISHED.get(family)
    if pub is None:
        return DASH
    return f"{_triple(pub['multivae'])}; {_triple(pub['paper'])}"


def _triple(values: tuple[float, ...]) -> str:
    """As published: "88/67/41", "89.2/81.3/46.0"."""
    digits = 0 if all(float(v).is_integer() for v in values) else 1
    return "/".join(f"{v:.{digits}f}" for v in values)


def gaps(metrics: dict, family: str) -> tuple[float | None, ...] | None:
    """Ours minus published (MultiVae's reproduction), in percentage points; None without a published row."""
    pub = PUBLISHED.get(family)
    if pub is None:
        return None
    ours = [_num(metrics, k) for k in CROSS]
    return tuple(None if o is None else round(100 * o - p, 1) for o, p in zip(ours, pub["multivae"]))


def gap_cell(metrics: dict, family: str) -> str:
    g = gaps(metrics, family)
    if g is None:
        return DASH
    return "/".join(DASH if x is None else f"{x:+.1f}" for x in g)


def row(loaded: dict) -> list[str]:
    config, metrics, summary = loaded["config"], loaded["metrics"], loaded["summary"]
    family = family_of(config)
    priv = [_num(metrics, f"probe/private/{m}") for m in MODALITIES]
    priv_cell = DASH if all(v is None for v in priv) else " / ".join(_pct(v) for v in priv)
    # Without a private factor swap/private/<m> decodes the sample's own latents (a reconstruction): not a swap.
    swap = _pct(_num(metrics, "swap/accuracy")) if has_private(config) else DASH
    return [f"{model_label(config)} `{loaded['run'].name}`", *(_pct(_num(metrics, k)) for k in CROSS),
            _pct(_num(metrics, "probe/joint")), priv_cell, swap, iwae_cell(metrics),
            time_cell(summary, loaded["times"]),
            published_cell(family), gap_cell(metrics, family)]


def _counts(loaded: list[dict], key: str, where: str = "metrics") -> str:
    values = {str(r[where].get(key, DASH)) for r in loaded}
    if len(values) == 1:
        return values.pop()
    return ", ".join(f"{r['run'].name}: {r[where].get(key, DASH)}" for r in loaded)


def footnotes(loaded: list[dict]) -> list[str]:
    svhn = {((r["metrics"].get("provenance") or {}).get("svhn") or {}).get("source", "unknown") for r in loaded}
    clf = {m: {_pct(_num(r["metrics"], f"classifier_test_accuracy/{m}")) for r in loaded} for m in MODALITIES}
    notes = [
        "Coherence, probes and swap accuracy in %. M→S: SVHN generated from Z_y inferred from MNIST alone (private "
        "factor from the prior) classified as the MNIST digit; S→M the reverse; joint: prior draws decoded to both "
        "modalities on which both classifiers agree. Probe Z_y: logistic regression of the digit on Z_y inferred "
        "from both modalities (high is good); probe private: the same on Z_mnist / Z_svhn (near 10% is good; – where "
        "the family has no private latents). Swap acc: mean of swap/joint/* (decoded with another sample's Z_y, "
        "classified as that sample's digit) and swap/private/* (another sample's Z_m, own digit kept); – without "
        "private latents. IWAE: importance-weighted log p(x_mnist, x_svhn) in nats (higher is better), with K "
        "importance samples per test sample; the K in the model column is the training objective's (the "
        "configs' 30 for mmvae and 10 for mmvae_plus are set lower on a CPU: scripts/zoo_compare.sh's K_CPU).",
        f"Samples: coherence and swaps on {_counts(loaded, 'generative_samples')} test pairs; joint coherence on "
        f"{_counts(loaded, 'joint_coherence_samples')} prior draws; probes fitted on "
        f"{_counts(loaded, 'probe_train_samples')} training and scored on {_counts(loaded, 'probe_test_samples')} "
        f"test samples; IWAE on {_counts(loaded, 'iwae_samples')} test samples; loss terms on "
        f"{_counts(loaded, 'test_samples')} test samples (from eval/metrics.json).",
        f"Train time: the training loop's seconds in summary.json (with its in-training evaluations and "
        f"checkpoints; * = resumed, the last session only); wall: the whole `mmvae train` command, start-up and "
        f"data loading included (zoo_times.json, written by scripts/zoo_compare.sh); steps: "
        f"{_counts(loaded, 'steps', 'summary')}.",
        f"Published: {PUBLISHED_SOURCE}; gap = ours − MultiVae's reproduction, in percentage points. Published "
        "figures are at the authors' budgets and K, on real SVHN.",
        f"Digit classifiers' test accuracy: mnist {'/'.join(sorted(clf['mnist']))}, svhn "
        f"{'/'.join(sorted(clf['svhn']))} %. SVHN source: {', '.join(sorted(svhn))}"
        + (" — the synthetic street-digit stand-in is easier than real SVHN: not comparable with published figures."
           if "synthetic" in svhn else "."),
    ]
    return [f"{i}. {n}" for i, n in enumerate(notes, 1)]


def table(loaded: list[dict]) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(row(r)) + " |" for r in loaded]
    return "\n".join([*lines, "", *footnotes(loaded)]) + "\n"


def main(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__.strip())
        return 0 if argv else 2
    try:
        loaded = [load_run(r) for r in run_folders(argv)]
    except TableError as exc:
        print(f"zoo_table: {exc}", file=sys.stderr)
        return 2
    sys.stdout.write(table(loaded))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
