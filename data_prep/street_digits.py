"""Offline stand-in for SVHN: seeded street-number digit crops, (N, 3, 32, 32) uint8 with labels 0–9.

This is *not* SVHN. It imitates SVHN's cropped-digit format so that the MNIST–SVHN pipeline runs
without the real files: a centred digit drawn in one of every font found on the machine (including
matplotlib's bundled fonts), random colours and contrast, gradient/textured backgrounds, partial
neighbouring digits at the left and right edges, small rotation/shear/scale/shift, stroke-width
changes, blur and noise. Labels follow SVHN's class proportions (exactly SVHN's counts at SVHN's
sizes), so the pairing protocol gives the same pair counts as with the real files.

The style it drew for every image can be returned with the images (`return_factors=True`): an (n, K)
float32 array with the columns of `FACTOR_NAMES` (which ones are discrete: `FACTOR_DISCRETE`; what each
means and its unit: `FACTORS`). They are read off the draws, never drawn again: asking for them changes no
image.

How it is fast: each font's ten digits are rendered once into a glyph atlas; every image is then
built by batched tensor ops (`affine_grid`/`grid_sample` for the three glyph slots, vectorised
colours, backgrounds, blur and noise) in fixed-size chunks. Chunk k draws its randomness from
`SeedSequence([seed, split]).spawn(...)[k]`, so output depends only on (seed, split, n, fonts).
"""

from __future__ import annotations

import hashlib
import math
import multiprocessing
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import matplotlib
import matplotlib.colors
import matplotlib.font_manager
import numpy as np
import torch
import torch.nn.functional as F
from fontTools.ttLib import TTFont, TTLibError
from PIL import Image, ImageDraw, ImageFilter, ImageFont

GENERATOR_VERSION = "street_digits/1"
SVHN_CLASS_COUNTS = {
    "train": np.array([4948, 13861, 10585, 8497, 7458, 6882, 5727, 5595, 5045, 4659]),
    "test": np.array([1744, 5099, 4149, 2882, 2523, 2384, 1977, 2019, 1660, 1595]),
}
SVHN_SIZES = {split: int(c.sum()) for split, c in SVHN_CLASS_COUNTS.items()}  # 73,257 and 26,032
SPLIT_IDS = {"train": 0, "test": 1}
DIGIT_NAMES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")

CANVAS = 48  # atlas cell, pixels; spans [-1, 1] in grid_sample coordinates
GLYPH_HEIGHT = 32  # digit height inside a cell, pixels
GLYPH_UNITS = 2 * GLYPH_HEIGHT / CANVAS  # digit height in cell units
RENDER_POINTS = 96
# Stroke-weight variants rendered per font: (PIL filter, filter size, probability).
WEIGHTS = ((ImageFilter.MinFilter, 3, 0.2), (None, 0, 0.4), (ImageFilter.MaxFilter, 5, 0.25), (ImageFilter.MaxFilter, 9, 0.15))
MIN_THIN_INK = 0.5  # a thinned weight must keep this fraction of the font's ink, else it is dropped
OUT = 32
SUPERSAMPLE = 2
NEIGHBOUR_REACH = 0.8  # a neighbour's centre is at least this far out (image half-width = 1)
MIN_CONTRAST = 0.2  # luminance difference between digit and background colours
CHUNK = 2048  # fixed: part of the definition of the output for a seed
LUMA = np.array([0.299, 0.587, 0.114])  # Rec. 601 luma weights of (R, G, B)

