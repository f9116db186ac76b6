"""Gradient attributions of a trained factorized model, per modality and per part (Tsai et al., ICLR 2019).

For every modality m and every part t of it (pixel, spectrogram frame, token, force time step: whatever
`Modality.to_parts` groups elements into), with posterior means and the model in eval mode:

    joint/loss        ‖∂ℓ_m(x_m[t], x̂_m[t]) / ∂F_y‖      ℓ_m[t] = to_parts(−log p(x_m | params))[t]
    joint/jacobian    ‖∂x̂_m[t] / ∂F_y‖                   Frobenius norm over the elements of part t
    private/loss      the same with respect to F_m = G_m(Z_m)  (what the modality's style explains)
    private/jacobian
    ig/label          integrated gradients of the label logit w.r.t. the inputs, summed within each part
    ig/joint          integrated gradients of s(x) = <μ_y(x) − μ_y(x0), u>, u = unit(μ_y(x) − μ_y(x0)), so that
                      s(x) − s(x0) = ‖μ_y(x) − μ_y(x0)‖: how far each input part moves the joint factor

Feature gradients are Jacobians of (B, P) or (B, *shape) outputs with respect to a small feature vector
(F_y: joint_feature_dim, 64 by default), so they are computed with F forward-mode JVPs vmapped over the
feature basis: F linearised decoder passes instead of one backward pass per part. Both modes come out of
the same JVP. Everything here only uses the Modality interface (decode, mean, log_prob_elements,
to_parts), so new modality kinds are attributed without changes here; `to_parts` must be a grouping sum
(linear), which is what lets Jacobian norms be reduced as sums of squares and masks be mapped back.

Each modality's share of the joint factor's loss gradient comes from its whole loss term, not from the
per-part maps: w_m ‖∂ℓ_m/∂F_y‖ with ℓ_m = Σ_t ℓ_m[t] (the sum over parts of the same per-part tangents) and
w_m the term's weight in the training loss, in nats per unit of F_y for every modality. Summing per-part
norms instead would add quantities over different numbers of parts. Jacobian-mode maps are in each
modality's data units, so no cross-modality share is given for them (nor for the private factors, which
are different vectors per modality).

Faithfulness (deletion): parts of x_m are set to the baseline in order of attribution (top first) and in
random order; the label logit or the reconstruction of x_m from F_y must degrade faster for the top order.
The area under each sample's degradation curve is kept per order and per random repeat; the ratio of mean
areas (top / random) gets a seeded 95 % bootstrap interval over samples, and the test passes only when the
interval's lower end is above 1. Areas too small against the unmasked score are "n/a".
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from torch import Tensor

from mmvae.batch import labels as batch_labels
from mmvae.families.base import MultimodalModel
from mmvae.modalities import Modality

MODES = ("loss", "jacobian")
FEATURE_KINDS = ("joint/loss", "joint/jacobian", "private/loss", "private/jacobian")
IG_KINDS = ("ig/label", "ig/joint")
SIGNED_KINDS = frozenset(IG_KINDS)  # integrated gradients are signed; feature gradients are norms


@dataclass(frozen=True)
class AttributionSettings:
    """Every knob of an attribution run (recorded in the report)."""

    modes: tuple[str, ...] = MODES
    private: bool = True  # also attribute with respect to each private feature F_m
    integrated_gradients: bool = True
    ig_steps: int = 32
    ig_method: str = "gausslegendre"
    ig_batch: int = 64  # samples per IG call (each expands to ig_steps rows)
    target: str = "predicted"  # label logit to explain: "predicted" class or the data's "label"
    completeness_tol: float = 0.05  # allowed Σ|Σattr − (f(x) − f(x0))| / Σ|f(x) − f(x0)|
    deletion: bool = True
    deletion_fractions: tuple[float, ...] = tuple(i / 10 for i in range(11))
    deletion_repeats: int = 8  # random orders averaged for the random curve
    deletion_max_samples: int = 128  # the deletion test uses at most this many samples per modality
    deletion_bootstrap: int = 2000  # bootstrap resamples of the samples for the area ratio's interval
    deletion_confidence: float = 0.95
    deletion_min_area: float = 1e-3  # areas below this times the mean |unmasked score| are "n/a"
    max_chunk_elements: int = 2**26  # bound on F x B x elements held by one vmapped JVP
    seed: int = 0

    def __post_init__(self) -> None:
        unknown = sorted(set(self.modes) - set(MODES))
        if unknown or not self.modes:
            raise ValueError(f"attribution modes must be a non-empty subset of {list(MODES)}, got {list(self.modes)}")
        if self.target not in ("predicted", "label"):
            raise ValueError(f"target must be 'predicted' or 'label', got {self.target!r}")
        if self.ig_steps < 2 or min(self.ig_batch, self.deletion_repeats, self.deletion_max_samples,
                                    self.deletion_bootstrap) < 1:
            raise ValueError("ig_steps must be >= 2; ig_batch, deletion_repeats, deletion_max_samples and "
                             "deletion_bootstrap >= 1")
        if not 0 < self.deletion_confidence < 1 or self.deletion_min_area < 0:
            raise ValueError("deletion_confidence must be in (0, 1) and deletion_min_area >= 0")
        fr = self.deletion_fractions
        if len(fr) < 2 or any(not 0 <= f <= 1 for f in fr) or list(fr) != sorted(fr):
            raise ValueError(f"deletion_fractions must be >= 2 increasing values in [0, 1], got {list(fr)}")

    def kinds(self) -> list[str]:
        """The attribution kinds these settings produce (before dropping IG label for label-less models)."""
        kinds = [f"joint/{m}" for m in self.modes]
        if self.private:
            kinds += [f"private/{m}" for m in self.modes]
        if self.integrated_gradients:
            kinds += list(IG_KINDS)
        return kinds

    def to_dict(self) -> dict:
        """JSON-ready settings."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}


