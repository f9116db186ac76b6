"""The attribution report: one self-contained HTML page (figures embedded as base64 PNG) and JSON for machines.

Layout follows the modality, never its name: image modalities get heatmaps beside the input and its
reconstruction; other modalities with a (H, W) part grid get bare heatmaps; everything else (spectrogram
frames, tokens, force time steps, vectors) gets per-part curves under a plot of the input. Displayed maps
are normalised per sample and modality (|shares| sum to 1); the JSON keeps the raw values.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from mmvae.interpret import (
    SIGNED_KINDS,
    AttributionResult,
    AttributionSettings,
    DeletionCurve,
    modality_shares,
    no_share_reason,
    share_basis,
    shares,
    top_parts,
)
from mmvae.families.base import MultimodalModel
from mmvae.modalities import Modality

FORMAT = "mmvae-attribution/2"  # 2: loss-term shares, no Jacobian shares, deletion intervals
KIND_TEXT = {
    "joint/loss": "‖∂ℓ[t]/∂F_y‖ (loss mode, joint)",
    "joint/jacobian": "‖∂x̂[t]/∂F_y‖ (Jacobian mode, joint)",
    "private/loss": "‖∂ℓ[t]/∂F_m‖ (loss mode, private)",
    "private/jacobian": "‖∂x̂[t]/∂F_m‖ (Jacobian mode, private)",
    "ig/label": "IG of the label logit",
    "ig/joint": "IG of the joint factor",
}
KIND_TEX = {
    "joint/loss": r"$\|\partial \ell_t / \partial F_y\|$",
    "joint/jacobian": r"$\|\partial \hat{x}_t / \partial F_y\|$",
    "private/loss": r"$\|\partial \ell_t / \partial F_m\|$",
    "private/jacobian": r"$\|\partial \hat{x}_t / \partial F_m\|$",
    "ig/label": "IG label logit",
    "ig/joint": "IG joint factor",
}


PANEL_PX = 144  # displayed heatmap size: 5 per row at a 900 px page width, 8 at 1400 px
CLASS_PX = 96

# --- small helpers ----------------------------------------------------------------------------------
def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _png(fig) -> str:
    """Render a figure to a base64 PNG (no timestamp metadata, so reruns are byte-identical) and close it."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80, metadata={"Software": None})
    _plt().close(fig)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _img(b64: str, alt: str) -> str:
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{b64}">'


