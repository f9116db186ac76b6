"""Small building blocks shared by modalities, fusion and heads."""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn


def mlp(in_dim: int, hidden: Sequence[int], out_dim: int | None, activation: type[nn.Module] = nn.ReLU) -> nn.Sequential:
    """Linear-activation stack in_dim -> hidden... [-> out_dim, no activation on the last layer]."""
    layers: list[nn.Module] = []
    prev = in_dim
    for width in hidden:
        layers += [nn.Linear(prev, width), activation()]
        prev = width
    if out_dim is not None:
        layers.append(nn.Linear(prev, out_dim))
    return nn.Sequential(*layers)


def mlp_out_dim(in_dim: int, hidden: Sequence[int], out_dim: int | None) -> int:
    """Output width of `mlp(in_dim, hidden, out_dim)`."""
    if out_dim is not None:
        return out_dim
    return hidden[-1] if hidden else in_dim
