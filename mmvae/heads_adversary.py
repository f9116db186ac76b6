"""An adversarial label classifier on each private factor: the encoder of Z_m is trained to defeat it.

    Z_m --> MLP_m --> label logits          one classifier per chosen modality with a private factor

The classifier learns to read the label from Z_m: cross-entropy `adv/private/<m>` on the rows whose label is
known (y >= 0) and whose modality m is present. What the encoder of Z_m receives is set by `objective`:

* `reverse` — a gradient-reversal layer (Ganin & Lempitsky 2015) between Z_m and the classifier: the identity
  going forward, the gradient times -λ going back, so the encoder ascends the classifier's cross-entropy
  (-λ times the gradient that would help it). With several classes this rewards making the current classifier
  confidently *wrong*, which a lagging classifier allows by moving the classes' regions of Z_m around instead of
  merging them; in the tiny synthetic test (tests/test_remedies.py) it left the label as readable by a linear
  probe as without the adversary, or more.
* `confusion` (the default) — the classifier learns on Z_m without gradient, and the encoder descends
  `adv/private/<m>/confusion` = KL(uniform || p(y | Z_m)) through a frozen copy of it, scaled by λ: the
  encoder is pushed to make the classifier's prediction uninformative, not wrong (the "domain confusion" of
  Tzeng et al. 2015, Alvi et al. 2018). It needs no label, so it uses every present row; only the classifier
  needs labels. In the synthetic test it brings the probe near chance.

With weight w on a term, λ·w is the strength of what reaches the encoder; under Adam the classifier's own speed
does not depend on w (`lr_scale` sets it). A warm-up of the encoder's side is a warm-up of its weight
(`loss.weights`: `adv/private/*/confusion: {value: w, warmup_steps: n}`; with `reverse`, `adv/private/*`).

Input: the private posterior mean by default (`input: mean`), which is what the linear probes read
(`probe/private/<m>`) and free of the sampling noise that would only make the classifier's task (and the
encoder's gradient) noisier; `input: sample` reads the latent the decoder reads.

Config (a head under `model.heads`, any name; `hidden` is the classifiers' hidden widths):

    model.heads.adversary: {kind: private_adversary, hidden: [64], options: {num_classes: 10, scale: 1.0}}

Options: num_classes, scale (λ, 1), objective (confusion | reverse), modalities (default: every one with a
private factor), input (mean | sample), lr_scale (1), standardize (false; true: codes standardised by the batch's
statistics, as a probe reads them). Terms: `adv/private/<m>` (and `.../confusion`) for a head named `adversary`, else `adv/<head name>/<m>`; logged beside them, not in the loss: `.../accuracy`, the
classifier's accuracy on the labelled present rows of the batch (chance: 1 / classes), which says whether Z_m
still holds the label for this classifier. Cost: one small MLP per modality (two forwards with `confusion`).
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor, nn
from torch.func import functional_call

from mmvae.batch import Batch, labels
from mmvae.config import ConfigError, HeadConfig
from mmvae.heads import HEADS, Head, HeadInput, ModelDims, label_term, masked_batch_mean
from mmvae.nets import mlp


class GradientScale(torch.autograd.Function):
    """Identity forward; the gradient times `scale` backward (negative: gradient reversal)."""

    @staticmethod
    def forward(ctx, x: Tensor, scale: float) -> Tensor:
        ctx.scale = scale
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:
        return grad * ctx.scale, None


def reverse_gradient(x: Tensor, scale: float) -> Tensor:
    """The gradient-reversal layer: x unchanged; its gradient multiplied by -scale on the way back."""
    return GradientScale.apply(x, -float(scale))


def scale_gradient(x: Tensor, scale: float) -> Tensor:
    """x unchanged; its gradient multiplied by scale on the way back."""
    return GradientScale.apply(x, float(scale))


def batch_standardized(z: Tensor, eps: float = 1e-8) -> Tensor:
    """(B, D) -> each column minus its batch mean, over its batch standard deviation (population; eps-guarded)."""
    mean = z.mean(0, keepdim=True)
    return (z - mean) / (z.var(0, unbiased=False, keepdim=True) + eps).sqrt()


class PrivateAdversaryHead(Head):
    """One label classifier per private factor; the encoder of Z_m is trained against it (see the module docstring)."""

    kind = "private_adversary"

    class Options(BaseModel):
        model_config = ConfigDict(extra="forbid")
        num_classes: int = Field(ge=2)
        scale: float = Field(default=1.0, ge=0)  # λ: what reaches the encoder is λ x (reversed or confusion) gradient
        objective: Literal["confusion", "reverse"] = "confusion"
        modalities: list[str] | None = None  # default: every modality with a private factor
        input: Literal["mean", "sample"] = "mean"  # the posterior mean, or the latent the decoder reads
        lr_scale: float = Field(default=1.0, gt=0)  # the classifiers' learning rate over train.lr
        # Standardise each code dimension by the batch's mean and standard deviation before classifying (the
        # encoder's gradient flows through the statistics). A private factor squeezed by its KL varies by a
        # fraction of its prior scale: raw, the classifier barely resolves what a standardised linear probe reads.
        standardize: bool = False

    def __init__(self, name: str, config: HeadConfig, dims: ModelDims):
        super().__init__(name, config, dims)
        if config.conditioned_on:
            raise ConfigError(f"head '{name}' (kind {self.kind}) reads only the private factors; "
                              f"conditioned_on must be empty, got {config.conditioned_on}")
        available = list(dims.private_dims)
        chosen = self.options.modalities if self.options.modalities is not None else available
        unknown = [m for m in chosen if m not in dims.private_dims]
        if unknown or not chosen:
            raise ConfigError(f"head '{name}' (kind {self.kind}): option 'modalities' must name modalities with a "
                              f"private factor; got {chosen}, the modalities with one: {available}")
        self.modality_names = list(chosen)
        self.nets = nn.ModuleDict({m: mlp(dims.private_dims[m], list(config.hidden), self.options.num_classes)
                                   for m in self.modality_names})

    def param_groups(self) -> list[dict]:
        """The classifiers' own optimiser group when they learn at another rate (none at lr_scale 1)."""
        if self.options.lr_scale == 1.0:
            return []
        return [{"params": list(self.nets.parameters()), "lr_scale": self.options.lr_scale}]

    def term_name(self, m: str) -> str:
        return f"adv/private/{m}" if self.name == "adversary" else f"adv/{self.name}/{m}"

    def forward(self, inp: HeadInput) -> dict[str, Tensor]:
        """{m: logits} (and {m/confusion: logits} with objective confusion), each (B, num_classes)."""
        source = inp.private_mean if self.options.input == "mean" else inp.z_private
        missing = [m for m in self.modality_names if m not in source]
        if missing:
            raise ValueError(f"head '{self.name}' reads the private latents of {missing}, which this model's forward "
                             "does not pass to its heads (HeadInput.z_private / private_mean)")
        prepare = batch_standardized if self.options.standardize else (lambda z: z)
        out = {}
        for m in self.modality_names:
            z, net = source[m], self.nets[m]
            if self.options.objective == "reverse":
                out[m] = net(prepare(reverse_gradient(z, self.options.scale)))
            else:  # the classifier learns on codes without gradient; the encoder sees a frozen copy of it
                out[m] = net(prepare(z.detach()))
                frozen = {k: v.detach() for k, v in net.named_parameters()}
                out[f"{m}/confusion"] = functional_call(net, frozen, (prepare(scale_gradient(z, self.options.scale)),))
        return out

    def term_names(self) -> list[str]:
        suffixes = [""] if self.options.objective == "reverse" else ["", "/confusion"]
        return [self.term_name(m) + sfx for m in self.modality_names for sfx in suffixes]

    def _known(self, batch: Batch, m: str) -> Tensor:
        """Labels of the rows where m is present, -1 elsewhere."""
        y = labels(batch)
        return torch.where(batch["present"][m], y, torch.full_like(y, -1))

    def terms(self, output: dict[str, Tensor], batch: Batch) -> dict[str, Tensor]:
        terms = {self.term_name(m): label_term(output[m], self._known(batch, m)) for m in self.modality_names}
        if self.options.objective == "confusion":
            log_k = math.log(self.options.num_classes)
            for m in self.modality_names:  # KL(uniform || p(y | z_m)) on every present row, labelled or not
                kl = -F.log_softmax(output[f"{m}/confusion"].float(), dim=-1).mean(-1) - log_k
                terms[self.term_name(m) + "/confusion"] = masked_batch_mean(kl, batch["present"][m])
        return terms

    def metrics(self, output: dict[str, Tensor], batch: Batch) -> dict[str, Tensor]:
        out = {}
        for m in self.modality_names:
            y = self._known(batch, m)
            known = y >= 0
            correct = (output[m].argmax(-1) == y) & known
            out[self.term_name(m) + "/accuracy"] = correct.sum().float() / known.sum().clamp(min=1).float()
        return out


HEADS[PrivateAdversaryHead.kind] = PrivateAdversaryHead
