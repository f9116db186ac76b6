"""The offline SVHN stand-in: format, class proportions, determinism, fonts, geometry, legibility, and the style
factors it records (which change no image)."""

from __future__ import annotations

from pathlib import Path

import hashlib
import json

import matplotlib
import numpy as np
import pytest
from sklearn.linear_model import RidgeClassifier

from data_prep import street_digits as sd


@pytest.fixture(scope="module")
def sample() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """3,000 train-split digits with their style factors, shared by the tests of this module."""
    return sd.generate_street_digits(3000, seed=0, split="train", return_factors=True)


def test_format_and_labels(sample) -> None:
    images, labels, _ = sample
    assert images.shape == (3000, 3, 32, 32) and images.dtype == np.uint8
    assert labels.shape == (3000,) and labels.dtype == np.int64
    np.testing.assert_array_equal(np.bincount(labels, minlength=10), sd.svhn_like_counts(3000, "train"))
    assert images.std() > 20  # not blank


def test_class_counts_exact_at_svhn_sizes() -> None:
    assert sd.svhn_like_counts(73257, "train").tolist() == sd.SVHN_CLASS_COUNTS["train"].tolist()
    assert sd.svhn_like_counts(26032, "test").tolist() == sd.SVHN_CLASS_COUNTS["test"].tolist()
    assert sd.svhn_like_counts(7, "test").sum() == 7


def test_same_seed_identical_other_seed_or_split_different() -> None:
    a = sd.generate_street_digits(40, seed=1)
    b = sd.generate_street_digits(40, seed=1)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert not np.array_equal(a[0], sd.generate_street_digits(40, seed=2)[0])
    assert not np.array_equal(a[0], sd.generate_street_digits(40, seed=1, split="test")[0])


def test_two_workers_give_the_same_images(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sd, "CHUNK", 32)
    one = sd.generate_street_digits(100, seed=3, workers=1, return_factors=True)
    two = sd.generate_street_digits(100, seed=3, workers=2, return_factors=True)
    np.testing.assert_array_equal(one[0], two[0])
    np.testing.assert_array_equal(one[2], two[2])  # the factors too, chunk by chunk


def test_fonts_include_matplotlib_and_exclude_symbol_fonts() -> None:
    atlas = sd.build_atlas()
    files = {f["file"] for f in atlas.fonts}
    bundled = {p.name for p in (Path(matplotlib.get_data_path()) / "fonts" / "ttf").glob("*.ttf")}
    assert {"cmr10.ttf", "STIXGeneral.ttf"} <= files & bundled  # shipped with matplotlib
    assert not files & {"cmsy10.ttf", "cmex10.ttf", "LastResortHE-Regular.ttf", "STIXSizOneSymReg.ttf"}
    assert len({f["name"] for f in atlas.fonts}) == len(atlas.fonts)  # one entry per distinct font
    assert atlas.glyphs.shape[1:] == (10, sd.CANVAS, sd.CANVAS)
    assert np.isclose(atlas.style_p.sum(), 1)


def test_layout_centres_the_digit_and_puts_neighbours_at_the_edges() -> None:
    atlas = sd.build_atlas()
    labels = np.arange(500) % 10
    layout = sd.sample_layout(labels, atlas, np.random.default_rng(0))
    theta = layout["theta"]  # output -> cell: q = A p + b; the glyph centre q = 0 sits at p = -A^-1 b
    centres = -np.einsum("nsij,nsj->nsi", np.linalg.inv(theta[..., :2]), theta[..., 2])
    assert np.abs(centres[:, 1]).max() < 0.2  # centre digit within ±0.2 of the middle (±3.2 px)
    for side, sign in ((0, -1), (2, 1)):
        assert (sign * centres[:, side, 0] > 0.6).all()  # neighbours sit near the edges, partly cut
    assert layout["present"][:, 1].all() and 0.6 < layout["present"][:, [0, 2]].mean() < 0.9
    np.testing.assert_array_equal(layout["digits"][:, 1], labels)


def test_affine_grid_matches_torch() -> None:
    import torch
    import torch.nn.functional as F

    theta = torch.randn(5, 2, 3, generator=torch.Generator().manual_seed(0))
    expected = F.affine_grid(theta, [5, 1, 16, 16], align_corners=False)
    torch.testing.assert_close(sd.affine_grid(theta, 16), expected)


def test_digits_are_legible_to_a_linear_classifier(sample) -> None:
    """Known answer: the label is readable from the pixels; negative control: shuffled labels are not."""
    images, labels, _ = sample
    grey = images.astype(np.float32).mean(axis=1)
    border = np.concatenate([grey[:, :3], grey[:, -3:]], axis=1).mean(axis=(1, 2))
    centre = grey[:, 10:22, 12:20].mean(axis=(1, 2))
    x = grey[:, 4:28, 6:26].reshape(len(grey), -1)
    x = (x - x.mean(1, keepdims=True)) / (x.std(1, keepdims=True) + 1e-6)
    x *= np.where(centre > border, 1.0, -1.0)[:, None]  # ink positive whatever the polarity
    train, test = slice(0, 2000), slice(2000, 3000)
    accuracy = (RidgeClassifier(alpha=10.0).fit(x[train], labels[train]).predict(x[test]) == labels[test]).mean()
    shuffled = np.random.default_rng(0).permutation(labels[train])
    control = (RidgeClassifier(alpha=10.0).fit(x[train], shuffled).predict(x[test]) == labels[test]).mean()
    assert accuracy > 0.45 and control < 0.3, (accuracy, control)


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="split must be one of"):
        sd.generate_street_digits(5, seed=0, split="extra")
    with pytest.raises(ValueError, match="must be >= 1"):
        sd.generate_street_digits(0, seed=0)


