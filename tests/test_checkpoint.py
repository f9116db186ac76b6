"""Tests for mmvae.checkpoint: round trip, crash at every file event, corruption, malicious pickles, RNG."""

from __future__ import annotations

import json
import logging
import pickle
import random
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest
import torch

from mmvae import checkpoint as ck
from mmvae.checkpoint import (
    CheckpointError,
    check_state_dict_compatible,
    find_latest_checkpoint,
    load_checkpoint,
    load_latest,
    restore_rng_state,
    rng_state_to_json,
    save_checkpoint,
)

# ----------------------------------------------------------------------------------------------- helpers


def make_tensors(seed: int) -> dict[str, dict[str, torch.Tensor]]:
    """Small model + optimizer groups with several dtypes and a tied (shared-storage) weight."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(4, 3, generator=g)
    model = {
        "enc.weight": w,
        "dec.weight": w,  # tied: same storage
        "enc.bias": torch.randn(4, generator=g).to(torch.bfloat16),
        "view.t": torch.randn(3, 5, generator=g).t(),  # non-contiguous
        "steps": torch.tensor([seed], dtype=torch.int64),
    }
    optimizer = {"state.0.exp_avg": torch.randn(4, 3, generator=g), "state.0.step": torch.tensor(float(seed))}
    return {"model": model, "optimizer": optimizer}


def make_state(step: int) -> dict[str, Any]:
    """A JSON-able training state."""
    return {"step": step, "epoch": step // 10, "config": {"lr": 1e-3, "name": "mvae"}, "sched": [1, 2.5, None]}


def assert_tensors_equal(a: dict[str, dict[str, torch.Tensor]], b: dict[str, dict[str, torch.Tensor]]) -> None:
    """Groups, keys, dtypes, shapes and bytes all equal."""
    assert a.keys() == b.keys()
    for group in a:
        assert a[group].keys() == b[group].keys(), group
        for k in a[group]:
            x, y = a[group][k], b[group][k]
            assert x.dtype == y.dtype and x.shape == y.shape, (group, k)
            assert torch.equal(x.reshape(-1).view(torch.uint8), y.reshape(-1).view(torch.uint8)), (group, k)


def leftovers(run_dir: Path) -> list[str]:
    """Names of temporary / half-replaced entries under checkpoints/."""
    d = run_dir / "checkpoints"
    return sorted(p.name for p in d.iterdir() if ".tmp-" in p.name or ".old-" in p.name) if d.is_dir() else []


def step_dirs(run_dir: Path) -> list[str]:
    """Names of step folders under checkpoints/."""
    return sorted(p.name for p in (run_dir / "checkpoints").iterdir() if p.name.startswith("step_") and p.is_dir()
                  and "." not in p.name)


def rewrite_manifest_entry(folder: Path, name: str) -> None:
    """Make the manifest match a tampered file (an attacker who also rewrites the manifest)."""
    mpath = folder / "manifest.json"
    manifest = json.loads(mpath.read_text())
    manifest["files"][name] = {"size": (folder / name).stat().st_size, "sha256": ck._sha256(folder / name)}
    mpath.write_text(json.dumps(manifest))


class _Payload:
    """Pickle payload that creates a marker file when unpickled."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self) -> tuple[Callable[..., Any], tuple[str, str]]:
        return (open, (self.marker, "w"))


