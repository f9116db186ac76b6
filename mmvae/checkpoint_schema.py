"""What a training checkpoint must hold, checked before anything uses it.

`mmvae.checkpoint` proves that the files are the ones that were written (sizes, sha256, strict JSON,
safetensors). This module proves that what they hold makes sense for the model at hand, because a
checkpoint can have consistent checksums and wrong contents (a bug, a hand edit, a different version, a
manifest rewritten after tampering): before it, missing keys ended in KeyError tracebacks, a step given as
a string in a TypeError, an optimiser tensor of the wrong shape in a segfault of the fused AdamW kernel,
and a negative step or a step past the end of training was silently accepted.

Checked (every failure is one CheckpointError line naming the file and the problem):

- state.json against a strict schema (`TrainingState`): no missing or extra keys, exact types (a string
  is not an int), non-negative positions, one RNG state per rank (Python MT state of 625 words, NumPy
  MT19937 of 624 keys, a torch CPU state of the size this torch uses);
- position.step equals the step in the manifest and folder name; with `steps_per_epoch` (the trainer
  knows it) also epoch * steps_per_epoch + batch_in_epoch == step and step <= the checkpoint's own end;
- the tensor groups are exactly `model` and `optimizer`; the model group matches the model (when the
  checkpoint's own config describes this model, a mismatch is corruption; otherwise it is a different
  model, which the caller refuses naming the config difference);
- optimiser tensors `"{param_index}.{name}"`: indices within the model's parameters, the same state names
  for every parameter (AdamW: step, exp_avg, exp_avg_sq), moments of the parameter's shape and dtype,
  finite, exp_avg_sq >= 0, step a scalar in [0, position.step]; param groups equal in number, parameter
  lists and hyper-parameter keys to the live optimiser's, betas and weight decay equal to the checkpoint's own
  config, the optimiser's own settings (eps, flags) equal to the live ones, lr finite and >= 0.

`load_valid_checkpoint` applies this to every candidate of `checkpoint.load_newest`, so a checkpoint
that fails is handled like a corrupt one: skipped for an older one (`on_corrupt="fallback"`) or refused.
"""

from __future__ import annotations

import base64
import binascii
import math
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from mmvae.checkpoint import (
    MANIFEST_NAME,
    STATE_NAME,
    TENSOR_SUFFIX,
    Checkpoint,
    CheckpointError,
    check_state_dict_compatible,
    load_newest,
)
from mmvae.safe_yaml import short_repr

NonNegative = Annotated[int, Field(ge=0)]
Word = Annotated[int, Field(ge=0, lt=2**32)]
_OPT_KEY = re.compile(r"^(\d{1,9})\.([A-Za-z_][A-Za-z0-9_]*)$")
GROUPS = ("model", "optimizer")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)


class PositionState(_Strict):
    step: NonNegative
    epoch: NonNegative
    batch_in_epoch: NonNegative


class PythonRngState(_Strict):
    version: Literal[3]
    state: list[Word] = Field(min_length=625, max_length=625)
    gauss_next: float | None


class NumpyRngState(_Strict):
    kind: Literal["MT19937"]
    keys: list[Word] = Field(min_length=624, max_length=624)
    pos: Annotated[int, Field(ge=0, le=624)]
    has_gauss: Literal[0, 1]
    cached_gaussian: float


class RngState(_Strict):
    python: PythonRngState
    numpy: NumpyRngState
    torch_cpu: str
    torch_cuda: list[str]


class ParamGroupState(BaseModel):
    """Hyper-parameters differ between optimisers: they are compared with the live optimiser's groups."""

    model_config = ConfigDict(extra="allow", strict=True, allow_inf_nan=False)
    params: list[NonNegative]


class OptimizerState(_Strict):
    param_groups: list[ParamGroupState] = Field(min_length=1)
    scalars: dict[str, bool | int | float | None]


class LogWindowState(_Strict):
    """One rank's logged values since its last log line (sums of float32 values, exact in JSON)."""

    steps: Annotated[int, Field(ge=0)]
    names: list[str] | None
    sum: list[float] | None


class TrainingState(_Strict):
    """state.json as `Trainer.save` writes it (log_window and schedule_steps: absent in older checkpoints)."""

    position: PositionState
    config: dict[str, Any]
    optimizer: OptimizerState
    rng: list[RngState] = Field(min_length=1)
    world_size: Annotated[int, Field(ge=1)]
    log_window: list[LogWindowState] | None = None
    schedule_steps: Annotated[int, Field(ge=1)] | None = None


