"""Typed experiment configs: YAML files plus `key=value` overrides, validated by pydantic.

Unknown keys and values of the wrong type are errors that name the dotted key. Names that select an
implementation (modality kind, fusion, head kind, model family, dataset, loss term) are checked against
their registries when the config is validated, with a "did you mean" for near misses; kind-specific
`options` are typed by the kind (`Modality.Options`, `Head.Options`) and checked when the model is built.

Schema versions: a config without `schema_version` is version 1 (the ad-hoc β keys). `migrate_tree`
turns any older tree into the current one, so run folders written by older code still load.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, field_validator, model_validator

SCHEMA_VERSION = 2

from mmvae import safe_yaml

# Sizes: a width, a shape entry (issue 15: zero and negative sizes are refused by the config, not by torch).
Size = Annotated[int, Field(ge=1)]


class ConfigError(ValueError):
    """A config file or override is invalid; the message names the key and the problem."""


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


def did_you_mean(value: str, choices) -> str:
    """' (did you mean 'x'?)' for a close match among `choices`, else ''."""
    close = difflib.get_close_matches(str(value), [str(c) for c in choices], n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def check_registered(what: str, value: str, registry: dict) -> str:
    """`value` if it names an entry of `registry`, else a ValueError listing the entries."""
    if value not in registry:
        raise ValueError(f"unknown {what} {value!r}{did_you_mean(value, registry)}; registered: {sorted(registry)}")
    return value


def _check_kinds(entries: dict, role: str, what: str, registry: dict) -> dict:
    """Every entry's `kind` must be registered; the error names the entry."""
    for name, entry in entries.items():
        try:
            check_registered(what, entry.kind, registry)
        except ValueError as e:
            raise ValueError(f"{role} '{name}': {e}") from None
    return entries


class ModalityConfig(Strict):
    """One modality: its kind (a key of mmvae.modalities.MODALITY_KINDS), stored shape and likelihood.

    role "observed": fused into Z_y, given a private factor (unless private_dim = 0) and reconstructed.
    role "condition": only encoded; its features condition heads and the decoders that list it in
    `conditioned_on` (e.g. a robot action). It has no latent and is never reconstructed.
    """

    kind: str
    role: Literal["observed", "condition"] = "observed"
    shape: list[Size] = Field(min_length=1)  # the stored shape of one sample (the modelled shape is the kind's)
    private_dim: int = Field(default=4, ge=0)  # 0: no private factor
    private_feature_dim: int = Field(default=32, ge=1)
    hidden: list[Size] = Field(default_factory=lambda: [400])
    likelihood: Literal["gaussian", "laplace", "bernoulli", "categorical"] = "laplace"
    likelihood_scale: float = Field(default=1.0, gt=0)
    # Weight of this modality's reconstruction term; "auto" corrects for size (see model.reconstruction_weights).
    recon_weight: float | Literal["auto"] = "auto"
    conditioned_on: list[str] = Field(default_factory=list)  # condition modalities fed to this decoder
    options: dict[str, Any] = Field(default_factory=dict)  # kind-specific settings, typed by the kind


class HeadConfig(Strict):
    """A head (a key of mmvae.heads.HEADS): a module reading the factors, plus its named loss terms."""

    kind: str
    hidden: list[Size] = Field(default_factory=lambda: [64])
    conditioned_on: list[str] = Field(default_factory=list)  # condition modalities fed to the head
    options: dict[str, Any] = Field(default_factory=dict)  # kind-specific settings, typed by the kind


