"""Disentanglement metrics of MNIST–SVHN against known factors: the digit, the street digits' drawn style and the
handwriting style measured from each MNIST image.

On posterior means of a seeded class-balanced subset of at most `limit` test pairs (2,000 in `mmvae evaluate`):

  <metric>/joint/digit                Z_y (from both modalities) against the digit
  <metric>/private/svhn/style         Z_svhn against the street-digit style factors SVHN_STYLE (13 of the 25 the
                                      generator records, data_prep.street_digits.FACTORS; only where the prepared
                                      folder records them: the synthetic stand-in)
  <metric>/private/mnist/style        Z_mnist against the measured MNIST style (mmvae.data.mnist_style)
  <metric>/joint/svhn_style, <metric>/joint/mnist_style     Z_y against the same style factors (the cross check:
                                      low is good)
  <metric>/private/svhn/digit, <metric>/private/mnist/digit Z_m against the digit (the cross check: near chance,
                                      0.1 for DCI informativeness, is good)
  dci/informativeness/<prefix>/<factor>   per factor, for the style prefixes
  disentanglement_gap/<m>/style       dci/informativeness/private/<m>/style − dci/informativeness/joint/<m>_style
  disentanglement_gap/<m>/digit       dci/informativeness/joint/digit − dci/informativeness/private/<m>/digit
                                      (both clearly above 0 when Z_m holds m's style and Z_y the digit)
  disentanglement_samples             the pairs used

with <metric> one of mig, sap, dci/disentanglement (two or more factors), dci/completeness, dci/informativeness
(mmvae.disentanglement.factor_metrics; docs/disentanglement.md).
"""

from __future__ import annotations

import numpy as np
import torch

from mmvae.batch import batch_to, labels
from mmvae.data.loader import limited_batches
from mmvae.data.mnist_style import STYLE_NAMES as MNIST_STYLE_NAMES
from mmvae.swap import encode_means

# The street-digit factors scored by default: what changes the image visibly, one number each. Left out: the font
# index (48 classes here: its tree ensemble alone costs ~25 s per code on a loaded 2-core CPU; font_width and
# font_ink carry what a font looks like), the stroke-weight variant (font_ink follows it), hue (a circle, and
# undefined at low saturation), saturation, the shift along y, the aspect, and the faint texture, stripes, shadow
# and falloff. Pass `svhn_factors=None` to score every recorded factor.
SVHN_STYLE = ("font_width", "font_ink", "neighbours", "digit_height", "rotation", "slant", "shift_x",
              "digit_luminance", "background_luminance", "contrast", "gradient", "blur", "noise")

METRIC_HELP: list[tuple[str, str | None, str]] = [
    ("disentanglement_gap/", "disentanglement_samples",
     "style: DCI informativeness about m's style from Z_m minus from Z_y; digit: about the digit from Z_y minus from "
     "Z_m (both clearly above 0 is the target)"),
    ("dci/informativeness/joint/svhn_style", "disentanglement_samples",
     "DCI informativeness of Z_y about the street-digit style factors (should be well below private/svhn/style's)"),
    ("dci/informativeness/joint/mnist_style", "disentanglement_samples",
     "DCI informativeness of Z_y about the measured MNIST style (should be well below private/mnist/style's)"),
    ("dci/informativeness/private/svhn/digit", "disentanglement_samples",
     "DCI informativeness (held-out accuracy) of the digit from Z_svhn (chance 0.1; joint/digit's should be far above)"),
    ("dci/informativeness/private/mnist/digit", "disentanglement_samples",
     "DCI informativeness (held-out accuracy) of the digit from Z_mnist (chance 0.1; joint/digit's should be far above)"),
    ("dci/informativeness/private/svhn/style/", "disentanglement_samples",
     "DCI informativeness of Z_svhn about one street-digit style factor (accuracy if discrete, else R²)"),
    ("dci/informativeness/private/mnist/style/", "disentanglement_samples",
     "DCI informativeness (R²) of Z_mnist about one measured MNIST style factor"),
]


def svhn_style(source) -> tuple[tuple[str, ...], dict[str, bool]]:
    """The street-digit factor names and their discrete flags a source records (empty when none)."""
    names = tuple(getattr(source, "svhn_factor_names", ()))
    return names, dict(zip(names, getattr(source, "svhn_factor_discrete", ())))


