"""The CUDA-graph step (train.cuda_graph, mmvae/train_graph.py) on the CPU, uncaptured: the same results as the
plain step, bit for bit, its device weight tables, its checkpoints, and the settings it refuses.

The captured replay itself needs a GPU: tests/test_gpu.py compares it with this uncaptured step.
"""

from __future__ import annotations

import pytest
import torch

from mmvae.checkpoint import load_latest
from mmvae.config import ConfigError
from mmvae.losses import all_term_names, configured_weight
from mmvae.train import Trainer
from tests.conftest import tiny_config

# Every step dependence at once: an LR warm-up, a loss-weight warm-up, random subsets for the joint encoder,
# missing modalities (masked terms) and gradient clipping. On the CPU even where a GPU is (the GPU comparisons are
# in tests/test_gpu.py).
SETTINGS = ("train.device=cpu", "data.on_device=true", "train.warmup_steps=4", "loss.weights.kl/joint.value=1.0",
            "loss.weights.kl/joint.warmup_steps=6", "model.joint_subset_drop=0.5", "data.missing_prob=0.3",
            "train.grad_clip=0.5", "train.batch_size=32")


def _trainer(tmp_path, *overrides, run_dir=None, **kwargs) -> Trainer:
    cfg = tiny_config(tmp_path, (*SETTINGS, *overrides))
    return Trainer(cfg, run_dir, **kwargs)


def _run(trainer: Trainer, steps: int) -> list[torch.Tensor]:
    """`steps` optimiser steps through the trainer's own loader and step; the logged vectors."""
    logged, batches = [], trainer.loader.epoch(0)
    for _ in range(steps):
        logged.append(trainer._train_step([next(batches)]))
        trainer.position.step += 1
    return logged


def test_uncaptured_graph_step_equals_the_plain_step_bit_for_bit(tmp_path):
    # Each trainer seeds the global RNG when made: make each one just before its run.
    plain = _trainer(tmp_path)
    a = _run(plain, 10)  # through the weight warm-up (6) and past it
    graphed = _trainer(tmp_path, "train.cuda_graph=true", graph_capture=False)
    b = _run(graphed, 10)
    assert graphed.loader.as_indices and not plain.loader.as_indices
    assert plain.log_names == graphed.log_names
    for step, (x, y) in enumerate(zip(a, b)):
        assert torch.equal(x, y), f"logged values differ at step {step}: {x} vs {y}"
    for (name, p), q in zip(plain.model.named_parameters(), graphed.model.parameters()):
        assert torch.equal(p, q), name
    # The graph step's LR is a tensor the optimiser reads; it holds the scheduled value.
    assert isinstance(graphed.optimizer.param_groups[0]["lr"], torch.Tensor)
    assert float(graphed.optimizer.param_groups[0]["lr"]) == pytest.approx(plain.optimizer.param_groups[0]["lr"])


def test_each_parameter_group_keeps_its_own_lr_tensor(tmp_path):
    # The private adversary's classifiers learn at 10x the LR: a second group (tests/test_remedies.py).
    adversary = "model.heads={adversary: {kind: private_adversary, hidden: [8], options: {num_classes: 10, lr_scale: 10.0}}}"
    plain = _trainer(tmp_path, adversary)
    a = _run(plain, 5)
    graphed = _trainer(tmp_path, adversary, "train.cuda_graph=true", graph_capture=False)
    b = _run(graphed, 5)
    lrs = [g["lr"] for g in graphed.optimizer.param_groups]
    assert len(lrs) == 2 and lrs[0] is not lrs[1]
    assert [float(x) for x in lrs] == pytest.approx([g["lr"] for g in plain.optimizer.param_groups])
    assert float(lrs[1]) == pytest.approx(10 * float(lrs[0]))
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    for p, q in zip(plain.model.parameters(), graphed.model.parameters()):
        assert torch.equal(p, q)


def test_a_resumed_optimiser_keeps_its_own_capturable_flag_and_lr_tensor():
    from mmvae.train_state import optimizer_from_tensors, optimizer_to_tensors

    saved = torch.optim.AdamW([torch.nn.Parameter(torch.ones(3))], lr=1e-3, fused=True)
    saved.param_groups[0]["params"][0].grad = torch.ones(3)
    saved.step()
    tensors, meta = optimizer_to_tensors(saved)
    lr = torch.tensor(5e-4, dtype=torch.float64)
    target = torch.optim.AdamW([{"params": [torch.nn.Parameter(torch.ones(3))], "lr": lr}], fused=True, capturable=True)
    optimizer_from_tensors(target, tensors, meta)
    group = target.param_groups[0]
    assert group["capturable"] is True and group["lr"] is lr and float(lr) == 1e-3


def test_compile_modes_inside_the_graph_make_no_cuda_graphs_of_their_own():
    from mmvae.config import TrainConfig
    from mmvae.train_graph import COMPILE_MODE_INSIDE_GRAPH

    modes = TrainConfig.model_fields["compile_mode"].annotation.__args__[0].__args__  # Literal[...] | None
    assert set(COMPILE_MODE_INSIDE_GRAPH) == {None, *modes}
    assert all(m is None or "cudagraphs" in m for m in COMPILE_MODE_INSIDE_GRAPH.values())


def test_negative_control_a_different_weight_schedule_changes_the_graph_step(tmp_path):
    a = _run(_trainer(tmp_path), 4)
    b = _run(_trainer(tmp_path, "train.cuda_graph=true", "loss.weights.kl/joint.warmup_steps=3", graph_capture=False), 4)
    assert torch.equal(a[0], b[0])  # step 0: both weights are 0
    assert not torch.equal(a[3], b[3])