def _array_png(rgb: np.ndarray, size: int) -> str:
    """(H, W, 3) uint8 -> base64 PNG enlarged (nearest) so its longer side is about `size` pixels."""
    from PIL import Image

    scale = max(1, size // max(rgb.shape[:2]))
    rgb = rgb.repeat(scale, axis=0).repeat(scale, axis=1)
    buf = io.BytesIO()
    Image.fromarray(rgb, mode="RGB").save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _heat_rgb(values: np.ndarray, signed: bool) -> np.ndarray:
    """A 2-D map -> (H, W, 3) uint8: inferno from 0 to max for norms, RdBu_r symmetric about 0 for signed values."""
    from matplotlib import colormaps

    if signed:
        vmax = float(np.abs(values).max()) or 1.0
        rgba = colormaps["RdBu_r"]((values / vmax + 1.0) / 2.0)
    else:
        vmax = float(values.max()) or 1.0
        rgba = colormaps["inferno"](np.clip(values / vmax, 0.0, 1.0))
    return (rgba[..., :3] * 255).round().astype(np.uint8)


def _image_rgb(x: Tensor) -> np.ndarray:
    """(C, H, W) floats in [0, 1] -> (H, W, 3) uint8 (grey for one channel)."""
    x = x.detach().float().cpu().clamp(0, 1)
    rgb = x[:1].expand(3, -1, -1) if x.shape[0] < 3 else x[:3]
    return (rgb.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)


def _grid_shape(modality: Modality) -> tuple[int, int] | None:
    """(H, W) when the parts form a 2-D grid (pixels, patches), else None (shown as curves)."""
    shape = tuple(modality.parts_shape)
    return (shape[0], shape[1]) if len(shape) == 2 else None


def _round(values: Tensor | np.ndarray | list) -> list:
    """Floats with 6 significant digits for the JSON."""
    arr = np.asarray(values.detach().cpu() if isinstance(values, Tensor) else values, dtype=np.float64)
    return [float(f"{v:.6g}") for v in arr.reshape(-1)]


def _plot_input(ax, x: Tensor, recon: Tensor, parts: int) -> bool:
    """Plot a non-image input against part index when its last axis lines up with the parts."""
    x, recon = x.detach().float().cpu(), recon.detach().float().cpu()
    if x.dim() == 1 and x.shape[0] == parts:
        ax.plot(x.numpy(), color="black", lw=1.2, label="input")
        if recon.shape == x.shape:
            ax.plot(recon.numpy(), color="tab:green", lw=1.0, ls="--", label="reconstruction")
        ax.legend(fontsize=7, loc="upper right")
        return True
    if x.dim() == 2 and x.shape[-1] == parts:
        if x.shape[0] <= 8:  # a few channels per step, e.g. force/torque: one line each
            for c in range(x.shape[0]):
                ax.plot(x[c].numpy(), lw=1.0)
        else:  # many rows per step, e.g. a spectrogram: show it as an image
            ax.imshow(x.numpy(), aspect="auto", origin="lower", cmap="viridis", interpolation="nearest")
        return True
    return False


# --- figures ------------------------------------------------------------------------------------------
def _grid_panels(result: AttributionResult, model: MultimodalModel, m: str, i: int) -> list[tuple[str, str]]:
    """(title, base64 PNG) panels of one sample of a grid modality: input, reconstruction, one heatmap per kind."""
    modality = model.modalities[m]
    grid = _grid_shape(modality)
    panels = []
    if modality.display == "image":
        panels += [("input", _array_png(_image_rgb(result.inputs[m][i]), PANEL_PX)),
                   ("reconstruction", _array_png(_image_rgb(result.recon[m][i]), PANEL_PX))]
    for kind in result.kinds:
        values = shares(result.maps[m][kind][i : i + 1])[0].reshape(grid).cpu().numpy()
        top = float(np.abs(values).max())
        scale = f"±{top:.1%}" if kind in SIGNED_KINDS else f"{top:.1%}"
        panels.append((f"{KIND_TEXT[kind]} · brightest = {scale} of the map",
                       _array_png(_heat_rgb(values, kind in SIGNED_KINDS), PANEL_PX)))
    return panels


def curve_figure(result: AttributionResult, model: MultimodalModel, m: str, i: int) -> str:
    """One sample of a sequence-like modality: the input over parts, then every kind's per-part share as a curve."""
    plt = _plt()
    parts = math.prod(model.modalities[m].parts_shape)
    fig, axes = plt.subplots(3, 1, figsize=(8.0, 4.8), sharex=True)
    fig.subplots_adjust(left=0.09, right=0.98, top=0.97, bottom=0.09, hspace=0.12)
    if not _plot_input(axes[0], result.inputs[m][i], result.recon[m][i], parts):
        axes[0].text(0.5, 0.5, "input not shown (its axes do not line up with the parts)", ha="center", va="center",
                     transform=axes[0].transAxes, fontsize=8)
    axes[0].set_ylabel("data", fontsize=8)
    for kind in result.kinds:
        ax = axes[2] if kind in SIGNED_KINDS else axes[1]
        ax.plot(shares(result.maps[m][kind][i : i + 1])[0].cpu().numpy(), lw=1.2, marker=".", ms=3, label=KIND_TEX[kind])
    axes[1].set_ylabel("share of |gradient|", fontsize=8)
    axes[2].set_ylabel("share of |IG|", fontsize=8)
    axes[2].axhline(0.0, color="grey", lw=0.6)
    axes[2].set_xlabel("part t", fontsize=8)
    for ax in axes:
        ax.tick_params(labelsize=7)
    for ax in axes[1:]:
        if ax.lines:
            ax.legend(fontsize=7, loc="upper left", ncol=2)
    return _png(fig)


def class_means(result: AttributionResult, m: str) -> dict[int, dict[str, Tensor]]:
    """Mean normalised map per class (data label) and kind, over samples where m is present: {class: {kind: (P,)}}."""
    labels = result.labels.cpu()
    present = result.present[m].cpu()
    out: dict[int, dict[str, Tensor]] = {}
    for c in sorted(set(labels[labels >= 0].tolist())):
        rows = (labels == c) & present
        if rows.any():
            out[int(c)] = {kind: shares(result.maps[m][kind].cpu()[rows]).mean(0) for kind in result.kinds}
            out[int(c)]["input"] = result.inputs[m].detach().float().cpu()[rows].mean(0)
            out[int(c)]["count"] = torch.tensor(int(rows.sum()))
    return out


def class_mean_grid_html(result: AttributionResult, model: MultimodalModel, m: str,
                         means: dict[int, dict[str, Tensor]]) -> str:
    """Grid modalities: a table with one row per class, columns mean input and mean map of every kind."""
    modality = model.modalities[m]
    grid = _grid_shape(modality)
    header = ["class (n)", *(["mean input"] if modality.display == "image" else []), *result.kinds]  # short: see the kinds table
    rows = []
    for c, per in means.items():
        row = [f"{c} ({int(per['count'])})"]
        if modality.display == "image":
            row.append(_img(_array_png(_image_rgb(per["input"]), CLASS_PX), f"mean input class {c}"))
        for kind in result.kinds:
            rgb = _heat_rgb(per[kind].reshape(grid).numpy(), kind in SIGNED_KINDS)
            row.append(_img(_array_png(rgb, CLASS_PX), f"{kind} class {c}"))
        rows.append(row)
    return _table(header, rows)


def class_mean_strip_figure(result: AttributionResult, model: MultimodalModel, m: str,
                            means: dict[int, dict[str, Tensor]]) -> str:
    """Sequence-like modalities: per kind, a class x part heat strip of the class-mean shares."""
    plt = _plt()
    classes = list(means)
    same_length = means[classes[0]]["input"].numel() == math.prod(model.modalities[m].parts_shape)
    panels = ["input", *result.kinds] if same_length else list(result.kinds)
    cols = 3
    rows = -(-len(panels) // cols)
    height = 0.16 * len(classes) + 0.9
    fig, axes = plt.subplots(rows, cols, figsize=(3.4 * cols, height * rows), squeeze=False)
    fig.subplots_adjust(left=0.04, right=0.99, top=1 - 0.3 / (height * rows), bottom=0.5 / (height * rows),
                        wspace=0.15, hspace=0.9 / height)
    for ax, panel in zip(axes.flat, panels):
        strip = torch.stack([means[c][panel].reshape(-1) for c in classes]).numpy()
        if panel == "input" or panel in SIGNED_KINDS:
            vmax = float(np.abs(strip).max()) or 1.0
            ax.imshow(strip, aspect="auto", cmap="RdBu_r", vmin=-vmax, vmax=vmax, interpolation="nearest")
        else:
            ax.imshow(strip, aspect="auto", cmap="inferno", vmin=0, interpolation="nearest")
        ax.set_title("mean input" if panel == "input" else KIND_TEX[panel], fontsize=8)
        ax.set_yticks(range(len(classes)), [str(c) for c in classes], fontsize=6)
        ax.set_xlabel("part t", fontsize=7)
        ax.tick_params(axis="x", labelsize=6)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    return _png(fig)


def deletion_figures(result: AttributionResult, m: str) -> list[tuple[DeletionCurve, str]]:
    """Deletion curves of one modality, one small figure per ranking (they wrap on narrow pages)."""
    plt = _plt()
    out = []
    for c in result.deletion.get(m, []):
        fig, ax = plt.subplots(figsize=(3.3, 2.6))
        fig.subplots_adjust(left=0.25, right=0.97, top=0.8, bottom=0.18)
        ax.plot(c.fractions, c.top, color="tab:red", marker=".", label="top attributed first")
        ax.plot(c.fractions, c.random, color="tab:grey", marker=".", label=f"random order (mean of {c.repeats})")
        ax.set_title(f"{c.score} by {c.ranking}\n{_ratio_text(c)}", fontsize=8)
        ax.set_xlabel("fraction of parts masked", fontsize=7)
        ax.set_ylabel("degradation", fontsize=7)
        ax.tick_params(labelsize=7)
        ax.legend(fontsize=6)
        out.append((c, _png(fig)))
    return out


def _ratio_text(c: DeletionCurve) -> str:
    if c.area_ratio is None:
        return "ratio n/a (areas too small)"
    ci = "" if c.ci is None else f" [{_bound(c.ci[0], True)}, {_bound(c.ci[1], False)}]"
    return f"ratio {c.area_ratio:.2f}{ci}: {c.verdict}"


def _finite(v: float) -> float | None:
    """An interval bound for the JSON: None where it is unbounded (±inf: a resample without a positive random area)."""
    return float(v) if math.isfinite(v) else None


def _bound(v: float | None, low: bool) -> str:
    return ("−∞" if low else "∞") if v is None or not math.isfinite(v) else f"{v:.2f}"


def deletion_json(c: DeletionCurve) -> dict:
    """One deletion curve for the JSON: mean curves, areas, ratio with its interval, counts and verdict."""
    random_by_sample = np.asarray(c.random_areas).mean(0) if c.random_areas else np.zeros(0)
    return {
        "score": c.score, "ranking": c.ranking, "fractions": c.fractions, "top": _round(c.top),
        "random": _round(c.random), "area_top": c.area_top, "area_random": c.area_random,
        "area_ratio": c.area_ratio, "ci": None if c.ci is None else [_finite(v) for v in c.ci], "confidence": c.confidence,
        "bootstrap_resamples": c.bootstrap, "samples": c.samples, "random_repeats": c.repeats,
        "reference": c.reference, "min_area": c.min_area, "area_floor": c.floor,
        "verdict": c.verdict, "faithful": c.verdict == "pass",
        "area_top_per_sample": _round(c.top_areas), "area_random_per_sample": _round(random_by_sample),
        "area_random_per_repeat": _round(np.asarray(c.random_areas).mean(1) if c.random_areas else []),
    }


# --- JSON ----------------------------------------------------------------------------------------------
def report_json(result: AttributionResult, model: MultimodalModel, settings: AttributionSettings,
                meta: dict, top_k: int) -> dict:
    """Everything machine-readable: settings, provenance, raw per-part values, top-k, shares, summary."""
    names, kinds = result.names, result.kinds
    all_shares = {kind: modality_shares(result, kind) for kind in kinds}
    mod_shares = {kind: v for kind, v in all_shares.items() if v is not None}
    samples = []
    for i in range(result.labels.shape[0]):
        entry: dict = {"index": int(meta["indices"][i]), "label": int(result.labels[i])}
        if result.predicted is not None:
            entry |= {"predicted": int(result.predicted[i]), "target": int(result.target[i])}
        for kind, comp in result.completeness.items():
            entry.setdefault("integrated_gradients", {})[kind] = {
                "f_x": float(comp.f_x[i]), "f_x0": float(comp.f_x0[i]), "delta": float(comp.delta[i])}
        entry["modalities"] = {}
        for m in names:
            parts_shape = tuple(model.modalities[m].parts_shape)
            entry["modalities"][m] = {
                "present": bool(result.present[m][i]),
                "share": {kind: float(s[m][i]) for kind, s in mod_shares.items()},
                **({"loss_term_gradient": float(result.term_gradients[m][i])} if m in result.term_gradients else {}),
                "top_k": {kind: top_parts(result.maps[m][kind][i].cpu(), top_k, parts_shape) for kind in kinds},
                "raw": {kind: _round(result.maps[m][kind][i]) for kind in kinds},
            }
        samples.append(entry)
    summary = {
        "modality_share_mean": {kind: {m: float(s[m].mean()) for m in names} for kind, s in mod_shares.items()},
        "modality_share_basis": {kind: share_basis(kind) for kind in mod_shares},
        "no_modality_share": {kind: no_share_reason(kind) for kind, v in all_shares.items() if v is None},
        "loss_term_weights": {"weights": result.term_weights, "source": result.term_weights_source},
        "loss_term_gradient_mean": {m: float(g.mean()) for m, g in result.term_gradients.items()},
        "completeness": {kind: {"relative_error": c.relative_error, "tolerance": c.tol, "ok": c.ok,
                                "max_abs_delta": float(c.delta.abs().max()),
                                "mean_abs_gap": float((c.f_x - c.f_x0).abs().mean())}
                         for kind, c in result.completeness.items()},
        "deletion": {m: [deletion_json(c) for c in curves] for m, curves in result.deletion.items()},
        "class_means": {m: {str(c): {k: _round(v) for k, v in per.items() if k not in ("input", "count")}
                            for c, per in class_means(result, m).items()} for m in names},
    }
    return {
        "format": FORMAT,
        "method": method_text(settings),
        "settings": settings.to_dict() | {"top_k": top_k},
        "model": meta["model"],
        "data": meta["data"] | {"indices": [int(j) for j in meta["indices"]]},
        "modalities": {m: {"kind": model.modalities[m].kind, "shape": list(model.modalities[m].shape),
                           "parts_shape": list(model.modalities[m].parts_shape), "is_image": model.modalities[m].display == "image", "display": model.modalities[m].display}
                       for m in names},
        "kinds": {k: KIND_TEXT[k] for k in kinds},
        "summary": summary,
        "samples": samples,
    }


def method_text(settings: AttributionSettings) -> str:
    """One paragraph on how the numbers were computed."""
    return (
        "Posterior means, model in eval mode. Feature gradients: per part t (Modality.to_parts), loss mode "
        "‖∂ℓ_m[t]/∂F‖ with ℓ_m = −log p(x_m | x̂_m) and Jacobian mode ‖∂x̂_m[t]/∂F‖ (Frobenius norm over the part's "
        "elements), for F = F_y = G_y(μ_y) and F = F_m = G_m(μ_m); computed with forward-mode JVPs vmapped over the "
        "feature basis. A modality's share of the joint loss gradient is w_m ‖∂ℓ_m/∂F_y‖ of its whole loss term "
        "ℓ_m = Σ_t ℓ_m[t] (w_m its weight in the training loss) over the sum of these; Jacobian-mode and private "
        "maps get no cross-modality share (different units, different factors). Integrated gradients (captum, "
        f"{settings.ig_method}, {settings.ig_steps} steps, baseline zeros in model-input space) of the "
        f"{settings.target} class's logit and of s(x) = <μ_y(x) − μ_y(x0), unit(μ_y(x) − μ_y(x0))>, summed within "
        "parts; completeness Σ attribution = f(x) − f(x0) is checked. Deletion: parts of one modality are set to "
        f"the baseline in attribution order and in {settings.deletion_repeats} random orders, all other modalities "
        "intact; degradation is the drop of the target logit or the rise of −log p(x_m | decoder(F_y(masked), F_m)) "
        f"per part. The ratio of mean areas (top / random) gets a {settings.deletion_confidence:.0%} percentile "
        f"bootstrap interval over samples ({settings.deletion_bootstrap} resamples, seed {settings.seed}); it is a "
        "pass only when the interval's lower end is above 1, and n/a when the random-order area is below "
        f"{settings.deletion_min_area:g} x the mean |unmasked score|. Displayed maps are shares (|values| of a "
        "sample's modality sum to 1); the JSON keeps raw values."
    )


# --- HTML ----------------------------------------------------------------------------------------------
CSS = """
body { font-family: sans-serif; margin: 24px; color: #222; max-width: 1350px; }
h1 { font-size: 22px; } h2 { font-size: 18px; border-bottom: 1px solid #ccc; margin-top: 28px; }
h3 { font-size: 15px; margin-bottom: 4px; } table { border-collapse: collapse; font-size: 12px; margin: 6px 0; }
td, th { border: 1px solid #ddd; padding: 2px 6px; text-align: left; vertical-align: top; } th { background: #f3f3f3; }
.ok { color: #176b1f; font-weight: bold; } .bad { color: #a31515; font-weight: bold; } .na { color: #777; font-weight: bold; }
.sample { border: 1px solid #e3e3e3; padding: 8px 12px; margin: 12px 0; } .small { font-size: 12px; color: #555; }
img { max-width: 100%; image-rendering: pixelated; } p.method { font-size: 13px; } code { background: #f5f5f5; padding: 0 3px; }
.panels { display: flex; flex-wrap: wrap; gap: 10px 12px; margin: 6px 0; }
.panels figure { margin: 0; width: 144px; } .panels figure.wide { width: auto; }
.panels figcaption { font-size: 11px; color: #444; line-height: 1.25; margin-top: 2px; }
.key { display: flex; flex-wrap: wrap; gap: 12px 36px; margin: 6px 0 10px; font-size: 12px; }
.key .bar img { width: 256px; height: 14px; display: block; border: 1px solid #999; }
.key .ends { display: flex; justify-content: space-between; width: 258px; }
ul.explain { font-size: 12px; color: #444; margin: 2px 0 8px; padding-left: 18px; } ul.explain li { margin: 1px 0; }
details { margin: 10px 0; } summary { cursor: pointer; font-weight: bold; }
"""


def _table(header: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _kv_table(d: dict) -> str:
    return _table(["key", "value"], [[html.escape(str(k)), html.escape(json.dumps(v) if isinstance(v, (dict, list)) else str(v))]
                                     for k, v in d.items()])


def _coords(coords: list[int]) -> str:
    return str(coords[0]) if len(coords) == 1 else "(" + ", ".join(map(str, coords)) + ")"


def _verdict(ok: bool, yes: str = "pass", no: str = "FAIL") -> str:
    return f'<span class="ok">{yes}</span>' if ok else f'<span class="bad">{no}</span>'


def _deletion_verdict(verdict: str) -> str:
    cls = {"pass": "ok", "fail": "bad"}.get(verdict, "na")
    text = {"pass": "pass", "fail": "fail", "n/a": "n/a"}[verdict]
    return f'<span class="{cls}">{text}</span>'


def _explain(lines: list[str]) -> str:
    """One line per number of the table above."""
    return '<ul class="explain">' + "".join(f"<li>{line}</li>" for line in lines) + "</ul>"


def _figures(items: list[tuple[str, str, str]], wide: bool = False) -> str:
    """(caption, base64 PNG, alt) as figures in a wrapping row."""
    cls = ' class="wide"' if wide else ""
    return '<div class="panels">' + "".join(
        f"<figure{cls}>{_img(b, alt)}<figcaption>{html.escape(cap)}</figcaption></figure>" for cap, b, alt in items
    ) + "</div>"


def colour_key_html() -> str:
    """The two colour scales, drawn before any map."""
    ramp = np.linspace(0.0, 1.0, 256)[None, :].repeat(14, axis=0)
    inferno = _array_png(_heat_rgb(ramp, signed=False), 256)
    rdbu = _array_png(_heat_rgb(ramp * 2 - 1, signed=True), 256)
    return (
        "<h2>Colour key</h2>"
        '<div class="key">'
        f'<div><b>gradient norms</b> (‖∂ℓ/∂F‖, ‖∂x̂/∂F‖)<div class="bar">{_img(inferno, "inferno colour bar")}</div>'
        '<div class="ends"><span>0</span><span>largest share in the map</span></div></div>'
        f'<div><b>integrated gradients</b> (signed)<div class="bar">{_img(rdbu, "red-blue colour bar")}</div>'
        '<div class="ends"><span>−largest |share|</span><span>0</span><span>+largest |share|</span></div></div>'
        "</div>"
        '<p class="small">Every heatmap is scaled to its own largest value (given under each per-sample map as '
        "\"brightest = x % of the map\"): compare where a map is bright, not how bright two maps are.</p>"
    )


def _summary_html(doc: dict, result: AttributionResult, model: MultimodalModel) -> str:
    s = doc["summary"]
    names = result.names
    out = ["<h2>Summary over the attributed samples</h2>", "<h3>Each modality's share</h3>"]
    rows = [[html.escape(KIND_TEXT[k]), *(f"{v[m]:.1%}" for m in names), html.escape(s["modality_share_basis"][k])]
            for k, v in s["modality_share_mean"].items()]
    rows += [[html.escape(KIND_TEXT[k]), *("–" for _ in names), "no share: " + html.escape(reason)]
             for k, reason in s["no_modality_share"].items()]
    out.append(_table(["kind", *names, "computed from"], rows))
    weights = s["loss_term_weights"]
    grads = s["loss_term_gradient_mean"]
    out.append(_explain([
        "Each share is a per-sample fraction averaged over the samples; a row's shares sum to 100 %.",
        "Loss-mode share: w_m ‖∂ℓ_m/∂F_y‖ for the modality's whole loss term ℓ_m, over the sum across modalities; "
        "mean ‖∂ℓ_m/∂F_y‖ (nats per unit of F_y): "
        + html.escape(", ".join(f"{m} {grads[m]:.3g}" for m in names if m in grads))
        + "; weights w_m: " + html.escape(", ".join(f"{m} {w:.3g}" for m, w in weights["weights"].items()))
        + f" ({html.escape(weights['source'])}).",
        "IG share: each modality's part of Σ |IG| (all in units of the explained logit or of ‖Δμ_y‖).",
        "Jacobian-mode and private kinds have no share: their norms are not in common units across modalities.",
    ]))
    if s["completeness"]:
        out.append("<h3>Integrated-gradients completeness</h3>")
        out.append(_table(["target", "relative error", "tolerance", "max |delta|", "mean |f(x) − f(x0)|", "check"],
                          [[k, f"{c['relative_error']:.4f}", f"{c['tolerance']}", f"{c['max_abs_delta']:.3g}",
                            f"{c['mean_abs_gap']:.3g}", _verdict(c["ok"])] for k, c in s["completeness"].items()]))
        out.append(_explain([
            "relative error: Σ_b |Σ_t attr − (f(x) − f(x0))| / Σ_b |f(x) − f(x0)|, how far IG misses completeness.",
            "tolerance: the largest relative error that passes; max |delta|: the worst single sample's gap.",
            "mean |f(x) − f(x0)|: the size of what is being split among the parts (logit, or ‖Δμ_y‖).",
        ]))
    if s["deletion"]:
        out.append("<h3>Faithfulness: deletion curves</h3>")
        rows = []
        for m, curves in s["deletion"].items():
            for c in curves:
                ratio = "n/a" if c["area_ratio"] is None else f"{c['area_ratio']:.2f}"
                ci = "–" if c["ci"] is None else f"[{_bound(c['ci'][0], True)}, {_bound(c['ci'][1], False)}]"
                rows.append([m, c["score"], c["ranking"], f"{c['area_top']:.4g}", f"{c['area_random']:.4g}", ratio, ci,
                             f"{c['samples']} × {c['random_repeats']}", _deletion_verdict(c["verdict"])])
        conf = next(c for curves in s["deletion"].values() for c in curves)
        out.append(_table(["modality", "score", "ranking", "area (top)", "area (random)", "ratio",
                           f"{conf['confidence']:.0%} interval", "samples × random orders", "verdict"], rows))
        out.append(_explain([
            "area (top) / area (random): mean area under the degradation curve when masking parts in attribution "
            "order / in random order (label_logit: drop of the target logit; recon_from_joint: rise of −log p per part).",
            f"ratio: area (top) / area (random); interval: percentile bootstrap over samples "
            f"({conf['bootstrap_resamples']} resamples) of that ratio.",
            "verdict: <b>pass</b> only when the interval's lower end is above 1; <b>fail</b> when the interval "
            "reaches 1 or below; <b>n/a</b> when random masking barely changes the score (random area below "
            f"{conf['min_area']:g} × the mean |unmasked score|), so there is nothing to compare.",
        ]))
        for m in result.deletion:
            figs = deletion_figures(result, m)
            if figs:
                out.append(f"<p><b>{html.escape(m)}</b></p>")
                out.append(_figures([("", b, f"deletion {c.ranking} {m}") for c, b in figs], wide=True))
    out.append("<h3>Mean maps per class</h3>")
    out.append('<p class="small">Per class (data label): the mean input and, per kind, the mean of the samples\' '
               "normalised maps; each cell is scaled to its own maximum.</p>")
    for m in names:
        means = class_means(result, m)
        if not means:
            continue
        out.append(f"<p><b>{html.escape(m)}</b> ({html.escape(model.modalities[m].kind)})</p>")
        if _grid_shape(model.modalities[m]) is not None:
            out.append(class_mean_grid_html(result, model, m, means))
        else:
            out.append(_img(class_mean_strip_figure(result, model, m, means), f"class means {m}"))
    return "\n".join(out)


def _sample_html(doc: dict, result: AttributionResult, model: MultimodalModel, i: int, top_k: int) -> str:
    entry = doc["samples"][i]
    head = f"Sample {i} (dataset index {entry['index']}), label {entry['label']}"
    if "predicted" in entry:
        head += f", predicted {entry['predicted']}, IG target {entry['target']}"
    out = [f'<div class="sample"><h3>{html.escape(head)}</h3>']
    for m in result.names:
        info = entry["modalities"][m]
        share = ", ".join(f"{html.escape(KIND_TEXT[k])}: {v:.1%}" for k, v in info["share"].items())
        present = "" if info["present"] else ' <span class="bad">(absent in this sample)</span>'
        out.append(f"<p><b>{html.escape(m)}</b>{present}<br><span class='small'>share of this modality: "
                   f"{share or 'none comparable'}</span></p>")
        if _grid_shape(model.modalities[m]) is not None:
            panels = _grid_panels(result, model, m, i)
            out.append(_figures([(t, b, f"{t} {m} sample {i}") for t, b in panels]))
        else:
            out.append(_img(curve_figure(result, model, m, i), f"attributions {m} sample {i}"))
        from mmvae.media import report_html  # audio players, shaded tokens

        out.append(report_html(model.modalities[m], result, m, i))
        rows = []
        for r in range(top_k):
            row = [str(r + 1)]
            for kind in result.kinds:
                items = info["top_k"][kind]
                row.append(f"{_coords(items[r]['coords'])} {items[r]['share']:+.1%}" if r < len(items) else "")
            rows.append(row)
        out.append(_table(["rank", *(KIND_TEXT[k] for k in result.kinds)], rows))
    out.append("</div>")
    return "\n".join(out)


def render_html(doc: dict, result: AttributionResult, model: MultimodalModel, show: int, top_k: int) -> str:
    """The report page as one string; no external resources."""
    model_meta, data_meta = doc["model"], doc["data"]
    title = f"Attribution report: {model_meta.get('config_name', '')} at step {model_meta.get('step', '?')}"
    dataset = (data_meta.get("provenance") or {}).get("dataset") or data_meta.get("dataset", "")
    parts = [
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">', f"<title>{html.escape(title)}</title>",
        f"<style>{CSS}</style></head><body>", f"<h1>{html.escape(title)}</h1>",
        f"<p class='small'>{len(doc['samples'])} samples of {html.escape(str(dataset))} from the "
        f"{html.escape(str(data_meta.get('split')))} split; the first {min(show, len(doc['samples']))} are shown one "
        "by one below the summary. Run folder, data provenance and every setting are in the collapsed section at "
        "the end.</p>",
        "<h2>Method</h2>", f"<p class='method'>{html.escape(doc['method'])}</p>",
        _table(["kind", "meaning"], [[html.escape(k), html.escape(v)] for k, v in doc["kinds"].items()]),
        colour_key_html(),
        _summary_html(doc, result, model),
        "<h2>Per sample</h2>",
        '<p class="small">Heatmaps: gradient norms (inferno) and signed integrated gradients (red positive, blue '
        "negative), each normalised so that a sample's |values| in one modality sum to 1 (colour key above). Top-k "
        "tables give the part coordinates (row, column for grids; index for sequences) and the signed share.</p>",
    ]
    parts += [_sample_html(doc, result, model, i, top_k) for i in range(min(show, len(doc["samples"])))]
    parts += [
        "<details><summary>Model and data provenance, settings</summary>",
        "<h3>Model</h3>", _kv_table(model_meta),
        "<h3>Data</h3>",
        _kv_table({k: v for k, v in data_meta.items() if k != "indices"} | {"indices": data_meta["indices"][:64]}),
        "<h3>Settings</h3>", _kv_table(doc["settings"]),
        "</details>",
        "</body></html>",
    ]
    return "\n".join(parts)


def write_report(result: AttributionResult, model: MultimodalModel, settings: AttributionSettings, meta: dict,
                 out_dir: str | Path, show: int = 16, top_k: int = 10) -> dict[str, Path]:
    """Write out_dir/report.html and out_dir/attributions.json; returns their paths."""
    if show < 0 or top_k < 1:
        raise ValueError(f"show must be >= 0 and top_k >= 1, got show={show}, top_k={top_k}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    doc = report_json(result, model, settings, meta, top_k)
    json_path, html_path = out_dir / "attributions.json", out_dir / "report.html"
    json_path.write_text(json.dumps(doc, separators=(",", ":"), allow_nan=False))
    html_path.write_text(render_html(doc, result, model, show, top_k))
    return {"html": html_path, "json": json_path}
