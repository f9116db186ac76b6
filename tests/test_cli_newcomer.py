"""A newcomer's path through the command line: shipped configs from anywhere, resume from the saved config,
help that says what each option does and its default, early one-line errors."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys


from mmvae.cli import build_parser, main
from mmvae.config import config_to_yaml
from tests.conftest import REPO, tiny_config
from tests.test_cli import ENV
from tests.test_prepare_mnist_svhn import raw, synthetic_args  # noqa: F401  (raw is a fixture)


def _options(parser: argparse.ArgumentParser, path=()):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _options(sub, (*path, name))
        elif action.option_strings and not isinstance(action, argparse._HelpAction):
            yield path, action


def test_every_option_says_what_it_does_and_its_default():
    missing, undocumented = [], []
    for path, action in _options(build_parser()):
        where = f"{' '.join(path)} {action.option_strings[0]}"
        if not action.help:
            missing.append(where)
        elif action.default not in (None, False) and "default" not in action.help:
            undocumented.append(where)
    assert not missing and not undocumented, (missing, undocumented)


def test_config_list_and_show(capsys):
    assert main(["config", "list"]) == 0
    listed = capsys.readouterr().out
    assert "toy" in listed and "mnist_svhn_quick" in listed
    assert main(["config", "show", "toy"]) == 0
    assert capsys.readouterr().out == (REPO / "configs/toy.yaml").read_text()
    assert main(["config", "show", "tyo"]) == 2
    assert "did you mean 'toy'" in capsys.readouterr().err


def test_a_shipped_config_trains_from_another_directory(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "mmvae.cli", "train", "toy", "train.max_steps=3",
                           "data.train_size=256", "data.test_size=64", "logging.progress_bar=false",
                           "logging.wandb_mode=disabled", "--run-dir", "here"],
                          capture_output=True, text=True, env=ENV, cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (tmp_path / "here" / "checkpoints").is_dir()


def test_resume_uses_the_saved_config_and_says_when_a_run_is_finished(tmp_path, capsys):
    config = tmp_path / "tiny.yaml"
    config.write_text(config_to_yaml(tiny_config(tmp_path, ("train.max_steps=4",))))
    run = tmp_path / "run"
    assert main(["train", str(config), "--run-dir", str(run)]) == 0
    capsys.readouterr()
    assert main(["train", "--resume", "--run-dir", str(run), "train.max_steps=6"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["steps"] == 6 and summary["steps_this_session"] == 2
    assert main(["train", "--resume", "--run-dir", str(run), "train.max_steps=6"]) == 0
    assert "already finished at step 6" in capsys.readouterr().err


def test_train_without_config_or_resume_is_one_clear_line(tmp_path, capsys):
    assert main(["train", "--run-dir", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "needs CONFIG" in err[0]
    assert not (tmp_path / "r").exists()


def test_a_shape_that_does_not_match_the_data_is_refused_before_a_run_folder_exists(tmp_path, capsys):
    config = tmp_path / "tiny.yaml"
    config.write_text(config_to_yaml(tiny_config(tmp_path, ("model.modalities.bars.shape=[1, 8, 8]",))))
    assert main(["train", str(config), "--run-dir", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "model.modalities.bars.shape" in err[0] and "[1, 16, 16]" in err[0]
    assert not (tmp_path / "run").exists()


def test_evaluate_checks_for_the_classifiers_before_any_work(raw, tmp_path, capsys):  # noqa: F811
    from data_prep.cli import run_prepare

    data = tmp_path / "prepared"
    assert run_prepare(synthetic_args(raw, data)) == 0
    run = tmp_path / "run"
    quick = REPO / "configs" / "mnist_svhn_quick.yaml"
    assert main(["train", str(quick), f"data.path={data}", "train.max_steps=2", "train.batch_size=16",
                 "logging.progress_bar=false", "logging.wandb_mode=disabled", "--run-dir", str(run)]) == 0
    capsys.readouterr()
    assert main(["evaluate", str(run)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "classifiers.json is missing" in err[0] and "mmvae classifiers" in err[0]
    assert not (run / "eval").exists()