def _first_error(where: Path, err: ValidationError) -> str:
    errors = err.errors(include_url=False)
    e = errors[0]
    key = ".".join(str(p) for p in e["loc"]) or "<root>"
    more = f" (+{len(errors) - 1} more problem(s))" if len(errors) > 1 else ""
    if e["type"] == "extra_forbidden":
        return f"{where}: unexpected key '{key}'{more}"
    if e["type"] == "missing":
        return f"{where}: missing key '{key}'{more}"
    return f"{where}: key '{key}': {e['msg']} (got {short_repr(e.get('input'))}){more}"


def _check_b64(text: str, size: int | None, where: str) -> None:
    try:
        raw = base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, ValueError, UnicodeEncodeError):
        raise CheckpointError(f"{where} is not valid base64") from None
    if size is not None and len(raw) != size:
        raise CheckpointError(f"{where} holds {len(raw)} bytes, a torch RNG state here has {size}")


def _saved_total_steps(config: dict, steps_per_epoch: int) -> int | None:
    """The number of steps the checkpoint's own config trains for (as Trainer computes it), if readable."""
    train = config.get("train") if isinstance(config, dict) else None
    if not isinstance(train, dict):
        return None
    epochs, max_steps = train.get("epochs"), train.get("max_steps")
    if isinstance(epochs, bool) or not isinstance(epochs, int):
        return None
    if max_steps is not None and (isinstance(max_steps, bool) or not isinstance(max_steps, int)):
        return None
    return min(max_steps or 10**18, epochs * steps_per_epoch)


def _json_kind_matches(saved: Any, live: Any) -> bool:
    """Whether a saved hyper-parameter has the JSON kind of the live one (bool, number, None, str, list)."""
    if isinstance(live, bool) or live is None or isinstance(live, str):
        return type(saved) is type(live)
    if isinstance(live, (int, float)):
        return isinstance(saved, (int, float)) and not isinstance(saved, bool) and math.isfinite(saved)
    if isinstance(live, (list, tuple)):
        return isinstance(saved, (list, tuple)) and len(saved) == len(live) and all(
            _json_kind_matches(a, b) for a, b in zip(saved, live))
    return True


def _normalise(value: Any) -> Any:
    """JSON view of a hyper-parameter (tuples as lists, ints as floats) for comparisons."""
    if isinstance(value, (list, tuple)):
        return [_normalise(v) for v in value]
    if isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    return value


def _expected_state_names(optimizer: torch.optim.Optimizer | None) -> set[str] | None:
    if isinstance(optimizer, (torch.optim.Adam, torch.optim.AdamW)):
        names = {"step", "exp_avg", "exp_avg_sq"}
        if any(g.get("amsgrad") for g in optimizer.param_groups):
            names.add("max_exp_avg_sq")
        return names
    return None


def _same_batching(saved: dict, current: dict | None) -> bool:
    """Whether the saved config splits epochs into steps as `current` does (data, batch size, accumulation)."""
    if current is None:
        return False
    saved_train, current_train = saved.get("train"), current.get("train", {})
    return (saved.get("data") == current.get("data") and isinstance(saved_train, dict)
            and all(saved_train.get(k) == current_train.get(k) for k in ("batch_size", "grad_accum_steps")))


def validate_state(ckpt: Checkpoint, steps_per_epoch: int | None = None, config: dict | None = None,
                   world_size: int | None = None) -> TrainingState:
    """The state.json checks (schema, position, RNG); returns the parsed state.

    The position is checked against `steps_per_epoch` only when the checkpoint was made with the same data,
    batching and world size as `config`/`world_size` (otherwise the caller refuses it as a different run).
    """
    where = ckpt.path / STATE_NAME
    try:
        state = TrainingState.model_validate(ckpt.state)
    except ValidationError as err:
        raise CheckpointError(_first_error(where, err)) from None
    pos = state.position
    if pos.step != ckpt.step:
        raise CheckpointError(f"{where}: position.step is {pos.step} but the checkpoint is step {ckpt.step} "
                              f"(its manifest and folder name)")
    if len(state.rng) != state.world_size:
        raise CheckpointError(f"{where}: rng holds {len(state.rng)} state(s) for world_size {state.world_size}")
    if state.log_window is not None:
        if len(state.log_window) != state.world_size:
            raise CheckpointError(f"{where}: log_window holds {len(state.log_window)} window(s) for world_size "
                                  f"{state.world_size}")
        for r, w in enumerate(state.log_window):
            if (w.sum is None) != (w.steps == 0) or (w.sum is not None and (w.names is None or len(w.sum) != len(w.names))):
                raise CheckpointError(f"{where}: log_window[{r}] is inconsistent (steps {w.steps}, "
                                      f"{'no' if w.sum is None else len(w.sum)} sums, "
                                      f"{'no' if w.names is None else len(w.names)} names)")
    cpu_size = torch.get_rng_state().numel()
    for r, rng in enumerate(state.rng):
        if rng.python.state[-1] > 624:
            raise CheckpointError(f"{where}: rng[{r}].python.state ends with position {rng.python.state[-1]} (> 624)")
        _check_b64(rng.torch_cpu, cpu_size, f"{where}: rng[{r}].torch_cpu")
        for d, cuda in enumerate(rng.torch_cuda):
            _check_b64(cuda, None, f"{where}: rng[{r}].torch_cuda[{d}]")
    if steps_per_epoch and state.world_size == world_size and _same_batching(state.config, config):
        if pos.batch_in_epoch >= steps_per_epoch:
            raise CheckpointError(f"{where}: position.batch_in_epoch {pos.batch_in_epoch} is not below the "
                                  f"{steps_per_epoch} steps of an epoch")
        if pos.epoch * steps_per_epoch + pos.batch_in_epoch != pos.step:
            raise CheckpointError(f"{where}: position.step {pos.step} does not match epoch {pos.epoch} and "
                                  f"batch_in_epoch {pos.batch_in_epoch} at {steps_per_epoch} steps per epoch")
        total = _saved_total_steps(state.config, steps_per_epoch)
        if total is not None and pos.step > total:
            raise CheckpointError(f"{where}: position.step {pos.step} is past the end of training "
                                  f"({total} steps by the checkpoint's own config)")
    return state