class ModelConfig(Strict):
    family: str = "factorized"  # a key of mmvae.families.FAMILIES
    # Family-specific settings, typed by the family's `Options` (e.g. mmvae_plus: K, estimator); checked below.
    family_options: dict[str, Any] = Field(default_factory=dict)
    modalities: dict[str, ModalityConfig] = Field(min_length=1)
    joint_dim: int = Field(default=20, ge=1)
    joint_feature_dim: int = Field(default=64, ge=1)
    fusion: str = "poe"  # a key of mmvae.fusion.FUSIONS
    fusion_hidden: list[Size] = Field(default_factory=lambda: [256])
    # Training only: chance that each present modality is hidden from the joint encoder for a sample (at
    # least one stays). Every present modality is still reconstructed, so decoders learn to rebuild x_m
    # from a joint factor inferred from the other modalities: cross-reconstruction, which makes every
    # expert carry the shared factor on its own.
    joint_subset_drop: float = Field(default=0.0, ge=0, lt=1)
    num_classes: int = Field(default=10, ge=0)  # > 0: the label head "label" reads F_y; 0: no label head
    label_hidden: list[Size] = Field(default_factory=lambda: [64])
    heads: dict[str, HeadConfig] = Field(default_factory=dict)  # further heads, by name

    @field_validator("family")
    @classmethod
    def _known_family(cls, family: str) -> str:
        from mmvae.families import FAMILIES

        return check_registered("model family", family, FAMILIES)

    # Kinds are checked here rather than on ModalityConfig/HeadConfig, so that a kind may be registered
    # after its ModalityConfig is made (and before the model config is validated).
    @field_validator("modalities")
    @classmethod
    def _known_modality_kinds(cls, modalities: dict[str, ModalityConfig]) -> dict[str, ModalityConfig]:
        from mmvae.modalities import MODALITY_KINDS

        return _check_kinds(modalities, "modality", "kind", MODALITY_KINDS)

    @field_validator("heads")
    @classmethod
    def _known_head_kinds(cls, heads: dict[str, HeadConfig]) -> dict[str, HeadConfig]:
        from mmvae.heads import HEADS

        return _check_kinds(heads, "head", "head kind", HEADS)

    @field_validator("fusion")
    @classmethod
    def _known_fusion(cls, fusion: str) -> str:
        from mmvae.fusion import FUSIONS

        return check_registered("fusion", fusion, FUSIONS)

    @model_validator(mode="after")
    def _check_family_options(self) -> "ModelConfig":
        from mmvae.families import FAMILIES
        from mmvae.families.base import parse_family_options

        parse_family_options(FAMILIES[self.family], self.family_options)
        return self

    @model_validator(mode="after")
    def _check_roles(self) -> "ModelConfig":
        observed = [m for m, mc in self.modalities.items() if mc.role == "observed"]
        conditions = {m for m, mc in self.modalities.items() if mc.role == "condition"}
        if not observed:
            raise ValueError("at least one modality must have role 'observed'")
        users = {f"modalities.{m}": mc.conditioned_on for m, mc in self.modalities.items()}
        users.update({f"heads.{h}": hc.conditioned_on for h, hc in self.heads.items()})
        for where, names in users.items():
            for c in names:
                if c not in conditions:
                    raise ValueError(f"{where}.conditioned_on names {c!r}, which is not a modality with role "
                                     f"'condition'{did_you_mean(c, conditions)}; conditions: {sorted(conditions)}")
        if "label" in self.heads:
            raise ValueError("heads.label is reserved for the label head (set model.num_classes instead)")
        return self

    @property
    def observed(self) -> list[str]:
        """Names of the observed (fused and reconstructed) modalities, in config order."""
        return [m for m, mc in self.modalities.items() if mc.role == "observed"]

    @property
    def conditions(self) -> list[str]:
        """Names of the condition modalities, in config order."""
        return [m for m, mc in self.modalities.items() if mc.role == "condition"]


class WeightSchedule(Strict):
    """A loss weight: `value`, reached by a linear ramp from 0 over `warmup_steps` (0: constant)."""

    value: float = Field(default=1.0, ge=0)
    warmup_steps: int = Field(default=0, ge=0)

    def at(self, step: int) -> float:
        """The weight at optimiser step `step`."""
        ramp = 1.0 if self.warmup_steps == 0 else min(1.0, step / self.warmup_steps)
        return self.value * ramp


