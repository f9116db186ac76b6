"""Command line: `mmvae prepare mnist-svhn --raw DIR --svhn {real,synthetic,auto} --dm 30 --seed 0 --out DIR`,
and `mmvae prepare svhn-factors DIR` (the street-digit factors of a folder prepared before they were recorded).

Wire into a parent parser with `add_prepare_parser(subparsers)`; the parsed namespace carries
`func=run_prepare`, so the caller dispatches with `args.func(args)`. Also runnable on its own:
`python -m data_prep.cli prepare mnist-svhn ...`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from data_prep.errors import DataError
from data_prep.mnist_svhn import SVHN_SOURCES, add_svhn_factors, prepare
from data_prep.street_digits import SVHN_SIZES
from mmvae.cli_types import positive_int  # noqa: F401  (also used by digits4_cli and classifiers)

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_MNIST = REPO_ROOT / ".." / "shared" / "data" / "mnist"


def default_raw_dir() -> Path | None:
    """../shared/data/mnist relative to the repository when it exists, else None."""
    return SHARED_MNIST.resolve() if SHARED_MNIST.is_dir() else None


def add_prepare_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add `prepare` (with its `mnist-svhn` sub-command) to a parent parser's subparsers."""
    prepare_parser = subparsers.add_parser("prepare", help="check raw data and write prepared arrays")
    datasets = prepare_parser.add_subparsers(dest="dataset", required=True, metavar="DATASET")
    p = datasets.add_parser("mnist-svhn", help="MNIST–SVHN pairs (Shi et al. 2019 protocol)")
    raw = default_raw_dir()
    p.add_argument("--raw", type=Path, default=raw, required=raw is None,
                   help=f"folder with the MNIST IDX files, gzip or raw (default: {raw or 'none found'})")
    p.add_argument("--svhn", choices=SVHN_SOURCES, default="auto",
                   help="real: official .mat files (downloaded if missing); synthetic: the seeded stand-in; "
                        "auto: real files if present, else download, else generate (default: auto)")
    p.add_argument("--svhn-dir", type=Path, default=None,
                   help="folder with (or to download) train_32x32.mat and test_32x32.mat (default: OUT/svhn_raw)")
    p.add_argument("--dm", type=positive_int, default=30, help="random permutations per class and side (default: 30)")
    p.add_argument("--seed", type=int, default=0, help="seed for pairing and the synthetic stand-in (default: 0)")
    p.add_argument("--out", type=Path, required=True, help="output folder for the prepared arrays and manifest.json")
    p.add_argument("--svhn-train-size", type=positive_int, default=None,
                   help=f"synthetic stand-in only: train digits (default: {SVHN_SIZES['train']:,}, as SVHN)")
    p.add_argument("--svhn-test-size", type=positive_int, default=None,
                   help=f"synthetic stand-in only: test digits (default: {SVHN_SIZES['test']:,}, as SVHN)")
    p.add_argument("--no-download", action="store_true", help="never touch the network; missing files are an error")
    p.set_defaults(func=run_prepare)
    f = datasets.add_parser("svhn-factors", help="add the street-digit style factors to an MNIST–SVHN folder prepared "
                                                 "with the synthetic stand-in before they were recorded")
    f.add_argument("prepared", type=Path, help="the prepared folder (its manifest gives the generator's seed and sizes)")
    f.add_argument("--workers", type=positive_int, default=1, help="generator processes (default: 1)")
    f.set_defaults(func=run_add_factors)
    from data_prep.digits4_cli import add_digits4_parser  # `prepare digits4`: MNIST, SVHN, FSDD and sentences

    add_digits4_parser(datasets, p)
    from data_prep.robot_cli import add_robot_parsers  # `prepare robot-sim` and `prepare robot`

    add_robot_parsers(datasets)
    return p


def generator_sizes(args: argparse.Namespace) -> dict[str, int] | None:
    """The synthetic sizes given on the command line, or None when neither was given."""
    sizes = {"train": args.svhn_train_size, "test": args.svhn_test_size}
    given = {k: v for k, v in sizes.items() if v is not None}
    return given or None


def run_prepare(args: argparse.Namespace) -> int:
    """Run `prepare mnist-svhn` from parsed arguments; 0 on success, 1 with a one-line error on bad input."""
    if args.func is not run_prepare:  # another dataset's sub-command (digits4, robot-sim, robot)
        return args.func(args)
    try:
        manifest = prepare(
            raw_dir=args.raw,
            svhn_source=args.svhn,
            dm=args.dm,
            seed=args.seed,
            out_dir=args.out,
            svhn_dir=args.svhn_dir,
            svhn_sizes=generator_sizes(args),
            download=not args.no_download,
        )
    except (DataError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    counts = ", ".join(f"{s} {v['pairs']:,} pairs" for s, v in manifest["splits"].items())
    print(f"prepared {args.out}: {counts}; SVHN source: {manifest['svhn']['source']}")
    return 0


def run_add_factors(args: argparse.Namespace) -> int:
    """Run `prepare svhn-factors`: 0 on success, 1 with a one-line error when the folder cannot take them."""
    try:
        manifest = add_svhn_factors(args.prepared, workers=args.workers)
    except (DataError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    names = manifest["svhn"]["factors"]["names"]
    print(f"added {len(names)} street-digit factors to {args.prepared}: {', '.join(names)}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Stand-alone entry point with only the `prepare` command."""
    parser = argparse.ArgumentParser(prog="python -m data_prep.cli")
    add_prepare_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
