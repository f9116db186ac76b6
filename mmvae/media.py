"""Pictures, sounds and text for modalities that are not images: spectrogram grids with .wav files beside them,
sentence grids as markdown, and the attribution report's audio players and token views.

Used by `mmvae sample` (render.save_grid), `mmvae swap` (swap.write_swap_grids) and `mmvae attribute`
(attribution_report); every function reads only the modality's `display` and its methods.
"""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

TILE_H = 64  # pixel height of a grid tile


# --- tiles ------------------------------------------------------------------------------------------
def _resize(rgb: np.ndarray, height: int) -> np.ndarray:
    scale = max(1, height // rgb.shape[0])
    return rgb.repeat(scale, axis=0).repeat(scale, axis=1)


def spectrogram_rgb(features: Tensor) -> np.ndarray:
    """(n_mels, T) in [0, 1] -> (H, W, 3) uint8, viridis, low frequencies at the bottom."""
    from matplotlib import colormaps

    f = features.detach().float().cpu().clamp(0, 1).numpy()[::-1]
    return (colormaps["viridis"](f)[..., :3] * 255).round().astype(np.uint8)


def image_rgb(x: Tensor) -> np.ndarray:
    x = x.detach().float().cpu()
    x = x / 255.0 if x.max() > 1.5 else x
    x = x.clamp(0, 1)
    rgb = x[:1].expand(3, -1, -1) if x.shape[0] < 3 else x[:3]
    return (rgb.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)


def text_rgb(text: str, width: int = 168, height: int = TILE_H) -> np.ndarray:
    """A sentence drawn in a (height, width) tile, wrapped over up to four lines."""
    from PIL import Image, ImageDraw, ImageFont

    img = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(img)
    font = ImageFont.load_default()
    lines, line = [], ""
    for word in text.split():
        trial = f"{line} {word}".strip()
        if draw.textlength(trial, font=font) > width - 6 and line:
            lines.append(line)
            line = word
        else:
            line = trial
    lines.append(line)
    for i, ln in enumerate(lines[:4]):
        draw.text((3, 3 + 14 * i), ln, fill=(0, 0, 0), font=font)
    return np.asarray(img)


def tile(modality, x: Tensor) -> np.ndarray:
    """One sample of `modality` in modelled form -> an RGB tile about TILE_H pixels high."""
    if modality.display == "image":
        return _resize(image_rgb(x), TILE_H)
    if modality.display == "spectrogram":
        return _resize(spectrogram_rgb(x), TILE_H)
    if modality.display == "tokens":
        return text_rgb(modality.detokenize(x.unsqueeze(0))[0])
    raise ValueError(f"no tile for display {modality.display!r}")


def compose(rows: list[list[np.ndarray | None]], path: Path, pad: int = 2) -> Path:
    """Save a grid of tiles (None: blank); column widths and row heights follow their largest tile."""
    from PIL import Image

    heights = [max((t.shape[0] for t in r if t is not None), default=TILE_H) for r in rows]
    ncol = max(len(r) for r in rows)
    widths = [max((r[c].shape[1] for r in rows if c < len(r) and r[c] is not None), default=TILE_H) for c in range(ncol)]
    canvas = np.full((sum(heights) + pad * (len(rows) + 1), sum(widths) + pad * (ncol + 1), 3), 128, dtype=np.uint8)
    y = pad
    for r, row in enumerate(rows):
        x = pad
        for c in range(ncol):
            t = row[c] if c < len(row) else None
            if t is not None:
                canvas[y : y + t.shape[0], x : x + t.shape[1]] = t
            else:
                canvas[y : y + heights[r], x : x + widths[c]] = 255
            x += widths[c] + pad
        y += heights[r] + pad
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(canvas).save(path)
    return path


# --- sound --------------------------------------------------------------------------------------------
def wav_bytes(modality, features: Tensor) -> bytes:
    import soundfile as sf

    wave = modality.to_waveform(features.unsqueeze(0))[0].numpy()
    peak = float(np.abs(wave).max()) or 1.0
    buf = io.BytesIO()
    sf.write(buf, wave * (0.9 / peak), modality.options.sample_rate, subtype="PCM_16", format="WAV")
    return buf.getvalue()


def write_rows_wav(modality, cells: Tensor, out_dir: Path, stem: str, gap_s: float = 0.25) -> list[Path]:
    """One .wav per grid row: the row's cells inverted to audio, one after another with a short silence."""
    from mmvae.modalities.audio import write_wav

    sr = modality.options.sample_rate
    gap = np.zeros(int(gap_s * sr))
    paths = []
    waves = modality.to_waveform(cells.reshape(-1, *cells.shape[2:])).reshape(cells.shape[0], cells.shape[1], -1)
    for r in range(cells.shape[0]):
        parts = []
        for c in range(cells.shape[1]):
            w = waves[r, c].numpy()
            peak = float(np.abs(w).max()) or 1.0
            parts += [w * (0.9 / peak), gap]
        paths.append(write_wav(out_dir / f"{stem}_row{r}.wav", np.concatenate(parts), sr, normalise=False))
    return paths


# --- grids ----------------------------------------------------------------------------------------------
def swap_grid(target, cells: Tensor, row_mod, row_heads: Tensor | None, col_mod, col_heads: Tensor | None,
              path: Path) -> list[Path]:
    """An (R, C) swap grid of `target` with donor heads; spectrograms get .wav rows beside the PNG, text a .md."""
    r, c = cells.shape[:2]
    if target.display == "tokens":
        return [text_grid(target, cells, row_mod, row_heads, col_mod, col_heads, path.with_suffix(".md"))]
    rows: list[list[np.ndarray | None]] = []
    if col_heads is not None:
        rows.append([None] + [tile(col_mod, col_heads[j]) for j in range(c)])
    for i in range(r):
        head = [tile(row_mod, row_heads[i])] if row_heads is not None else []
        rows.append(head + [tile(target, cells[i, j]) for j in range(c)])
    written = [compose(rows, path)]
    if target.display == "spectrogram":
        written += write_rows_wav(target, cells, path.parent / f"{path.stem}_wav", "cells")
    return written


def _describe(mod, x: Tensor) -> str:
    if mod.display == "tokens":
        return mod.detokenize(x.unsqueeze(0))[0]
    return f"({mod.name})"


def text_grid(target, cells: Tensor, row_mod, row_heads, col_mod, col_heads, path: Path, title: str = "") -> Path:
    """A markdown table of generated sentences: row r = content donor, column c = style donor."""
    r, c = cells.shape[:2]
    lines = [f"# {title or path.stem}", "",
             "Row r takes the joint factor of its donor (first column), column c the private factor of its donor (first row).", ""]
    header = ["content \\ style"] + [html.escape(_describe(col_mod, col_heads[j])) if col_heads is not None else f"c{j}"
                                      for j in range(c)]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * (c + 1)]
    for i in range(r):
        head = html.escape(_describe(row_mod, row_heads[i])) if row_heads is not None else f"r{i}"
        texts = target.detokenize(cells[i])
        lines.append(f"| **{head}** | " + " | ".join(html.escape(t) for t in texts) + " |")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    return path


