#!/usr/bin/env python
"""Training-step benchmark on MNIST–SVHN: our trainer against a straightforward baseline, same nets.

    python scripts/bench_train.py                          # CPU: batch 128 and 1024
    python scripts/bench_train.py --device cuda            # GPU: batch 128 and 8192, plus one full epoch at 128
    python scripts/bench_train.py --device cuda --variants eager,compile,compile:reduce-overhead
    python scripts/bench_train.py --device cuda --variants compile:reduce-overhead,graph,compile+graph \
        --profile                               # + the whole step as one CUDA graph, and each run's GPU busy share

Ours is `mmvae.train.Trainer._train_step` (the code `mmvae train` runs) on a batch source held once
on the training device (`data.on_device`), with the precision and compilation asked for. Variants:
eager; compile[:MODE] (torch.compile of forward + loss); graph (train.cuda_graph: the whole step, gather to
AdamW, as one CUDA graph; on a CPU it runs uncaptured); compile+graph (both: compiled kernels, captured). The
baseline is what one writes first: a torch Dataset that turns each pair into float tensors with
per-sample transforms (torchvision ToTensor), a shuffling DataLoader, an fp32 loop
(forward, loss, backward, AdamW step; no `.item()` per step, which would only slow it further).

Data: the prepared MNIST–SVHN folder of the config when it exists (or --data), else random uint8
images with the real shapes and counts (60,000 MNIST, 73,257 SVHN) and random pairs, held by the
same `MnistSvhnPairs` source, so the data path is the real one. Each measurement runs in its own
process (clean peak memory); the parent prints a table and writes JSON (--out).

Reported per run: pairs/s, median step time (median of blocks of steps; one host-device sync per
block), the data path's share of the step, peak host (ru_maxrss) and device memory, model FLOPs per
pair (torch.utils.flop_counter: matrix products and convolutions, forward + backward) and achieved
FLOP/s against a matrix product measured in the same run (fp32 on CPU, bf16 on GPU) and the GPU's
nominal dense bf16 peak.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402

DEFAULT_CONFIG = REPO / "configs" / "mnist_svhn.yaml"
MNIST_COUNT, SVHN_COUNT = 60_000, 73_257
EPOCH_PAIRS_DM30 = 1_682_040
# Nominal dense bf16 tensor-core peaks (no sparsity), TFLOP/s, from NVIDIA's data sheets.
NOMINAL_BF16_TFLOPS = {"H100 80GB HBM3": 989.4, "H100 SXM": 989.4, "H100 NVL": 835.0, "H100 PCIe": 756.0,
                       "H200": 989.4, "A100": 312.0}


# --- data -------------------------------------------------------------------------------------------------

def synthetic_pairs(n_pairs: int, device: torch.device, seed: int = 0):
    """Random uint8 images with the real shapes and counts, random pairs: the real source class."""
    from mmvae.data.mnist_svhn import MnistSvhnPairs

    g = torch.Generator(device=device).manual_seed(seed)
    mnist = torch.randint(0, 256, (MNIST_COUNT, 1, 28, 28), dtype=torch.uint8, device=device, generator=g)
    svhn = torch.randint(0, 256, (SVHN_COUNT, 3, 32, 32), dtype=torch.uint8, device=device, generator=g)
    pairs = torch.stack([torch.randint(0, MNIST_COUNT, (n_pairs,), device=device, generator=g),
                         torch.randint(0, SVHN_COUNT, (n_pairs,), device=device, generator=g)], dim=1)
    y = torch.randint(0, 10, (n_pairs,), device=device, generator=g)
    return MnistSvhnPairs(mnist, svhn, pairs, y, {"dataset": "synthetic (random uint8, real shapes)"}, "train")


def load_source(args, n_pairs: int, device: torch.device):
    """(source on `device`, description): the prepared data if present, else synthetic."""
    from mmvae.config import load_config

    path = Path(args.data) if args.data else None
    if path is None and Path(args.config).is_file():
        cfg_path = load_config(args.config).data.path
        path = (REPO / cfg_path) if cfg_path and not Path(cfg_path).is_absolute() else (Path(cfg_path) if cfg_path else None)
    if path is not None and (path / "manifest.json").is_file():
        from mmvae.data.mnist_svhn import MnistSvhnPairs

        src = MnistSvhnPairs.load(path, "train", verify=False)
        if n_pairs < len(src):
            src = MnistSvhnPairs(src.mnist, src.svhn, src.pairs[:n_pairs], src.y[:n_pairs], {}, "train")
        return src.to(device), f"prepared MNIST-SVHN at {path} ({len(src)} pairs used)"
    return synthetic_pairs(n_pairs, device), f"synthetic MNIST-SVHN-shaped ({n_pairs} pairs)"


# --- the two contestants -------------------------------------------------------------------------------------

def parse_variant(variant: str) -> tuple[bool, str | None, bool]:
    """(compile, torch.compile mode, whole-step CUDA graph) of a variant name (see the module's docstring)."""
    if variant in ("graph", "compile+graph"):
        return variant == "compile+graph", None, True
    if variant == "eager":
        return False, None, False
    if variant == "compile" or variant.startswith("compile:"):
        return True, (variant.split(":", 1)[1] if ":" in variant else None), False
    raise SystemExit(f"bench_train.py: unknown variant {variant!r}; expected eager, compile, compile:MODE, graph "
                     "or compile+graph")


def experiment_config(args, batch: int, device: str, compile_: bool, precision: str, graph: bool = False):
    """configs/mnist_svhn.yaml with the benchmark's batch, device, precision, compilation and CUDA graph."""
    from mmvae.config import config_from_dict, load_config

    tree = load_config(args.config).model_dump(mode="json")
    tree["data"].update(on_device=True)
    tree["train"].update(batch_size=batch, device=device, compile=compile_, precision=precision, epochs=10_000,
                         cuda_graph=graph,
                         max_steps=None, log_every=10**9, eval_every=10**9, checkpoint_every=10**9)
    tree["logging"].update(wandb_mode="disabled", progress_bar=False)
    return config_from_dict(tree, "bench")


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_blocks(fn, blocks: int, per_block: int, device: torch.device) -> list[float]:
    """Seconds per call, one value per block of `per_block` calls (synchronised at block ends)."""
    out = []
    for _ in range(blocks):
        sync(device)
        t = time.perf_counter()
        for _ in range(per_block):
            fn()
        sync(device)
        out.append((time.perf_counter() - t) / per_block)
    return out


def flops_per_pair(cfg, batch: int, device: torch.device) -> float:
    """Matrix-product and convolution FLOPs of one forward + backward, per pair (fp32, eager)."""
    from torch.utils.flop_counter import FlopCounterMode

    from mmvae.losses import compute_loss
    from mmvae.model import FactorizedMultimodalVAE

    model = FactorizedMultimodalVAE(cfg.model).to(device)
    src = synthetic_pairs(batch, device, seed=1)
    b = src.gather(torch.arange(batch, device=device))
    with FlopCounterMode(display=False) as counter:
        out = model(b)
        compute_loss(model, out, b, cfg.loss, 0).total.backward()
    return counter.get_total_flops() / batch


def per_block(args, batch: int) -> int:
    """Steps per timed block: args.per_block at batch 128, fewer at larger batches (same pairs per block)."""
    return max(5 if args.device == "cuda" else 1, args.per_block * 128 // batch)


def run_ours(args, batch: int, variant: str) -> dict:
    from mmvae.train import Trainer

    device = torch.device(args.device)
    compile_, mode, graph = parse_variant(variant)
    precision = args.precision or ("bf16" if device.type == "cuda" else "fp32")
    cfg = experiment_config(args, batch, args.device, compile_, precision, graph)
    k = per_block(args, batch)
    n_pairs = args.epoch_pairs if args.epoch else max(batch * (args.warmup + args.blocks * k + 2), 8192)
    source, described = load_source(args, n_pairs, device)
    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        trainer = Trainer(cfg, Path(tmp) / "run", compile_mode=mode, sources=(source, source),
                          graph_capture=device.type == "cuda")
        # Steady state: past the beta warm-up (the loss's only step dependence), as most of a run is.
        trainer.position.step = cfg.loss.beta_warmup_end
        batches = trainer.loader.epoch(0)
        for _ in range(args.warmup):
            trainer._train_step([next(batches)])
            trainer.position.step += 1
        if args.epoch:  # the epoch starts at step 0, inside the beta warm-up: compile that graph too, untimed
            trainer.position.step = 0
            for _ in range(args.warmup):
                trainer._train_step([next(batches)])
                trainer.position.step += 1
            trainer.position.step = 0
        sync(device)
        setup_s = time.perf_counter() - started
        result = {"who": "ours", "variant": variant, "batch": batch, "precision": precision, "data": described,
                  "setup_and_warmup_s": setup_s}
        if args.epoch:
            steps = trainer.loader.batches_per_epoch
            epoch_batches = trainer.loader.epoch(1)
            t = time.perf_counter()
            for _ in range(steps):
                trainer._train_step([next(epoch_batches)])
                trainer.position.step += 1
            trainer.check_finite()  # the one synchronisation, as at a log step
            sync(device)
            seconds = time.perf_counter() - t
            result.update(epoch_pairs=steps * batch, epoch_steps=steps, epoch_s=seconds,
                          pairs_per_s=steps * batch / seconds, step_ms=1e3 * seconds / steps)
        else:
            def step():
                nonlocal batches
                try:
                    b = next(batches)
                except StopIteration:
                    batches = trainer.loader.epoch(trainer.position.epoch + 1)
                    b = next(batches)
                trainer._train_step([b])
                trainer.position.step += 1

            step_s = time_blocks(step, args.blocks, k, device)
            gathers = trainer.loader.epoch(2)
            # The graph variants' loader yields indices (the graph gathers): time that gather alone, outside it.
            gather = ((lambda: trainer.train_source.gather(next(gathers))) if trainer.loader.as_indices
                      else (lambda: next(gathers)))
            data_s = time_blocks(gather, min(args.blocks, 3), k, device)
            trainer.check_finite()
            if args.profile:
                result.update(profile_steps(step, device))
            med = statistics.median(step_s)
            result.update(step_ms=1e3 * med, pairs_per_s=batch / med, data_ms=1e3 * statistics.median(data_s),
                          data_fraction=statistics.median(data_s) / med, step_ms_all=[1e3 * s for s in step_s])
    result.update(memory(device))
    return result


def profile_steps(step, device: torch.device, n: int = 20) -> dict:
    """Print where the time of n steps goes (host and device), for --profile; returns the per-step figures and
    the tables."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    sync(device)
    t = time.perf_counter()
    with profile(activities=activities) as prof:
        for _ in range(n):
            step()
        sync(device)
    wall = (time.perf_counter() - t) / n
    events = prof.key_averages()
    sort = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    tables = [events.table(sort_by="self_cpu_time_total", row_limit=30)]
    figures: dict = {"profile_steps": n, "profile_wall_ms": wall * 1e3}
    if device.type == "cuda":
        tables.append(events.table(sort_by=sort, row_limit=20))
        gpu_us = sum(e.self_device_time_total for e in events if e.device_type == torch.autograd.DeviceType.CUDA) / n
        kernels = sum(e.count for e in events if e.device_type == torch.autograd.DeviceType.CUDA) / n
        figures.update(gpu_busy_ms=gpu_us / 1e3, gpu_busy_share=gpu_us / 1e3 / (wall * 1e3), gpu_ops_per_step=kernels)
        tables.append(f"per step (profiled): wall {wall * 1e3:.3f} ms, GPU busy {gpu_us / 1e3:.3f} ms "
                      f"({figures['gpu_busy_share']:.0%} of the step), {kernels:.0f} GPU ops")
    for table in tables:
        print(table, flush=True)
    return {**figures, "profile_tables": tables}


class PerSamplePairs(torch.utils.data.Dataset):
    """The straightforward dataset: HWC uint8 arrays, per-sample ToTensor (float [0, 1], CHW)."""

    def __init__(self, source):
        from torchvision import transforms

        cpu = source.to("cpu")
        self.mnist = cpu.mnist[:, 0].numpy()  # (N, 28, 28)
        self.svhn = cpu.svhn.permute(0, 2, 3, 1).contiguous().numpy()  # (M, 32, 32, 3) as image files decode
        self.pairs, self.y = cpu.pairs.numpy(), cpu.y.numpy()
        self.to_tensor = transforms.ToTensor()

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, i: int) -> dict:
        m, s = self.pairs[i]
        return {"x": {"mnist": self.to_tensor(self.mnist[m]), "svhn": self.to_tensor(self.svhn[s])},
                "present": {"mnist": torch.tensor(True), "svhn": torch.tensor(True)}, "y": torch.tensor(int(self.y[i]))}


def run_baseline(args, batch: int) -> dict:
    from torch.utils.data import DataLoader

    from mmvae.losses import compute_loss
    from mmvae.model import FactorizedMultimodalVAE

    device = torch.device(args.device)
    cfg = experiment_config(args, batch, args.device, False, "fp32")
    k, warmup = per_block(args, batch), min(args.warmup, 5)
    n_pairs = max(batch * (warmup + args.blocks * k + 2), 8192)
    source, described = load_source(args, n_pairs, torch.device("cpu"))
    workers = args.baseline_workers if args.baseline_workers is not None else (0 if device.type == "cpu" else 8)
    loader = DataLoader(PerSamplePairs(source), batch_size=batch, shuffle=True, drop_last=True, num_workers=workers,
                        pin_memory=device.type == "cuda", persistent_workers=workers > 0)
    torch.manual_seed(0)
    model = FactorizedMultimodalVAE(cfg.model).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.train.lr)
    it = iter(loader)

    def next_batch():
        nonlocal it
        try:
            return next(it)
        except StopIteration:
            it = iter(loader)
            return next(it)

    def step():
        b = next_batch()
        b = {"x": {k: v.to(device) for k, v in b["x"].items()},
             "present": {k: v.to(device) for k, v in b["present"].items()}, "y": b["y"].to(device)}
        loss = compute_loss(model, model(b), b, cfg.loss, 10**6)
        opt.zero_grad()
        loss.total.backward()
        opt.step()

    started = time.perf_counter()
    for _ in range(warmup):
        step()
    sync(device)
    setup_s = time.perf_counter() - started
    step_s = time_blocks(step, args.blocks, k, device)
    data_s = time_blocks(next_batch, min(args.blocks, 3), k, device)
    med = statistics.median(step_s)
    return {"who": "baseline", "variant": f"fp32 eager, DataLoader(workers={workers})", "batch": batch,
            "precision": "fp32", "data": described, "setup_and_warmup_s": setup_s, "step_ms": 1e3 * med,
            "pairs_per_s": batch / med, "data_ms": 1e3 * statistics.median(data_s),
            "data_fraction": statistics.median(data_s) / med, "step_ms_all": [1e3 * s for s in step_s], **memory(device)}


def memory(device: torch.device) -> dict:
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB -> MiB on Linux
    kids = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    out = {"peak_host_mib": rss, "peak_host_workers_mib": kids}
    if device.type == "cuda":
        out["peak_device_mib"] = torch.cuda.max_memory_allocated(device) / 2**20
    return out


# --- references ---------------------------------------------------------------------------------------------

def matmul_reference(device: torch.device) -> dict:
    """FLOP/s of a large matrix product on the same cores/GPU: fp32 on CPU, bf16 (and fp32) on GPU."""
    def rate(n: int, dtype: torch.dtype, reps: int) -> float:
        a = torch.randn(n, n, device=device, dtype=dtype)
        b = torch.randn(n, n, device=device, dtype=dtype)
        for _ in range(2):
            a @ b
        times = time_blocks(lambda: a @ b, 5, reps, device)
        return 2 * n**3 / statistics.median(times)

    if device.type == "cpu":
        return {"matmul_fp32_flops": rate(2048, torch.float32, 2), "threads": torch.get_num_threads()}
    name = torch.cuda.get_device_name(device)
    nominal = next((v for k, v in NOMINAL_BF16_TFLOPS.items() if k in name), None)
    return {"matmul_bf16_flops": rate(8192, torch.bfloat16, 10), "matmul_fp32_flops": rate(8192, torch.float32, 3),
            "gpu": name, "nominal_bf16_flops": nominal * 1e12 if nominal else None}


# --- driver -------------------------------------------------------------------------------------------------

def child(args) -> None:
    torch.manual_seed(0)
    result = run_baseline(args, args.batch) if args.who == "baseline" else run_ours(args, args.batch, args.variant)
    print("RESULT " + json.dumps(result), flush=True)


def spawn(args, who: str, batch: int, variant: str = "", epoch: bool = False, timeout: float | None = None) -> dict:
    timeout = timeout or args.child_timeout
    cmd = [sys.executable, __file__, "--child", "--who", who, "--batch", str(batch), "--variant", variant,
           "--device", args.device, "--config", str(args.config), "--warmup", str(args.warmup),
           "--blocks", str(args.blocks), "--per-block", str(args.per_block), "--epoch-pairs", str(args.epoch_pairs)]
    for flag, value in (("--data", args.data), ("--precision", args.precision), ("--baseline-workers", args.baseline_workers),
                        ("--threads", args.threads)):
        if value is not None:
            cmd += [flag, str(value)]
    if epoch:
        cmd.append("--epoch")
    if args.profile and who == "ours" and not epoch:
        cmd.append("--profile")
    label = f"{who} {variant} batch {batch}{' (full epoch)' if epoch else ''}"
    print(f"-- {label}", file=sys.stderr, flush=True)
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"who": who, "variant": variant, "batch": batch, "error": f"timed out after {timeout} s"}
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[7:])
    return {"who": who, "variant": variant, "batch": batch, "error": (proc.stderr or proc.stdout)[-2500:]}


def hardware(device: torch.device) -> dict:
    info = {"python": platform.python_version(), "torch": torch.__version__, "cpu": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(), "load_average": os.getloadavg()}
    try:
        info["cpu_model"] = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                                 if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def summarise(results: list[dict], ref: dict, device: torch.device, out_md: Path | None) -> str:
    peak = ref.get("matmul_fp32_flops") if device.type == "cpu" else ref.get("matmul_bf16_flops")
    lines = ["| who | variant | batch | pairs/s | step ms (median) | data share | FLOP/s | vs matmul | vs nominal bf16 | "
             "peak host MiB | peak device MiB |", "|" + "---|" * 11]
    for r in results:
        if "error" in r:
            lines.append(f"| {r['who']} | {r['variant']} | {r['batch']} | error: {r['error'].splitlines()[-1][:80] if r['error'] else ''} |")
            continue
        fl = r.get("achieved_flops")
        nominal = ref.get("nominal_bf16_flops")
        lines.append(
            f"| {r['who']} | {r['variant']}{' (full epoch %.1f s)' % r['epoch_s'] if 'epoch_s' in r else ''}"
            f"{' (GPU busy %.0f%% of the step, profiled)' % (100 * r['gpu_busy_share']) if 'gpu_busy_share' in r else ''}"
            f" | {r['batch']} "
            f"| {r['pairs_per_s']:,.0f} | {r['step_ms']:.3f} | {r.get('data_fraction', float('nan')):.1%} "
            f"| {fl / 1e9:,.1f} G | {fl / peak:.1%} | {'%.2f%%' % (100 * fl / nominal) if nominal else '-'} "
            f"| {r['peak_host_mib']:,.0f} | {r.get('peak_device_mib', 0):,.0f} |")
    text = "\n".join(lines)
    if out_md:
        out_md.write_text(text + "\n")
    return text


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--config", default=str(DEFAULT_CONFIG))
    p.add_argument("--data", default=None, help="prepared MNIST-SVHN folder (default: the config's, else synthetic)")
    p.add_argument("--batches", default=None, help="comma-separated batch sizes (default: 128 and 1024 on CPU, 8192 on GPU)")
    p.add_argument("--variants", default=None,
                   help="ours: eager, compile, compile:<torch.compile mode> (default: eager on CPU; eager,compile on GPU)")
    p.add_argument("--large-variants", default=None, help="variants at the batch sizes after the first (default: --variants)")
    p.add_argument("--child-timeout", type=float, default=300)
    p.add_argument("--epoch-timeout", type=float, default=420)
    p.add_argument("--precision", default=None, choices=["fp32", "bf16"], help="ours (default: bf16 on GPU, fp32 on CPU)")
    p.add_argument("--warmup", type=int, default=None, help="steps before timing (compilation happens here)")
    p.add_argument("--blocks", type=int, default=None)
    p.add_argument("--per-block", type=int, default=None)
    p.add_argument("--baseline-workers", type=int, default=None, help="DataLoader workers (default: 0 on CPU, 8 on GPU)")
    p.add_argument("--epoch", action="store_true", help="(child) time one full epoch")
    p.add_argument("--epoch-pairs", type=int, default=EPOCH_PAIRS_DM30)
    p.add_argument("--no-epoch", action="store_true", help="GPU: skip the full-epoch run")
    p.add_argument("--out", default=None, help="write the results as JSON here (and a .md table beside it)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads in every process (default: torch's)")
    p.add_argument("--profile", action="store_true",
                   help="after timing each run of ours, profile 20 more steps: GPU busy share and the profiler's tables")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--who", default="ours", help=argparse.SUPPRESS)
    p.add_argument("--batch", type=int, default=128, help=argparse.SUPPRESS)
    p.add_argument("--variant", default="eager", help=argparse.SUPPRESS)
    args = p.parse_args()
    gpu = args.device == "cuda"
    args.warmup = args.warmup if args.warmup is not None else (30 if gpu else 3)
    args.blocks = args.blocks if args.blocks is not None else (7 if gpu else 5)
    args.per_block = args.per_block if args.per_block is not None else (50 if gpu else 2)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.child:
        return child(args)

    device = torch.device(args.device)
    batches = [int(b) for b in (args.batches or ("128,8192" if gpu else "128,1024")).split(",")]
    variants = (args.variants or ("eager,compile" if gpu else "eager")).split(",")
    for variant in [*variants, *(args.large_variants or "").split(",")]:
        if variant:
            parse_variant(variant)  # a typo fails here, not after minutes of measurements
    started = time.time()
    ref = matmul_reference(device)
    large_variants = args.large_variants.split(",") if args.large_variants else variants
    results: list[dict] = []

    def keep(r: dict) -> None:
        results.append(r)
        if args.out:  # partial results survive a run that is cut short
            Path(args.out).write_text(json.dumps({"partial": True, "reference": ref, "results": results}, indent=2))

    for i, batch in enumerate(batches):
        # Baseline first, then ours, per batch size.
        keep(spawn(args, "baseline", batch))
        for variant in (variants if i == 0 else large_variants):
            keep(spawn(args, "ours", batch, variant))
        cfg = experiment_config(args, batch, args.device, False, "fp32")
        fpp = flops_per_pair(cfg, batch, device)
        for r in results:
            if r["batch"] == batch and "error" not in r:
                r["flops_per_pair"] = fpp
                r["achieved_flops"] = fpp * r["pairs_per_s"]
    if gpu and not args.no_epoch:
        ok = [r for r in results if r["who"] == "ours" and r["batch"] == 128 and "error" not in r]
        if ok:
            best = min(ok, key=lambda r: r["step_ms"])
            r = spawn(args, "ours", 128, best["variant"], epoch=True, timeout=args.epoch_timeout)
            if "error" not in r:
                r["flops_per_pair"] = best["flops_per_pair"]
                r["achieved_flops"] = r["flops_per_pair"] * r["pairs_per_s"]
            keep(r)
    out_md = Path(args.out).with_suffix(".md") if args.out else None
    table = summarise(results, ref, device, out_md)
    print(table)
    for batch in batches:
        base = next((r for r in results if r["who"] == "baseline" and r["batch"] == batch and "error" not in r), None)
        for r in results:
            if base and r["who"] == "ours" and r["batch"] == batch and "error" not in r and "epoch_s" not in r:
                r["speedup_vs_baseline"] = r["pairs_per_s"] / base["pairs_per_s"]
                print(f"batch {batch}: ours ({r['variant']}) / baseline pairs/s = {r['speedup_vs_baseline']:.2f}x; "
                      f"step time ours {r['step_ms']:.3f} ms vs baseline {base['step_ms']:.3f} ms; "
                      f"data share ours {r['data_fraction']:.1%}")
    print(f"reference matmul: " + ", ".join(f"{k} = {v / 1e9:,.1f} GFLOP/s" if k.endswith("flops") and v else f"{k} = {v}"
                                            for k, v in ref.items()))
    report = {"hardware": hardware(device), "reference": ref, "results": results,
              "config": str(args.config), "wall_s": time.time() - started, "command": " ".join(sys.argv)}
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=2))
        print(f"wrote {args.out} and {out_md}")


if __name__ == "__main__":
    main()
