"""The composite loss: named terms from pluggable term groups; the total is the weighted sum of the terms.

Term groups (`LOSS_TERMS`; a family names its defaults, `loss.terms` may replace them):
  reconstruction   recon/<m>                    -log p(x_m | Z_y, Z_m), over real elements
  heads            each head's terms            e.g. label: cross-entropy of the label head on F_y (y >= 0)
  prior            kl/joint, kl/private/<m>     KL to N(0, I): closed form, or Monte Carlo where the joint
                                                posterior has none (mixtures)           (prior_match = kl)
                   mmd/joint, mmd/private/<m>   MMD to N(0, I) samples                   (prior_match = mmd)
  xcov             xcov/<m>                     squared Frobenius norm of the batch cross-covariance of Z_y and
                                                Z_m (Cheung et al. 2014; loss_xcov.py)
  cycle            cycle/<m>, cycle/<m>/content  style-donor latent cycle: decode m from (Z_y of a, Z_m of b),
                                                re-encode, match Z_m(b) and Z_y(a) (loss_cycle.py)
All terms are averaged over the batch, absent samples contributing zero.

A group with settings has a typed `Options` (pydantic) and reads them from `loss.options.<group>`, checked with
the config (`LossConfig.group_options`). A group (or a head, `Head.metrics`) may log diagnostics beside the
terms through `LossContext.metrics`: they are logged with the terms and never added to the loss.

Weights come from `loss.weights`, matched by term name or glob pattern (the most specific wins), each
a constant or a linear warm-up; a family's `term_scales` (size-corrected reconstruction) multiply in.
Adding a term group is one class here (or in its own file) plus one line in `LOSS_TERMS`. The zoo families
register theirs from their own files: `mvae_subsets` (mvae.py), `mmvae_bound` (mmvae_moe.py), `mopoe_kl`
(mopoe.py), `dmvae` (dmvae.py), `mmvae_plus` (mmvae_plus.py); so do `xcov` (loss_xcov.py) and `cycle`
(loss_cycle.py), imported at the end of this file.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from typing import TYPE_CHECKING, ClassVar

from pydantic import BaseModel
from torch import Tensor

from mmvae.batch import element_mask
from mmvae.config import ConfigError, LossConfig, did_you_mean
from mmvae.heads import label_term, masked_batch_mean  # noqa: F401  (label_term: re-exported for callers)
from mmvae.latent import mmd_to_standard_normal, standard_normal_log_prob
from mmvae.modalities.base import NoOptions

if TYPE_CHECKING:  # annotations only: family files define and register their own term groups from here
    from mmvae.families.base import ForwardOutput, MultimodalModel

GatherFn = Callable[[Tensor], Tensor]


@dataclass
class LossContext:
    config: LossConfig
    step: int
    gather: GatherFn | None = None  # all-gather with gradient under DDP (batch statistics such as MMD)
    metrics: dict[str, Tensor] = field(default_factory=dict)  # diagnostics the groups log (never in the loss)


@dataclass
class LossResult:
    terms: dict[str, Tensor]  # unweighted scalar terms
    weights: dict[str, float | Tensor]
    total: Tensor
    metrics: dict[str, Tensor] = field(default_factory=dict)  # diagnostics logged beside the terms, not summed

    def as_log(self, prefix: str = "loss/") -> dict[str, Tensor]:
        """Every term, the total and the diagnostics, keyed for logging."""
        return {**{prefix + k: v.detach() for k, v in self.terms.items()}, prefix + "total": self.total.detach(),
                **{prefix + k: v.detach() for k, v in self.metrics.items()}}


class LossTerms:
    """A group of named terms: `names` says which terms it makes (for config checks), `__call__` makes them.
    A group with settings names them in a pydantic `Options`, given under `loss.options.<its LOSS_TERMS key>`."""

    Options: ClassVar[type[BaseModel]] = NoOptions

    def names(self, model: MultimodalModel, cfg: LossConfig) -> list[str]:
        raise NotImplementedError

    def __call__(self, model: MultimodalModel, out: ForwardOutput, batch: dict, ctx: LossContext) -> dict[str, Tensor]:
        raise NotImplementedError


def reconstruction_term(model: MultimodalModel, out: ForwardOutput, name: str, present: Tensor,
                        mask: Tensor | None = None) -> Tensor:
    """-E_q log p(x_m | z) over real elements, absent samples excluded."""
    nll = -model.modalities[name].log_prob(out.params[name], out.inputs[name], mask)
    return masked_batch_mean(nll, present)


class ReconstructionTerms(LossTerms):
    def names(self, model, cfg):
        return [f"recon/{m}" for m in model.names]

    def __call__(self, model, out, batch, ctx):
        return {f"recon/{m}": reconstruction_term(model, out, m, batch["present"][m], element_mask(batch, m))
                for m in model.names}


class HeadTerms(LossTerms):
    def names(self, model, cfg):
        return [t for head in getattr(model, "heads", {}).values() for t in head.term_names()]

    def __call__(self, model, out, batch, ctx):
        terms: dict[str, Tensor] = {}
        for name, head in getattr(model, "heads", {}).items():
            terms.update(head.terms(out.heads[name], batch))
            ctx.metrics.update(head.metrics(out.heads[name], batch))
        return terms


class PriorTerms(LossTerms):
    """KL or MMD between every factor's posterior and N(0, I)."""

    def names(self, model, cfg):
        return [f"{cfg.prior_match}/joint", *(f"{cfg.prior_match}/private/{m}" for m in out_private_names(model))]

    def __call__(self, model, out, batch, ctx):
        post, present, cfg = out.posteriors, batch["present"], ctx.config
        terms: dict[str, Tensor] = {}
        if cfg.prior_match == "kl":
            kl = post.joint.kl_to_prior()
            if kl is None:  # no closed form (mixtures): a one-sample Monte-Carlo estimate at the decoded z
                kl = post.joint.log_prob(out.z_joint) - standard_normal_log_prob(out.z_joint)
            terms["kl/joint"] = kl.mean()
            for m, q in post.private.items():
                terms[f"kl/private/{m}"] = masked_batch_mean(q.kl_to_standard_normal(), present[m])
            return terms
        gather = ctx.gather or (lambda t: t)
        terms["mmd/joint"] = mmd_to_standard_normal(gather(out.z_joint), cfg.mmd_kernel)
        for m, z in out.z_private.items():
            # Absent samples get weight 0: fixed shapes, no boolean indexing, no host synchronisation.
            weights = gather(present[m].to(z.dtype))
            terms[f"mmd/private/{m}"] = mmd_to_standard_normal(gather(z), cfg.mmd_kernel, weights=weights)
        return terms


