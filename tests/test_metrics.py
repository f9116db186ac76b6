"""Known answers for the MNIST–SVHN-style metrics and the swap operations."""

import numpy as np
import torch
from torch import nn

from mmvae.classifiers import predict
from mmvae.data.toy import make_toy
from mmvae.metrics import agreement, coherence, probe_accuracy, style_preservation
from mmvae.model import FactorizedMultimodalVAE
from mmvae.swap import _pair_grid, encode_means, swap_decode
from tests.conftest import tiny_config


class PixelOracle(nn.Module):
    """Reads the label as the column of the brightest pixel in row 0: a perfect classifier for planted images."""

    def forward(self, x):
        return x[:, 0, 0, :10] * 100.0


def planted_images(labels: torch.Tensor) -> torch.Tensor:
    x = torch.zeros(labels.shape[0], 1, 28, 28)
    x[torch.arange(labels.shape[0]), 0, 0, labels] = 1.0
    return x


def test_perfect_generator_has_coherence_one_and_a_shuffled_one_about_a_tenth():
    torch.manual_seed(0)
    labels = torch.randint(0, 10, (5000,))
    oracle = PixelOracle()
    assert coherence(predict(oracle, planted_images(labels)), labels) == 1.0
    shuffled = planted_images(labels[torch.randperm(5000)])
    assert abs(coherence(predict(oracle, shuffled), labels) - 0.1) < 0.02


def test_agreement_is_one_for_identical_and_chance_for_independent_predictions():
    torch.manual_seed(0)
    a, b = torch.randint(0, 10, (5000,)), torch.randint(0, 10, (5000,))
    assert agreement([a, a.clone()]) == 1.0
    assert abs(agreement([a, b]) - 0.1) < 0.02


def test_style_preservation_knows_which_donor_a_swap_resembles():
    torch.manual_seed(0)
    style, content = torch.rand(100, 3, 8, 8), 0.3 * torch.rand(100, 3, 8, 8)
    assert style_preservation(style, style, content) == 1.0
    assert style_preservation(content, style, content) == 0.0


def test_probe_reads_planted_labels_and_not_noise():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 10, 2000)
    informative = np.eye(10)[y] + 0.1 * rng.normal(size=(2000, 10))
    noise = rng.normal(size=(2000, 10))
    assert probe_accuracy(informative[:1500], y[:1500], informative[1500:], y[1500:]) > 0.98
    assert probe_accuracy(noise[:1500], y[:1500], noise[1500:], y[1500:]) < 0.2


def _model_and_batches():
    torch.manual_seed(0)
    model = FactorizedMultimodalVAE(tiny_config().model).eval()
    data = make_toy(16, seed=4)
    return model, data.gather(torch.arange(8)), data.gather(torch.arange(8, 16))


@torch.no_grad()
def test_swapping_nothing_is_reconstruction_and_swapping_everything_is_the_other_sample():
    model, a, b = _model_and_batches()
    for m in model.names:
        z_joint, z_private = encode_means(model, a)
        recon_a = model.modalities[m].mean(model.decode(z_joint, z_private, [m])[m])
        torch.testing.assert_close(swap_decode(model, content=a, style=a, modality=m), recon_a)
        z_joint_b, z_private_b = encode_means(model, b)
        recon_b = model.modalities[m].mean(model.decode(z_joint_b, z_private_b, [m])[m])
        torch.testing.assert_close(swap_decode(model, content=b, style=b, modality=m), recon_b)
        # A real swap differs from both (negative control: the factors do reach the decoder).
        mixed = swap_decode(model, content=a, style=b, modality=m)
        assert not torch.allclose(mixed, recon_a) and not torch.allclose(mixed, recon_b)


@torch.no_grad()
def test_swap_grid_diagonal_is_reconstruction_and_rows_share_content():
    model, a, _ = _model_and_batches()
    cells = _pair_grid(model, a, a, "bars", None)  # (8, 8, 1, 16, 16)
    z_joint, z_private = encode_means(model, a)
    recon = model.modalities["bars"].mean(model.decode(z_joint, z_private, ["bars"])["bars"])
    torch.testing.assert_close(torch.stack([cells[i, i] for i in range(8)]), recon)
    # Off-diagonal cell (r, c) decodes Z_y of r with Z_bars of c.
    expected = swap_decode(model, content=_take(a, [2]), style=_take(a, [5]), modality="bars")
    torch.testing.assert_close(cells[2, 5], expected[0])


def _take(batch, idx):
    idx = torch.tensor(idx)
    return {"x": {m: t[idx] for m, t in batch["x"].items()}, "present": {m: t[idx] for m, t in batch["present"].items()},
            "y": batch["y"][idx]}


def test_markdown_marks_each_reference_figure_met_or_missed():
    from types import SimpleNamespace

    from mmvae.evaluate import metrics_markdown

    metrics = {"coherence/mnist->svhn": 0.85, "probe/private/mnist": 0.30, "swap/accuracy": 0.95}
    md = metrics_markdown(metrics, SimpleNamespace(run_dir="runs/x", step=1))
    assert "| coherence/mnist->svhn | 0.8500 | MISSED (>= 0.9) | met (>= 0.8) |" in md
    assert "| probe/private/mnist | 0.3000 | MISSED (<= 0.2) | MISSED (<= 0.25) |" in md
    assert "| swap/accuracy | 0.9500 | met (>= 0.9) | met (>= 0.8) |" in md
    assert "against the reference figures" not in metrics_markdown({"label_accuracy/all": 0.5},
                                                                   SimpleNamespace(run_dir="r", step=1))


def test_metrics_md_shows_small_figures_with_significant_digits():
    """Squared errors in metres are ~1e-5: with 4 decimals every one read 0.0000 and the baseline 0.0001."""
    from mmvae.evaluate import format_value

    assert format_value(2.171e-05) == "2.171e-05" and format_value(9.105e-05) == "9.105e-05"
    assert format_value(0.93421) == "0.9342" and format_value(0.0) == "0.0000" and format_value(980) == "980"
    assert format_value(-2100.44) == "-2100.4400"
