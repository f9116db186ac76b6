"""GPU paths: bf16 autocast, the GPU-resident data path with no host-device sync per step, compile, NCCL.

Every test skips cleanly without CUDA. Run them with `pytest -m gpu` on a GPU machine.
"""

from __future__ import annotations

import datetime
import socket
import warnings

import pytest
import torch

from tests.conftest import tiny_config

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


def _trainer(tmp_path, *overrides, compile_mode=None, run="run", **kwargs):
    from mmvae.train import Trainer

    cfg = tiny_config(tmp_path, ("train.device=cuda", "data.on_device=true", "model.joint_subset_drop=0.5",
                                 "data.missing_prob=0.3", *overrides))
    return Trainer(cfg, tmp_path / run, compile_mode=compile_mode, **kwargs)


def _steps_without_host_sync(trainer, n: int, before: int = 1) -> list[str]:
    """Run `before` steps, then n optimiser steps under CUDA's sync debug mode; return the synchronising calls it
    reported."""
    batches = trainer.loader.epoch(0)
    for _ in range(before):  # the epoch's one host-to-device copy of its index order happens at the first
        trainer._train_step([next(batches)])  # first step: lazy state (optimiser moments) is created
        trainer.position.step += 1
    torch.cuda.synchronize()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            for _ in range(n):
                trainer._train_step([next(batches)])
                trainer.position.step += 1
        finally:
            torch.cuda.set_sync_debug_mode("default")
    torch.cuda.synchronize()
    # Each synchronising call warns "called a synchronizing CUDA operation"; switching the mode on also warns
    # once per process that the feature is a prototype, which is not a synchronisation.
    return [str(w.message) for w in caught if "called a synchronizing" in str(w.message)]


def test_bf16_forward_backward_is_finite_and_close_to_fp32():
    from mmvae.data.toy import make_toy
    from mmvae.losses import compute_loss
    from mmvae.model import FactorizedMultimodalVAE

    cfg = tiny_config("unused")
    torch.manual_seed(0)
    model = FactorizedMultimodalVAE(cfg.model).cuda()
    batch = make_toy(64, seed=1, missing_prob=0.3).to("cuda").gather(torch.arange(64, device="cuda"))
    out = model(batch, sample=False)
    fp32 = compute_loss(model, out, batch, cfg.loss, 0).total
    with torch.autocast("cuda", dtype=torch.bfloat16):
        out = model(batch, sample=False)
        loss = compute_loss(model, out, batch, cfg.loss, 0)
    assert out.params["bars"].dtype == torch.bfloat16 or out.params["wave"].dtype == torch.bfloat16
    loss.total.backward()
    assert torch.isfinite(loss.total) and abs(loss.total.item() - fp32.item()) < 0.05 * abs(fp32.item())
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    assert all(g.dtype == torch.float32 for g in grads)  # master weights and gradients stay fp32


def test_gpu_resident_bf16_steps_do_not_synchronise_with_the_host(tmp_path):
    trainer = _trainer(tmp_path, "train.precision=bf16")
    assert trainer.train_source.device.type == "cuda"
    syncs = _steps_without_host_sync(trainer, 5)
    assert not syncs, syncs
    trainer.check_finite()


def test_compiled_bf16_training_runs_without_host_sync(tmp_path):
    trainer = _trainer(tmp_path, "train.precision=bf16", "train.compile=true")
    syncs = _steps_without_host_sync(trainer, 5)
    assert not syncs, syncs
    trainer.check_finite()
    summary = trainer.fit(stop_at_step=10)
    assert summary["steps"] == 10


def test_fit_on_gpu_with_grad_accumulation_and_resume(tmp_path):
    from mmvae.checkpoint import load_latest
    from mmvae.train import train

    cfg = tiny_config(tmp_path, ("train.device=cuda", "data.on_device=true", "train.precision=bf16",
                                 "train.grad_accum_steps=2", "train.epochs=2"))
    train(cfg, tmp_path / "run", stop_at_step=3)
    summary = train(cfg, tmp_path / "run", resume=True)
    assert summary["finished"] and summary["steps"] == 8
    ckpt = load_latest(tmp_path / "run")
    assert all(torch.isfinite(t).all() for t in ckpt.tensors["model"].values())


