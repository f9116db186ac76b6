"""Median training-step time of configs side by side (e.g. a remedy's overhead over its baseline).

    OMP_NUM_THREADS=1 python scripts/step_time.py configs/disentangle/baseline.yaml configs/disentangle/cycle.yaml \
        --set data.path=/work/main/data/mnist_svhn --steps 40 --rounds 2

Each config gets an in-memory Trainer (nothing is written) and runs the step `mmvae train` runs
(`Trainer._train_step`: forward, loss, backward, clipping, AdamW) on its own training batches. The configs take
turns in rounds of `--steps` steps (after `--warmup` untimed steps each), so that a change in the machine's load
falls on all of them alike; the figure is the median over every timed step. Building each batch (the loader's
`next`, e.g. the HDF5 reads of the robot episodes) is timed apart: `batch_median_ms` and `batch_share`, the
batch's median over (batch + step) medians.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from mmvae.config import load_config
from mmvae.train import Trainer


def endless(trainer: Trainer):
    """The trainer's training batches, epoch after epoch."""
    epoch = 0
    while True:
        yield from trainer.loader.epoch(epoch)
        epoch += 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("configs", nargs="+", help="config files")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override for every config")
    parser.add_argument("--steps", type=int, default=40, help="timed steps per config per round")
    parser.add_argument("--rounds", type=int, default=2, help="turns each config takes")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps per config before the first round")
    args = parser.parse_args()
    overrides = ["train.device=cpu", "train.compile=false", *args.set]
    trainers, batches, times, batch_times = {}, {}, {}, {}
    for path in args.configs:
        trainer = Trainer(load_config(path, overrides), None)
        trainers[path], times[path], batch_times[path] = trainer, [], []
        batches[path] = endless(trainer)

    def step(path: str) -> float:
        trainer = trainers[path]
        built = time.perf_counter()
        batch = next(batches[path])
        start = time.perf_counter()
        batch_times[path].append(start - built)
        trainer._train_step([batch])
        elapsed = time.perf_counter() - start
        trainer.position.step += 1  # the loss weights' schedules move on as in training
        return elapsed

    for path in args.configs:
        for _ in range(args.warmup):
            step(path)
    for _ in range(args.rounds):
        for path in args.configs:
            times[path] += [step(path) for _ in range(args.steps)]
    base = statistics.median(times[args.configs[0]])
    report = {}
    for path, t in times.items():
        b = statistics.median(batch_times[path][-len(t):])
        report[path] = {"median_ms": round(1000 * statistics.median(t), 2), "steps": len(t),
                        "vs_first": round(statistics.median(t) / base, 3), "batch_median_ms": round(1000 * b, 2),
                        "batch_share": round(b / (b + statistics.median(t)), 4)}
    report["torch_threads"] = torch.get_num_threads()
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
