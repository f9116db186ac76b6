"""Print the digits4 cross-coherence table (every non-empty subset x every target) and the headline figures of a
run's eval/metrics.json as markdown:  python scripts/digits4_table.py RUN/eval/metrics.json"""

from __future__ import annotations

import json
import sys

from mmvae.digits4_metrics import ORDER, coherence_table


def main(path: str) -> None:
    metrics = json.loads(open(path).read())
    names = [m for m in ORDER if f"swap/{m}" in metrics]
    print(coherence_table(metrics, names))
    print()
    keys = ["coherence/single_min", "coherence/single_mean", "coherence/others_min", "coherence/joint",
            *(f"probe/joint/{m}" for m in names), "probe/joint", *(f"probe/private/{m}" for m in names),
            *(f"swap/{m}" for m in names), "swap/cross_mean", *(f"classifier_test_accuracy/{m}" for m in names)]
    print("| metric | value |\n|---|---|")
    for k in keys:
        if k in metrics:
            print(f"| {k} | {metrics[k]:.3f} |")


if __name__ == "__main__":
    main(sys.argv[1])
