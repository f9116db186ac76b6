"""The remedies table of issue 17 (docs/disentanglement.md): one row per MNIST–SVHN run folder, the columns that
say whether the joint factor holds the digit and each private factor its modality's style and not the digit.

    python scripts/disentangle_table.py RUN_OR_FOLDER ...     (e.g. runs/disentangle, as scripts/zoo_compare.sh
                                                               with TABLE=disentangle_table.py writes it)

Every figure is read from the run's eval/metrics.json (`mmvae evaluate`); a dash where the run has no such key (a
family without private factors, a prepared folder without street-digit factors). Rows come in the order given
(a folder of runs: by name). Reading the run folders reuses scripts/zoo_table.py.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

_spec = importlib.util.spec_from_file_location("zoo_table", Path(__file__).resolve().with_name("zoo_table.py"))
zoo_table = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(zoo_table)

DASH = zoo_table.DASH
# (header, how to make the cell from the metrics): %, or a plain number for DCI informativeness (R² or accuracy)
COLUMNS: list[tuple[str, tuple[str, ...], str]] = [
    ("M→S", ("coherence/mnist->svhn",), "pct"),
    ("S→M", ("coherence/svhn->mnist",), "pct"),
    ("joint", ("coherence/joint",), "pct"),
    ("probe Z_y", ("probe/joint",), "pct"),
    ("probe Z_mnist / Z_svhn (chance 10)", ("probe/private/mnist", "probe/private/svhn"), "pct"),
    ("cycle style mnist / svhn (chance 50)", ("cycle/style/mnist", "cycle/style/svhn"), "pct"),
    ("swap acc", ("swap/accuracy",), "pct"),
    ("DCI-i digit: Z_y / Z_mnist / Z_svhn", ("dci/informativeness/joint/digit", "dci/informativeness/private/mnist/digit",
                                             "dci/informativeness/private/svhn/digit"), "num"),
    ("DCI-i SVHN style: Z_svhn / Z_y", ("dci/informativeness/private/svhn/style", "dci/informativeness/joint/svhn_style"),
     "num"),
    ("DCI-i MNIST style: Z_mnist / Z_y", ("dci/informativeness/private/mnist/style",
                                          "dci/informativeness/joint/mnist_style"), "num"),
]
HEADER = ["setting", *(c[0] for c in COLUMNS), "labels", "steps"]


def label_cell(loaded: dict) -> str:
    """Which labels training used: none (no label head or weight 0), a fraction, or all."""
    cfg = loaded["config"]
    model, loss, data = cfg.get("model") or {}, cfg.get("loss") or {}, cfg.get("data") or {}
    weight = (loss.get("weights") or {}).get("label", 1.0)
    if not model.get("num_classes") or weight in (0, 0.0):
        return "none"
    fraction = data.get("label_fraction", 1.0)
    return "all" if fraction >= 1 else f"{100 * fraction:g} %"


def cell(metrics: dict, keys: tuple[str, ...], kind: str) -> str:
    values = [zoo_table._num(metrics, k) for k in keys]
    if kind == "pct":
        return " / ".join(zoo_table._pct(v) for v in values)
    return " / ".join(DASH if v is None else f"{v:.2f}" for v in values)


def row(loaded: dict) -> list[str]:
    m = loaded["metrics"]
    return [f"`{loaded['run'].name}`", *(cell(m, keys, kind) for _, keys, kind in COLUMNS), label_cell(loaded),
            str(m.get("step", DASH))]


def footnotes(loaded: list[dict]) -> list[str]:
    def counts(key: str) -> str:
        found = sorted({int(r["metrics"][key]) for r in loaded if isinstance(r["metrics"].get(key), (int, float))})
        return "/".join(map(str, found)) or DASH

    return [
        "Coherence, probes, cycle and swap accuracy in %. Coherence as in the zoo table (frozen digit classifiers); "
        "probe: logistic regression of the digit (high is good on Z_y, near 10 on the private factors); cycle style: "
        "a swap re-encoded has its private factor nearer the style donor's (the main style measure); DCI-i: DCI "
        "informativeness (held-out accuracy for the digit, chance 0.10; mean R² for the style factors) of the code "
        "named about the factors named (docs/disentanglement.md).",
        f"Samples: coherence and swaps on {counts('generative_samples')} test pairs, joint coherence on "
        f"{counts('joint_coherence_samples')} prior draws, probes fitted on {counts('probe_train_samples')} training "
        f"and scored on {counts('probe_test_samples')} test pairs, cycle on {counts('cycle_samples')}, DCI on "
        f"{counts('disentanglement_samples')} test pairs.",
    ]


def table(loaded: list[dict]) -> str:
    lines = ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    lines += ["| " + " | ".join(row(r)) + " |" for r in loaded]
    return "\n".join([*lines, "", *(f"{i}. {n}" for i, n in enumerate(footnotes(loaded), 1))]) + "\n"


def main(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__.strip())
        return 0 if argv else 2
    try:
        loaded = [zoo_table.load_run(r) for r in zoo_table.run_folders(argv)]
    except zoo_table.TableError as exc:
        print(f"disentangle_table: {exc}", file=sys.stderr)
        return 2
    sys.stdout.write(table(loaded))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