def save_media_grid(modality, x: Tensor, path: Path, nrow: int, title: str | None = None) -> Path:
    """`mmvae sample`: samples (N, ...) as a grid, nrow per row (spectrograms + .wav rows; text as .md and .png)."""
    n = x.shape[0]
    rows_n = -(-n // nrow)
    pad = rows_n * nrow - n
    if modality.display == "tokens":
        cells = torch.cat([x, x[:1].repeat(pad, 1)]) if pad else x
        grid = cells.reshape(rows_n, nrow, -1)
        text_grid(modality, grid, modality, None, modality, None, path.with_suffix(".md"), title or "")
        rows = [[text_rgb(s) for s in modality.detokenize(grid[i])] for i in range(rows_n)]
        return compose(rows, path)
    cells = torch.cat([x, torch.zeros_like(x[:1]).repeat(pad, *([1] * (x.dim() - 1)))]) if pad else x
    grid = cells.reshape(rows_n, nrow, *x.shape[1:])
    compose([[tile(modality, grid[i, j]) for j in range(nrow)] for i in range(rows_n)], path)
    write_rows_wav(modality, grid, path.parent / f"{path.stem}_wav", "samples")
    return path


# --- the attribution report ------------------------------------------------------------------------------
def report_html(modality, result, m: str, i: int) -> str:
    """Extra views of one sample in the attribution page: audio players (input and reconstruction) for
    spectrograms; the sentence with each word shaded by its share of the joint attribution for tokens."""
    if modality.display == "spectrogram":
        players = []
        for label, feats in (("input", result.inputs[m][i]), ("reconstruction", result.recon[m][i])):
            b64 = base64.b64encode(wav_bytes(modality, feats.detach().cpu())).decode("ascii")
            players.append(f"{label}: <audio controls src=\"data:audio/wav;base64,{b64}\"></audio>")
        return "<br>" + " &nbsp; ".join(players) + "<br>"
    if modality.display == "tokens":
        from mmvae.interpret import shares

        ids = result.inputs[m][i]
        words = modality.detokenize(ids.unsqueeze(0))[0].split()
        recon = modality.detokenize(result.recon[m][i].unsqueeze(0))[0]
        out = []
        for kind in [k for k in ("joint/loss", "ig/joint", "ig/label") if k in result.kinds]:
            s = shares(result.maps[m][kind][i : i + 1])[0].abs().cpu().numpy()
            top = float(s.max()) or 1.0
            spans = "".join(f'<span style="background: rgba(220, 60, 20, {v / top:.2f}); padding: 1px 3px" '
                            f'title="{v:.1%}">{html.escape(w)}</span> ' for w, v in zip(words, s))
            out.append(f"<div class='small'>{html.escape(kind)}: {spans}</div>")
        return "<br>" + "".join(out) + f"<div class='small'>reconstruction: <i>{html.escape(recon)}</i></div>"
    return ""
