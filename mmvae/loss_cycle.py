"""A style-donor latent cycle: the private factor must carry the style that the decoder renders.

Within the batch, sample a is the content donor and b = the previous sample (the batch rolled by one) the style
donor. For each chosen modality m:

    x̃_m = mean of p(x_m | Z_y(a), Z_m(b))            decoded in modelled space (`model.mean`)
    cycle/<m>          = || mu_m(x̃_m) - z_m(b) ||^2      the re-encoded private part lands at the style donor
    cycle/<m>/content  = || mu_y(x̃_m) - z_y(a) ||^2      Z_y inferred from x̃_m alone keeps the content (optional)

z_y(a) and z_m(b) are this step's posterior means (Z_y as the step infers it, from the modalities the joint
encoder was shown); mu_m, mu_y are posterior means of the re-encoding, so the term is 0 when the cycle is exact
(a sampled target would add its variance, tr Σ, which no parameter can lower). Sums over latent dimensions,
means over the batch; rows where m is absent from a or b add 0. This is the training counterpart of the
`cycle/style/<m>` metric (mmvae.disentanglement.latent_cycle), which does the same swap.

Detached donors (`loss.options.cycle.detach: true`, the default): z_y(a) and z_m(b) enter the decoder and the
targets without gradient, so the term trains the decoder to render Z_m and the encoder to read it back from the
rendering; the first-pass codes get no gradient from it (the encoder's weights still learn, from reading the
rendering back). With the gradient, the cheapest way to lower the
term is to pull the codes of the batch towards each other (shrink Z_m, a collapse the KL then has to fight) and
towards the re-encoding of a generated input; `detach: false` allows that.

Cost: one decode per chosen modality and one more encode of the batch (every modality's encoder, once for all
chosen modalities: the swapped modalities are encoded together and Z_y of each is fused from its own features);
the cycle needs a family with `fuse` (the factorized family and the zoo families with private factors). On the
quick MNIST–SVHN config that is 2.1-2.3 x the step time on a CPU (docs/disentanglement.md, "Remedies").

Options (`loss.options.cycle`): content (true: also cycle/<m>/content), detach (true), modalities (default:
every modality with a private factor; each must be one whose encoder reads its decoder's mean, e.g. images and
vectors).
"""

from __future__ import annotations

import torch
from pydantic import BaseModel, ConfigDict

from mmvae.batch import restrict_present
from mmvae.config import ConfigError
from mmvae.heads import masked_batch_mean
from mmvae.losses import LOSS_TERMS, LossTerms, chosen_private_modalities


class StyleCycleTerms(LossTerms):
    """cycle/<m> (and cycle/<m>/content) for each chosen modality with a private factor."""

    name = "cycle"

    class Options(BaseModel):
        model_config = ConfigDict(extra="forbid")
        content: bool = True  # also the content part, cycle/<m>/content
        detach: bool = True  # the donors' codes enter the decoder and the targets without gradient
        modalities: list[str] | None = None  # default: every modality with a private factor

    def modalities(self, model, cfg) -> list[str]:
        chosen = chosen_private_modalities(model, cfg, self.name)
        if not hasattr(model, "fuse"):
            raise ConfigError(f"loss term group 'cycle' needs a family with `fuse` (model family {model.family!r})")
        return chosen

    def names(self, model, cfg):
        content = cfg.group_options(self.name).content
        return [n for m in self.modalities(model, cfg) for n in ([f"cycle/{m}"] + ([f"cycle/{m}/content"] if content
                                                                                  else []))]

    def __call__(self, model, out, batch, ctx):
        opts = ctx.config.group_options(self.name)
        chosen = self.modalities(model, ctx.config)
        present = batch["present"]
        post = out.posteriors
        n = post.joint.mean.shape[0]
        donor = torch.roll(torch.arange(n, device=post.joint.mean.device), 1)  # b = the previous sample
        keep = (lambda t: t.detach()) if opts.detach else (lambda t: t)  # noqa: E731
        z_a = keep(post.joint.mean)
        inputs = dict(out.inputs)
        valid, z_b = {}, {}
        for m in chosen:
            z_b[m] = keep(post.private[m].mu[donor])
            params = model.decode(z_a, {m: z_b[m]}, [m], out.cond)[m]
            inputs[m] = model.mean(m, params)  # x̃_m: content of a, style of b
            valid[m] = present[m] & present[m][donor]
        # One encode for every swapped modality: the private posteriors are per modality, and Z_y of each
        # swapped x̃_m alone is fused from its own features below.
        cycled = {k: (valid[k] if k in valid else torch.zeros_like(p)) for k, p in present.items()}
        again = model.encode(inputs, cycled, out.masks or None)
        features = {k: again.encodings[k].h for k in model.names}
        terms = {}
        for m in chosen:
            style = (again.private[m].mu.float() - z_b[m].float()).pow(2).sum(-1)
            terms[f"cycle/{m}"] = masked_batch_mean(style, valid[m])
            if opts.content:
                z_y = model.fuse(features, restrict_present(cycled, [m])).mean
                content = (z_y.float() - z_a.float()).pow(2).sum(-1)
                terms[f"cycle/{m}/content"] = masked_batch_mean(content, valid[m])
        return terms


LOSS_TERMS[StyleCycleTerms.name] = StyleCycleTerms()
