"""A loss-term group: an L2 penalty on the joint latent, `reg/joint_l2`. Recipe "add a loss term"."""

from __future__ import annotations

from mmvae.losses import LossTerms


class JointL2Term(LossTerms):
    def names(self, model, cfg):
        return ["reg/joint_l2"]

    def __call__(self, model, out, batch, ctx):
        return {"reg/joint_l2": out.z_joint.pow(2).sum(-1).mean()}