def out_private_names(model: MultimodalModel) -> list[str]:
    """Modalities with a private factor."""
    return list(getattr(model, "private_names", model.names))


def chosen_private_modalities(model: MultimodalModel, cfg: LossConfig, group: str) -> list[str]:
    """`loss.options.<group>.modalities` (default: every modality with a private factor), checked."""
    private = out_private_names(model)
    chosen = cfg.group_options(group).modalities
    chosen = private if chosen is None else chosen
    unknown = [m for m in chosen if m not in private]
    if unknown or not chosen:
        raise ConfigError(f"key 'loss.options.{group}.modalities': {chosen} must name modalities with a private "
                          f"factor (this model's: {private})")
    return list(chosen)


LOSS_TERMS: dict[str, LossTerms] = {
    "reconstruction": ReconstructionTerms(),
    "heads": HeadTerms(),
    "prior": PriorTerms(),
}


def term_groups(model: MultimodalModel, cfg: LossConfig) -> list[LossTerms]:
    """The term groups of this loss: `loss.terms`, or the family's default."""
    return [LOSS_TERMS[name] for name in (cfg.terms or model.default_loss_terms)]


def all_term_names(model: MultimodalModel, cfg: LossConfig) -> list[str]:
    """Every term the loss of `model` under `cfg` produces."""
    return [n for group in term_groups(model, cfg) for n in group.names(model, cfg)]


def weight_key(cfg: LossConfig, term: str) -> str | None:
    """The `loss.weights` key that sets `term`: the exact name, else the longest matching pattern."""
    if term in cfg.weights:
        return term
    matches = [k for k in cfg.weights if fnmatchcase(term, k)]
    return max(matches, key=lambda k: (len(k.replace("*", "")), len(k))) if matches else None


def configured_weight(cfg: LossConfig, term: str, step: int) -> float:
    """The weight `loss.weights` gives `term` at `step` (1 where nothing matches)."""
    key = weight_key(cfg, term)
    return 1.0 if key is None else cfg.schedule(key).at(step)


def check_loss_config(model: MultimodalModel, cfg: LossConfig) -> None:
    """Every `loss.weights` key must match a term this model's loss produces, and every `loss.options` key must
    name one of its term groups (a typo, or options of a group that is not in the loss, would do nothing)."""
    groups = list(cfg.terms or model.default_loss_terms)
    for key in cfg.options:
        if key not in groups:
            raise ConfigError(f"key 'loss.options.{key}': the term group {key!r} is not in this model's loss "
                              f"(its groups: {groups}); add it to loss.terms")
    names = all_term_names(model, cfg)
    for key in cfg.weights:
        if not any(fnmatchcase(n, key) for n in names):
            raise ConfigError(f"key 'loss.weights.{key}' matches no loss term of this model{did_you_mean(key, names)}; "
                              f"its terms: {names}")


def compute_loss(
    model: MultimodalModel,
    out: ForwardOutput,
    batch: dict,
    cfg: LossConfig,
    step: int,
    gather: GatherFn | None = None,
    weight_of: Callable[[str], float | Tensor] | None = None,
) -> LossResult:
    """All named terms, their weights, and the weighted total. `weight_of(term)` replaces the weights computed from
    `step` (the CUDA-graph step passes 0-dim device tensors read from a table at a device step; train_graph.py)."""
    ctx = LossContext(cfg, step, gather)
    scales = model.term_scales()
    terms: dict[str, Tensor] = {}
    weights: dict[str, float | Tensor] = {}
    for group in term_groups(model, cfg):
        for key, value in group(model, out, batch, ctx).items():
            terms[key] = value
            weights[key] = (weight_of(key) if weight_of is not None
                            else configured_weight(cfg, key, step) * scales.get(key, 1.0))
    total = sum(weights[k] * terms[k] for k in terms)
    return LossResult(terms, weights, total, ctx.metrics)


# Term groups in their own files register themselves in LOSS_TERMS (they import LossTerms from here).
import mmvae.loss_cycle  # noqa: E402,F401
import mmvae.loss_xcov  # noqa: E402,F401