@dataclass
class Completeness:
    """IG completeness: Σ_parts attribution vs f(x) − f(x0), per sample."""

    f_x: Tensor  # (B,)
    f_x0: Tensor  # (B,)
    delta: Tensor  # (B,) Σ attributions − (f(x) − f(x0))
    tol: float

    @property
    def relative_error(self) -> float:
        """Σ_b |delta_b| / Σ_b |f(x_b) − f(x0_b)|."""
        gap = (self.f_x - self.f_x0).abs().sum().item()
        return self.delta.abs().sum().item() / max(gap, 1e-12)

    @property
    def ok(self) -> bool:
        return self.relative_error <= self.tol


@dataclass
class DeletionCurve:
    """Degradation after masking a fraction of parts, in attribution order and in random order.

    `top` and `random` are the mean curves; `top_areas` (B,) and `random_areas` (repeats, B) are the
    areas under each sample's curve, from which the interval of the area ratio is bootstrapped.
    """

    score: str  # "label_logit" (drop of the target logit) or "recon_from_joint" (rise of ℓ_m per part)
    ranking: str  # the attribution kind that ordered the parts
    fractions: list[float]
    top: list[float]
    random: list[float]
    top_areas: list[float] = field(default_factory=list)  # per sample
    random_areas: list[list[float]] = field(default_factory=list)  # per random repeat, per sample
    reference: float | None = None  # mean |unmasked score| (|target logit| or |ℓ_m per part|); None: absolute
    min_area: float = 1e-3  # relative to `reference`
    ci: tuple[float, float] | None = None  # bootstrap interval of area_ratio (None: n/a)
    confidence: float = 0.95
    bootstrap: int = 0

    @property
    def area_top(self) -> float:
        return float(np.trapezoid(self.top, self.fractions))

    @property
    def area_random(self) -> float:
        return float(np.trapezoid(self.random, self.fractions))

    @property
    def samples(self) -> int:
        return len(self.top_areas)

    @property
    def repeats(self) -> int:
        return len(self.random_areas)

    @property
    def floor(self) -> float:
        """The smallest random-order area that can be compared: min_area x reference (1e-12 without one)."""
        return 1e-12 if self.reference is None else max(self.min_area * abs(self.reference), 1e-12)

    @property
    def comparable(self) -> bool:
        """Random masking must degrade the score measurably for a ratio against it to mean anything."""
        return self.area_random > self.floor

    @property
    def area_ratio(self) -> float | None:
        """area(top) / area(random); > 1 means the attribution order is more harmful than chance (None: n/a)."""
        return self.area_top / self.area_random if self.comparable else None

    @property
    def verdict(self) -> str:
        """"pass" when the interval's lower end is above 1, "n/a" when the areas are too small, else "fail"."""
        if self.area_ratio is None:
            return "n/a"
        low = self.ci[0] if self.ci is not None else self.area_ratio
        return "pass" if low > 1 else "fail"


def ratio_interval(top_areas: np.ndarray, random_areas: np.ndarray, resamples: int, confidence: float,
                   seed: int) -> tuple[float, float]:
    """Percentile bootstrap over samples of mean(top_areas) / mean(random_areas), pairs kept together.

    top_areas (B,), random_areas (B,) (each sample's mean over the random repeats). A resample whose
    random mean is not positive gets ratio ±inf by the sign of its top mean (it cannot bound the ratio)."""
    n = top_areas.shape[0]
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n, size=(resamples, n))
    num, den = top_areas[idx].mean(1), random_areas[idx].mean(1)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratios = np.where(den > 0, num / np.where(den > 0, den, 1.0), np.where(num >= 0, np.inf, -np.inf))
    alpha = (1 - confidence) / 2
    low, high = np.quantile(ratios, [alpha, 1 - alpha], method="nearest")
    return float(low), float(high)