# sha256 of images and labels generated by main at 1cb83a8, before the generator returned its factors
# (the factors must not change a single draw: prepared folders and trained classifiers exist). The images
# depend on the fonts found, so the hashes are pinned together with the font files they were made with.
PINNED_FONTS = "5b20647100861d22587482e06ec2392a47cff3fd033f3f2b3b9c24f247031ca7"
PINNED = {
    (300, 0, "train"): ("450382f399eef16f726d790e6a6aa870d7433f5495afe846257bff0db0ee49fe",
                        "97f80308e39fff9f55e9e5de1111b3f92b94ad8c3879f4680bbf8b938836dca5"),
    (150, 7, "test"): ("4c296961a838a08f007422a2886ec680832f4b913116f3d52a6e3ce80fd579d0",
                       "90b3b9d746b7cbb73e5ce5b8bd17a4ae137321a48af9c30bd2cd18dabaf6ebb7"),
}


def fonts_digest() -> str:
    fonts = [[f["file"], f["sha256"]] for f in sd.build_atlas().fonts]
    return hashlib.sha256(json.dumps(fonts).encode()).hexdigest()


@pytest.mark.parametrize("n, seed, split", sorted(PINNED))
def test_images_are_byte_identical_to_the_pinned_ones(n, seed, split) -> None:
    if fonts_digest() != PINNED_FONTS:
        pytest.skip("this machine's fonts differ from those the hashes were pinned with")
    for return_factors in (False, True):  # asking for the factors changes no draw
        images, labels, *_ = sd.generate_street_digits(n, seed=seed, split=split, return_factors=return_factors)
        digests = (hashlib.sha256(images.tobytes()).hexdigest(), hashlib.sha256(labels.tobytes()).hexdigest())
        assert digests == PINNED[n, seed, split], return_factors


def test_factors_have_their_documented_types_and_ranges(sample) -> None:
    _, _, factors = sample
    assert factors.shape == (3000, len(sd.FACTORS)) and factors.dtype == np.float32
    assert len(set(sd.FACTOR_NAMES)) == len(sd.FACTOR_NAMES) == len(sd.FACTOR_DISCRETE)
    f = dict(zip(sd.FACTOR_NAMES, factors.T))
    for name, discrete in zip(sd.FACTOR_NAMES, sd.FACTOR_DISCRETE):
        assert discrete == np.array_equal(f[name], np.round(f[name])), name  # the discrete ones hold integers
    assert set(np.unique(f["font"])) == set(range(len(sd.build_atlas().fonts)))  # indices into the font list
    assert set(np.unique(f["stroke_weight"])) <= {0, 1, 2, 3} and set(np.unique(f["neighbours"])) == {0, 1, 2}
    assert 0.7 < f["neighbours"].mean() / 2 < 0.8 and 0.17 < f["shadow"].mean() < 0.23  # p = 0.75 and 0.2
    for name, lo, hi in [("digit_height", 0.68, 0.95), ("rotation", -8, 8), ("slant", -0.2, 0.2),
                         ("aspect", 0.8, 1.25), ("shift_x", -2.5, 2.5), ("shift_y", -2.5, 2.5), ("blur", 0.3, 1.3),
                         ("noise", 0, 0.05), ("falloff", 0, 0.35), ("texture", 0, 0.25)]:
        span = hi - lo
        assert lo - 1e-6 <= f[name].min() < lo + 0.05 * span and hi - 0.05 * span < f[name].max() <= hi + 1e-6, name
    assert (np.abs(f["contrast"]) >= sd.MIN_CONTRAST - 1e-6).all()
    np.testing.assert_allclose(f["contrast"], f["digit_luminance"] - f["background_luminance"], atol=1e-6)
    assert 0.45 < (f["gradient"] == 0).mean() < 0.55 and 0.7 < (f["stripes"] == 0).mean() < 0.8
    # the font columns are properties of the (font, weight) drawn, not of the label: a heavier weight is inkier
    ink = [f["font_ink"][f["stroke_weight"] == w].mean() for w in range(4)]
    assert np.all(np.diff(ink) > 0.05), ink
    for name in ("font_width", "font_ink"):
        per_style = {}
        for key, value in zip(zip(f["font"], f["stroke_weight"]), f[name]):
            per_style.setdefault(key, set()).add(float(value))
        assert all(len(values) == 1 for values in per_style.values()), name  # one value per (font, weight)


def test_factors_are_what_the_images_show(sample) -> None:
    """Known answers read off the pixels: the background luminance from the corners, the contrast's sign from the
    centre against the corners, the neighbours from ink at the left and right edges; negative control: shuffled."""
    images, _, factors = sample
    f = dict(zip(sd.FACTOR_NAMES, factors.T))
    luma = images.astype(np.float32).transpose(0, 2, 3, 1) @ sd.LUMA / 255
    corners = np.concatenate([luma[:, :3, :3], luma[:, :3, -3:], luma[:, -3:, :3], luma[:, -3:, -3:]], 1)
    corner = corners.reshape(len(luma), -1).mean(1)
    centre = luma[:, 12:20, 13:19].mean((1, 2))
    shuffled = np.random.default_rng(0).permutation(f["background_luminance"])
    assert np.corrcoef(corner, f["background_luminance"])[0, 1] > 0.9
    assert abs(np.corrcoef(corner, shuffled)[0, 1]) < 0.1
    assert np.mean(np.sign(centre - corner) == np.sign(f["contrast"])) > 0.9
    edges = np.abs(luma[:, 8:24][:, :, [0, 1, -2, -1]] - corner[:, None, None]).mean((1, 2))
    assert edges[f["neighbours"] == 2].mean() > 1.5 * edges[f["neighbours"] == 0].mean()