def _check_param_groups(ckpt: Checkpoint, n_params: int, optimizer: torch.optim.Optimizer | None) -> None:
    where = ckpt.path / STATE_NAME
    saved_groups = ckpt.state["optimizer"]["param_groups"]
    if optimizer is None:
        listed = sorted(i for g in saved_groups for i in g["params"])
        if listed != list(range(n_params)):
            raise CheckpointError(f"{where}: optimizer.param_groups list parameters {short_repr(listed)}, "
                                  f"the model has {n_params}")
        return
    live_groups = optimizer.state_dict()["param_groups"]
    saved_train = ckpt.state["config"].get("train") if isinstance(ckpt.state["config"].get("train"), dict) else {}
    config_values = {k: saved_train[k] for k in ("betas", "weight_decay") if k in saved_train}
    if len(saved_groups) != len(live_groups):
        raise CheckpointError(f"{where}: optimizer.param_groups has {len(saved_groups)} group(s), the optimiser "
                              f"{len(live_groups)}")
    for g, (saved, live) in enumerate(zip(saved_groups, live_groups)):
        if list(saved["params"]) != list(live["params"]):
            raise CheckpointError(f"{where}: optimizer.param_groups[{g}].params is {short_repr(saved['params'])}, "
                                  f"the optimiser's is parameters 0..{len(live['params']) - 1}")
        missing, extra = sorted(set(live) - set(saved)), sorted(set(saved) - set(live))
        if missing:
            raise CheckpointError(f"{where}: optimizer.param_groups[{g}] lacks {missing}")
        if extra:
            raise CheckpointError(f"{where}: optimizer.param_groups[{g}] has unexpected {extra}")
        for key, value in live.items():
            if key != "params" and not _json_kind_matches(saved[key], value):
                raise CheckpointError(f"{where}: optimizer.param_groups[{g}].{key} is {short_repr(saved[key])}, "
                                      f"expected a value like {short_repr(value)}")
        for key, value in live.items():  # hyper-parameters from the config must match the saved config
            want = config_values.get(key, value)  # the rest are the optimiser's own settings (eps, flags)
            if key not in ("params", "lr") and _normalise(saved[key]) != _normalise(want):
                source = "its config" if key in config_values else "this optimiser"
                raise CheckpointError(f"{where}: optimizer.param_groups[{g}].{key} is {short_repr(saved[key])}, "
                                      f"{source} says {short_repr(_normalise(want))}")
        if saved["lr"] < 0:
            raise CheckpointError(f"{where}: optimizer.param_groups[{g}].lr is negative ({saved['lr']})")