@dataclass
class AttributionResult:
    """Everything `attribute` computed for one batch; raw values, unnormalised."""

    names: list[str]
    kinds: list[str]
    maps: dict[str, dict[str, Tensor]]  # maps[m][kind]: (B, P)
    inputs: dict[str, Tensor]  # preprocessed x_m (B, *shape)
    recon: dict[str, Tensor]  # posterior-mean reconstruction in data space
    present: dict[str, Tensor]  # (B,) bool
    labels: Tensor  # (B,) data labels, -1 unknown
    predicted: Tensor | None  # (B,) argmax of the label head
    target: Tensor | None  # (B,) the class whose logit IG explains
    completeness: dict[str, Completeness] = field(default_factory=dict)
    deletion: dict[str, list[DeletionCurve]] = field(default_factory=dict)  # per modality
    seconds: dict[str, float] = field(default_factory=dict)
    # ‖∂ℓ_m/∂F_y‖ of each modality's whole loss term ℓ_m = Σ_t ℓ_m[t], per sample (0 where m is absent)
    term_gradients: dict[str, Tensor] = field(default_factory=dict)
    term_weights: dict[str, float] = field(default_factory=dict)  # w_m of recon/<m> in the training loss
    term_weights_source: str = ""


# --- posterior means --------------------------------------------------------------------------------
@dataclass
class Encoded:
    inputs: dict[str, Tensor]
    present: dict[str, Tensor]
    z_joint: Tensor  # (B, Dy) posterior mean
    f_joint: Tensor  # (B, Fy) = G_y(z_joint)
    f_private: dict[str, Tensor]  # (B, Fm) = G_m(posterior mean of Z_m), modalities with a private factor
    cond: dict[str, Tensor] = field(default_factory=dict)  # condition features (B, F_c)
    masks: dict[str, Tensor] = field(default_factory=dict)  # per-element masks of padded modalities


@torch.no_grad()
def encode_means(model: MultimodalModel, batch: dict) -> Encoded:
    """Preprocess and encode a batch with posterior means (no sampling): deterministic."""
    if model.training:
        raise ValueError("attribution needs the model in eval mode (call model.eval())")
    masks = batch.get("mask", {})
    inputs = model.preprocess(batch["x"], masks)
    post = model.encode(inputs, batch["present"], masks)
    f_private = {m: model.private_feature(m, q.mu) for m, q in post.private.items()}
    cond = {c: post.encodings[c].h for c in model.conditions}
    z = post.joint.mean
    return Encoded(inputs, batch["present"], z, model.joint_features(z), f_private, cond, masks)


def _rows(d: dict[str, Tensor], index) -> dict[str, Tensor]:
    return {k: v[index] for k, v in d.items()}


def decode_from_features(model: MultimodalModel, name: str, f_joint: Tensor, f_private: Tensor | None,
                         cond: dict[str, Tensor] | None = None) -> Tensor:
    """Likelihood parameters of modality `name` from features F_y, F_m (and conditions), as the model decodes."""
    return model.decode_from_features(name, f_joint, f_private, cond)


# --- feature gradients: forward-mode Jacobians ---------------------------------------------------------
def forward_jacobian(fn: Callable[[Tensor], tuple[Tensor, ...]], f: Tensor) -> tuple[Tensor, ...]:
    """Directional derivatives of every output of fn along each feature axis: (F, B, ...) per output.

    fn maps features (B, F) to outputs whose rows depend only on the same row of f, so one tangent
    e_k (for all rows at once) gives every sample's ∂out/∂f_k; vmap runs the F tangents together.
    """
    dim = f.shape[-1]
    basis = torch.eye(dim, dtype=f.dtype, device=f.device).unsqueeze(1).expand(dim, *f.shape)  # (F, B, F)
    return torch.func.vmap(lambda t: torch.func.jvp(fn, (f,), (t,))[1])(basis)


def _reconstruction(modality: Modality, params: Tensor, differentiable_mean: bool) -> Tensor:
    """x̂ in data space; a non-differentiable mean (argmax of categorical logits) is replaced by probabilities."""
    return modality.mean(params) if differentiable_mean else torch.softmax(params, dim=-1)


def _sum_trailing(t: Tensor, ndim: int) -> Tensor:
    """Sum every axis beyond the first `ndim` (e.g. the vocabulary axis of token probabilities)."""
    return t.flatten(ndim).sum(-1) if t.dim() > ndim else t


