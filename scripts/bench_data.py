"""Benchmark the MNIST–SVHN data side: generation, pairing, preparation, delivery and memory.

    .venv/bin/python scripts/bench_data.py [--raw DIR] [--dm 30] [--workers 1] [--prepared DIR] [--device cpu]

Reports (targets from issue 3): time to generate the 99,289 stand-in digits (≤ 2 min on 2 cores),
pairing time at dm=30 on real label arrays (≤ 5 s), pairs/s delivered at batch 128 through
`gather` and through a DataLoader (≥ 50,000 /s on CPU), and the peak RSS of a process holding a
dm=30 split and delivering batches (≤ 1 GB). Delivery and memory are measured in a fresh
subprocess so the preparation's memory does not count.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from data_prep import mnist, street_digits  # noqa: E402
from data_prep.cli import default_raw_dir  # noqa: E402
from data_prep.mnist_svhn import prepare  # noqa: E402
from data_prep.pairing import pair_indices  # noqa: E402


def peak_rss_mb() -> float:
    """This process's peak resident set size in MiB: VmHWM, which (unlike ru_maxrss) restarts at exec."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def bench_generation(workers: int) -> tuple[float, dict]:
    """Seconds to generate SVHN-sized train and test stand-ins, and their label arrays."""
    start = time.perf_counter()
    labels = {}
    for split, n in street_digits.SVHN_SIZES.items():
        _, labels[split] = street_digits.generate_street_digits(n, seed=0, split=split, workers=workers)
    return time.perf_counter() - start, labels


def mnist_labels(raw: Path | None) -> tuple[dict, str]:
    """Real MNIST label arrays when available, else arrays with MNIST's real class counts."""
    if raw is not None:
        return {s: mnist.load_mnist_split(raw, s).labels for s in ("train", "test")}, f"real MNIST labels from {raw}"
    counts = {"train": [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949],
              "test": [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]}
    return {s: np.repeat(np.arange(10), c) for s, c in counts.items()}, "label arrays with MNIST's class counts"


def bench_pairing(m_labels: dict, s_labels: dict, dm: int, repeats: int = 3) -> tuple[float, dict]:
    """Best-of-`repeats` seconds to pair train and test at `dm`, and the pair counts."""
    best, counts = float("inf"), {}
    for _ in range(repeats):
        start = time.perf_counter()
        for stream, split in enumerate(("train", "test")):
            counts[split] = len(pair_indices(m_labels[split], s_labels[split], dm, seed=0, stream=stream))
        best = min(best, time.perf_counter() - start)
    return best, counts


def deliver(prepared: str, device: str, batches: int) -> dict:
    """(Run in a fresh process.) Load the train split, deliver batches of 128, report rates and peak RSS."""
    from torch.utils.data import DataLoader

    from mmvae.data.mnist_svhn import MnistSvhnDataset, MnistSvhnPairs

    torch.manual_seed(0)
    start = time.perf_counter()
    source = MnistSvhnPairs.load(prepared, "train")
    load_s = time.perf_counter() - start
    result = {"pairs": len(source), "load_s": load_s, "rss_after_load_mb": peak_rss_mb()}
    on_device = source.to(device)
    order = torch.randperm(len(source), device=on_device.device)
    for _ in range(20):  # warm-up
        on_device.gather(order[:128])
    if on_device.device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for b in range(batches):
        batch = on_device.gather(order[b * 128 : (b + 1) * 128])
    if on_device.device.type == "cuda":
        torch.cuda.synchronize()
    result[f"gather_pairs_per_s_{on_device.device.type}"] = batches * 128 / (time.perf_counter() - start)
    dataset = MnistSvhnDataset(source)
    for workers in (0, 2):
        loader = DataLoader(dataset, batch_size=128, shuffle=True, num_workers=workers, collate_fn=_collate, drop_last=True)
        it = iter(loader)
        next(it)
        start = time.perf_counter()
        for _ in range(batches):
            batch = next(it)
        result[f"dataloader_w{workers}_pairs_per_s"] = batches * 128 / (time.perf_counter() - start)
        del it, loader
    assert_shapes(batch)
    result["peak_rss_mb"] = peak_rss_mb()
    return result