# The style factors recorded per image: (name, discrete, meaning and unit). Not recorded (drawn, but minor or
# not one number per image): the neighbours' digits and gaps, the gradient's, stripes' and falloff's
# directions, the stripes' frequency and phase, the ink's and the colour noise's amplitudes, the noise fields.
FACTORS: tuple[tuple[str, bool, str], ...] = (
    ("font", True, "index into the generator's font list (manifest svhn.generator.fonts)"),
    ("stroke_weight", True, "0 thinned (min filter 3), 1 the font's own, 2 bold (max filter 5), 3 heavy (max filter 9)"),
    ("font_width", False, "the drawn font and stroke weight's mean digit width / digit height, averaged over 0–9 (not "
                          "the label's own glyph), about 0.5–0.85"),
    ("font_ink", False, "the drawn font and stroke weight's ink density, the inked fraction of a digit glyph's bounding "
                        "box averaged over 0–9, about 0.2–0.8"),
    ("neighbours", True, "partial neighbouring digits drawn at the left and right edges: 0, 1 or 2"),
    ("digit_height", False, "centre digit's height / image height, 0.68–0.95"),
    ("rotation", False, "degrees, positive clockwise on screen, −8 to 8"),
    ("slant", False, "horizontal shear, x per unit height upward (the negated shear drawn), positive: the top leans "
                     "right, −0.2 to 0.2"),
    ("aspect", False, "horizontal stretch of the glyph, 0.8–1.25"),
    ("shift_x", False, "px, the digit's centre right of the image centre, −2.5 to 2.5"),
    ("shift_y", False, "px, the digit's centre below the image centre, −2.5 to 2.5"),
    ("digit_luminance", False, "Rec. 601 luma of the digit colour, 0–1"),
    ("background_luminance", False, "Rec. 601 luma of the background colour (before shading), 0–1"),
    ("contrast", False, "digit − background luminance, |·| ≥ 0.2; negative: a dark digit on a light background"),
    ("digit_hue", False, "HSV hue of the digit colour, 0–1 (a circle; meaningless at low saturation)"),
    ("digit_saturation", False, "HSV saturation of the digit colour, 0–0.9"),
    ("background_hue", False, "HSV hue of the background colour, 0–1 (a circle)"),
    ("background_saturation", False, "HSV saturation of the background colour, 0–0.8"),
    ("gradient", False, "strength of the background's colour gradient: 0 (flat, half the images) or 0.3–1"),
    ("texture", False, "amplitude of the background's smooth shading noise, 0–0.25"),
    ("stripes", False, "amplitude of background stripes: 0 (three images in four) or 0.03–0.12"),
    ("shadow", True, "a drop shadow is drawn: 0 or 1"),
    ("falloff", False, "depth of the lighting falloff across the image, 0–0.35"),
    ("blur", False, "Gaussian blur σ, px, 0.3–1.3"),
    ("noise", False, "pixel noise σ, fraction of full scale, 0–0.05"),
)
FACTOR_NAMES = tuple(name for name, _, _ in FACTORS)
FACTOR_DISCRETE = tuple(discrete for _, discrete, _ in FACTORS)


@dataclass(frozen=True)
class GlyphAtlas:
    """Digits of every usable (font, stroke weight): glyphs (K, 10, CANVAS, CANVAS) in [0, 1], widths in cell units."""

    glyphs: torch.Tensor
    widths: np.ndarray  # (K, 10)
    style_font: np.ndarray  # (K,) index into fonts
    style_p: np.ndarray  # (K,) sampling probability: fonts uniform, weights by WEIGHTS
    fonts: tuple[dict, ...]
    style_weight: np.ndarray  # (K,) index into WEIGHTS


def candidate_font_files() -> list[Path]:
    """Every TrueType/OpenType file found on the machine plus matplotlib's bundled fonts."""
    bundled = Path(matplotlib.get_data_path()) / "fonts" / "ttf"
    paths = {Path(p) for p in matplotlib.font_manager.findSystemFonts()} | set(bundled.glob("*.[ot]tf"))
    return sorted(paths, key=lambda p: (p.name, str(p)))


def digit_font_name(path: Path) -> str | None:
    """The font's full name when its character map sends '0'–'9' to digit glyphs (by name, or unnamed)."""
    try:
        font = TTFont(path, lazy=True, fontNumber=0)
        cmap = font.getBestCmap() or {}
        full_name = font["name"].getDebugName(4) or path.stem
    except (TTLibError, OSError, AssertionError, KeyError):
        return None
    for d, word in enumerate(DIGIT_NAMES):
        name = cmap.get(ord(str(d)))
        if name is None:
            return None
        generic = re.fullmatch(r"(uni|u)0*3[0-9A-Fa-f]|(glyph|cid|g)\d+", name)
        if not (name.lower().startswith(word) or generic):
            return None
    return full_name


