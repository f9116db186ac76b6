"""A label-free penalty on content in the private factors: the batch cross-covariance of Z_y and each Z_m.

    xcov/<m> = || C ||_F^2,   C = (1/N) sum_i (z_y,i - mean z_y)(z_m,i - mean z_m)^T   (Dy x Dm)

over the N rows of the batch where modality m is present (Cheung et al. 2014, "Discovering hidden factors of
variation in deep networks", whose XCov is half of this; the half is a weight). Zero when Z_m is linearly
uncorrelated with Z_y over the batch. Needs no labels: whatever Z_m holds of the content that Z_y also holds
shows up as cross-covariance. With the ten classes of MNIST–SVHN held by Z_y as ten class means in 20
dimensions (in general position, so any function of the class is a linear function of Z_y's class means), a
class-dependent mean of Z_m is a cross-covariance; style that varies within a class and is absent from Z_y is
not. It penalises linear dependence only, and it is not scale-free (shrinking Z_m lowers it; the KL to N(0, I)
keeps the scale).

Input: posterior means by default (`loss.options.xcov.input: mean`). The sampling noise of Z_y and Z_m is
independent of everything, so it adds nothing to the expected cross-covariance, but it raises the positive
finite-batch bias of the squared norm (about tr Σ_y · tr Σ_m / N for uncorrelated codes, Σ the total covariance,
which the noise enlarges) and its variance; the means are also what the probes read. `input: sample` uses the
decoded latents. Under DDP the rows are all-gathered with their gradient (when `loss.mmd_gather`, as for MMD), so
the statistic is that of the global batch.

Options (`loss.options.xcov`): input (mean | sample), modalities (default: every one with a private factor).
Cost: one (Dy x N)(N x Dm) product per modality.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict
from torch import Tensor

from mmvae.losses import LOSS_TERMS, LossTerms, chosen_private_modalities


def cross_covariance_penalty(a: Tensor, b: Tensor, weights: Tensor | None = None) -> Tensor:
    """||C||_F^2 of the (weighted) batch cross-covariance C = E_w[(a - E_w a)(b - E_w b)^T] of a (N, Da) and
    b (N, Db), weights (N,) in {0, 1} (None: all 1); the 1/N normalisation; 0 where every weight is 0."""
    a, b = a.float(), b.float()
    w = a.new_ones(a.shape[0]) if weights is None else weights.float()
    total = w.sum().clamp(min=1.0)
    ca = a - (w[:, None] * a).sum(0) / total
    cb = b - (w[:, None] * b).sum(0) / total
    cov = (w[:, None] * ca).T @ cb / total  # (Da, Db)
    return cov.pow(2).sum()


class CrossCovarianceTerms(LossTerms):
    """xcov/<m> for each chosen modality with a private factor."""

    name = "xcov"

    class Options(BaseModel):
        model_config = ConfigDict(extra="forbid")
        input: Literal["mean", "sample"] = "mean"
        modalities: list[str] | None = None  # default: every modality with a private factor

    def modalities(self, model, cfg) -> list[str]:
        return chosen_private_modalities(model, cfg, self.name)

    def names(self, model, cfg):
        return [f"xcov/{m}" for m in self.modalities(model, cfg)]

    def __call__(self, model, out, batch, ctx):
        use_mean = ctx.config.group_options(self.name).input == "mean"
        gather = ctx.gather or (lambda t: t)
        z_joint = out.posteriors.joint.mean if use_mean else out.z_joint
        zy = gather(z_joint)
        terms = {}
        for m in self.modalities(model, ctx.config):
            zm = out.posteriors.private[m].mu if use_mean else out.z_private[m]
            weights = gather(batch["present"][m].to(zm.dtype))
            terms[f"xcov/{m}"] = cross_covariance_penalty(zy, gather(zm), weights)
        return terms


LOSS_TERMS[CrossCovarianceTerms.name] = CrossCovarianceTerms()