def test_nccl_with_one_process(tmp_path):
    """NCCL process group of one rank: DDP, the differentiable all-gather and the mean all-reduce work."""
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel as DDP

    from mmvae import distributed
    from mmvae.model import FactorizedMultimodalVAE

    if not dist.is_nccl_available():
        pytest.skip("this torch build has no NCCL")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    dist.init_process_group("nccl", init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1,
                            timeout=datetime.timedelta(seconds=60), device_id=torch.device("cuda", 0))
    try:
        z = torch.randn(5, 3, device="cuda", requires_grad=True)
        gathered = distributed.all_gather_with_grad(z)
        gathered.pow(2).sum().backward()
        torch.testing.assert_close(z.grad, 2 * z.detach())
        assert torch.equal(distributed.all_reduce_mean(torch.ones(2, device="cuda")), torch.ones(2, device="cuda"))
        assert distributed.decide_on_main(lambda: 42) == 42

        cfg = tiny_config("unused")
        torch.manual_seed(0)
        model = FactorizedMultimodalVAE(cfg.model).cuda()
        ddp = DDP(model, device_ids=[0])
        from mmvae.data.toy import make_toy
        from mmvae.losses import compute_loss

        batch = make_toy(32, seed=2).to("cuda").gather(torch.arange(32, device="cuda"))
        compute_loss(model, ddp(batch, sample=False), batch, cfg.loss, 0).total.backward()
        assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    finally:
        dist.destroy_process_group()


# --- the whole step as one CUDA graph (train.cuda_graph, mmvae/train_graph.py) -------------------------------------
# Every step dependence at once: LR and loss-weight warm-ups, random joint subsets, missing modalities, clipping.
GRAPH = ("train.cuda_graph=true", "train.precision=bf16", "train.warmup_steps=4", "loss.weights.kl/joint.value=1.0",
         "loss.weights.kl/joint.warmup_steps=6", "train.grad_clip=0.5", "train.batch_size=32")


def _graph_steps(trainer, n: int) -> list[torch.Tensor]:
    logged, batches = [], trainer.loader.epoch(0)
    for _ in range(n):
        logged.append(trainer._train_step([next(batches)]))
        trainer.position.step += 1
    return logged


@pytest.mark.parametrize("compiled", [False, True])
def test_captured_whole_step_equals_the_uncaptured_step_bit_for_bit(tmp_path, compiled):
    from mmvae.train_graph import EAGER_WARMUP_STEPS

    extra = ("train.compile=true",) if compiled else ()
    reference = _trainer(tmp_path, *GRAPH, *extra, run="eager", graph_capture=False)
    expected = _graph_steps(reference, 12)  # made just before its run: the trainer seeds every RNG
    captured = _trainer(tmp_path, *GRAPH, *extra, run="graph")
    got = _graph_steps(captured, 12)
    assert captured.step._graph is not None and captured.step.eager_steps == EAGER_WARMUP_STEPS
    assert reference.step._graph is None
    for step, (a, b) in enumerate(zip(expected, got)):
        assert torch.equal(a, b), f"step {step}: max |difference| {(a - b).abs().max().item():.3g}"
    for (name, p), q in zip(reference.model.named_parameters(), captured.model.parameters()):
        assert torch.equal(p, q), f"{name}: max |difference| {(p - q).abs().max().item():.3g}"


def test_negative_control_a_captured_step_with_another_seed_differs(tmp_path):
    a = _graph_steps(_trainer(tmp_path, *GRAPH, run="a"), 8)
    b = _graph_steps(_trainer(tmp_path, *GRAPH, "seed=4", run="b"), 8)
    assert not torch.equal(a[-1], b[-1])


def test_captured_steps_do_not_synchronise_with_the_host(tmp_path):
    from mmvae.train_graph import EAGER_WARMUP_STEPS

    trainer = _trainer(tmp_path, *GRAPH)
    syncs = _steps_without_host_sync(trainer, 10, before=EAGER_WARMUP_STEPS + 1)  # + 1: the capture
    assert not syncs, syncs
    trainer.check_finite()


def test_captured_fit_checkpoints_and_resumes_exactly(tmp_path):
    from mmvae.checkpoint import load_latest

    settings = (*GRAPH, "train.epochs=2", "train.checkpoint_every=8", "train.eval_every=8")
    _trainer(tmp_path, *settings, run="whole").fit()
    _trainer(tmp_path, *settings, run="parts").fit(stop_at_step=8)
    _trainer(tmp_path, *settings, run="parts", resume=True).fit()  # a new capture after the resume
    whole, parts = load_latest(tmp_path / "whole"), load_latest(tmp_path / "parts")
    assert whole.state["position"] == parts.state["position"]
    for group in ("model", "optimizer"):
        for name, value in whole.tensors[group].items():
            assert torch.equal(value, parts.tensors[group][name]), f"{group}/{name}"