def _collate(data):
    """Module-level collate (picklable for worker processes)."""
    from mmvae.data.mnist_svhn import collate_pairs

    return collate_pairs(data)


def assert_shapes(batch: dict) -> None:
    """Raise unless the batch has the contract's shapes and dtypes."""
    if batch["x"]["mnist"].shape[1:] != (1, 28, 28) or batch["x"]["svhn"].dtype != torch.uint8:
        raise RuntimeError(f"unexpected batch: {[(k, v.shape, v.dtype) for k, v in batch['x'].items()]}")


def main() -> None:
    """Run every benchmark and print the figures and the command line."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--raw", type=Path, default=default_raw_dir(), help="MNIST IDX folder (default: shared data)")
    parser.add_argument("--dm", type=int, default=30)
    parser.add_argument("--workers", type=int, default=1, help="processes for generating the stand-in")
    parser.add_argument("--prepared", type=Path, default=None, help="reuse a prepared dm=30 directory")
    parser.add_argument("--device", default="cpu", help="device for the GPU-resident gather figure")
    parser.add_argument("--batches", type=int, default=2000)
    parser.add_argument("--deliver-only", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.deliver_only is not None:
        print(json.dumps(deliver(str(args.deliver_only), args.device, args.batches)))
        return

    print("command:", shlex.join([sys.executable, *sys.argv]))
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores, torch {torch.__version__}, "
          f"{torch.get_num_threads()} torch threads")
    gen_s, svhn_labels = bench_generation(args.workers)
    print(f"generation: {sum(street_digits.SVHN_SIZES.values()):,} stand-in digits in {gen_s:.1f} s "
          f"({sum(street_digits.SVHN_SIZES.values()) / gen_s:,.0f} digits/s, {args.workers} worker(s)); target ≤ 120 s")
    m_labels, m_what = mnist_labels(args.raw)
    pair_s, counts = bench_pairing(m_labels, svhn_labels, args.dm)
    print(f"pairing (dm={args.dm}, {m_what} x stand-in labels with SVHN's class counts): "
          f"train {counts['train']:,} + test {counts['test']:,} pairs in {pair_s:.2f} s; target ≤ 5 s")
    with tempfile.TemporaryDirectory() as tmp:
        prepared = args.prepared
        if prepared is None:
            if args.raw is None:
                raise SystemExit("no MNIST folder: pass --raw or --prepared")
            prepared = Path(tmp) / "prepared"
            start = time.perf_counter()
            prepare(args.raw, "synthetic", args.dm, 0, prepared, download=False, workers=args.workers, log=lambda s: None)
            print(f"prepare (synthetic SVHN, dm={args.dm}, everything written): {time.perf_counter() - start:.1f} s; "
                  f"peak RSS of this process {peak_rss_mb():,.0f} MiB")
        child = subprocess.run([sys.executable, __file__, "--deliver-only", str(prepared), "--device", args.device,
                                "--batches", str(args.batches)], check=True, capture_output=True, text=True)
    r = json.loads(child.stdout.strip().splitlines()[-1])
    print(f"delivery (train split, {r['pairs']:,} pairs, batch 128, random order): loaded in {r['load_s']:.2f} s "
          f"(sha256 verified)")
    for key, value in r.items():
        if key.endswith("pairs_per_s") or "_pairs_per_s_" in key:
            print(f"  {key}: {value:,.0f} pairs/s")
    print(f"peak RSS of the delivering process: {r['peak_rss_mb']:,.0f} MiB (after load {r['rss_after_load_mb']:,.0f}); "
          f"target ≤ 1024 MiB")


if __name__ == "__main__":
    main()
