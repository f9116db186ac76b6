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


def _trainer(tmp_path, *overrides, compile_mode=None):
    from mmvae.train import Trainer

    cfg = tiny_config(tmp_path, ("train.device=cuda", "data.on_device=true", "model.joint_subset_drop=0.5",
                                 "data.missing_prob=0.3", *overrides))
    return Trainer(cfg, tmp_path / "run", compile_mode=compile_mode)


def _steps_without_host_sync(trainer, n: int) -> list[str]:
    """Run n optimiser steps under CUDA's sync debug mode; return the synchronising calls it reported."""
    batches = trainer.loader.epoch(0)
    first = next(batches)  # the epoch's one host-to-device copy of its index order happens here
    trainer._train_step([first])  # first step: lazy state (optimiser moments) is created
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