def render_digit(font: ImageFont.FreeTypeFont, digit: int) -> Image.Image | None:
    """One digit drawn white on black, cropped to its ink with a margin for stroke filters; None if blank."""
    size = RENDER_POINTS * 3
    image = Image.new("L", (size, size))
    ImageDraw.Draw(image).text((RENDER_POINTS, RENDER_POINTS // 2), str(digit), fill=255, font=font)
    box = image.getbbox()
    if box is None:
        return None
    margin = 8
    return image.crop((box[0] - margin, box[1] - margin, box[2] + margin, box[3] + margin))


def to_cell(image: Image.Image) -> np.ndarray | None:
    """A drawn digit scaled to GLYPH_HEIGHT and centred in a CANVAS cell, float in [0, 1]; None if blank."""
    box = image.point(lambda v: 255 if v > 127 else 0).getbbox()
    if box is None:
        return None
    glyph = image.crop(box)
    scale = min(GLYPH_HEIGHT / glyph.height, (CANVAS - 2) / glyph.width)
    glyph = glyph.resize((max(1, round(glyph.width * scale)), max(1, round(glyph.height * scale))), Image.LANCZOS)
    cell = Image.new("L", (CANVAS, CANVAS))
    cell.paste(glyph, ((CANVAS - glyph.width) // 2, (CANVAS - glyph.height) // 2))
    return np.asarray(cell, dtype=np.float32) / 255.0


def render_font(path: Path) -> list[np.ndarray | None]:
    """Per stroke weight, the ten digit cells (10, CANVAS, CANVAS) of a font, or None where unusable."""
    font = ImageFont.truetype(str(path), RENDER_POINTS)
    drawn = [render_digit(font, d) for d in range(10)]
    if any(d is None for d in drawn):
        return [None] * len(WEIGHTS)
    ink = np.array([np.asarray(d, dtype=np.float32).mean() for d in drawn])
    stacks = []
    for kind, size, _ in WEIGHTS:
        filtered = drawn if kind is None else [d.filter(kind(size)) for d in drawn]
        cells = [to_cell(d) for d in filtered]
        kept = np.array([np.asarray(d, dtype=np.float32).mean() for d in filtered]) / ink
        stack = None if any(c is None for c in cells) or kept.min() < MIN_THIN_INK else np.stack(cells)
        if stack is not None:
            diffs = np.abs(stack[:, None] - stack[None]).mean(axis=(2, 3)) + np.eye(10)
            stack = stack if diffs.min() > 0.01 else None
        stacks.append(stack)
    return stacks


@lru_cache(maxsize=1)
def build_atlas() -> GlyphAtlas:
    """Render every distinct usable font found into a glyph atlas (cached per process)."""
    cells, style_font, style_weight, style_p, fonts, seen = [], [], [], [], [], set()
    for path in candidate_font_files():
        name = digit_font_name(path)
        if name is None or name in seen:
            continue
        try:
            stacks = render_font(path)
        except OSError:
            continue
        if stacks[1] is None:  # the font's own weight must be usable
            continue
        seen.add(name)
        usable = [(s, w[2], i) for i, (s, w) in enumerate(zip(stacks, WEIGHTS)) if s is not None]
        total = sum(p for _, p, _ in usable)
        for stack, p, weight in usable:
            cells.append(stack)
            style_font.append(len(fonts))
            style_weight.append(weight)
            style_p.append(p / total)
        fonts.append({"name": name, "file": path.name, "sha256": hashlib.sha256(path.read_bytes()).hexdigest()})
    if not fonts:
        raise RuntimeError("street digits: no font with renderable digits 0–9 was found (matplotlib ships some)")
    glyphs = np.stack(cells)
    widths = (glyphs > 0.1).any(axis=2).sum(axis=2) * 2.0 / CANVAS
    p = np.asarray(style_p) / len(fonts)
    return GlyphAtlas(torch.from_numpy(glyphs), widths, np.asarray(style_font), p / p.sum(), tuple(fonts),
                      np.asarray(style_weight))


def svhn_like_counts(n: int, split: str) -> np.ndarray:
    """Per-class counts for n images in SVHN's `split` proportions (largest remainder; exact at SVHN's size)."""
    ref = SVHN_CLASS_COUNTS[split]
    quota = n * ref / ref.sum()
    counts = np.floor(quota).astype(np.int64)
    order = np.argsort(-(quota - counts), kind="stable")
    counts[order[: n - counts.sum()]] += 1
    return counts


def sample_colours(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Background and digit RGB colours (n, 3) with a luminance contrast of at least MIN_CONTRAST."""
    weights = LUMA
    bg, fg = np.empty((n, 3)), np.empty((n, 3))
    todo = np.arange(n)
    while todo.size:
        m = todo.size
        v_bg = rng.uniform(0.08, 0.92, m)
        dark_text = np.where(v_bg > 0.5, rng.random(m) < 0.8, rng.random(m) < 0.2)
        contrast = rng.uniform(0.2, 0.85, m)
        v_fg = np.clip(np.where(dark_text, v_bg - contrast, v_bg + contrast), 0.02, 0.95)
        hsv_bg = np.stack([rng.random(m), 0.8 * rng.random(m) ** 2, v_bg], axis=1)
        hsv_fg = np.stack([rng.random(m), 0.9 * rng.random(m) ** 1.5, v_fg], axis=1)
        bg[todo], fg[todo] = matplotlib.colors.hsv_to_rgb(hsv_bg), matplotlib.colors.hsv_to_rgb(hsv_fg)
        todo = todo[np.abs((bg[todo] - fg[todo]) @ weights) < MIN_CONTRAST]
    return bg, fg


def sample_layout(labels: np.ndarray, atlas: GlyphAtlas, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Per-image style, neighbour digits, which slots are drawn, each slot's affine theta (n, 3, 2, 3), and the
    geometry drawn (height, angle_deg, shear, aspect, shift_px (n, 2): x right, y down)."""
    n = labels.size
    style = rng.choice(atlas.style_p.size, n, p=atlas.style_p)
    digits = np.stack([rng.integers(0, 10, n), labels, rng.integers(0, 10, n)], axis=1)
    present = np.stack([rng.random(n) < 0.75, np.ones(n, bool), rng.random(n) < 0.75], axis=1)
    height = rng.uniform(0.68, 0.95, n)  # digit height / image height (SVHN: square box around the digit)
    angle_deg = rng.uniform(-8, 8, n)
    angle = np.deg2rad(angle_deg)
    shear = rng.uniform(-0.2, 0.2, n)
    aspect = rng.uniform(0.8, 1.25, n)
    shift_px = rng.uniform(-2.5, 2.5, (n, 2))
    shift = shift_px * 2 / OUT
    k = 2 * height / GLYPH_UNITS  # output units per cell unit
    cos, sin = np.cos(angle), np.sin(angle)
    rot = np.stack([np.stack([cos, -sin], -1), np.stack([sin, cos], -1)], -2)
    shr = np.zeros((n, 2, 2))
    shr[:, 0, 0], shr[:, 0, 1], shr[:, 1, 1] = aspect, shear, 1.0  # x' = aspect·x + shear·y
    inv = np.linalg.inv(k[:, None, None] * rot @ shr)  # output -> cell
    offset = -np.einsum("nij,nj->ni", inv, shift)
    w = atlas.widths[style[:, None], digits]  # (n, 3)
    gap = rng.uniform(0.05, 0.35, (n, 2)) * GLYPH_UNITS
    reach = np.stack([w[:, 1] + w[:, 0], w[:, 1] + w[:, 2]], axis=1) / 2  # centre-to-centre without gap
    gap = np.maximum(gap, NEIGHBOUR_REACH / k[:, None] - reach)  # neighbours sit at the edges, partly cut
    dx = np.stack([-(reach[:, 0] + gap[:, 0]), np.zeros(n), reach[:, 1] + gap[:, 1]], axis=1)
    theta = np.zeros((n, 3, 2, 3))
    theta[:, :, :, :2] = inv[:, None]
    theta[:, :, :, 2] = offset[:, None]
    theta[:, :, 0, 2] -= dx  # a neighbour is the centre's frame moved by its offset along the baseline
    return {"style": style, "digits": digits, "present": present, "theta": theta, "height": height,
            "angle_deg": angle_deg, "shear": shear, "aspect": aspect, "shift_px": shift_px}


def affine_grid(theta: torch.Tensor, size: int) -> torch.Tensor:
    """Same as F.affine_grid(theta, (n, 1, size, size), align_corners=False), built separably (faster)."""
    n = theta.shape[0]
    c = (torch.arange(size, dtype=torch.float32) * 2 + 1) / size - 1
    grid = torch.empty(n, size, size, 2)
    for k in range(2):
        along_x = theta[:, k, 0, None, None] * c.view(1, 1, size)
        along_y = theta[:, k, 1, None, None] * c.view(1, size, 1) + theta[:, k, 2, None, None]
        torch.add(along_x, along_y, out=grid[..., k])
    return grid


def render_masks(atlas: GlyphAtlas, layout: dict) -> torch.Tensor:
    """Ink coverage (n, 1, OUT, OUT) of the centre digit and its partial neighbours (supersampled)."""
    n, size = layout["style"].size, OUT * SUPERSAMPLE
    slot = np.flatnonzero(layout["present"].ravel())
    owner = torch.from_numpy(slot // 3)
    cells = atlas.glyphs[torch.from_numpy(layout["style"][slot // 3]), torch.from_numpy(layout["digits"].ravel()[slot])]
    theta = torch.from_numpy(layout["theta"].reshape(n * 3, 2, 3)[slot]).float()
    drawn = F.grid_sample(cells[:, None], affine_grid(theta, size), mode="bilinear", align_corners=False)
    mask = torch.zeros(n, size, size).index_add_(0, owner, drawn[:, 0]).clamp_(0, 1)
    return F.avg_pool2d(mask[:, None], SUPERSAMPLE)


def smooth_noise(n: int, channels: int, cells: int, gen: torch.Generator) -> torch.Tensor:
    """Low-frequency noise (n, channels, OUT, OUT) in [-1, 1] from a cells×cells random field."""
    field = torch.rand(n, channels, cells, cells, generator=gen) * 2 - 1
    return F.interpolate(field, size=(OUT, OUT), mode="bilinear", align_corners=False)


def ramp(angle: np.ndarray) -> torch.Tensor:
    """Per-image position along direction `angle`, (n, 1, OUT, OUT) in [-1, 1]."""
    n = angle.size
    c = (torch.arange(OUT, dtype=torch.float32) * 2 + 1) / OUT - 1
    cos = torch.from_numpy(np.cos(angle) / math.sqrt(2)).float().view(n, 1, 1, 1)
    sin = torch.from_numpy(np.sin(angle) / math.sqrt(2)).float().view(n, 1, 1, 1)
    return cos * c.view(1, 1, 1, OUT) + sin * c.view(1, 1, OUT, 1)


def per_image(values: np.ndarray) -> torch.Tensor:
    """(n,) or (n, c) values as a float tensor broadcastable over (n, c, H, W)."""
    t = torch.from_numpy(np.asarray(values, dtype=np.float32))
    return t.view(t.shape[0], -1, 1, 1)


def paint(mask: torch.Tensor, rng: np.random.Generator, gen: torch.Generator, drawn: dict | None = None) -> torch.Tensor:
    """Composite digit ink over a textured, shaded background: float RGB (n, 3, OUT, OUT).

    `drawn`, when given, receives the per-image values drawn: bg, fg (n, 3) RGB, gradient, texture, stripes,
    shadow, falloff (n,). The draws are the same, in the same order, with or without it."""
    n = mask.shape[0]
    bg, fg = sample_colours(n, rng)
    bg2 = np.clip(bg * rng.uniform(0.6, 1.4, (n, 3)), 0, 1)
    gradient = (rng.random(n) < 0.5) * rng.uniform(0.3, 1.0, n)
    back = per_image(bg) + per_image(bg2 - bg) * (ramp(rng.uniform(0, 2 * np.pi, n)) + 1) * per_image(gradient / 2)
    stripes = torch.sin(ramp(rng.uniform(0, np.pi, n)) * per_image(rng.uniform(6, 30, n)) + per_image(rng.uniform(0, 6.3, n)))
    texture = rng.uniform(0, 0.25, n)
    shade = 1 + per_image(texture) * smooth_noise(n, 1, 4, gen)
    stripe_amplitude = (rng.random(n) < 0.25) * rng.uniform(0.03, 0.12, n)
    shade += per_image(stripe_amplitude) * stripes
    back = back * (shade + per_image(rng.uniform(0, 0.08, n)) * smooth_noise(n, 3, 9, gen))
    ink = per_image(fg) * (1 + per_image(rng.uniform(0, 0.1, n)) * smooth_noise(n, 1, 5, gen))
    shadow_on = rng.random(n) < 0.2
    shadow = torch.roll(mask, shifts=(1, 1), dims=(2, 3)) * (1 - mask) * per_image(shadow_on * 0.5)
    image = torch.lerp(back * (1 - shadow), ink, mask)
    falloff = rng.uniform(0, 0.35, n)
    if drawn is not None:
        drawn.update(bg=bg, fg=fg, gradient=gradient, texture=texture, stripes=stripe_amplitude, shadow=shadow_on,
                     falloff=falloff)
    return image * (1 - per_image(falloff) * (ramp(rng.uniform(0, 2 * np.pi, n)) + 1) / 2)


def blur(images: torch.Tensor, sigma: np.ndarray) -> torch.Tensor:
    """Gaussian blur with one sigma per image (separable, grouped convolution, reflect padding)."""
    n, c, h, w = images.shape
    radius = 3
    x = torch.arange(-radius, radius + 1, dtype=torch.float32)
    kernel = torch.exp(-(x**2) / (2 * torch.from_numpy(sigma).float().view(n, 1) ** 2))
    kernel = (kernel / kernel.sum(1, keepdim=True)).repeat_interleave(c, 0)  # (n*c, 2r+1)
    flat = F.pad(images.reshape(1, n * c, h, w), (radius,) * 4, mode="reflect")
    flat = F.conv2d(flat, kernel.view(n * c, 1, 1, -1), groups=n * c)
    flat = F.conv2d(flat, kernel.view(n * c, 1, -1, 1), groups=n * c)
    return flat.view(n, c, h, w)


def style_factors(atlas: GlyphAtlas, layout: dict, drawn: dict, blur_sigma: np.ndarray, noise: np.ndarray) -> np.ndarray:
    """The recorded style of a chunk, (n, len(FACTORS)) float32 in FACTOR_NAMES order, from what was drawn."""
    bg_hsv, fg_hsv = matplotlib.colors.rgb_to_hsv(drawn["bg"]), matplotlib.colors.rgb_to_hsv(drawn["fg"])
    bg_luma, fg_luma = drawn["bg"] @ LUMA, drawn["fg"] @ LUMA
    style = layout["style"]
    width_px = atlas.widths * CANVAS / 2  # (K, 10) glyph widths in cell pixels; every glyph is GLYPH_HEIGHT high
    ink_density = atlas.glyphs.sum((2, 3)).numpy() / (GLYPH_HEIGHT * np.maximum(width_px, 1))
    columns = {
        "font": atlas.style_font[style], "stroke_weight": atlas.style_weight[style],
        "font_width": (width_px / GLYPH_HEIGHT).mean(1)[style], "font_ink": ink_density.mean(1)[style],
        "neighbours": layout["present"][:, 0].astype(int) + layout["present"][:, 2],
        "digit_height": layout["height"], "rotation": layout["angle_deg"], "slant": -layout["shear"],
        "aspect": layout["aspect"], "shift_x": layout["shift_px"][:, 0], "shift_y": layout["shift_px"][:, 1],
        "digit_luminance": fg_luma, "background_luminance": bg_luma, "contrast": fg_luma - bg_luma,
        "digit_hue": fg_hsv[:, 0], "digit_saturation": fg_hsv[:, 1],
        "background_hue": bg_hsv[:, 0], "background_saturation": bg_hsv[:, 1],
        "gradient": drawn["gradient"], "texture": drawn["texture"], "stripes": drawn["stripes"],
        "shadow": drawn["shadow"], "falloff": drawn["falloff"], "blur": blur_sigma, "noise": noise,
    }
    return np.stack([np.asarray(columns[name], dtype=np.float32) for name in FACTOR_NAMES], axis=1)


def generate_chunk(labels: np.ndarray, seed: np.random.SeedSequence,
                   with_factors: bool = False) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """Render one chunk of images (n, 3, OUT, OUT) uint8 for the given centre-digit labels; with `with_factors`,
    (images, factors (n, len(FACTORS)) float32): the same images, the same draws."""
    rng = np.random.default_rng(seed)
    gen = torch.Generator().manual_seed(int(rng.integers(2**62)))
    atlas = build_atlas()
    n = labels.size
    layout = sample_layout(labels, atlas, rng)
    drawn: dict = {}
    image = paint(render_masks(atlas, layout), rng, gen, drawn)
    blur_sigma = rng.uniform(0.3, 1.3, n)
    image = blur(image, blur_sigma)
    noise = rng.uniform(0.0, 0.05, n)
    image += torch.randn(n, 3, OUT, OUT, generator=gen) * per_image(noise)
    images = image.clamp_(0, 1).mul_(255).round_().to(torch.uint8).numpy()
    if not with_factors:
        return images
    return images, style_factors(atlas, layout, drawn, blur_sigma, noise)


def _chunk_job(job: tuple[np.ndarray, np.random.SeedSequence, bool]) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """Worker entry point: one chunk, single-threaded."""
    torch.set_num_threads(1)
    return generate_chunk(*job)


def generate_street_digits(n: int, seed: int, split: str = "train", workers: int = 1,
                           return_factors: bool = False) -> tuple[np.ndarray, ...]:
    """n seeded stand-in digits: images (n, 3, 32, 32) uint8 and labels (n,) int64 in SVHN's class proportions;
    with `return_factors`, also the style drawn for each, (n, len(FACTORS)) float32 (columns FACTOR_NAMES).
    The images and labels are the same either way."""
    if split not in SPLIT_IDS:
        raise ValueError(f"split must be one of {sorted(SPLIT_IDS)}, got {split!r}")
    if n < 1:
        raise ValueError(f"number of images must be >= 1, got {n}")
    root = np.random.SeedSequence([seed, SPLIT_IDS[split]])
    label_seed, chunk_root = root.spawn(2)
    labels = np.repeat(np.arange(10), svhn_like_counts(n, split))
    np.random.default_rng(label_seed).shuffle(labels)
    starts = range(0, n, CHUNK)
    jobs = [(labels[s : s + CHUNK], chunk_seed, return_factors)
            for s, chunk_seed in zip(starts, chunk_root.spawn(len(starts)))]
    images = np.empty((n, 3, OUT, OUT), dtype=np.uint8)
    factors = np.empty((n, len(FACTORS)), dtype=np.float32)

    def put(start: int, chunk) -> int:
        chunk_images, chunk_factors = chunk if return_factors else (chunk, None)
        images[start : start + len(chunk_images)] = chunk_images
        if return_factors:
            factors[start : start + len(chunk_images)] = chunk_factors
        return start + len(chunk_images)

    build_atlas()  # render fonts once; forked workers inherit the atlas (as DataLoader workers inherit datasets)
    from mmvae.progress import Progress

    progress = Progress(n, f"street digits ({split})", "image", every_s=15.0)
    if workers > 1:
        with multiprocessing.get_context("fork").Pool(workers) as pool:
            for start, chunk in zip(starts, pool.imap(_chunk_job, jobs)):
                progress.update(put(start, chunk))
    else:
        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # these ops are small: threads cost more than they give
        try:
            for start, job in zip(starts, jobs):
                progress.update(put(start, generate_chunk(*job)))
        finally:
            torch.set_num_threads(threads)
    progress.close()
    if return_factors:
        return images, labels.astype(np.int64), factors
    return images, labels.astype(np.int64)


def generator_info(seed: int, sizes: dict[str, int]) -> dict:
    """What determines the generated images: version, seed, sizes and the font files used."""
    return {
        "generator": GENERATOR_VERSION,
        "seed": seed,
        "sizes": dict(sizes),
        "class_proportions": "SVHN per split (exact counts at SVHN's sizes)",
        "fonts": list(build_atlas().fonts),
    }


def factor_record() -> dict:
    """The recorded factors' description for a manifest: names, discrete flags and meanings, in column order."""
    return {"names": list(FACTOR_NAMES), "discrete": list(FACTOR_DISCRETE),
            "meaning": {name: meaning for name, _, meaning in FACTORS}}


def save_sample_grid(path: str | Path, n: int = 100, seed: int = 0, nrow: int = 10, zoom: int = 2) -> Path:
    """Save a grid of n generated train-split digits as a PNG (each image enlarged `zoom` times)."""
    from torchvision.utils import make_grid, save_image

    images, _ = generate_street_digits(n, seed=seed, split="train")
    big = F.interpolate(torch.from_numpy(images).float() / 255, scale_factor=zoom, mode="nearest")
    save_image(make_grid(big, nrow=nrow, padding=4, pad_value=1.0), str(path))
    return Path(path)


if __name__ == "__main__":  # python -m data_prep.street_digits docs/street_digits.png
    import sys

    print(save_sample_grid(sys.argv[1] if len(sys.argv) > 1 else "docs/street_digits.png"))
