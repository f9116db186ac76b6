"""`mmvae prepare digits4`: MNIST (IDX), SVHN (.mat or the stand-in), the FSDD tarball and seeded sentences."""

from __future__ import annotations

import argparse
from pathlib import Path

from data_prep.mnist_svhn import SVHN_SOURCES

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_FSDD = REPO_ROOT / ".." / "shared" / "data" / "fsdd" / "fsdd_recordings.tar.gz"


def add_digits4_parser(datasets, mnist_svhn_parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add `digits4` beside `mnist-svhn` (it takes the same MNIST/SVHN options)."""
    from data_prep import digits4
    from data_prep.cli import default_raw_dir, positive_int

    p = datasets.add_parser("digits4", help="MNIST + SVHN + spoken digits (FSDD) + sentences, four-modality tuples")
    raw = default_raw_dir()
    fsdd = SHARED_FSDD.resolve() if SHARED_FSDD.is_file() else None
    p.add_argument("--raw", type=Path, default=raw, required=raw is None, help=f"MNIST IDX folder (default: {raw})")
    p.add_argument("--fsdd", type=Path, default=fsdd, required=fsdd is None,
                   help=f"the FSDD tarball as shipped (default: {fsdd})")
    p.add_argument("--svhn", choices=SVHN_SOURCES, default="auto", help="as for mnist-svhn (default: auto)")
    p.add_argument("--svhn-dir", type=Path, default=None,
                   help="folder with train_32x32.mat / test_32x32.mat (default: the MNIST raw folder's svhn/)")
    p.add_argument("--svhn-train-size", type=positive_int, default=None, help="synthetic stand-in only")
    p.add_argument("--svhn-test-size", type=positive_int, default=None, help="synthetic stand-in only")
    p.add_argument("--no-download", action="store_true", help="never touch the network; missing files are an error")
    p.add_argument("--dm", type=positive_int, default=5, help="permutations per class and side (default: 5)")
    p.add_argument("--seed", type=int, default=0, help="pairing, recordings, grammar and the stand-in (default: 0)")
    p.add_argument("--audio-length", type=positive_int, default=digits4.AUDIO_LENGTH, help="samples kept per recording")
    p.add_argument("--text-tokens", type=positive_int, default=digits4.TEXT_TOKENS, help="maximum tokens per sentence")
    p.add_argument("--sentences-train", type=positive_int, default=digits4.SENTENCES_PER_DIGIT["train"],
                   help="sentence pool per digit, train")
    p.add_argument("--sentences-test", type=positive_int, default=digits4.SENTENCES_PER_DIGIT["test"],
                   help="sentence pool per digit, test")
    p.add_argument("--workers", type=positive_int, default=1, help="processes for the stand-in generator")
    p.add_argument("--out", type=Path, required=True, help="output folder for the prepared arrays and manifest.json")
    p.set_defaults(func=run_digits4)
    return p


def run_digits4(args: argparse.Namespace) -> int:
    """DataError/ValueError propagate: `mmvae` prints them as one line and exits 2."""
    from data_prep import digits4
    from data_prep.cli import generator_sizes

    from data_prep.errors import DataError

    try:
        manifest = digits4.prepare(
            raw_dir=args.raw, fsdd_tar=args.fsdd, svhn_source=args.svhn, dm=args.dm, seed=args.seed, out_dir=args.out,
            svhn_dir=args.svhn_dir, svhn_sizes=generator_sizes(args), download=not args.no_download,
            audio_length=args.audio_length, text_tokens=args.text_tokens,
            sentences_per_digit={"train": args.sentences_train, "test": args.sentences_test}, workers=args.workers)
    except ValueError as e:
        if isinstance(e, DataError):
            raise
        raise DataError(None, str(e)) from None
    counts = ", ".join(f"{s} {v['tuples']:,} tuples" for s, v in manifest["splits"].items())
    print(f"prepared {args.out}: {counts}; SVHN source: {manifest['svhn']['source']}")
    return 0