@torch.no_grad()
def collect(model, source, limit: int, seed: int, label_key: str = "digit") -> dict[str, np.ndarray]:
    """Posterior means (joint from every modality, each private factor), the label (under `label_key`) and the
    batch's factors, over a seeded class-balanced subset of at most `limit` samples (also the toy data's)."""
    device = next(model.parameters()).device
    parts: dict[str, list] = {}
    for batch in limited_batches(source, 512, limit, seed=seed):
        batch = batch_to(batch, device)
        z_joint, z_priv = encode_means(model, batch)
        for key, value in [("joint", z_joint), (label_key, labels(batch)), *z_priv.items(),
                           *batch.get("meta", {}).items()]:
            parts.setdefault(key, []).append(value.float().cpu() if key != label_key else value.cpu())
    return {k: torch.cat(v).numpy() for k, v in parts.items()}


def mnist_svhn_disentanglement(model, source, limit: int = 2000, seed: int = 0,
                               svhn_factors: tuple[str, ...] | None = SVHN_STYLE, n_estimators: int = 50) -> dict[str, float]:
    """MIG, DCI and SAP of MNIST–SVHN (the key scheme is in the module docstring) against the street-digit factors
    named in `svhn_factors` (None: every one recorded). A source without `with_factors` (not an MNIST–SVHN folder)
    or a folder without street-digit factors gives what it can: the digit keys always, the MNIST style keys from
    the images, the SVHN style keys only with recorded factors. `n_estimators`: DCI's trees per factor."""
    from mmvae.disentanglement import factor_metrics

    factored = source.with_factors() if hasattr(source, "with_factors") else source
    data = collect(model, factored, limit, seed)
    if "joint" not in data or len(data["digit"]) < 10:
        return {}
    digit = {"digit": data["digit"]}
    out = factor_metrics(data["joint"], digit, "joint/digit", seed=seed, n_estimators=n_estimators)
    svhn_names, svhn_discrete = svhn_style(factored)
    styles: dict[str, tuple[dict[str, np.ndarray], dict[str, bool]]] = {}
    if "svhn_factors" in data and svhn_names:
        chosen = {f: data["svhn_factors"][:, k] for k, f in enumerate(svhn_names)
                  if svhn_factors is None or f in svhn_factors}
        if chosen:
            styles["svhn"] = (chosen, svhn_discrete)
    if "mnist_factors" in data:
        styles["mnist"] = ({f: data["mnist_factors"][:, k] for k, f in enumerate(MNIST_STYLE_NAMES)},
                           dict.fromkeys(MNIST_STYLE_NAMES, False))
    for m in ("mnist", "svhn"):
        if m in styles:
            factors, discrete = styles[m]
            out.update(factor_metrics(data["joint"], factors, f"joint/{m}_style", seed=seed, discrete=discrete,
                                      n_estimators=n_estimators))
            if m in data:
                out.update(factor_metrics(data[m], factors, f"private/{m}/style", seed=seed, discrete=discrete,
                                          n_estimators=n_estimators))
                out[f"disentanglement_gap/{m}/style"] = (out[f"dci/informativeness/private/{m}/style"]
                                                         - out[f"dci/informativeness/joint/{m}_style"])
        if m in data:
            out.update(factor_metrics(data[m], digit, f"private/{m}/digit", seed=seed, n_estimators=n_estimators))
            out[f"disentanglement_gap/{m}/digit"] = (out["dci/informativeness/joint/digit"]
                                                     - out[f"dci/informativeness/private/{m}/digit"])
    out["disentanglement_samples"] = int(len(data["digit"]))
    return out


def disentanglement_note(provenance: dict) -> str | None:
    """The metrics.md line saying why the street-digit style metrics are missing (None when they are computed)."""
    from mmvae.data.mnist_svhn import svhn_factors_note

    if not isinstance(provenance.get("svhn"), dict):
        return None
    why = svhn_factors_note(provenance)
    if why is None:
        return None
    return (f"Street-digit style metrics (`private/svhn/style`, `joint/svhn_style`) are skipped: {why}. "
            "The digit and measured MNIST style metrics are computed.")
