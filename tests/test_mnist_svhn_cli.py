"""The MNIST–SVHN experiment through the command line on tiny data:
prepare -> `mmvae classifiers` -> `mmvae train` (the shipped quick config) -> `mmvae evaluate` (its disentanglement
keys included) -> `mmvae swap`."""

from __future__ import annotations

import json
from pathlib import Path

from data_prep.cli import run_prepare
from tests.test_cli import mmvae
from tests.test_prepare_mnist_svhn import raw, synthetic_args  # noqa: F401  (raw is a fixture)

QUICK_CONFIG = Path(__file__).parents[1] / "configs" / "mnist_svhn_quick.yaml"
FRACTIONS = ["coherence/mnist->svhn", "coherence/svhn->mnist", "coherence/joint", "swap/accuracy",
             "swap/joint/mnist", "swap/private/svhn", "style_preservation/mnist", "style_preservation/svhn",
             "probe/joint", "probe/joint/mnist", "probe/joint/svhn", "probe/private/mnist", "probe/private/svhn",
             "label_accuracy/all", "label_accuracy/mnist", "label_accuracy/svhn"]


def test_prepare_classify_train_evaluate_swap(raw: Path, tmp_path: Path) -> None:  # noqa: F811
    data = tmp_path / "prepared"
    # In-process: the tiny raw MNIST files only pass the md5 check under the fixture's monkeypatch.
    assert run_prepare(synthetic_args(raw, data)) == 0

    mmvae("classifiers", data, "--epochs", 1)
    record = json.loads((data / "classifiers" / "classifiers.json").read_text())
    assert record["svhn_source"] == "synthetic"
    for m in ("mnist", "svhn"):
        assert 0.0 <= record["modalities"][m]["test_accuracy"] <= 1.0

    run = tmp_path / "run"
    mmvae("train", QUICK_CONFIG, f"data.path={data}", "train.max_steps=6", "train.batch_size=16",
          "train.warmup_steps=2", "train.eval_every=6", "train.checkpoint_every=6", "train.log_every=2",
          "--run-dir", run)

    out = mmvae("evaluate", run, "--iwae-samples", 8, "--iwae-limit", 8, "--generative-limit", 64,
                "--probe-train", 64).stdout
    metrics = json.loads((run / "eval" / "metrics.json").read_text())
    for key in FRACTIONS:
        assert 0.0 <= metrics[key] <= 1.0, (key, metrics.get(key))
    assert metrics["classifier_test_accuracy/mnist"] == record["modalities"]["mnist"]["test_accuracy"]
    assert metrics["provenance"]["svhn"]["source"] == "synthetic"
    assert "not real SVHN" in out and "| probe/joint/svhn |" in out
    # disentanglement against the digit, the street digits' recorded style and MNIST's measured style; the cycle
    for key in ("dci/informativeness/joint/digit", "dci/informativeness/private/svhn/style",
                "dci/informativeness/joint/svhn_style", "dci/informativeness/private/mnist/style",
                "dci/informativeness/private/svhn/digit", "mig/private/svhn/style", "cycle/style", "cycle/content"):
        assert 0.0 <= metrics[key] <= 1.0, (key, metrics.get(key))
    assert 10 <= metrics["disentanglement_samples"] <= 64
    assert "| dci/informativeness/joint/svhn_style |" in out and "| disentanglement_gap/svhn/digit |" in out

    names = ["within_mnist", "within_svhn", "cross_mnist_to_svhn", "cross_svhn_to_mnist", "prior_mnist",
             "prior_svhn", "traverse_mnist", "traverse_svhn"]
    grids = {}
    for seed, folder in [(0, "a"), (0, "b"), (1, "c")]:
        mmvae("swap", run, "--n", 4, "--seed", seed, "--out", tmp_path / folder)
        grids[folder] = {n: (tmp_path / folder / f"{n}.png").read_bytes() for n in names}
        assert all(png[:8] == b"\x89PNG\r\n\x1a\n" for png in grids[folder].values())
    assert grids["a"] == grids["b"]  # deterministic with a seed
    assert grids["a"]["prior_mnist"] != grids["c"]["prior_mnist"]  # negative control: the seed matters


def test_classifiers_refuses_zero_epochs_naming_the_option(tmp_path: Path) -> None:
    proc = mmvae("classifiers", tmp_path, "--epochs", 0, ok=False)
    assert proc.returncode == 2 and "--epochs" in proc.stderr and "must be >= 1" in proc.stderr
