"""A catalogue of bad configs, arguments and checkpoint states, driven through the command line (issue 15).

For every entry: exit code 2, the last stderr line names the key or file and the problem, no traceback,
and nothing written -- the run folder that would have been created does not exist, and an existing run
folder (and anything a symlink points at) is byte-for-byte unchanged. Entries run in-process through
`mmvae.cli.main` (fast); the one that used to segfault runs in a subprocess.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from typing import Callable

import pytest
import torch

from mmvae.cli import main
from mmvae.runlock import RunLock
from tests.ckpt_tools import (
    copy_run,
    make_base_run,
    only_newest,
    renumber,
    rewrite_group,
    rewrite_state,
    snapshot,
    step_folder,
)
from tests.conftest import REPO

NO_GPU = not torch.cuda.is_available()


@dataclass
class Case:
    id: str
    argv: tuple[str, ...]  # placeholders {cfg} {bad} {fresh} {run} {file} {outside} are replaced
    expect: tuple[str, ...]  # fragments of the last stderr line
    setup: Callable[[dict], None] | None = None
    needs_run: bool = False  # work on a copy of the base run (which must stay unchanged)
    subprocess: bool = False
    only_if: bool = True
    hold_lock: bool = False


CASES: list[Case] = []


def case(id, *argv, expect, **kw):
    CASES.append(Case(id, argv, expect if isinstance(expect, tuple) else (expect,), **kw))


def write_bad(text: str | bytes) -> Callable[[dict], None]:
    def setup(ctx):
        (ctx["bad"].write_bytes if isinstance(text, bytes) else ctx["bad"].write_text)(text)
    return setup


def bad_from_cfg(edit: Callable[[str], str]) -> Callable[[dict], None]:
    return lambda ctx: ctx["bad"].write_text(edit(ctx["cfg"].read_text()))


def _bomb() -> str:
    lines = ['l0: &l0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    lines += [f"l{i}: &l{i} [" + ", ".join([f"*l{i - 1}"] * 9) + "]" for i in range(1, 9)]
    return "\n".join(lines) + "\nmodel: {joint_dim: *l8}\n"


FLOW_BOMB = "[&a [x, x, x, x, x, x, x, x, x], " + ", ".join(
    f"&{c} [" + ", ".join([f"*{p}"] * 9) + "]" for p, c in zip("abcdefgh", "bcdefghi")) + "]"
TRAIN = ("train", "{cfg}")
FRESH = ("--run-dir", "{fresh}")
BADCFG = ("train", "{bad}", "--run-dir", "{fresh}")

# --- config files ----------------------------------------------------------------------------------------------
case("alias_bomb_file", *BADCFG, setup=write_bad(_bomb()), expect=("bad.yaml", "alias bomb"))
case("recursive_alias_file", *BADCFG, setup=write_bad("model: &m\n  modalities: *m\n"),
     expect=("bad.yaml", "line 2", "recursive"))
case("duplicate_model_section", *BADCFG, setup=bad_from_cfg(lambda t: t + "model:\n  joint_dim: 3\n"),
     expect=("bad.yaml", "duplicate key 'model'", "first at line"))
case("duplicate_nested_key", *BADCFG, setup=bad_from_cfg(lambda t: t.replace("  lr: 0.002\n", "  lr: 0.002\n  lr: 0.1\n")),
     expect=("duplicate key 'lr'",))
case("binary_garbage", *BADCFG, setup=write_bad(bytes(range(128, 256)) * 8), expect=("bad.yaml", "not UTF-8 text"))
case("nul_characters", *BADCFG, setup=write_bad("model:\x00\x01\x02 {}\n"), expect=("bad.yaml", "not valid YAML"))
case("unclosed_bracket", *BADCFG, setup=write_bad("model: {joint_dim: [1, 2\n"), expect=("bad.yaml", "not valid YAML", "line"))
case("top_level_list", *BADCFG, setup=write_bad("- 1\n- 2\n"), expect=("bad.yaml", "mapping at the top level"))
case("deep_nesting", *BADCFG, setup=write_bad("model: " + "[" * 3000 + "]" * 3000 + "\n"),
     expect=("bad.yaml", "nested more than 64 levels"))
case("config_is_a_folder", "train", "{outside}", *FRESH, setup=lambda ctx: ctx["outside"].mkdir(),
     expect=("outside", "is not a regular file"))
case("config_missing", "train", "{bad}", *FRESH, expect=("bad.yaml", "does not exist"))
case("huge_string_value", *BADCFG, setup=bad_from_cfg(lambda t: t.replace("joint_dim: 4", "joint_dim: " + "x" * 100_000)),
     expect=("key 'model.joint_dim'", "valid integer"))
case("empty_config", *BADCFG, setup=write_bad(""), expect=("key 'model'", "Field required"))
case("integer_of_5000_digits", *BADCFG, setup=bad_from_cfg(lambda t: t.replace("seed: 3", "seed: " + "9" * 5000)),
     expect=("bad.yaml", "a value cannot be read"))

# --- overrides: values the config refuses --------------------------------------------------------------------------
for cid, override, frags in [
    ("override_alias_bomb", "model.joint_dim=" + FLOW_BOMB, ("alias bomb",)),
    ("override_recursive_alias", "model.joint_dim=&a [*a]", ("recursive",)),
    ("hidden_zero", "model.modalities.bars.hidden=[0]", ("key 'model.modalities.bars.hidden.0'", "greater than or equal to 1")),
    ("hidden_negative", "model.modalities.wave.hidden=[-3]", ("key 'model.modalities.wave.hidden.0'", "greater than or equal to 1")),
    ("shape_negative", "model.modalities.wave.shape=[-1]", ("key 'model.modalities.wave.shape.0'", "greater than or equal to 1")),
    ("shape_zero", "model.modalities.bars.shape=[1, 0, 16]", ("key 'model.modalities.bars.shape.1'",)),
    ("shape_empty", "model.modalities.wave.shape=[]", ("key 'model.modalities.wave.shape'", "at least 1")),
    ("fusion_hidden_zero", "model.fusion_hidden=[0]", ("key 'model.fusion_hidden.0'",)),
    ("label_hidden_negative", "model.label_hidden=[-1]", ("key 'model.label_hidden.0'",)),
    ("joint_dim_zero", "model.joint_dim=0", ("key 'model.joint_dim'",)),
    ("private_dim_negative", "model.modalities.bars.private_dim=-1", ("key 'model.modalities.bars.private_dim'",)),
    ("num_classes_negative", "model.num_classes=-1", ("key 'model.num_classes'",)),
    ("fusion_unknown", "model.fusion=average", ("key 'model.fusion'",)),
    ("batch_size_zero", "train.batch_size=0", ("key 'train.batch_size'",)),
    ("epochs_zero", "train.epochs=0", ("key 'train.epochs'",)),
    ("lr_zero", "train.lr=0", ("key 'train.lr'",)),
    ("lr_negative", "train.lr=-1", ("key 'train.lr'",)),
    ("lr_infinite", "train.lr=.inf", ("key 'train.lr'", "finite")),
    ("lr_nan", "train.lr=.nan", ("key 'train.lr'",)),
    ("betas_out_of_range", "train.betas=[1.5, 0.9]", ("key 'train.betas.0'",)),
    ("seed_huge", "seed=1000000000000000000000000000000", ("key 'seed'",)),
    ("keep_checkpoints_zero", "train.keep_checkpoints=0", ("key 'train.keep_checkpoints'",)),
    ("likelihood_scale_zero", "model.modalities.bars.likelihood_scale=0", ("key 'model.modalities.bars.likelihood_scale'",)),
    ("missing_prob_one", "data.missing_prob=1", ("key 'data.missing_prob'",)),
    ("dist_timeout_tiny", "train.dist_timeout_s=1", ("key 'train.dist_timeout_s'",)),
    ("unknown_key", "train.epochz=3", ("unknown key 'train.epochz'",)),
    ("wrong_type", "train.epochs=many", ("key 'train.epochs'", "got 'many'")),
    ("mnist_svhn_without_path", "data.name=mnist_svhn", ("data.path must name a prepared MNIST-SVHN folder",)),
    ("override_without_equals", "train.lr", ("override 'train.lr'", "not of the form key=value")),
    ("override_empty_key_part", "train..lr=1", ("override 'train..lr=1'", "empty key part")),
    ("override_through_a_value", "train.lr.x=1", ("'train.lr' is a value, not a section",)),
    ("override_invalid_yaml", "train.lr=[1", ("override 'train.lr=[1'", "not valid YAML")),
    ("override_duplicate_key", "train={lr: 1, lr: 2}", ("duplicate key 'lr'",)),
    # valid for the schema, impossible for the model or the data: refused by mmvae.preflight
    ("image_shape_not_chw", "model.modalities.bars.shape=[16, 16]", ("modality 'bars'", "shape must be [C, H, W]")),
    ("unknown_modality_kind", "model.modalities.bars.kind=foo", ("modality 'bars'", "unknown kind 'foo'")),
    ("unsupported_likelihood", "model.modalities.wave.likelihood=bernoulli", ("modality 'wave'", "not supported")),
    ("unknown_modality_option", "model.modalities.bars.options={x: 1}", ("modality 'bars'", "unknown option")),
    ("conv_shape_not_divisible", "model.modalities.bars.kind=image_conv", ("modality 'bars'",), ),
    ("absurd_width", "model.modalities.bars.hidden=[1000000, 1000000]", ("parameters, more than the limit", "model.modalities.bars")),
    ("absurd_joint_features", "model.joint_feature_dim=1000000000", ("parameters, more than the limit",)),
    ("modality_the_data_lacks", "model.modalities.foo={kind: vector, shape: [4]}", ("key 'model.modalities'", "['foo'] not provided")),
    ("batch_larger_than_data", "train.batch_size=1000", ("key 'train.batch_size'", "more than the 512 training samples")),
    ("grad_accum_larger_than_epoch", "train.grad_accum_steps=9", ("key 'train.grad_accum_steps'", "only 8 batches")),
]:
    extra = ("model.modalities.bars.options={channels: [4, 4, 4, 4, 4]}",) if cid == "conv_shape_not_divisible" else ()
    case(cid, *TRAIN, override, *extra, *FRESH, expect=frags)
case("compile_with_dreg_hooks", *TRAIN, "model.family=mmvae", "model.fusion=moe", "model.num_classes=0",
     "model.joint_subset_drop=0", "model.modalities.bars.private_dim=0", "model.modalities.wave.private_dim=0",
     "train.compile=true", *FRESH, expect=("key 'train.compile'", "dreg estimator"))
case("device_cuda_without_gpu", *TRAIN, "train.device=cuda", *FRESH, only_if=NO_GPU,
     expect=("key 'train.device'", "no CUDA device"))

# --- arguments ---------------------------------------------------------------------------------------------------
case("stop_at_step_zero", *TRAIN, *FRESH, "--stop-at-step", "0", expect=("--stop-at-step", "must be >= 1, got 0"))
case("stop_at_step_negative", *TRAIN, *FRESH, "--stop-at-step", "-1", expect=("--stop-at-step", "must be >= 1, got -1"))
case("stop_at_step_not_a_number", *TRAIN, *FRESH, "--stop-at-step", "abc", expect=("--stop-at-step", "integer"))
case("on_corrupt_unknown", *TRAIN, *FRESH, "--on-corrupt", "ignore", expect=("--on-corrupt", "invalid choice"))
case("resume_a_folder_that_does_not_exist", *TRAIN, *FRESH, "--resume", expect=("fresh", "does not exist", "nothing to resume"))
case("run_dir_is_a_file", *TRAIN, "--run-dir", "{file}", setup=lambda ctx: ctx["file"].write_text("notes"),
     expect=("notes.txt", "exists and is not a folder"))
case("train_without_config", "train", expect=("needs CONFIG",))
case("unknown_command", "trian", expect=("invalid choice",))
case("existing_run_without_resume", *TRAIN, "--run-dir", "{run}", needs_run=True, expect=("already holds checkpoints", "--resume"))
case("sample_num_zero", "sample", "{run}", "--num", "0", needs_run=True, expect=("--num", "must be >= 1, got 0"))
case("sample_nrow_zero", "sample", "{run}", "--nrow", "0", needs_run=True, expect=("--nrow", "must be >= 1, got 0"))
case("sample_num_negative", "sample", "{run}", "--num", "-3", needs_run=True, expect=("--num", "must be >= 1"))
case("evaluate_limit_zero", "evaluate", "{run}", "--limit", "0", needs_run=True, expect=("--limit", "must be >= 1, got 0"))
case("evaluate_limit_negative", "evaluate", "{run}", "--limit", "-5", needs_run=True, expect=("--limit", "must be >= 1, got -5"))
case("evaluate_iwae_samples_negative", "evaluate", "{run}", "--iwae-samples", "-1", needs_run=True,
     expect=("--iwae-samples", "must be >= 0"))
case("evaluate_iwae_limit_zero", "evaluate", "{run}", "--iwae-limit", "0", needs_run=True, expect=("--iwae-limit", ">= 1"))
case("evaluate_generative_limit_zero", "evaluate", "{run}", "--generative-limit", "0", needs_run=True,
     expect=("--generative-limit", ">= 1"))
case("evaluate_device_cuda_without_gpu", "evaluate", "{run}", "--device", "cuda", needs_run=True, only_if=NO_GPU,
     expect=("--device", "no CUDA device"))
case("evaluate_device_bogus", "evaluate", "{run}", "--device", "tpu9", needs_run=True, expect=("--device", "'tpu9'"))
case("evaluate_on_corrupt_unknown", "evaluate", "{run}", "--on-corrupt", "maybe", needs_run=True, expect=("--on-corrupt",))
case("evaluate_a_folder_that_is_not_a_run", "evaluate", "{outside}", setup=lambda ctx: ctx["outside"].mkdir(),
     expect=("outside", "is not a run folder", "config.yaml is missing"))
case("swap_n_zero", "swap", "{run}", "--n", "0", needs_run=True, expect=("--n", "must be >= 1, got 0"))
case("attribute_samples_zero", "attribute", "{run}", "--samples", "0", needs_run=True, expect=("--samples", "must be >= 1"))


# --- checkpoint states --------------------------------------------------------------------------------------------
def _corrupt(step: int):
    def setup(ctx):
        path = step_folder(ctx["run"], step) / "model.safetensors"
        data = bytearray(path.read_bytes())
        data[-9] ^= 0xFF
        path.write_bytes(bytes(data))
    return setup


def _both(*fns):
    def setup(ctx):
        for fn in fns:
            fn(ctx)
    return setup


def _state(change):
    return lambda ctx: rewrite_state(only_newest(ctx["run"]), change)


def _tensors(group, change):
    return lambda ctx: rewrite_group(only_newest(ctx["run"]), group, change)


def _symlink_out(name):
    def setup(ctx):
        ctx["outside"].mkdir()
        src = ctx["run"] / name if "/" not in name else ctx["run"] / "checkpoints" / name.split("/")[1]
        shutil.move(src, ctx["outside"] / src.name)
        src.symlink_to(ctx["outside"] / src.name)
    return setup


RESUME = ("train", "{cfg}", "--run-dir", "{run}", "--resume")
S16 = "step_00000016"
case("evaluate_all_checkpoints_corrupt", "evaluate", "{run}", needs_run=True, setup=_both(_corrupt(8), _corrupt(16)),
     expect=(f"{S16}/model.safetensors", "sha256 mismatch"))
case("sample_all_checkpoints_corrupt", "sample", "{run}", needs_run=True, setup=_both(_corrupt(8), _corrupt(16)),
     expect=(f"{S16}/model.safetensors", "sha256 mismatch"))
case("evaluate_newest_corrupt_on_corrupt_error", "evaluate", "{run}", "--on-corrupt", "error", needs_run=True,
     setup=_corrupt(16), expect=(f"{S16}/model.safetensors", "sha256 mismatch", "--on-corrupt=error"))
case("resume_newest_corrupt_on_corrupt_error", *RESUME, "--on-corrupt", "error", needs_run=True, setup=_corrupt(16),
     expect=(f"{S16}/model.safetensors", "sha256 mismatch", "--on-corrupt=error"))
case("resume_step_as_string", *RESUME, needs_run=True, setup=_state(lambda s: s["position"].update(step="16")),
     expect=(f"{S16}/state.json", "key 'position.step'", "valid integer"))
case("resume_missing_world_size", *RESUME, needs_run=True, setup=_state(lambda s: s.pop("world_size")),
     expect=(f"{S16}/state.json", "missing key 'world_size'"))
case("resume_extra_state_key", *RESUME, needs_run=True, setup=_state(lambda s: s.update(extra=1)),
     expect=(f"{S16}/state.json", "unexpected key 'extra'"))
case("resume_empty_rng_list", *RESUME, needs_run=True, setup=_state(lambda s: s.update(rng=[])),
     expect=(f"{S16}/state.json", "key 'rng'", "at least 1"))
case("resume_negative_step", *RESUME, needs_run=True, setup=_state(lambda s: s["position"].update(step=-16)),
     expect=(f"{S16}/state.json", "key 'position.step'", "greater than or equal to 0"))
case("resume_two_ranks_of_rng", *RESUME, needs_run=True, setup=_state(lambda s: s.update(world_size=2)),
     expect=(f"{S16}/state.json", "rng holds 1 state(s) for world_size 2"))
case("resume_step_past_the_end", *RESUME, needs_run=True,
     setup=lambda ctx: renumber(ctx["run"], only_newest(ctx["run"]), step=400, epoch=50),
     expect=("step_00000400/state.json", "past the end of training"))
case("resume_optimizer_missing_key", *RESUME, needs_run=True, setup=_tensors("optimizer", lambda t: t.pop("5.exp_avg")),
     expect=(f"{S16}/optimizer.safetensors", "parameter 5", "missing ['exp_avg']"))
case("resume_optimizer_wrong_dtype", *RESUME, needs_run=True,
     setup=_tensors("optimizer", lambda t: t.update({"5.exp_avg": t["5.exp_avg"].half()})),
     expect=(f"{S16}/optimizer.safetensors", "torch.float16"))
case("resume_optimizer_wrong_shape_used_to_segfault", "train", "{cfg}", "train.epochs=3", "--run-dir", "{run}", "--resume",
     needs_run=True, subprocess=True,
     setup=_tensors("optimizer", lambda t: t.update({"4.exp_avg": torch.zeros(1), "4.exp_avg_sq": torch.zeros(1)})),
     expect=(f"{S16}/optimizer.safetensors", "tensor '4.exp_avg' has shape (1,)"))
case("evaluate_model_tensor_missing", "evaluate", "{run}", needs_run=True,
     setup=_tensors("model", lambda t: t.pop("heads.label.net.0.weight")),
     expect=(f"{S16}/model.safetensors", "missing keys ['heads.label.net.0.weight']"))
case("resume_latest_is_a_folder", *RESUME, needs_run=True,
     setup=lambda ctx: ((ctx["run"] / "checkpoints/latest").unlink(), (ctx["run"] / "checkpoints/latest").mkdir()),
     expect=("checkpoints/latest", "is a folder, not the pointer file"))
case("resume_checkpoints_symlinked_outside", *RESUME, needs_run=True, setup=_symlink_out("checkpoints"),
     expect=("run/checkpoints is a symlink", "outside the run folder"))
case("resume_config_symlinked_outside", *RESUME, needs_run=True, setup=_symlink_out("config.yaml"),
     expect=("run/config.yaml is a symlink", "outside the run folder"))
case("resume_step_folder_symlinked_outside", *RESUME, needs_run=True, setup=_symlink_out(f"checkpoints/{S16}"),
     expect=(f"{S16} is a symlink", "outside the run folder"))
case("resume_while_another_writer_holds_the_lock", *RESUME, needs_run=True, hold_lock=True,
     expect=("is being written by another training", f"pid {os.getpid()}"))
case("train_into_a_locked_folder_without_resume", "train", "{cfg}", "--run-dir", "{run}", needs_run=True, hold_lock=True,
     expect=("is being written by another training",))
case("evaluate_run_config_is_garbage", "evaluate", "{run}", needs_run=True,
     setup=lambda ctx: (ctx["run"] / "config.yaml").write_bytes(b"\xff\xfe\x00garbage"),
     expect=("run/config.yaml", "not UTF-8 text"))
case("evaluate_only_manifest_garbage", "evaluate", "{run}", needs_run=True,
     setup=lambda ctx: (only_newest(ctx["run"]) / "manifest.json").write_bytes(b"{not json"),
     expect=(f"{S16}/manifest.json", "unreadable manifest"))
case("evaluate_no_checkpoints_folder", "evaluate", "{run}", needs_run=True,
     setup=lambda ctx: shutil.rmtree(ctx["run"] / "checkpoints"), expect=("checkpoints", "no checkpoint to load"))
case("resume_with_a_different_model", "train", "{cfg}", "model.joint_dim=6", "--run-dir", "{run}", "--resume", needs_run=True,
     expect=("different config", "model.joint_dim"))
case("evaluate_pointer_garbage_and_truncated", "evaluate", "{run}", needs_run=True,
     setup=lambda ctx: (only_newest(ctx["run"]), (ctx["run"] / "checkpoints/latest").write_text("../../etc"),
                        (step_folder(ctx["run"], 16) / "state.json").write_text("{}")),
     expect=(f"{S16}/state.json", "size mismatch"))


# --- the runner ---------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return make_base_run(tmp_path_factory.mktemp("catalogue"))


def _last_line(text: str) -> str:
    lines = [line for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else ""


def test_the_catalogue_has_at_least_60_entries():
    assert len({c.id for c in CASES}) == len(CASES) >= 60


@pytest.mark.parametrize("c", CASES, ids=[c.id for c in CASES])
def test_bad_input_exits_2_with_one_clear_line_and_writes_nothing(c, base, tmp_path, capsys):
    if not c.only_if:
        pytest.skip("not applicable on this machine")
    cfg, base_run = base
    ctx = {"cfg": cfg, "bad": tmp_path / "bad.yaml", "fresh": tmp_path / "fresh", "file": tmp_path / "notes.txt",
           "outside": tmp_path / "outside", "run": tmp_path / "run"}
    if c.needs_run:
        copy_run(base_run, ctx["run"])
    if c.setup:
        c.setup(ctx)
    argv = list(c.argv)
    for key, value in ctx.items():
        argv = [a.replace("{" + key + "}", str(value)) for a in argv]
    lock = RunLock(ctx["run"]) if c.hold_lock else None
    if lock:
        lock.acquire()
    watched = {k: snapshot(ctx[k]) for k in ("run", "outside", "file")}
    try:
        if c.subprocess:
            env = {**os.environ, "WANDB_MODE": "disabled", "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
            proc = subprocess.run([sys.executable, "-m", "mmvae.cli", *argv], capture_output=True, text=True, env=env,
                                  cwd=REPO, timeout=300)
            code, err = proc.returncode, proc.stderr
        else:
            try:
                code = main(argv)
            except SystemExit as exc:  # argparse
                code = exc.code
            err = capsys.readouterr().err
    finally:
        if lock:
            lock.release()
    assert code == 2, f"exit {code}:\n{err[-3000:]}"
    assert "Traceback" not in err, err[-3000:]
    last = _last_line(err)
    for fragment in c.expect:
        assert fragment in last, f"{fragment!r} not in the last line {last!r}"
    assert len(last) < 600, last[:600]
    assert not ctx["fresh"].exists(), "a run folder was created"
    if lock:
        watched["run"] = {k: v for k, v in watched["run"].items() if k != ".lock"}
    after = {k: snapshot(ctx[k]) for k in watched}
    if lock:
        after["run"] = {k: v for k, v in (after["run"] or {}).items() if k != ".lock"}
    assert after == watched, "files were written, changed or removed"


@pytest.mark.parametrize("path", sorted((REPO / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_config_passes_the_preflight(path):
    from mmvae.config import load_config
    from mmvae.preflight import check_train, count_parameters

    cfg = load_config(path, ["train.device=auto"])
    check_train(cfg, None, resume=False)
    if cfg.data.name == "toy":
        from mmvae.model import FactorizedMultimodalVAE

        real = sum(p.numel() for p in FactorizedMultimodalVAE(cfg.model).parameters())
        assert count_parameters(cfg)[0] == real  # the meta-device count is the real one