def part_gradient_norms(
    modality: Modality,
    decode: Callable[[Tensor], Tensor],
    f: Tensor,
    x: Tensor,
    modes: Sequence[str] = MODES,
) -> dict[str, Tensor]:
    """Per-part gradient norms with respect to features f (B, F): {"loss"|"jacobian": (B, P)}.

    With loss mode, also "loss_term": (B,) ‖∂ℓ/∂f‖ of the modality's whole loss ℓ = Σ_t ℓ[t] (the norm of the
    sum of the per-part tangents, not the sum of their norms): what the modality's share is computed from.
    decode: f -> likelihood parameters of `modality`; x: the preprocessed data (B, *shape) for the loss.
    """
    with torch.no_grad():
        differentiable_mean = modality.mean(decode(f)).is_floating_point()

    def outputs(features: Tensor) -> tuple[Tensor, ...]:
        params = decode(features)
        out = []
        if "jacobian" in modes:
            out.append(_reconstruction(modality, params, differentiable_mean))
        if "loss" in modes:
            out.append(modality.to_parts(-modality.log_prob_elements(params, x)))  # (B, P) part losses
        return tuple(out)

    with torch.no_grad():
        tangents = list(forward_jacobian(outputs, f))
    result = {}
    if "jacobian" in modes:
        squares = _sum_trailing(tangents.pop(0).pow(2).sum(0), 1 + len(modality.model_shape))  # (B, *shape)
        result["jacobian"] = modality.to_parts(squares).clamp_min(0).sqrt()
    if "loss" in modes:
        loss_tangents = tangents.pop(0)  # (F, B, P)
        result["loss"] = loss_tangents.pow(2).sum(0).sqrt()
        result["loss_term"] = loss_tangents.sum(2).pow(2).sum(0).sqrt()
    return result