def test_weight_table_holds_the_host_weights_at_every_step(tmp_path):
    from mmvae.train_graph import WeightTable

    trainer = _trainer(tmp_path)
    cfg, model = trainer.config.loss, trainer.model
    table = WeightTable(model, cfg, torch.device("cpu"))
    scales = model.term_scales()
    assert table.end == 6
    for step in (0, 1, 3, 6, 7, 1000):
        weight_of = table.at(torch.tensor(step))
        for term in all_term_names(model, cfg):
            expected = torch.tensor(configured_weight(cfg, term, step) * scales.get(term, 1.0), dtype=torch.float32)
            assert torch.equal(weight_of(term), expected), (term, step)
    assert float(table.at(torch.tensor(3))("kl/joint")) == pytest.approx(0.5)  # known answer: 3 / 6 of 1.0


def test_graph_step_checkpoint_and_resume_are_exact(tmp_path):
    graph = ("train.cuda_graph=true", "train.epochs=2", "train.checkpoint_every=8")
    _trainer(tmp_path, *graph, run_dir=tmp_path / "whole", graph_capture=False).fit()
    _trainer(tmp_path, *graph, run_dir=tmp_path / "parts", graph_capture=False).fit(stop_at_step=8)
    resumed = _trainer(tmp_path, *graph, run_dir=tmp_path / "parts", graph_capture=False, resume=True)
    lr = resumed.optimizer.param_groups[0]["lr"]
    assert isinstance(lr, torch.Tensor) and lr is resumed.step.lrs[0]  # the tensor the step fills, not a copy
    resumed.fit()
    whole, parts = load_latest(tmp_path / "whole"), load_latest(tmp_path / "parts")
    assert whole.state["position"] == parts.state["position"]
    assert isinstance(whole.state["optimizer"]["param_groups"][0]["lr"], float)  # saved as a number
    for group in ("model", "optimizer"):
        for name, value in whole.tensors[group].items():
            assert torch.equal(value, parts.tensors[group][name]), f"{group}/{name}"


def test_non_finite_values_stop_the_graph_step_naming_term_and_step(tmp_path, monkeypatch):
    import mmvae.train_graph as graph_module
    from mmvae.train_step import NonFiniteLossError

    real = graph_module.compute_loss

    def poisoned(model, out, batch, cfg, step, gather=None, weight_of=None):
        result = real(model, out, batch, cfg, step, gather, weight_of)
        poison = torch.where(step == 2, float("nan"), 1.0)  # a device decision, as inside a graph
        result.terms["recon/wave"] = result.terms["recon/wave"] * poison
        result.total = result.total * poison
        return result

    monkeypatch.setattr(graph_module, "compute_loss", poisoned)
    trainer = _trainer(tmp_path, "train.cuda_graph=true", graph_capture=False)
    _run(trainer, 4)
    with pytest.raises(NonFiniteLossError, match=r"'loss/recon/wave' at step 3 on rank 0"):
        trainer.check_finite()


@pytest.mark.parametrize("override, message", [
    ((), "needs a CUDA device"),
    (("train.grad_accum_steps=2",), "grad_accum_steps=1"),
    (("data.loader=dataloader",), "data.loader=indexed"),
])
def test_settings_a_captured_step_cannot_honour_are_refused(tmp_path, override, message):
    if torch.cuda.is_available() and not override:
        pytest.skip("this machine has a CUDA device")
    cfg = tiny_config(tmp_path, ("train.cuda_graph=true", "data.on_device=true", "train.device=cpu", *override))
    with pytest.raises(ConfigError, match=r"^key 'train.cuda_graph': .*" + message):
        Trainer(cfg, None)


def test_cli_refuses_cuda_graph_on_a_cpu_in_one_line(tmp_path):
    import subprocess
    import sys

    import yaml

    from mmvae.config import config_to_yaml
    from tests.conftest import REPO

    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA device")
    path = tmp_path / "graph.yaml"
    path.write_text(config_to_yaml(tiny_config(tmp_path, ("train.cuda_graph=true", "data.on_device=true"))))
    assert yaml.safe_load(path.read_text())["train"]["cuda_graph"] is True
    proc = subprocess.run([sys.executable, "-m", "mmvae.cli", "train", str(path), "--run-dir", str(tmp_path / "run")],
                          capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "train.cuda_graph" in lines[0] and "CUDA device" in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "run").exists()


def test_a_step_that_cannot_be_captured_is_a_one_line_config_error(tmp_path, monkeypatch):
    """What a capture reports for a host copy inside the step (simulated: the capture itself needs a GPU)."""
    from contextlib import contextmanager

    import mmvae.train_graph as graph_module

    @contextmanager
    def refusing_capture(graph):
        yield
        raise RuntimeError("CUDA error: operation not permitted when stream is capturing\nCUDA kernel errors ...")

    monkeypatch.setattr(graph_module.torch.cuda, "CUDAGraph", lambda: object())
    monkeypatch.setattr(graph_module.torch.cuda, "graph", refusing_capture)
    trainer = _trainer(tmp_path, "train.cuda_graph=true", graph_capture=False)
    step = trainer.step
    step.capture, step.eager_steps = True, graph_module.EAGER_WARMUP_STEPS  # the next call captures
    with pytest.raises(ConfigError, match=r"^key 'train.cuda_graph': this model and data cannot be captured as one "
                                          r"CUDA graph \(CUDA error: operation not permitted when stream is "
                                          r"capturing\); set train.cuda_graph=false$"):
        trainer._train_step([next(trainer.loader.epoch(0))])
