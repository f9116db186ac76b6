"""Registry of modality kinds: a plain dict from kind name to class."""

from __future__ import annotations

from mmvae.config import ModalityConfig
from mmvae.modalities.base import DecoderInput, Encoding, Modality
from mmvae.modalities.audio import Audio
from mmvae.modalities.image import ImageConv, ImageMLP
from mmvae.modalities.robot import ActionMLP, DepthConv, ForceCausal, ProprioMLP, RGBConv
from mmvae.modalities.text import Text
from mmvae.modalities.vector import Vector

MODALITY_KINDS: dict[str, type[Modality]] = {
    ImageMLP.kind: ImageMLP,
    ImageConv.kind: ImageConv,
    Vector.kind: Vector,
    Audio.kind: Audio,
    Text.kind: Text,
    RGBConv.kind: RGBConv,
    DepthConv.kind: DepthConv,
    ForceCausal.kind: ForceCausal,
    ProprioMLP.kind: ProprioMLP,
    ActionMLP.kind: ActionMLP,
}


def build_modality(name: str, config: ModalityConfig, decoder_in: int | None) -> Modality:
    """Instantiate the modality class registered for `config.kind` (decoder_in None: a condition, no decoder)."""
    if config.kind not in MODALITY_KINDS:
        raise ValueError(
            f"modality '{name}': unknown kind {config.kind!r}; registered kinds: {sorted(MODALITY_KINDS)}"
        )
    return MODALITY_KINDS[config.kind](name, config, decoder_in)


__all__ = ["MODALITY_KINDS", "DecoderInput", "Encoding", "Modality", "build_modality"]