@pytest.fixture
def no_pickle(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail loudly if anything calls pickle/torch.load while loading."""

    def forbidden(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("pickle/torch.load must never be called by checkpoint loading")

    for target, name in [(pickle, "load"), (pickle, "loads"), (torch, "load")]:
        monkeypatch.setattr(target, name, forbidden)


# ----------------------------------------------------------------------------------------------- round trip


def test_round_trip_exact(tmp_path: Path) -> None:
    tensors, state = make_tensors(1), make_state(7)
    path = save_checkpoint(tmp_path, 7, tensors, state)
    assert path == tmp_path / "checkpoints" / "step_00000007"
    assert (tmp_path / "checkpoints" / "latest").read_text().strip() == "step_00000007"
    assert sorted(p.name for p in path.iterdir()) == [
        "manifest.json", "model.safetensors", "optimizer.safetensors", "state.json"]
    loaded = load_checkpoint(path)
    assert loaded.step == 7 and loaded.path == path
    assert loaded.state == state
    assert_tensors_equal(loaded.tensors, tensors)
    assert not loaded.tensors["model"]["view.t"].storage_offset()
    latest = load_latest(tmp_path)
    assert latest is not None and latest.path == path
    assert leftovers(tmp_path) == []


def test_empty_run_dir_returns_none(tmp_path: Path) -> None:
    assert find_latest_checkpoint(tmp_path) is None
    assert load_latest(tmp_path) is None


def test_keep_last_prunes_and_latest_moves(tmp_path: Path) -> None:
    for step in (10, 20, 30, 40, 50):
        save_checkpoint(tmp_path, step, make_tensors(step), make_state(step), keep_last=2)
        assert (tmp_path / "checkpoints" / "latest").read_text().strip() == f"step_{step:08d}"
    assert step_dirs(tmp_path) == ["step_00000040", "step_00000050"]
    assert find_latest_checkpoint(tmp_path) == tmp_path / "checkpoints" / "step_00000050"
    assert_tensors_equal(load_checkpoint(tmp_path / "checkpoints" / "step_00000040").tensors, make_tensors(40))
    assert leftovers(tmp_path) == []


def test_resave_same_step_replaces(tmp_path: Path) -> None:
    save_checkpoint(tmp_path, 5, make_tensors(1), make_state(5))
    save_checkpoint(tmp_path, 5, make_tensors(2), make_state(5))
    assert step_dirs(tmp_path) == ["step_00000005"]
    assert_tensors_equal(load_latest(tmp_path).tensors, make_tensors(2))
    assert leftovers(tmp_path) == []


def test_pruning_keeps_just_saved_older_step(tmp_path: Path) -> None:
    save_checkpoint(tmp_path, 20, make_tensors(20), make_state(20), keep_last=1)
    path = save_checkpoint(tmp_path, 10, make_tensors(10), make_state(10), keep_last=1)  # rollback re-save
    assert path.is_dir() and find_latest_checkpoint(tmp_path) == path


@pytest.mark.parametrize(
    ("state", "fragment"),
    [({"x": float("nan")}, "non-finite"), ({1: 2}, "keys must be str"), ({"t": torch.zeros(1)}, "not JSON-able")],
)
def test_state_must_be_strict_json(tmp_path: Path, state: dict, fragment: str) -> None:
    with pytest.raises(CheckpointError, match=fragment):
        save_checkpoint(tmp_path, 1, make_tensors(1), state)
    assert find_latest_checkpoint(tmp_path) is None


def test_bad_arguments_rejected(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="keep_last"):
        save_checkpoint(tmp_path, 1, make_tensors(1), {}, keep_last=0)
    with pytest.raises(CheckpointError, match="step"):
        save_checkpoint(tmp_path, -1, make_tensors(1), {})
    with pytest.raises(CheckpointError, match="group name"):
        save_checkpoint(tmp_path, 1, {"../evil": {}}, {})
    with pytest.raises(CheckpointError, match="not a Tensor"):
        save_checkpoint(tmp_path, 1, {"model": {"w": [1.0]}}, {})


# ----------------------------------------------------------------------------------------------- crash at every event

_EVENTS = ("save_file", "_write_file", "_fsync_path", "_fsync_dir", "_rename", "_replace", "_remove_tree")


class Crash(Exception):
    """Injected failure standing in for a process death."""


class Injector:
    """Fail at the k-th file event; afterwards every event fails too (the process is 'dead')."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, crash_at: int) -> None:
        self.count, self.crash_at, self.dead, self.log = 0, crash_at, False, []
        for name in _EVENTS:
            monkeypatch.setattr(ck, name, self._wrap(name, getattr(ck, name)))

    def _wrap(self, name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        def wrapped(*args: Any, **kwargs: Any) -> Any:
            if self.dead:
                raise Crash(f"dead: {name}")
            self.count += 1
            self.log.append(name)
            if self.count == self.crash_at:
                self.dead = True
                raise Crash(f"crash at event {self.count}: {name}")
            return fn(*args, **kwargs)

        return wrapped


def _crash_sweep(tmp_path: Path, setup: Callable[[Path], None], save: Callable[[Path], None],
                 check: Callable[[Path], None]) -> int:
    """Run ``save`` crashing at event k = 1, 2, ... until it completes; run ``check`` after each; return k."""
    k = 0
    while True:
        k += 1
        run_dir = tmp_path / f"k{k:03d}"
        setup(run_dir)
        with pytest.MonkeyPatch.context() as mp:
            inj = Injector(mp, crash_at=k)
            try:
                save(run_dir)
                completed = True
            except Crash:
                completed = False
        check(run_dir)
        assert leftovers(run_dir) == [], (k, inj.log)
        if completed:
            assert inj.count < k
            return k
        assert k < 200, "save never completes"


def test_crash_at_every_file_event_new_step(tmp_path: Path) -> None:
    def setup(run_dir: Path) -> None:
        save_checkpoint(run_dir, 1, make_tensors(1), make_state(1), keep_last=2)
        save_checkpoint(run_dir, 2, make_tensors(2), make_state(2), keep_last=2)

    def save(run_dir: Path) -> None:
        save_checkpoint(run_dir, 3, make_tensors(3), make_state(3), keep_last=2)

    def check(run_dir: Path) -> None:
        found = find_latest_checkpoint(run_dir)
        assert found is not None and found.name in ("step_00000002", "step_00000003")
        got = load_latest(run_dir)
        step = got.step
        assert_tensors_equal(got.tensors, make_tensors(step))
        assert got.state == make_state(step)
        # the previous checkpoint is always intact; no half-written folder ever carries a final step name
        assert_tensors_equal(load_checkpoint(run_dir / "checkpoints" / "step_00000002").tensors, make_tensors(2))
        for name in step_dirs(run_dir):
            loaded = load_checkpoint(run_dir / "checkpoints" / name)
            assert_tensors_equal(loaded.tensors, make_tensors(loaded.step))

    total = _crash_sweep(tmp_path, setup, save, check)
    assert total > 12  # every write, fsync, rename, replace and delete was exercised


def test_crash_at_every_file_event_resave_same_step(tmp_path: Path) -> None:
    """Re-saving an existing step with keep_last=1: the old or the new version survives, never neither."""

    def setup(run_dir: Path) -> None:
        save_checkpoint(run_dir, 1, make_tensors(1), make_state(1), keep_last=1)
        save_checkpoint(run_dir, 2, make_tensors(2), make_state(2), keep_last=1)

    def save(run_dir: Path) -> None:
        save_checkpoint(run_dir, 2, make_tensors(99), make_state(2), keep_last=1)

    def check(run_dir: Path) -> None:
        got = load_latest(run_dir)
        assert got is not None and got.step == 2
        seeds = [s for s in (2, 99) if _equal(got.tensors, make_tensors(s))]
        assert len(seeds) == 1
        assert step_dirs(run_dir) == ["step_00000002"]

    _crash_sweep(tmp_path, setup, save, check)


def _equal(a: dict[str, dict[str, torch.Tensor]], b: dict[str, dict[str, torch.Tensor]]) -> bool:
    try:
        assert_tensors_equal(a, b)
    except AssertionError:
        return False
    return True


def test_first_save_crash_leaves_nothing(tmp_path: Path) -> None:
    with pytest.MonkeyPatch.context() as mp:
        Injector(mp, crash_at=3)
        with pytest.raises(Crash):
            save_checkpoint(tmp_path, 1, make_tensors(1), make_state(1))
    assert find_latest_checkpoint(tmp_path) is None
    assert leftovers(tmp_path) == []


# ----------------------------------------------------------------------------------------------- corruption


def _two_checkpoints(run_dir: Path) -> tuple[Path, Path]:
    a = save_checkpoint(run_dir, 1, make_tensors(1), make_state(1))
    b = save_checkpoint(run_dir, 2, make_tensors(2), make_state(2))
    return a, b


def _truncate(folder: Path) -> str:
    p = folder / "model.safetensors"
    p.write_bytes(p.read_bytes()[:-7])
    return "model.safetensors"


def _flip(folder: Path) -> str:
    p = folder / "optimizer.safetensors"
    data = bytearray(p.read_bytes())
    data[-3] ^= 0x01
    p.write_bytes(bytes(data))
    return "optimizer.safetensors"


def _delete(folder: Path) -> str:
    (folder / "state.json").unlink()
    return "state.json"


def _garbage_manifest(folder: Path) -> str:
    (folder / "manifest.json").write_bytes(b"{not json\xff")
    return "manifest.json"


def _no_manifest(folder: Path) -> str:
    (folder / "manifest.json").unlink()
    return "manifest.json"


def _extra_file(folder: Path) -> str:
    (folder / "extra.safetensors").write_bytes(b"x")
    return "extra.safetensors"


def _bad_state_json(folder: Path) -> str:
    (folder / "state.json").write_bytes(b'{"step": NaN}')
    rewrite_manifest_entry(folder, "state.json")
    return "state.json"


def _traversal_manifest(folder: Path) -> str:
    mpath = folder / "manifest.json"
    manifest = json.loads(mpath.read_text())
    manifest["files"]["../../outside.safetensors"] = manifest["files"].pop("model.safetensors")
    mpath.write_text(json.dumps(manifest))
    return "manifest.json"


CORRUPTIONS = {
    "truncated": (_truncate, "size mismatch"),
    "flipped_byte": (_flip, "sha256 mismatch"),
    "deleted_file": (_delete, "missing"),
    "garbage_manifest": (_garbage_manifest, "unreadable manifest"),
    "missing_manifest": (_no_manifest, "missing manifest"),
    "extra_file": (_extra_file, "not listed in the manifest"),
    "bad_state_json": (_bad_state_json, "unreadable state JSON"),
    "path_traversal": (_traversal_manifest, "invalid file name"),
}


@pytest.mark.parametrize("kind", sorted(CORRUPTIONS))
def test_corrupted_checkpoint_raises_and_falls_back(
    tmp_path: Path, kind: str, caplog: pytest.LogCaptureFixture
) -> None:
    corrupt, fragment = CORRUPTIONS[kind]
    a, b = _two_checkpoints(tmp_path)
    name = corrupt(b)
    with pytest.raises(CheckpointError, match=fragment) as info:
        load_checkpoint(b)
    assert str(b) in str(info.value) and (name in str(info.value) or kind == "path_traversal")
    with caplog.at_level(logging.WARNING, logger="mmvae.checkpoint"):
        assert find_latest_checkpoint(tmp_path) == a
    assert "step_00000002" in caplog.text
    got = load_latest(tmp_path)
    assert got is not None and got.path == a
    assert_tensors_equal(got.tensors, make_tensors(1))


def test_pointer_to_missing_folder_falls_back(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    a, b = _two_checkpoints(tmp_path)
    (tmp_path / "checkpoints" / "latest").write_text("step_00000009\n")
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "checkpoints" / "step_00000009")
    with caplog.at_level(logging.WARNING, logger="mmvae.checkpoint"):
        assert find_latest_checkpoint(tmp_path) == b
    assert "step_00000009" in caplog.text


@pytest.mark.parametrize("content", ["../../etc\n", "", "\xff garbage"])
def test_malformed_pointer_falls_back(tmp_path: Path, content: str) -> None:
    _, b = _two_checkpoints(tmp_path)
    (tmp_path / "checkpoints" / "latest").write_bytes(content.encode("latin-1"))
    assert find_latest_checkpoint(tmp_path) == b


def test_all_corrupt_returns_none(tmp_path: Path) -> None:
    a, b = _two_checkpoints(tmp_path)
    _truncate(a)
    _flip(b)
    assert find_latest_checkpoint(tmp_path) is None
    assert load_latest(tmp_path) is None


def test_foreign_step_in_manifest(tmp_path: Path) -> None:
    a, _ = _two_checkpoints(tmp_path)
    moved = tmp_path / "checkpoints" / "step_00000005"
    a.rename(moved)
    with pytest.raises(CheckpointError, match="does not match folder name"):
        load_checkpoint(moved)


def test_tmp_leftovers_ignored_and_cleaned(tmp_path: Path) -> None:
    _, b = _two_checkpoints(tmp_path)
    d = tmp_path / "checkpoints"
    (d / "step_00000003.tmp-abc").mkdir()
    (d / "step_00000003.tmp-abc" / "model.safetensors").write_bytes(b"partial")
    (d / "latest.tmp-def").write_text("step_00000003")
    outside = tmp_path / "keep.tmp-123"
    outside.write_text("not ours")
    assert find_latest_checkpoint(tmp_path) == b
    assert leftovers(tmp_path) == [] and outside.exists()
    (d / "step_00000004.tmp-xyz").mkdir()
    assert find_latest_checkpoint(tmp_path, clean_leftovers=False) == b
    assert leftovers(tmp_path) == ["step_00000004.tmp-xyz"]


# ----------------------------------------------------------------------------------------------- NaN / shapes


def test_nan_in_model_rejected_on_save(tmp_path: Path) -> None:
    tensors = make_tensors(1)
    tensors["model"]["enc.weight"] = tensors["model"]["enc.weight"].clone()
    tensors["model"]["enc.weight"][0, 0] = float("nan")
    with pytest.raises(CheckpointError, match="model/enc.weight"):
        save_checkpoint(tmp_path, 1, tensors, {})
    assert find_latest_checkpoint(tmp_path) is None


def test_nan_in_model_rejected_on_load(tmp_path: Path) -> None:
    a, b = _two_checkpoints(tmp_path)
    bad = make_tensors(2)["model"]
    bad["enc.weight"] = torch.full((4, 3), float("inf"))
    bad["dec.weight"] = bad["dec.weight"].clone()
    bad["view.t"] = bad["view.t"].contiguous()
    (b / "model.safetensors").unlink()
    ck.save_file(bad, str(b / "model.safetensors"))
    rewrite_manifest_entry(b, "model.safetensors")
    with pytest.raises(CheckpointError, match=r"model\.safetensors.*model/enc\.weight.*non-finite"):
        load_checkpoint(b)
    got = load_latest(tmp_path)
    assert got is not None and got.path == a


def test_nan_allowed_outside_model_group(tmp_path: Path) -> None:
    tensors = make_tensors(1)
    tensors["optimizer"]["nan"] = torch.tensor([float("nan")])
    save_checkpoint(tmp_path, 1, tensors, {})
    assert torch.isnan(load_latest(tmp_path).tensors["optimizer"]["nan"]).all()


def test_check_state_dict_compatible(tmp_path: Path) -> None:
    expected = {"a": torch.zeros(2, 3), "b": torch.zeros(4), "c": torch.zeros(1)}
    check_state_dict_compatible(expected, {k: v.clone() for k, v in expected.items()}, tmp_path)
    loaded = {"a": torch.zeros(3, 2), "b": torch.zeros(4, dtype=torch.float64), "z": torch.zeros(1)}
    with pytest.raises(CheckpointError) as info:
        check_state_dict_compatible(expected, loaded, tmp_path / "model.safetensors")
    msg = str(info.value)
    assert "model.safetensors" in msg and "missing keys ['c']" in msg and "unexpected keys ['z']" in msg
    assert "'a'" in msg and "(2, 3)" in msg and "(3, 2)" in msg and "'b'" not in msg.split("first mismatch")[1]


# ----------------------------------------------------------------------------------------------- malicious pickles


def test_payload_positive_control(tmp_path: Path) -> None:
    """The payload really executes when unpickled, so the tests below are meaningful."""
    marker = tmp_path / "control_marker"
    pickle.loads(pickle.dumps(_Payload(marker)))
    assert marker.exists()


@pytest.mark.parametrize("target", ["model.safetensors", "optimizer.safetensors", "state.json", "manifest.json"])
@pytest.mark.parametrize("rewrite_manifest", [False, True])
@pytest.mark.parametrize("protocol", [2, pickle.HIGHEST_PROTOCOL])
def test_malicious_pickle_never_executes(
    tmp_path: Path, no_pickle: None, target: str, rewrite_manifest: bool, protocol: int
) -> None:
    run_dir = tmp_path / "run"
    a, b = _two_checkpoints(run_dir)
    marker = tmp_path / "pwned"
    payload = _Payload(marker)
    path = b / target
    path.unlink()
    path.write_bytes(pickle.dumps({"state_dict": payload}, protocol=protocol))
    if rewrite_manifest and target != "manifest.json":
        rewrite_manifest_entry(b, target)
    with pytest.raises(CheckpointError, match=target.replace(".", r"\.")):
        load_checkpoint(b)
    got = load_latest(run_dir)
    assert got is not None and got.path == a
    assert not marker.exists()


def test_malicious_torch_zip_checkpoint(tmp_path: Path) -> None:
    """A real torch.save (zip + pickle) file in place of model.safetensors, manifest updated: nothing runs."""
    a, b = _two_checkpoints(tmp_path / "run")
    marker = tmp_path / "pwned_zip"
    (b / "model.safetensors").unlink()
    torch.save({"w": _Payload(marker)}, b / "model.safetensors")
    rewrite_manifest_entry(b, "model.safetensors")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(torch, "load", lambda *a, **k: (_ for _ in ()).throw(AssertionError("torch.load called")))
        mp.setattr(pickle, "loads", lambda *a, **k: (_ for _ in ()).throw(AssertionError("pickle.loads called")))
        with pytest.raises(CheckpointError, match=r"model\.safetensors"):
            load_checkpoint(b)
        assert load_latest(tmp_path / "run").path == a
    assert not marker.exists()


# ----------------------------------------------------------------------------------------------- RNG


def _draw() -> tuple[list[float], list[float], list[float], list[float]]:
    cuda = torch.rand(4, device="cuda").tolist() if torch.cuda.is_available() else []
    return [random.random(), random.gauss(0, 1)], np.random.randn(3).tolist(), torch.randn(3).tolist(), cuda


def test_rng_round_trip_exact() -> None:
    random.seed(3)
    np.random.seed(4)
    torch.manual_seed(5)
    random.gauss(0, 1)  # leave a cached gauss value in python's state
    np.random.randn(1)  # numpy keeps a cached gaussian too
    _draw()
    saved = json.loads(json.dumps(rng_state_to_json(), allow_nan=False))  # must survive strict JSON
    first = _draw()
    _draw()
    restore_rng_state(saved)
    assert _draw() == first


def test_rng_state_in_checkpoint_round_trip(tmp_path: Path) -> None:
    torch.manual_seed(0)
    save_checkpoint(tmp_path, 1, make_tensors(1), {"rng": rng_state_to_json()})
    expected = _draw()
    restore_rng_state(load_latest(tmp_path).state["rng"])
    assert _draw() == expected


def test_rng_restore_rejects_garbage() -> None:
    with pytest.raises(CheckpointError):
        restore_rng_state({"python": {}, "numpy": {}, "torch_cpu": "x"})
    good = rng_state_to_json()
    good["torch_cpu"] = "!!notbase64!!"
    with pytest.raises(CheckpointError, match="torch_cpu"):
        restore_rng_state(good)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_tensors_and_rng(tmp_path: Path) -> None:
    tensors = {g: {k: v.cuda() for k, v in group.items()} for g, group in make_tensors(3).items()}
    torch.cuda.manual_seed_all(7)
    state = {"rng": rng_state_to_json()}
    assert len(state["rng"]["torch_cuda"]) == torch.cuda.device_count()
    expected = torch.rand(8, device="cuda").tolist()
    save_checkpoint(tmp_path, 1, tensors, state)
    got = load_latest(tmp_path)
    assert_tensors_equal(got.tensors, make_tensors(3))
    restore_rng_state(got.state["rng"])
    assert torch.rand(8, device="cuda").tolist() == expected
