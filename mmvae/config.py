"""Typed experiment configs: YAML files plus `key=value` overrides, validated by pydantic.

Unknown keys and values of the wrong type are errors that name the dotted key.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from mmvae import safe_yaml

# Sizes: a width, a shape entry (issue 15: zero and negative sizes are refused by the config, not by torch).
Size = Annotated[int, Field(ge=1)]


class ConfigError(ValueError):
    """A config file or override is invalid; the message names the key and the problem."""


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


class ModalityConfig(Strict):
    """One modality: its kind (a key of mmvae.modalities.MODALITY_KINDS), shape and likelihood."""

    kind: str
    shape: list[Size] = Field(min_length=1)
    private_dim: int = Field(default=4, ge=1)
    private_feature_dim: int = Field(default=32, ge=1)
    hidden: list[Size] = Field(default_factory=lambda: [400])
    likelihood: Literal["gaussian", "laplace", "bernoulli", "categorical"] = "laplace"
    likelihood_scale: float = Field(default=1.0, gt=0)
    # Weight of this modality's reconstruction term; "auto" corrects for size (see model.reconstruction_weights).
    recon_weight: float | Literal["auto"] = "auto"
    # beta of this modality's private factor; None takes loss.beta_private. A larger value squeezes content
    # (which the joint factor should carry) out of the private factor.
    private_beta: float | None = Field(default=None, ge=0)
    options: dict[str, Any] = Field(default_factory=dict)  # kind-specific settings, checked by the kind


class ModelConfig(Strict):
    modalities: dict[str, ModalityConfig] = Field(min_length=1)
    joint_dim: int = Field(default=20, ge=1)
    joint_feature_dim: int = Field(default=64, ge=1)
    fusion: Literal["concat", "poe"] = "poe"
    fusion_hidden: list[Size] = Field(default_factory=lambda: [256])
    # Training only: chance that each present modality is hidden from the joint encoder for a sample (at
    # least one stays). Every present modality is still reconstructed, so decoders learn to rebuild x_m
    # from a joint factor inferred from the other modalities: cross-reconstruction, which makes every
    # expert carry the shared factor on its own.
    joint_subset_drop: float = Field(default=0.0, ge=0, lt=1)
    num_classes: int = Field(default=10, ge=0)  # 0: no label head
    label_hidden: list[Size] = Field(default_factory=lambda: [64])


class LossConfig(Strict):
    prior_match: Literal["kl", "mmd"] = "kl"
    mmd_kernel: Literal["rbf", "imq"] = "rbf"
    mmd_gather: bool = True  # under DDP: all-gather latents (with gradient) before MMD; False = per-rank estimate
    label_weight: float = Field(default=1.0, ge=0)
    recon_weight: float = Field(default=1.0, ge=0)  # multiplies every modality's own weight
    prior_weight: float = Field(default=1.0, ge=0)
    beta_joint: float = Field(default=1.0, ge=0)
    beta_private: float = Field(default=1.0, ge=0)
    # Linear ramps of each group's beta from 0. Warming up the private factors lets them soak up content
    # (the digit) before the joint factor has learned it, so by default only the joint factor warms up.
    beta_joint_warmup_steps: int = Field(default=0, ge=0)
    beta_private_warmup_steps: int = Field(default=0, ge=0)

    @property
    def beta_warmup_end(self) -> int:
        """The step from which no beta changes any more."""
        return max(self.beta_joint_warmup_steps, self.beta_private_warmup_steps)


class DataConfig(Strict):
    name: Literal["toy", "mnist_svhn"] = "toy"
    path: str | None = None  # prepared dataset folder (mnist_svhn)
    loader: Literal["indexed", "dataloader"] = "indexed"
    on_device: bool = False  # hold the whole dataset on the training device
    num_workers: int = Field(default=0, ge=0)  # dataloader path only
    train_size: int = Field(default=4096, ge=1)  # toy only
    test_size: int = Field(default=1024, ge=1)  # toy only
    missing_prob: float = Field(default=0.0, ge=0, lt=1)  # toy only: chance each modality is absent


class TrainConfig(Strict):
    epochs: int = Field(default=10, ge=1)
    max_steps: int | None = Field(default=None, ge=1)
    batch_size: int = Field(default=128, ge=1)
    lr: float = Field(default=1e-3, gt=0)
    weight_decay: float = Field(default=0.0, ge=0)
    betas: tuple[Annotated[float, Field(ge=0, lt=1)], Annotated[float, Field(ge=0, lt=1)]] = (0.9, 0.999)
    grad_clip: float | None = Field(default=5.0, gt=0)
    schedule: Literal["constant", "cosine"] = "cosine"
    warmup_steps: int = Field(default=0, ge=0)
    min_lr_ratio: float = Field(default=0.1, ge=0, le=1)
    grad_accum_steps: int = Field(default=1, ge=1)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    precision: Literal["fp32", "bf16"] = "fp32"
    compile: bool = False
    compile_mode: Literal["default", "reduce-overhead", "max-autotune"] | None = None  # reduce-overhead: CUDA graphs
    eval_every: int = Field(default=500, ge=1)
    eval_batches: int = Field(default=8, ge=1)
    checkpoint_every: int = Field(default=500, ge=1)
    keep_checkpoints: int = Field(default=3, ge=1)
    log_every: int = Field(default=50, ge=1)
    dist_timeout_s: int = Field(default=600, ge=10)


class LoggingConfig(Strict):
    wandb_mode: Literal["offline", "online", "disabled"] = "offline"
    wandb_project: str = "mmvae"
    progress_bar: bool = True


class ExperimentConfig(Strict):
    name: str = "experiment"
    seed: int = Field(default=0, ge=0, lt=2**62)  # torch seeds must fit 64 bits, with room for per-rank offsets
    out_dir: str = "runs"
    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig
    loss: LossConfig = Field(default_factory=LossConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    logging: LoggingConfig = Field(default_factory=LoggingConfig)

    @model_validator(mode="after")
    def _check_data_path(self) -> "ExperimentConfig":
        if self.data.name == "mnist_svhn" and not self.data.path:
            raise ValueError("data.path must name a prepared MNIST-SVHN folder (see `mmvae prepare mnist-svhn`)")
        return self


def _format_validation_error(err: ValidationError, source: str, max_lines: int = 20) -> str:
    # issue 15: inputs and keys are shown truncated (~80 characters), and at most `max_lines` problems are listed,
    # so a huge or alias-expanded value can neither flood the terminal nor hang the formatter.
    errors = err.errors(include_url=False)
    shown = errors[:max_lines]
    more = f"; {len(errors)} problems, the first {len(shown)} below" if len(errors) > len(shown) else ""
    lines = [f"invalid config ({source}){more}:"]
    for e in shown:
        key = ".".join(safe_yaml.short_repr(p, 40, quote=False) for p in e["loc"]) or "<root>"
        if e["type"] == "extra_forbidden":
            lines.append(f"  unknown key '{key}'")
        elif not e["loc"]:  # a whole-config check (model_validator): its message names the keys
            lines.append(f"  {e['msg'].removeprefix('Value error, ')}")
        else:
            lines.append(f"  key '{key}': {e['msg']} (got {safe_yaml.short_repr(e.get('input'))})")
    return "\n".join(lines)


def apply_override(tree: dict, override: str) -> None:
    """Apply one `a.b.c=value` override in place; the value is parsed as YAML (`lr=3e-4`, `hidden=[64,64]`)."""
    shown = safe_yaml.short_repr(override)  # issue 15: never echo a huge override in full
    if "=" not in override:
        raise ConfigError(f"override {shown} is not of the form key=value")
    key, raw = override.split("=", 1)
    parts = key.strip().split(".")
    if not all(parts):
        raise ConfigError(f"override {shown} has an empty key part")
    node = tree
    for i, part in enumerate(parts[:-1]):
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            raise ConfigError(f"override {shown}: '{'.'.join(parts[: i + 1])}' is a value, not a section")
        node = child
    try:
        node[parts[-1]] = safe_yaml.load(raw)  # issue 15: alias budget, no recursive aliases, no duplicate keys
    except yaml.YAMLError as exc:
        raise ConfigError(f"override {shown}: value is not valid YAML ({safe_yaml.describe_error(exc)})") from None
    except safe_yaml.YamlLimitError as exc:
        raise ConfigError(f"override {shown}: {exc}") from None


def config_from_dict(tree: dict, source: str = "<dict>") -> ExperimentConfig:
    """Validate a plain dict as an ExperimentConfig."""
    try:
        return ExperimentConfig.model_validate(tree)
    except ValidationError as err:
        raise ConfigError(_format_validation_error(err, source)) from None


def load_config(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> ExperimentConfig:
    """Read a YAML config, apply overrides, validate."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"config file {path} does not exist")
    if not path.is_file():
        raise ConfigError(f"config file {path} is not a regular file")
    # issue 15: size limit, UTF-8 check, alias budget and duplicate keys, each refused in one line naming the file.
    size = path.stat().st_size
    if size > safe_yaml.MAX_CHARS * 4:
        raise ConfigError(f"config file {path} is {size:,} bytes; a config is at most {safe_yaml.MAX_CHARS:,} characters")
    data = path.read_bytes()
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"config file {path} is not UTF-8 text (byte 0x{data[exc.start]:02x} at offset "
                          f"{exc.start}); is it a binary file?") from None
    try:
        tree = safe_yaml.load(text) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path} is not valid YAML: {safe_yaml.describe_error(exc)}") from None
    except safe_yaml.YamlLimitError as exc:
        raise ConfigError(f"config file {path}: {exc}") from None
    if not isinstance(tree, dict):
        raise ConfigError(f"config file {path} must hold a mapping at the top level, got {type(tree).__name__}")
    for override in overrides:
        apply_override(tree, override)
    return config_from_dict(tree, source=str(path))


def config_to_yaml(config: ExperimentConfig) -> str:
    """The fully resolved config as YAML (saved in every run folder)."""
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)
