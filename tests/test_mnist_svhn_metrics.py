"""MNIST–SVHN disentanglement metrics (mmvae.mnist_svhn_metrics): known answers with an oracle model whose codes are
known functions of the images, the negative control of shuffled factors, and the keys an untrained model writes
on a tiny prepared folder (with and without recorded street-digit factors)."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

from data_prep import street_digits
from data_prep.cli import run_prepare
from data_prep.mnist_svhn import synthetic_factors_record
from mmvae.api import build, make_config
from mmvae.data.mnist_style import STYLE_NAMES, measure_style
from mmvae.data.mnist_svhn import MnistSvhnPairs
from mmvae.data.registry import DATASETS
from mmvae.disentanglement import factor_metrics
from mmvae.evaluate import metrics_markdown
from mmvae.mnist_svhn_metrics import SVHN_STYLE, mnist_svhn_disentanglement
from tests.test_mnist_style import stroke
from tests.test_prepare_mnist_svhn import raw, synthetic_args  # noqa: F401  (raw is a fixture)

QUICK_CONFIG = Path(__file__).parents[1] / "configs" / "mnist_svhn_quick.yaml"
N = 400


class OracleModel(nn.Module):
    """Codes that are known functions of the batch: Z_y the one-hot digit, Z_svhn the street digit's corner
    luminance and centre-minus-corner contrast, Z_mnist the measured slant and ink (through the family protocol's
    `posteriors`, as encode_means reads it)."""

    conditions: list = []

    def __init__(self):
        super().__init__()
        self.anchor = nn.Parameter(torch.zeros(1))

    def posteriors(self, batch, joint_from=None):
        svhn = batch["x"]["svhn"].float().permute(0, 2, 3, 1) @ torch.tensor(street_digits.LUMA, dtype=torch.float32)
        corner = torch.cat([svhn[:, :3, :3], svhn[:, -3:, -3:]], 1).flatten(1).mean(1) / 255
        centre = svhn[:, 12:20, 13:19].flatten(1).mean(1) / 255
        mnist = torch.from_numpy(measure_style(batch["x"]["mnist"]))
        joint = nn.functional.one_hot(batch["y"], 10).float()
        private = {"svhn": SimpleNamespace(mu=torch.stack([corner, centre - corner], 1)),
                   "mnist": SimpleNamespace(mu=mnist[:, [STYLE_NAMES.index("slant"), STYLE_NAMES.index("ink")]])}
        return SimpleNamespace(joint=SimpleNamespace(mean=joint), private=private, encodings={})


@pytest.fixture(scope="module")
def oracle_source() -> MnistSvhnPairs:
    """400 street digits with their factors paired one to one with drawn MNIST-like strokes of random slant and
    width."""
    images, labels, factors = street_digits.generate_street_digits(N, seed=0, split="test", return_factors=True)
    rng = np.random.default_rng(0)
    tops, widths = rng.uniform(8, 20, N), rng.uniform(1.5, 4.5, N)
    mnist = np.stack([stroke((4, t), (24, 14), w) for t, w in zip(tops, widths)])[:, None]
    provenance = {"svhn": {"source": "synthetic", "factors": synthetic_factors_record({"test": "none"})}}
    return MnistSvhnPairs(torch.from_numpy(mnist), torch.from_numpy(images), torch.arange(N)[:, None].repeat(1, 2),
                          torch.from_numpy(labels), provenance, "test", torch.from_numpy(factors))


def test_oracle_codes_score_what_they_hold_and_shuffled_factors_score_chance(oracle_source) -> None:
    out = mnist_svhn_disentanglement(OracleModel(), oracle_source, 2000, seed=0)
    informativeness = lambda key: out[f"dci/informativeness/{key}"]  # noqa: E731
    assert out["disentanglement_samples"] == N
    assert informativeness("joint/digit") > 0.95 and informativeness("private/svhn/digit") < 0.3  # chance 0.1
    assert informativeness("private/svhn/style/background_luminance") > 0.8
    assert informativeness("private/svhn/style/contrast") > 0.6
    assert informativeness("joint/svhn_style/background_luminance") < 0.1
    assert informativeness("private/mnist/style/slant") > 0.9 and informativeness("private/mnist/style/ink") > 0.9
    assert informativeness("joint/mnist_style/slant") < 0.1
    assert out["disentanglement_gap/svhn/style"] > 0.1 and out["disentanglement_gap/svhn/digit"] > 0.6
    assert out["disentanglement_gap/mnist/style"] > 0.2 and out["disentanglement_gap/mnist/digit"] > 0.6
    scored = {k.rsplit("/", 1)[1] for k in out if k.startswith("dci/informativeness/private/svhn/style/")}
    assert scored == set(SVHN_STYLE)  # the default set, not the font index
    chosen = mnist_svhn_disentanglement(OracleModel(), oracle_source, 100, seed=0, svhn_factors=("font", "blur"),
                                        n_estimators=5)
    assert {k for k in chosen if k.startswith("dci/informativeness/private/svhn/style/")} == {
        "dci/informativeness/private/svhn/style/font", "dci/informativeness/private/svhn/style/blur"}


def test_shuffled_factors_read_as_chance(oracle_source) -> None:
    """Negative control: the oracle's Z_svhn against the factors shuffled across samples reads nothing (R² 0; the
    one discrete factor, neighbours, at its majority share p(2) = 0.5625)."""
    batch = oracle_source.with_factors().gather(torch.arange(N))
    codes = OracleModel().posteriors(batch).private["svhn"].mu.numpy()
    names = oracle_source.svhn_factor_names
    order = np.random.default_rng(0).permutation(N)
    factors = batch["meta"]["svhn_factors"].numpy()
    for rows, expect_high in ((np.arange(N), True), (order, False)):
        values = {f: factors[rows, names.index(f)] for f in SVHN_STYLE}
        out = factor_metrics(codes, values, "private/svhn/style", discrete=dict(zip(names, oracle_source.svhn_factor_discrete)))
        luminance = out["dci/informativeness/private/svhn/style/background_luminance"]
        assert luminance > 0.8 if expect_high else luminance < 0.05
        if not expect_high:
            continuous = [out[f"dci/informativeness/private/svhn/style/{f}"] for f in SVHN_STYLE if f != "neighbours"]
            assert max(continuous) < 0.05, continuous
            assert abs(out["dci/informativeness/private/svhn/style/neighbours"] - 0.5625) < 0.1


def test_an_untrained_model_on_a_tiny_prepared_folder_writes_the_keys(raw: Path, tmp_path: Path) -> None:  # noqa: F811
    data = tmp_path / "prepared"
    assert run_prepare(synthetic_args(raw, data)) == 0
    config = make_config(QUICK_CONFIG, [f"data.path={data}"])
    torch.manual_seed(0)
    model = build(config).eval()
    test = MnistSvhnPairs.load(data, "test")
    out = mnist_svhn_disentanglement(model, test, 2000, seed=0, n_estimators=5)  # a few trees: the keys are tested
    for prefix in ("joint/digit", "private/svhn/style", "private/mnist/style", "joint/svhn_style", "joint/mnist_style",
                   "private/svhn/digit", "private/mnist/digit"):
        for metric in ("mig", "sap", "dci/completeness", "dci/informativeness"):
            assert 0.0 <= out[f"{metric}/{prefix}"] <= 1.0, (metric, prefix)
    for f in SVHN_STYLE:
        assert 0.0 <= out[f"dci/informativeness/private/svhn/style/{f}"] <= 1.0
    for f in STYLE_NAMES:
        assert 0.0 <= out[f"dci/informativeness/private/mnist/style/{f}"] <= 1.0
    assert out["disentanglement_samples"] == len(test) and "meta" not in test.gather(torch.arange(2))
    run = SimpleNamespace(run_dir=tmp_path / "run", step=0, config=config)
    md = metrics_markdown({**out, "provenance": test.provenance}, run)
    assert "| dci/informativeness/joint/svhn_style | " in md and "should be well below private/svhn/style's" in md
    assert "| disentanglement_gap/svhn/digit | " in md and "skipped" not in md

    # a folder prepared before the factors were recorded: the street-digit style keys are skipped, with a note
    manifest = json.loads((data / "manifest.json").read_text())
    del manifest["svhn"]["factors"]
    (data / "manifest.json").write_text(json.dumps(manifest))
    old = MnistSvhnPairs.load(data, "test")
    out = mnist_svhn_disentanglement(model, old, 2000, seed=0, n_estimators=5)
    assert not [k for k in out if "svhn_style" in k or "svhn/style" in k]
    assert "dci/informativeness/private/mnist/style" in out and "dci/informativeness/private/svhn/digit" in out
    md = metrics_markdown({**out, "provenance": old.provenance}, run)
    assert "Street-digit style metrics (`private/svhn/style`, `joint/svhn_style`) are skipped" in md
    assert "mmvae prepare svhn-factors" in md
    assert DATASETS["mnist_svhn"].metric_help is not None