def _chunk_size(feature_dim: int, per_sample: int, budget: int) -> int:
    return max(1, budget // max(1, feature_dim * per_sample))


def feature_attributions(
    model: MultimodalModel, enc: Encoded, factor: str, settings: AttributionSettings,
    term_gradients: dict[str, Tensor] | None = None,
) -> dict[str, dict[str, Tensor]]:
    """{m: {"<factor>/<mode>": (B, P)}} for factor "joint" (w.r.t. F_y) or "private" (w.r.t. each F_m).

    With loss mode and a `term_gradients` dict, also fills term_gradients[m] = (B,) ‖∂ℓ_m/∂F‖ of the
    whole loss term (0 where m is absent)."""
    if factor not in ("joint", "private"):
        raise ValueError(f"factor must be 'joint' or 'private', got {factor!r}")
    out: dict[str, dict[str, Tensor]] = {}
    n = enc.f_joint.shape[0]
    for m in model.names:
        modality = model.modalities[m]
        if factor == "private" and m not in enc.f_private:
            continue  # a modality without a private factor
        f_all = enc.f_joint if factor == "joint" else enc.f_private[m]
        per_sample = 2 * math.prod(modality.model_shape)  # reconstruction and loss tangents
        step = _chunk_size(f_all.shape[1], per_sample, settings.max_chunk_elements)
        pieces: dict[str, list[Tensor]] = {mode: [] for mode in settings.modes}
        terms: list[Tensor] = []
        for lo in range(0, n, step):
            sl = slice(lo, lo + step)
            fy, x = enc.f_joint[sl], enc.inputs[m][sl]
            fm = enc.f_private[m][sl] if m in enc.f_private else None
            cond = _rows(enc.cond, sl)
            if factor == "joint":
                decode = lambda f, fm=fm, cond=cond: decode_from_features(model, m, f, fm, cond)  # noqa: E731
                f = fy
            else:
                decode = lambda f, fy=fy, cond=cond: decode_from_features(model, m, fy, f, cond)  # noqa: E731
                f = fm
            norms = part_gradient_norms(modality, decode, f, x, settings.modes)
            if "loss_term" in norms:
                terms.append(norms.pop("loss_term"))
            for mode, value in norms.items():
                pieces[mode].append(value)
        absent = ~enc.present[m]
        if terms and term_gradients is not None:
            term = torch.cat(terms)
            term_gradients[m] = torch.where(absent, torch.zeros_like(term), term)
        out[m] = {}
        for mode, values in pieces.items():
            value = torch.cat(values)
            if mode == "loss":  # the loss of an absent modality compares against filler: meaningless
                value = torch.where(absent.unsqueeze(1), torch.zeros_like(value), value)
            out[m][f"{factor}/{mode}"] = value
    return out


# --- integrated gradients -----------------------------------------------------------------------------
def integrated_gradients(
    forward: Callable[..., Tensor],
    inputs: tuple[Tensor, ...],
    baselines: tuple[Tensor, ...],
    target: Tensor | None = None,
    additional_forward_args: tuple | None = None,
    steps: int = 32,
    method: str = "gausslegendre",
    tol: float = 0.05,
) -> tuple[tuple[Tensor, ...], Completeness]:
    """Captum integrated gradients of a scalar per sample, with f(x), f(x0) and the completeness gap."""
    from captum.attr import IntegratedGradients

    ig = IntegratedGradients(forward)
    attributions, delta = ig.attribute(
        inputs, baselines=baselines, target=target, additional_forward_args=additional_forward_args,
        n_steps=steps, method=method, return_convergence_delta=True,
    )
    with torch.no_grad():
        extra = additional_forward_args or ()
        f_x = _select(forward(*inputs, *extra), target)
        f_x0 = _select(forward(*baselines, *extra), target)
    return tuple(a.detach() for a in attributions), Completeness(f_x, f_x0, delta.detach(), tol)


def _select(out: Tensor, target: Tensor | None) -> Tensor:
    """Scalar per sample: out itself (B,), or the target column of (B, C)."""
    if target is None:
        return out.reshape(out.shape[0])
    return out.gather(1, target.view(-1, 1)).squeeze(1)


class _ModelScalar:
    """Captum forward functions over the model's float inputs (other inputs ride along as extra args)."""

    def __init__(self, model: MultimodalModel, float_names: list[str], other_names: list[str]):
        self.model, self.float_names, self.other_names = model, float_names, other_names

    mask_names: tuple[str, ...] = ()  # padded modalities whose element masks ride along after `present`

    def _joint_mu(self, args: tuple) -> tuple[Tensor, tuple]:
        k, j, n = len(self.float_names), len(self.other_names), len(self.mask_names)
        inputs = dict(zip(self.float_names, args[:k])) | dict(zip(self.other_names, args[k : k + j]))
        present_matrix = args[k + j]  # (B, M) bool, one column per model.names
        present = {m: present_matrix[:, i] for i, m in enumerate(self.model.names)}
        masks = dict(zip(self.mask_names, args[k + j + 1 : k + j + 1 + n]))
        return self.model.encode(inputs, present, masks or None).joint.mean, args[k + j + 1 + n :]

    def label_logits(self, *args: Tensor) -> Tensor:
        """(B, num_classes) logits from the joint factor."""
        mu, _ = self._joint_mu(args)
        return self.model.classify(mu)

    def joint_projection(self, *args: Tensor) -> Tensor:
        """(B,) s(x) = <μ_y(x) − origin, direction>."""
        mu, (origin, direction) = self._joint_mu(args)
        return ((mu - origin) * direction).sum(-1)


def input_attributions(
    model: MultimodalModel, enc: Encoded, target: Tensor | None, settings: AttributionSettings
) -> tuple[dict[str, dict[str, Tensor]], dict[str, Completeness]]:
    """IG per input element, summed into parts: ({m: {"ig/label", "ig/joint": (B, P)}}, completeness per kind).

    Conditions and inputs that cannot be interpolated (token ids) ride along unchanged."""
    names = model.names
    # A modality may say what IG interpolates (e.g. text: word embeddings instead of token ids).
    inputs = {m: (model.modalities[m].attribution_input(x) if hasattr(model.modalities[m], "attribution_input") else x)
              for m, x in enc.inputs.items()}
    enc = Encoded(inputs, enc.present, enc.z_joint, enc.f_joint, enc.f_private, enc.cond, enc.masks)
    float_names = [m for m in names if enc.inputs[m].is_floating_point()]
    other_names = [m for m in names if m not in float_names] + list(model.conditions)
    scalar = _ModelScalar(model, float_names, other_names)
    scalar.mask_names = tuple(enc.masks)
    present = torch.stack([enc.present[m] for m in names], dim=1)  # (B, M)
    n = present.shape[0]
    parts: dict[str, dict[str, list[Tensor]]] = {m: {} for m in names}
    gaps: dict[str, list[Completeness]] = {}
    jobs: list[tuple[str, Callable, Tensor | None]] = []
    if target is not None:
        jobs.append(("ig/label", scalar.label_logits, target))
    jobs.append(("ig/joint", scalar.joint_projection, None))
    for lo in range(0, n, settings.ig_batch):
        sl = slice(lo, lo + settings.ig_batch)
        xs = tuple(enc.inputs[m][sl] for m in float_names)
        x0s = tuple(torch.zeros_like(x) for x in xs)  # the baseline: zeros in model-input space
        common = (*(enc.inputs[m][sl] for m in other_names), present[sl], *(enc.masks[m][sl] for m in scalar.mask_names))
        with torch.no_grad():
            origin = model.encode(dict(zip(float_names, x0s)) | dict(zip(other_names, common)), {
                m: present[sl, i] for i, m in enumerate(names)}, _rows(enc.masks, sl) or None).joint.mean
        offset = enc.z_joint[sl] - origin
        direction = offset / offset.norm(dim=1, keepdim=True).clamp_min(1e-12)
        for kind, fn, tgt in jobs:
            extra = common if kind == "ig/label" else (*common, origin, direction)
            attrs, comp = integrated_gradients(
                fn, xs, x0s, None if tgt is None else tgt[sl], extra, settings.ig_steps, settings.ig_method
            )
            gaps.setdefault(kind, []).append(comp)
            for m, a in zip(float_names, attrs):
                parts[m].setdefault(kind, []).append(model.modalities[m].to_parts(a))
    out = {m: {kind: torch.cat(v) for kind, v in parts[m].items()} for m in float_names}
    for m in [k for k in other_names if k in names]:
        rows = model.modalities[m].to_parts(torch.zeros(enc.inputs[m].shape))
        out[m] = {kind: torch.zeros_like(rows) for kind, _, _ in jobs}
    completeness = {
        kind: Completeness(torch.cat([c.f_x for c in cs]), torch.cat([c.f_x0 for c in cs]),
                           torch.cat([c.delta for c in cs]), settings.completeness_tol)
        for kind, cs in gaps.items()
    }
    return out, completeness


# --- faithfulness: deletion ---------------------------------------------------------------------------
def parts_to_elements(modality: Modality, part_mask: Tensor, element_shape: torch.Size) -> Tensor:
    """(B, P) bool part mask -> (B, *shape) bool element mask, through the adjoint of `to_parts` (a grouping sum)."""
    zeros = torch.zeros(element_shape, dtype=torch.float32, device=part_mask.device)
    _, pullback = torch.func.vjp(modality.to_parts, zeros)
    return pullback(part_mask.to(torch.float32))[0] > 0


def _order_mask(order: Tensor, k: int) -> Tensor:
    """(B, P) part order (most important first) -> mask of the first k parts."""
    rank = torch.empty_like(order)
    rank.scatter_(1, order, torch.arange(order.shape[1], device=order.device).expand_as(order))
    return rank < k


def _tile(t: Tensor, reps: int) -> Tensor:
    """Stack `reps` copies of t along the batch axis."""
    return t.repeat(reps, *([1] * (t.dim() - 1)))


def deletion_curves(
    score: Callable[[Tensor], Tensor],
    modality: Modality,
    x: Tensor,
    rankings: dict[str, Tensor],
    fractions: Sequence[float],
    repeats: int,
    generator: torch.Generator,
    score_name: str = "",
    reference: float | None = None,
    min_area: float = 1e-3,
    bootstrap: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
) -> list[DeletionCurve]:
    """Degradation after zeroing the top-ranked parts (per ranking) vs random parts (shared by all rankings).

    x: (B, *shape) preprocessed; rankings: {name: (B, P)}, larger = more important;
    score: masked x stacked O times along the batch (O*B, *shape) -> degradation per row (O*B,).
    Every curve keeps each sample's area per order, and the bootstrap interval (`ratio_interval`, seeded
    with `seed`) of area(top) / area(random) when the random area exceeds min_area x |reference|.
    """
    n, p = next(iter(rankings.values())).shape
    tops = [r.argsort(dim=1, descending=True, stable=True) for r in rankings.values()]
    randoms = [torch.rand(n, p, generator=generator).argsort(dim=1).to(x.device) for _ in range(repeats)]
    orders = torch.cat([*tops, *randoms])  # (O*B, P), O = len(rankings) + repeats
    count = len(tops) + repeats
    tiled = _tile(x, count)
    rows = []
    with torch.no_grad():
        for frac in fractions:
            mask = parts_to_elements(modality, _order_mask(orders, int(round(frac * p))), tiled.shape)
            rows.append(score(torch.where(mask, torch.zeros_like(tiled), tiled)).view(count, n).double().cpu())
    fr = [float(f) for f in fractions]
    per_sample = torch.stack(rows).numpy()  # (fractions, O, B)
    areas = np.trapezoid(per_sample, fr, axis=0)  # (O, B)
    means = per_sample.mean(2)  # (fractions, O)
    random_mean = means[:, len(tops):].mean(1).tolist()
    random_areas = areas[len(tops):]  # (repeats, B)
    curves = []
    for j, name in enumerate(rankings):
        curve = DeletionCurve(score_name, name, fr, means[:, j].tolist(), random_mean, areas[j].tolist(),
                              random_areas.tolist(), reference, min_area, None, confidence, bootstrap)
        if curve.comparable:
            curve.ci = ratio_interval(areas[j], random_areas.mean(0), bootstrap, confidence, seed)
        curves.append(curve)
    return curves


def deletion_tests(
    model: MultimodalModel,
    enc: Encoded,
    maps: dict[str, dict[str, Tensor]],
    target: Tensor | None,
    settings: AttributionSettings,
) -> dict[str, list[DeletionCurve]]:
    """Per modality: label-logit deletion ordered by ig/label, F_y-reconstruction deletion ordered by the joint kinds."""
    generator = torch.Generator().manual_seed(settings.seed)
    result: dict[str, list[DeletionCurve]] = {}
    with torch.no_grad():
        base_logit = model.classify(enc.z_joint).gather(1, target.view(-1, 1)).squeeze(1) if target is not None else None
    for m in model.names:
        modality, present = model.modalities[m], enc.present[m]
        if not enc.inputs[m].is_floating_point() or not present.any():
            continue
        # Only samples where m is observed can lose it; a capped subset keeps the test cheap.
        keep = present.nonzero().squeeze(1)[: settings.deletion_max_samples]
        x_m = enc.inputs[m][keep]
        f_m = enc.f_private[m][keep] if m in enc.f_private else None
        sub_present = {k: v[keep] for k, v in enc.present.items()}
        sub_cond = _rows(enc.cond, keep)
        with torch.no_grad():  # the other modalities are not masked: encode them once (as model.encode does)
            features = {k: model.modalities[k].encode(enc.inputs[k][keep]).h for k in model.names if k != m}
        parts = model.modalities[m].parts_shape

        def joint_mu(masked: Tensor) -> Tensor:
            reps = masked.shape[0] // keep.shape[0]
            feats = {k: _tile(v, reps) for k, v in features.items()} | {m: modality.encode(masked).h}
            return model.fuse(feats, {k: _tile(v, reps) for k, v in sub_present.items()}).mean

        def recon_loss(masked: Tensor) -> Tensor:
            reps = masked.shape[0] // keep.shape[0]
            params = decode_from_features(model, m, model.joint_features(joint_mu(masked)),
                                          None if f_m is None else _tile(f_m, reps),
                                          {c: _tile(v, reps) for c, v in sub_cond.items()})
            return -modality.log_prob(params, _tile(x_m, reps)) / math.prod(parts)

        def label_drop(masked: Tensor) -> Tensor:
            reps = masked.shape[0] // keep.shape[0]
            logits = model.classify(joint_mu(masked))
            return _tile(base_logit[keep], reps) - logits.gather(1, _tile(target[keep], reps).view(-1, 1)).squeeze(1)

        def recon_rise(masked: Tensor) -> Tensor:
            return recon_loss(masked) - _tile(base_recon, masked.shape[0] // keep.shape[0])

        with torch.no_grad():
            base_recon = recon_loss(x_m)
        fr, reps = settings.deletion_fractions, settings.deletion_repeats
        stats = {"min_area": settings.deletion_min_area, "bootstrap": settings.deletion_bootstrap,
                 "confidence": settings.deletion_confidence, "seed": settings.seed}
        curves = []
        if target is not None and "ig/label" in maps[m]:
            ranking = {"ig/label": maps[m]["ig/label"][keep]}
            reference = float(base_logit[keep].abs().mean())  # the unmasked target logit
            curves += deletion_curves(label_drop, modality, x_m, ranking, fr, reps, generator, "label_logit",
                                      reference, **stats)
        rankings = {k: maps[m][k][keep] for k in ("joint/loss", "joint/jacobian", "ig/joint") if k in maps[m]}
        if rankings:
            reference = float(base_recon.abs().mean())  # the unmasked −log p(x_m | F_y, F_m) per part
            curves += deletion_curves(recon_rise, modality, x_m, rankings, fr, reps, generator, "recon_from_joint",
                                      reference, **stats)
        result[m] = curves
    return result


# --- the whole pass -----------------------------------------------------------------------------------
def attribute(model: MultimodalModel, batch: dict, settings: AttributionSettings | None = None,
              term_weights: dict[str, float] | None = None, term_weights_source: str | None = None,
              on_phase: Callable[[str, float], None] | None = None) -> AttributionResult:
    """Every attribution of `settings` for one batch (see the module docstring).

    term_weights: w_m, the weight of recon/<m> in the training loss (see `reconstruction_term_weights`);
    without it the family's size corrections (`term_scales`) alone are used and the source says so."""
    settings = settings or AttributionSettings()
    if term_weights is None:
        term_weights, term_weights_source = reconstruction_term_weights(model), (
            "family term scales only (no loss config given: loss.weights taken as 1)")
    seconds: dict[str, float] = {}
    clock = time.perf_counter()
    enc = encode_means(model, batch)
    maps: dict[str, dict[str, Tensor]] = {m: {} for m in model.names}
    term_gradients: dict[str, Tensor] = {}
    for factor in ["joint", "private"] if settings.private else ["joint"]:
        grads = term_gradients if factor == "joint" else None
        for m, kinds in feature_attributions(model, enc, factor, settings, grads).items():
            maps[m].update(kinds)
        seconds[factor] = time.perf_counter() - clock
        if on_phase:
            on_phase(f"{factor}-factor gradients", seconds[factor])
        clock = time.perf_counter()

    labels = batch_labels(batch)
    predicted = target = None
    completeness: dict[str, Completeness] = {}
    if model.has_label_head:
        with torch.no_grad():
            predicted = model.classify(enc.z_joint).argmax(1)
        if settings.target == "label" and bool((labels < 0).any()):
            raise ValueError("target='label' needs a label for every sample; some are -1 (unknown)")
        target = predicted if settings.target == "predicted" else labels
    if settings.integrated_gradients:
        ig_maps, completeness = input_attributions(model, enc, target, settings)
        for m, kinds in ig_maps.items():
            maps[m].update(kinds)
        seconds["integrated_gradients"] = time.perf_counter() - clock
        if on_phase:
            on_phase("integrated gradients", seconds["integrated_gradients"])
        clock = time.perf_counter()

    deletion = deletion_tests(model, enc, maps, target, settings) if settings.deletion else {}
    if settings.deletion:
        seconds["deletion"] = time.perf_counter() - clock
        if on_phase:
            on_phase("deletion test", seconds["deletion"])
    with torch.no_grad():
        recon = {
            m: model.mean(m, decode_from_features(model, m, enc.f_joint, enc.f_private.get(m), enc.cond))
            for m in model.names
        }
    kinds = [k for k in settings.kinds() if all(k in maps[m] for m in model.names)]
    return AttributionResult(
        names=list(model.names), kinds=kinds, maps=maps, inputs=enc.inputs, recon=recon, present=enc.present,
        labels=labels, predicted=predicted, target=target, completeness=completeness, deletion=deletion, seconds=seconds,
        term_gradients=term_gradients, term_weights={m: float(term_weights.get(m, 1.0)) for m in model.names},
        term_weights_source=term_weights_source or "given by the caller",
    )


def reconstruction_term_weights(model: MultimodalModel, loss_cfg=None, step: int | None = None) -> dict[str, float]:
    """w_m = loss.weights schedule of recon/<m> at `step` (1 without a config) x the family's term scale."""
    from mmvae.losses import configured_weight

    scales = model.term_scales()
    weights = {}
    for m in model.names:
        name = f"recon/{m}"
        configured = 1.0 if loss_cfg is None else configured_weight(loss_cfg, name, step or 0)
        weights[m] = float(configured) * float(scales.get(name, 1.0))
    return weights


# --- normalisation for display ------------------------------------------------------------------------
def shares(values: Tensor) -> Tensor:
    """Normalise each row (B, P) by its total absolute attribution: |shares| sum to 1 (0 where all are 0)."""
    total = values.abs().sum(dim=1, keepdim=True)
    return torch.where(total > 0, values / total.clamp_min(1e-30), torch.zeros_like(values))


# Why a kind has no cross-modality share (shown in the report and kept in the JSON).
NO_SHARE_REASON = {
    "jacobian": "Jacobian-mode norms are in each modality's data units (pixel intensity, waveform amplitude, "
                "token probability), so adding them across modalities mixes units: no cross-modality share.",
    "private": "each private factor F_m is a different vector, so its gradients are not comparable across modalities.",
}


def share_basis(kind: str) -> str | None:
    """How a kind's cross-modality share is computed, or None when it has none (see NO_SHARE_REASON)."""
    if kind == "joint/loss":
        return "w_m ‖∂ℓ_m/∂F_y‖ of the modality's whole weighted loss term (nats per unit of F_y)"
    if kind in SIGNED_KINDS:
        return "Σ_t |IG_t| over the modality's parts (units of the explained scalar; IG is additive over inputs)"
    return None


def no_share_reason(kind: str) -> str:
    return NO_SHARE_REASON["private" if kind.startswith("private/") else "jacobian"]


def loss_term_shares(term_gradients: dict[str, Tensor], weights: dict[str, float]) -> dict[str, Tensor]:
    """{m: (B,)} w_m g_m / Σ_k w_k g_k for whole-term gradient norms g_m (B,); 0 where the total is 0."""
    weighted = {m: g.abs() * float(weights.get(m, 1.0)) for m, g in term_gradients.items()}
    total = torch.stack(list(weighted.values())).sum(0)
    return {m: torch.where(total > 0, w / total.clamp_min(1e-30), torch.zeros_like(w)) for m, w in weighted.items()}


def modality_shares(result: AttributionResult, kind: str) -> dict[str, Tensor] | None:
    """Each modality's share of `kind` per sample, {m: (B,)}, or None where no share is comparable.

    joint/loss: from the whole loss terms (`loss_term_shares`); IG kinds: each modality's part of Σ |IG|;
    Jacobian and private kinds: None (`no_share_reason`)."""
    if share_basis(kind) is None:
        return None
    if kind == "joint/loss":
        if set(result.term_gradients) != set(result.names):
            return None
        return loss_term_shares(result.term_gradients, result.term_weights)
    totals = {m: result.maps[m][kind].abs().sum(1) for m in result.names}
    overall = torch.stack(list(totals.values())).sum(0).clamp_min(1e-30)
    return {m: t / overall for m, t in totals.items()}


def top_parts(values: Tensor, k: int, parts_shape: tuple[int, ...]) -> list[dict]:
    """The k parts of one sample's (P,) attribution with the largest |value|: index, coordinates, value, share."""
    share = shares(values.unsqueeze(0))[0]
    order = values.abs().argsort(descending=True, stable=True)[:k]
    rows = []
    for idx in order.tolist():
        coords = [int(c) for c in np.unravel_index(idx, parts_shape)] if math.prod(parts_shape) == values.numel() else [idx]
        rows.append({"part": idx, "coords": coords, "value": float(values[idx]), "share": float(share[idx])})
    return rows