class LossConfig(Strict):
    prior_match: Literal["kl", "mmd"] = "kl"
    mmd_kernel: Literal["rbf", "imq"] = "rbf"
    mmd_gather: bool = True  # under DDP: all-gather latents (with gradient) before MMD; False = per-rank estimate
    # Which loss-term groups (keys of mmvae.losses.LOSS_TERMS) make the loss; None: the family's default.
    terms: list[str] | None = None
    # Weights by term name or glob pattern ("label", "kl/private/*", "recon/*"): a number or
    # {value, warmup_steps}. The most specific match wins (an exact name, then the longest pattern);
    # terms that match nothing weigh 1. Every key must match a term the model produces.
    # Warming up the private factors lets them soak up content (the digit) before the joint factor has
    # learned it, so the shipped configs warm up only the joint factor.
    weights: dict[str, float | WeightSchedule] = Field(default_factory=dict)
    # Settings of term groups, by group name (a key of LOSS_TERMS), typed by the group's `Options`:
    # e.g. {cycle: {content: false}}. A group must also be in the loss (checked when the model is built).
    options: dict[str, dict[str, Any]] = Field(default_factory=dict)
    _parsed_options: dict[str, tuple[dict, BaseModel]] = PrivateAttr(default_factory=dict)

    @field_validator("terms")
    @classmethod
    def _known_terms(cls, terms: list[str] | None) -> list[str] | None:
        import mmvae.families  # noqa: F401  (families register their own term groups when imported)
        from mmvae.losses import LOSS_TERMS

        for t in terms or []:
            check_registered("loss term", t, LOSS_TERMS)
        return terms

    @field_validator("options")
    @classmethod
    def _typed_group_options(cls, options: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
        import mmvae.families  # noqa: F401
        from mmvae.losses import LOSS_TERMS
        from mmvae.modalities.base import parse_options

        for group, values in options.items():
            check_registered("loss term", group, LOSS_TERMS)
            parse_options(f"loss.options.{group}", group, LOSS_TERMS[group].Options, values, label="term group")
        return options

    def group_options(self, group: str) -> Any:
        """The typed options of term group `group` (its `Options` defaults where `loss.options` has none)."""
        raw = self.options.get(group, {})
        cached = self._parsed_options.get(group)
        if cached is None or cached[0] != raw:  # parsed once per settings (the loss asks at every step)
            from mmvae.losses import LOSS_TERMS

            cached = (dict(raw), LOSS_TERMS[group].Options.model_validate(raw))
            self._parsed_options[group] = cached
        return cached[1]

    def schedule(self, key: str) -> WeightSchedule:
        """The weight schedule of one `weights` entry."""
        w = self.weights[key]
        return w if isinstance(w, WeightSchedule) else WeightSchedule(value=w)

    @property
    def schedules_end(self) -> int:
        """The step from which no loss weight changes any more (derived from the schedules)."""
        return max([0, *(self.schedule(k).warmup_steps for k in self.weights)])

    # The name kept from version 1, used by the compile path and benchmarks.
    beta_warmup_end = schedules_end


DATA_LOADERS = ("indexed", "dataloader")


class DataConfig(Strict):
    name: str = "toy"  # a key of mmvae.data.registry.DATASETS
    path: str | None = None  # prepared dataset folder (datasets that need preparing)
    loader: Literal["indexed", "dataloader"] = "indexed"
    on_device: bool = False  # hold the whole dataset on the training device
    num_workers: int = Field(default=0, ge=0)  # dataloader path only
    train_size: int = Field(default=4096, ge=1)  # toy only
    test_size: int = Field(default=1024, ge=1)  # toy only
    missing_prob: float = Field(default=0.0, ge=0, lt=1)  # toy only: chance each modality is absent
    missing: dict[str, float] = Field(default_factory=dict)  # digits4: {modality: chance it is absent from a training tuple}
    # Few labels: the training batches keep the label of only this fraction of the training samples (chosen from
    # (seed, sample index) by a counter-based hash: the same on every rank and after resume); the rest get y = -1.
    # Evaluation (probes, classifiers, coherence) sees every label. See mmvae/data/labels.py.
    label_fraction: float = Field(default=1.0, gt=0, le=1)

    @field_validator("name")
    @classmethod
    def _known_dataset(cls, name: str) -> str:
        from mmvae.data.registry import DATASETS

        return check_registered("dataset", name, DATASETS)


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
    # The whole step (gather, forward, loss, backward, clip, AdamW) captured as one CUDA graph and replayed
    # (mmvae/train_graph.py): one process, a CUDA device, data.on_device, grad_accum_steps 1.
    cuda_graph: bool = False
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
    schema_version: int = SCHEMA_VERSION
    name: str = "experiment"
    seed: int = Field(default=0, ge=0, lt=2**62)  # torch seeds must fit 64 bits, with room for per-rank offsets
    out_dir: str = "runs"
    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig
    loss: LossConfig = Field(default_factory=LossConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    logging: LoggingConfig = Field(default_factory=LoggingConfig)

    @model_validator(mode="after")
    def _check_with_dataset(self) -> "ExperimentConfig":
        from mmvae.data.registry import DATASETS

        DATASETS[self.data.name].check_config(self)
        return self


# --- schema migration -------------------------------------------------------------------------------
# Version 1 loss keys and their defaults: they become `loss.weights` entries.
_V1_LOSS_KEYS = {"label_weight": 1.0, "recon_weight": 1.0, "prior_weight": 1.0, "beta_joint": 1.0,
                 "beta_private": 1.0, "beta_joint_warmup_steps": 0, "beta_private_warmup_steps": 0}


def _weight_entry(value: float, warmup: int) -> float | dict:
    return {"value": value, "warmup_steps": warmup} if warmup else value


def migrate_tree(tree: dict) -> dict:
    """Any older config tree -> the current schema (a new dict; the input is not modified).

    Version 1 -> 2: the β keys become `loss.weights` entries. label_weight -> "label", recon_weight ->
    "recon/*", prior_weight x beta_joint (warm-up beta_joint_warmup_steps) -> "<prior>/joint",
    prior_weight x beta_private -> "<prior>/private/*", a modality's private_beta -> "<prior>/private/<m>"
    (with the private warm-up). Entries equal to the defaults (weight 1, no warm-up) are not written.
    Old keys are accepted in any version; giving one together with the `weights` entry it maps to is an error.
    """
    if not isinstance(tree, dict):
        return tree
    version = tree.get("schema_version", 1)
    if isinstance(version, int) and not isinstance(version, bool) and version > SCHEMA_VERSION:
        raise ConfigError(f"key 'schema_version': {version} was written by a newer mmvae (this one reads up to "
                          f"{SCHEMA_VERSION})")
    tree = {**tree, "schema_version": SCHEMA_VERSION}
    loss = tree.get("loss")
    model = tree.get("model")
    modalities = model.get("modalities") if isinstance(model, dict) else None
    private_betas = {}
    if isinstance(modalities, dict):
        new_modalities = {}
        for m, mc in modalities.items():
            if isinstance(mc, dict) and "private_beta" in mc:
                mc = dict(mc)
                beta = mc.pop("private_beta")
                if beta is not None:
                    private_betas[m] = beta
            new_modalities[m] = mc
        tree["model"] = {**model, "modalities": new_modalities}
    if loss is None and not private_betas:
        return tree
    if loss is not None and not isinstance(loss, dict):
        return tree  # validation reports the wrong type
    loss = dict(loss or {})
    old = {k: loss.pop(k) for k in list(loss) if k in _V1_LOSS_KEYS}
    if not old and not private_betas:
        return tree
    for k, v in old.items():
        if not isinstance(v, (int, float)) or isinstance(v, bool):
            raise ConfigError(f"key 'loss.{k}': expected a number, got {v!r}")
    get = lambda k: old.get(k, _V1_LOSS_KEYS[k])  # noqa: E731
    prior = loss.get("prior_match", "kl")
    new: dict[str, Any] = {}
    if get("label_weight") != 1.0:
        new["label"] = get("label_weight")
    if get("recon_weight") != 1.0:
        new["recon/*"] = get("recon_weight")
    joint = get("prior_weight") * get("beta_joint")
    if joint != 1.0 or get("beta_joint_warmup_steps"):
        new[f"{prior}/joint"] = _weight_entry(joint, get("beta_joint_warmup_steps"))
    private = get("prior_weight") * get("beta_private")
    if private != 1.0 or get("beta_private_warmup_steps"):
        new[f"{prior}/private/*"] = _weight_entry(private, get("beta_private_warmup_steps"))
    for m, beta in private_betas.items():
        if not isinstance(beta, (int, float)) or isinstance(beta, bool):
            raise ConfigError(f"key 'model.modalities.{m}.private_beta': expected a number, got {beta!r}")
        new[f"{prior}/private/{m}"] = _weight_entry(get("prior_weight") * beta, get("beta_private_warmup_steps"))
    weights = loss.get("weights") or {}
    if not isinstance(weights, dict):
        raise ConfigError(f"key 'loss.weights': expected a mapping of term name -> weight, got {weights!r}")
    clash = sorted(set(weights) & set(new))
    if clash:
        raise ConfigError(f"key 'loss.weights.{clash[0]}' is also set by an old (version 1) loss key; keep one of them")
    loss["weights"] = {**weights, **new}
    tree["loss"] = loss
    return tree


def _format_validation_error(err: ValidationError, source: str, max_lines: int = 20) -> str:
    """One line: "invalid config (SOURCE): key 'a.b': problem (got ...); unknown key 'c'; ...".

    Inputs and keys are shown truncated (~80 characters) and at most `max_lines` problems are listed, so a huge
    or alias-expanded value can neither flood the terminal nor hang the formatter.
    """
    errors = err.errors(include_url=False)
    shown = errors[:max_lines]
    more = f" ({len(errors)} problems, the first {len(shown)} shown)" if len(errors) > len(shown) else ""
    problems = []
    for e in shown:
        key = ".".join(safe_yaml.short_repr(p, 40, quote=False) for p in e["loc"]) or "<root>"
        if e["type"] == "extra_forbidden":
            problems.append(f"unknown key '{key}'")
        elif not e["loc"]:  # a whole-config check (model_validator): its message names the keys
            problems.append(e["msg"].removeprefix("Value error, "))
        else:
            msg = e["msg"].removeprefix("Value error, ")
            problems.append(f"key '{key}': {msg} (got {safe_yaml.short_repr(e.get('input'))})")
    return f"invalid config ({source}){more}: " + "; ".join(problems)


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
    """Validate a plain dict (of any schema version) as an ExperimentConfig."""
    try:
        return ExperimentConfig.model_validate(migrate_tree(tree))
    except ValidationError as err:
        raise ConfigError(_format_validation_error(err, source)) from None


def shipped_configs() -> dict[str, Path]:
    """The configs that ship inside the package, by name (file stem)."""
    from importlib.resources import files

    folder = Path(str(files("mmvae") / "configs"))
    return {p.stem: p for p in sorted(folder.glob("*.yaml"))} if folder.is_dir() else {}


def resolve_config_path(arg: str | Path) -> Path:
    """A config file path, or the name of a shipped config ("toy", "mnist_svhn_quick"): the file to read."""
    path = Path(arg)
    if path.is_file():
        return path
    if path.exists():
        raise ConfigError(f"config file {path} is not a regular file")
    shipped = shipped_configs()
    name = path.stem if path.suffix in (".yaml", ".yml") else str(arg)
    if path.parent == Path(".") and name in shipped:
        return shipped[name]
    if path.parent.name == "configs" and name in shipped and not path.parent.exists():
        return shipped[name]  # "configs/toy.yaml" typed outside the repository
    hint = did_you_mean(name, shipped)
    raise ConfigError(f"config file {path} does not exist{hint}; shipped configs: {sorted(shipped)} "
                      "(`mmvae config list`)")


def load_config(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> ExperimentConfig:
    """Read a YAML config (a path or a shipped config's name), apply overrides, validate."""
    path = resolve_config_path(path)
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
