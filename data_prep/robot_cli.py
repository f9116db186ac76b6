"""`mmvae prepare robot-sim` (simulate episodes, then index them) and `mmvae prepare robot` (index a folder of
episodes in Lee et al.'s format, e.g. real ones). Bad arguments and bad data are one-line errors (exit 2)."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from data_prep.errors import DataError

COMPRESSION = ("none", "lzf", "gzip")


def _add_index_options(p: argparse.ArgumentParser) -> None:
    from data_prep import robot_episodes as re

    p.add_argument("--seed", type=int, default=0, help="seed of the split and of the alignment negatives (and of the "
                                                        "simulation for robot-sim) (default: 0)")
    p.add_argument("--test-fraction", type=float, default=0.1, help="share of the episodes in the test split")
    p.add_argument("--on-bad", choices=re.ON_BAD, default="refuse",
                   help="an episode with a missing key, a wrong shape or dtype, or non-finite rows: refuse (stop with "
                        "an error naming file, key and step) or skip (leave it out, list and count it in the manifest)")
    p.add_argument("--negatives", type=int, default=re.NEGATIVES_PER_SAMPLE,
                   help="alignment negatives stored per sample")
    p.add_argument("--min-distance", type=float, default=re.MIN_DISTANCE,
                   help="an alignment negative's end-effector is at least this far away (metres)")


def add_robot_parsers(datasets) -> None:
    p = datasets.add_parser("robot-sim", help="simulate contact-rich robot episodes (MuJoCo) in Lee et al.'s format, "
                                              "then index them (a SIMULATION, labelled so)")
    p.add_argument("--episodes", type=int, required=True, help="episodes to simulate (50 steps each)")
    p.add_argument("--out", type=Path, required=True, help="output folder: episodes/*.h5, index arrays, manifest.json")
    p.add_argument("--workers", type=int, default=2, help="simulation processes")
    p.add_argument("--compression", choices=COMPRESSION, default="none",
                   help="HDF5 filter of the image, depth and flow datasets")
    _add_index_options(p)
    p.set_defaults(func=run_robot_sim)
    q = datasets.add_parser("robot", help="validate and index a folder of robot episodes in Lee et al.'s format")
    q.add_argument("--episodes-dir", type=Path, required=True, help="folder of episode files (*.h5, *.hdf5)")
    q.add_argument("--out", type=Path, required=True, help="output folder for the index arrays and manifest.json")
    q.add_argument("--simulation", action="store_true", help="the episodes are simulated (recorded in the manifest)")
    _add_index_options(q)
    q.set_defaults(func=run_robot)


def _check_common(args) -> None:
    if not 0 < args.test_fraction < 1:
        raise DataError(None, f"argument --test-fraction: must lie in (0, 1), got {args.test_fraction}")
    if args.negatives < 1:
        raise DataError(None, f"argument --negatives: must be >= 1, got {args.negatives}")
    if not args.min_distance >= 0:
        raise DataError(None, f"argument --min-distance: must be >= 0, got {args.min_distance}")
    if args.out.exists() and not args.out.is_dir():
        raise DataError(args.out, "exists and is not a folder")
    if (args.out / "manifest.json").exists():
        raise FileExistsError(f"{args.out} already holds a prepared dataset (manifest.json); choose another --out")


def _summary(out: Path, manifest: dict) -> str:
    c = manifest["counts"]
    splits = ", ".join(f"{s} {v['episodes']} episodes / {v['samples']:,} samples" for s, v in manifest["splits"].items())
    sim = "SIMULATION" if manifest["simulation"] else "not marked as a simulation"
    skipped = f", {c['episodes_skipped']} skipped" if c["episodes_skipped"] else ""
    return f"prepared {out}: {splits}{skipped}; contact in {manifest['contact_step_fraction']:.0%} of steps; {sim}"


def run_robot_sim(args: argparse.Namespace) -> int:
    from data_prep import robot_episodes, robot_sim

    if args.episodes < 2:
        raise DataError(None, f"argument --episodes: must be >= 2 (a train and a test episode), got {args.episodes}")
    if args.workers < 1:
        raise DataError(None, f"argument --workers: must be >= 1, got {args.workers}")
    _check_common(args)
    episodes_dir = args.out / "episodes"
    if episodes_dir.is_dir() and any(episodes_dir.iterdir()):
        raise FileExistsError(f"{episodes_dir} is not empty; choose another --out")

    def log(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    t0 = time.perf_counter()
    records = robot_sim.simulate(args.episodes, args.seed, episodes_dir, workers=min(args.workers, args.episodes),
                                 compression=None if args.compression == "none" else args.compression, log=log)
    seconds = time.perf_counter() - t0
    generator = robot_sim.generator_record(args.seed, args.episodes)
    generator["compression"] = args.compression
    generator["tasks"] = {t: sum(r["task"] == t for r in records) for t in robot_sim.TASKS}
    manifest = robot_episodes.prepare_index(episodes_dir, args.out, seed=args.seed, test_fraction=args.test_fraction,
                                            on_bad=args.on_bad, negatives_per_sample=args.negatives,
                                            min_distance=args.min_distance, simulation=True, generator=generator,
                                            log=log)
    print(f"simulated {args.episodes} episodes in {seconds:.1f} s ({args.episodes / seconds * 60:.1f} per minute, "
          f"{args.workers} worker(s))")
    print(_summary(args.out, manifest))
    return 0


def run_robot(args: argparse.Namespace) -> int:
    from data_prep import robot_episodes

    _check_common(args)

    def log(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    manifest = robot_episodes.prepare_index(args.episodes_dir, args.out, seed=args.seed,
                                            test_fraction=args.test_fraction, on_bad=args.on_bad,
                                            negatives_per_sample=args.negatives, min_distance=args.min_distance,
                                            simulation=args.simulation, generator=None, log=log)
    print(_summary(args.out, manifest))
    return 0
