"""Known answers of the measured MNIST style factors (mmvae.data.mnist_style) on drawn strokes."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mmvae.data.mnist_style import STYLE_NAMES, measure_style


def stroke(top: tuple[float, float], bottom: tuple[float, float], width: float, size: int = 28, ss: int = 8) -> np.ndarray:
    """A straight stroke (row, col) top -> bottom of `width` pixels, anti-aliased by 8x supersampling, (28, 28) uint8."""
    c = (np.arange(size * ss) + 0.5) / ss - 0.5  # pixel centres at integers
    rows, cols = np.meshgrid(c, c, indexing="ij")
    d = np.subtract(bottom, top, dtype=float)
    length = np.hypot(*d)
    d /= length
    along = (rows - top[0]) * d[0] + (cols - top[1]) * d[1]
    across = np.abs(-(rows - top[0]) * d[1] + (cols - top[1]) * d[0])
    inside = (along >= 0) & (along <= length) & (across <= width / 2)
    return (inside.reshape(size, ss, size, ss).mean((1, 3)) * 255).round().astype(np.uint8)


def ring(radius: float, width: float, size: int = 28, ss: int = 8) -> np.ndarray:
    c = (np.arange(size * ss) + 0.5) / ss - size / 2
    rows, cols = np.meshgrid(c, c, indexing="ij")
    inside = np.abs(np.hypot(rows, cols) - radius) <= width / 2
    return (inside.reshape(size, ss, size, ss).mean((1, 3)) * 255).round().astype(np.uint8)


def measured(*images: np.ndarray) -> dict[str, np.ndarray]:
    return dict(zip(STYLE_NAMES, measure_style(np.stack(images)[:, None]).T))


def test_slant_has_the_sign_and_size_of_the_shear() -> None:
    # col = c0 + 0.4 * row: the bottom is right of the top, the top leans left: slant -0.4; mirrored +0.4
    f = measured(stroke((4, 10), (24, 18), 2.5), stroke((4, 18), (24, 10), 2.5), stroke((4, 14), (24, 14), 2.5),
                 stroke((4, 12), (24, 15), 4.0))
    np.testing.assert_allclose(f["slant"], [-0.4, 0.4, 0.0, -0.15], atol=0.02)


def test_thickness_is_the_stroke_width_at_any_angle_and_slant() -> None:
    widths = [2.0, 3.0, 4.0, 5.0]
    for top, bottom in [((4, 14), (24, 14)), ((4, 9), (24, 19)), ((14, 4), (14, 24)), ((5, 5), (22, 22))]:
        f = measured(*(stroke(top, bottom, w) for w in widths))
        np.testing.assert_allclose(f["thickness"], widths, atol=0.35)
        assert np.all(np.diff(f["thickness"]) > 0.5)  # a thicker stroke measures thicker
    rings = measured(*(ring(8, w) for w in widths))  # curved strokes too
    np.testing.assert_allclose(rings["thickness"], widths, atol=0.2)
    # negative control: the width does not move the slant, the slant does not move the width
    f = measured(stroke((4, 10), (24, 18), 2.0), stroke((4, 10), (24, 18), 5.0))
    assert abs(f["slant"][0] - f["slant"][1]) < 0.03


def test_bounding_box_and_ink_mass() -> None:
    block = np.zeros((28, 28), np.uint8)
    block[5:25, 10:16] = 255  # 20 rows x 6 columns fully inked
    faint = block.copy()
    faint[3, 2] = 100  # below half intensity: no part of the box
    f = measured(block, faint, stroke((4, 10), (24, 18), 2.0))
    assert f["width"].tolist()[:2] == [6, 6] and f["height"].tolist()[:2] == [20, 20]
    np.testing.assert_allclose(f["ink"][:2], [120, 120 + 100 / 255], rtol=1e-6)
    assert 9 <= f["width"][2] <= 11 and 20 <= f["height"][2] <= 22  # the slanted stroke's box
    np.testing.assert_allclose(f["thickness"][0], 6.0, atol=0.3)  # a 6-pixel-wide block


def test_blank_images_measure_zero_and_inputs_are_checked() -> None:
    blank = np.zeros((3, 1, 28, 28), np.uint8)
    assert measure_style(blank).dtype == np.float32 and not measure_style(blank).any()
    images = np.stack([stroke((4, 10), (24, 18), 3.0), ring(8, 2.0)])
    np.testing.assert_array_equal(measure_style(torch.from_numpy(images)[:, None]), measure_style(images))
    with pytest.raises(ValueError, match="uint8"):
        measure_style(images.astype(np.float32))
    with pytest.raises(ValueError, match="one channel"):
        measure_style(np.zeros((2, 3, 28, 28), np.uint8))
