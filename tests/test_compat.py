"""Compatibility with what the first version wrote: its configs and a run folder it made (tests/fixtures).

tests/fixtures/run_v1_toy was written by commit 63a1401 (before the seams): the tiny config of
tests/conftest.py, `mmvae train ... --stop-at-step 8`. tests/fixtures/v1_configs are the shipped configs of
that commit, with the version-1 loss keys.
"""

from __future__ import annotations

import shutil

import pytest
import torch

from mmvae.checkpoint import load_latest
from mmvae.cli import main as cli
from mmvae.config import SCHEMA_VERSION, ConfigError, config_from_dict, load_config, migrate_tree
from mmvae.runs import load_run
from mmvae.train import train
from tests.conftest import REPO, tiny_tree

FIXTURE_RUN = REPO / "tests/fixtures/run_v1_toy"
V1_CONFIGS = sorted((REPO / "tests/fixtures/v1_configs").glob("*.yaml"))


def shipped_as_in_version_1(name: str):
    """The shipped config without what was added to it after version 1: the full MNIST–SVHN config's cycle term
    (issue 17's remedies table)."""
    cfg = load_config(REPO / "configs" / name)
    if name == "mnist_svhn.yaml":
        assert cfg.loss.terms == ["reconstruction", "heads", "prior", "cycle"]
        weights = {k: v for k, v in cfg.loss.weights.items() if not k.startswith("cycle/")}
        cfg = cfg.model_copy(update={"loss": cfg.loss.model_copy(update={"terms": None, "weights": weights})})
    return cfg


@pytest.mark.parametrize("path", [p for p in V1_CONFIGS if p.stem != "toy"], ids=lambda p: p.name)
def test_version_1_configs_load_as_the_shipped_ones(path):
    assert load_config(path) == shipped_as_in_version_1(path.name)


def test_the_version_1_toy_config_migrates_to_its_weights():
    # The shipped toy config has been retuned since (the demo's private factors): compare with what it said then.
    old = load_config(REPO / "tests/fixtures/v1_configs/toy.yaml")
    assert set(old.loss.weights) == {"kl/joint"}
    assert old.loss.schedule("kl/joint").model_dump() == {"value": 1.0, "warmup_steps": 200}


def test_version_1_loss_keys_become_weight_entries():
    tree = tiny_tree()
    tree["loss"] = {"prior_match": "mmd", "label_weight": 2.0, "recon_weight": 0.5, "prior_weight": 2.0,
                    "beta_joint": 3.0, "beta_joint_warmup_steps": 7, "beta_private": 1.0,
                    "beta_private_warmup_steps": 4}
    tree["model"]["modalities"]["wave"]["private_beta"] = 0.25
    migrated = migrate_tree(tree)
    assert migrated["schema_version"] == SCHEMA_VERSION and "private_beta" not in migrated["model"]["modalities"]["wave"]
    assert migrated["loss"]["weights"] == {
        "label": 2.0, "recon/*": 0.5, "mmd/joint": {"value": 6.0, "warmup_steps": 7},
        "mmd/private/*": {"value": 2.0, "warmup_steps": 4}, "mmd/private/wave": {"value": 0.5, "warmup_steps": 4},
    }
    assert tree["loss"]["label_weight"] == 2.0  # the input is not modified
    defaults = tiny_tree()
    defaults["loss"] = {"label_weight": 1.0, "beta_joint": 1.0, "beta_private_warmup_steps": 0}
    assert config_from_dict(defaults) == config_from_dict(tiny_tree())  # defaults write no entries


def test_an_old_key_and_its_new_entry_together_are_refused():
    tree = tiny_tree()
    tree["loss"] = {"label_weight": 2.0, "weights": {"label": 3.0}}
    with pytest.raises(ConfigError, match="loss.weights.label"):
        config_from_dict(tree)


def test_a_config_from_a_newer_schema_is_refused():
    tree = {**tiny_tree(), "schema_version": SCHEMA_VERSION + 1}
    with pytest.raises(ConfigError, match="newer mmvae"):
        config_from_dict(tree)


def test_the_old_run_folder_loads_with_its_label_head(tmp_path):
    shutil.copytree(FIXTURE_RUN, tmp_path / "run")
    run = load_run(tmp_path / "run")
    assert run.step == 8 and run.model.has_label_head
    old = load_latest(FIXTURE_RUN, clean_leftovers=False).tensors["model"]
    assert torch.equal(run.model.heads["label"].net[0].weight, old["label_head.0.weight"])


def test_the_old_run_folder_evaluates_samples_swaps_and_attributes(tmp_path):
    run = tmp_path / "run"
    shutil.copytree(FIXTURE_RUN, run)
    assert cli(["evaluate", str(run), "--iwae-samples", "8", "--iwae-limit", "8"]) == 0
    assert cli(["sample", str(run), "--num", "8", "--nrow", "4"]) == 0
    assert cli(["swap", str(run), "--n", "3"]) == 0
    assert cli(["attribute", str(run), "--samples", "4", "--show", "2"]) == 0
    for path in ("eval/metrics.json", "samples/prior_bars.png", "swaps/within_bars.png", "attribution/report.html"):
        assert (run / path).is_file(), path


def test_the_old_run_folder_resumes_to_the_weights_of_an_uninterrupted_new_run(tmp_path):
    config = load_config(FIXTURE_RUN / "config.yaml", ["logging.wandb_mode=disabled", "logging.progress_bar=false"])
    resumed = tmp_path / "resumed"
    shutil.copytree(FIXTURE_RUN, resumed)
    summary = train(config, resumed, resume=True)
    assert summary["steps"] == 24 and summary["steps_this_session"] == 16
    fresh = tmp_path / "fresh"
    train(config, fresh)
    a, b = load_latest(resumed), load_latest(fresh)
    assert a.step == b.step == 24
    for group in ("model", "optimizer"):
        assert a.tensors[group].keys() == b.tensors[group].keys()
        for name in a.tensors[group]:
            assert torch.equal(a.tensors[group][name], b.tensors[group][name]), f"{group}/{name}"
    # Negative control: one step fewer is not equal.
    short = tmp_path / "short"
    train(config.model_copy(update={"train": config.train.model_copy(update={"max_steps": 23})}), short)
    c = load_latest(short)
    assert not all(torch.equal(c.tensors["model"][n], b.tensors["model"][n]) for n in b.tensors["model"])