def _check_optimizer_tensors(ckpt: Checkpoint, params: list[torch.Tensor], step: int,
                             optimizer: torch.optim.Optimizer | None) -> None:
    where = ckpt.path / ("optimizer" + TENSOR_SUFFIX)
    names: dict[int, set[str]] = {}

    def index_of(key: str, kind: str) -> tuple[int, str]:
        m = _OPT_KEY.match(key)
        if not m:
            raise CheckpointError(f"{where}: unexpected {kind} {short_repr(key)} (expected '<parameter index>.<name>')")
        pid = int(m.group(1))
        if pid >= len(params):
            raise CheckpointError(f"{where}: {kind} {short_repr(key)} is for parameter {pid}; the model has "
                                  f"{len(params)} (0..{len(params) - 1})")
        return pid, m.group(2)

    for key, t in ckpt.tensors["optimizer"].items():
        pid, name = index_of(key, "tensor")
        names.setdefault(pid, set()).add(name)
        p = params[pid]
        if name == "step":
            if t.dim() != 0 or not t.is_floating_point():
                raise CheckpointError(f"{where}: tensor '{key}' must be a floating scalar, got shape "
                                      f"{tuple(t.shape)} {t.dtype}")
            value = float(t)
            if not math.isfinite(value) or value < 0 or value > step or value != round(value):
                raise CheckpointError(f"{where}: tensor '{key}' counts {value:g} steps; the checkpoint is step {step}")
            continue
        if tuple(t.shape) != tuple(p.shape):
            raise CheckpointError(f"{where}: tensor '{key}' has shape {tuple(t.shape)}, parameter {pid} has "
                                  f"{tuple(p.shape)}")
        if t.dtype != p.dtype:
            raise CheckpointError(f"{where}: tensor '{key}' is {t.dtype}, parameter {pid} is {p.dtype}")
        if t.numel() and not bool(torch.isfinite(t).all()):
            raise CheckpointError(f"{where}: tensor '{key}' has non-finite values")
        if name.endswith("exp_avg_sq") and t.numel() and bool((t < 0).any()):
            raise CheckpointError(f"{where}: tensor '{key}' has negative values (a second moment cannot)")
    for key in ckpt.state["optimizer"]["scalars"]:
        pid, name = index_of(key, "scalar")
        if name in names.get(pid, set()):
            raise CheckpointError(f"{ckpt.path / STATE_NAME}: optimizer.scalars['{key}'] duplicates a tensor")
        names.setdefault(pid, set()).add(name)
    expected = _expected_state_names(optimizer)
    if expected is None and names:
        expected = next(iter(names.values()))
    for pid, have in sorted(names.items()):
        if have != expected:
            missing, extra = sorted(expected - have), sorted(have - expected)
            detail = "; ".join(x for x in (f"missing {missing}" if missing else "",
                                           f"unexpected {extra}" if extra else "") if x)
            raise CheckpointError(f"{where}: optimiser state of parameter {pid}: {detail}")


def _migrated(saved: dict) -> dict:
    """A saved config dict in the current schema (as validated), or unchanged when it does not validate."""
    from mmvae.config import ConfigError, config_from_dict

    try:
        return config_from_dict(saved).model_dump(mode="json")
    except (ConfigError, ValueError, TypeError):
        return saved


def validate_checkpoint(ckpt: Checkpoint, model: torch.nn.Module, optimizer: torch.optim.Optimizer | None = None,
                        steps_per_epoch: int | None = None, config: Any = None, world_size: int | None = None) -> None:
    """Raise CheckpointError (naming the file and the problem) unless `ckpt` is a sound checkpoint for `model`.

    `optimizer`, `steps_per_epoch`, `config` (an ExperimentConfig) and `world_size` enable the checks that
    need them; a reader passes the model alone.
    """
    groups = sorted(ckpt.tensors)
    if groups != sorted(GROUPS):
        raise CheckpointError(f"{ckpt.path / MANIFEST_NAME}: tensor groups {groups}, expected {sorted(GROUPS)}")
    upgrade = getattr(type(model), "upgrade_state_dict", None)
    if upgrade is not None:  # weights written by older code: this code's parameter names
        ckpt.tensors["model"] = upgrade(ckpt.tensors["model"])
    current = config.model_dump(mode="json") if hasattr(config, "model_dump") else config
    state = validate_state(ckpt, steps_per_epoch, current, world_size)
    model_file = ckpt.path / ("model" + TENSOR_SUFFIX)
    live_config = getattr(model, "config", None)
    describes_this_model = live_config is not None and hasattr(live_config, "model_dump") and \
        _migrated(state.config).get("model") == live_config.model_dump(mode="json")
    try:
        check_state_dict_compatible(model.state_dict(), ckpt.tensors["model"], model_file)
    except CheckpointError:
        if describes_this_model:
            raise  # its own config says it is this model, its tensors disagree: corrupt
        return  # a different model: the caller refuses it, naming the config difference
    params = list(model.parameters())
    _check_param_groups(ckpt, len(params), optimizer)
    _check_optimizer_tensors(ckpt, params, state.position.step, optimizer)


def load_valid_checkpoint(run_dir: str | Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer | None = None,
                          on_corrupt: str = "fallback", writer: bool = False, steps_per_epoch: int | None = None,
                          config: Any = None, world_size: int | None = None) -> Checkpoint:
    """The newest checkpoint of `run_dir` that verifies and passes `validate_checkpoint`.

    Readers (writer=False) modify nothing; the lock-holding writer (writer=True) also cleans leftovers.
    """
    return load_newest(run_dir, lambda c: validate_checkpoint(c, model, optimizer, steps_per_epoch, config, world_size),
                       on_corrupt=on_corrupt, clean_leftovers=writer)
