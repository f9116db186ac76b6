"""scripts/robot_predictions.py on a tiny run: a model trained for 2 steps on three random episodes in Lee et al.'s
format writes both PNGs at the expected sizes; a missing run, a run without a checkpoint and an episode outside
the test split are one-line errors with exit 2."""

from __future__ import annotations

import importlib.util
import json
import shutil

import numpy as np
import pytest

from tests.conftest import REPO

pytest.importorskip("h5py")
pytest.importorskip("matplotlib")

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def script():
    spec = importlib.util.spec_from_file_location("robot_predictions", REPO / "scripts" / "robot_predictions.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def png_size(path) -> tuple[int, int]:
    from PIL import Image

    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC, f"{path} is not a PNG"
    with Image.open(path) as im:
        im.verify()
    with Image.open(path) as im:
        im.load()
        return im.size


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """Three random episodes (free motion, then contact from step 25), prepared; a narrow vision_touch_quick model
    trained for 2 steps."""
    from data_prep import robot_episodes as re
    from mmvae.cli import main as cli

    d = tmp_path_factory.mktemp("robot_pred")
    eps = d / "episodes"
    eps.mkdir()
    s, sub, h = re.STEPS, re.SUBSTEPS, re.IMAGE_SIZE
    for i in range(3):
        rng = np.random.default_rng(i)
        pos = np.array([0.1 * i, 0, 0]) + np.cumsum(np.full((s, 3), 0.005), axis=0)  # 8.7 mm per step
        contact = np.zeros((s, sub), np.int64)
        contact[25:] = 1
        re.write_episode(eps / f"ep{i}.h5", {
            "image": rng.integers(0, 256, (s, h, h, 3), dtype=np.uint8),
            "depth_data": rng.uniform(0.5, 2.0, (s, h, h, 1)).astype(np.float32),
            "optical_flow": (rng.normal(0, 1, (s, h, h, 2)) * (rng.random((s, h, h, 1)) < 0.3)).astype(np.float32),
            "ee_forces_continuous": rng.normal(0, 2, (s, sub, 6)), "contact": contact,
            "proprio": np.concatenate([pos, rng.normal(0, 0.3, (s, 5))], axis=1),
            "action": rng.normal(0, 0.01, (s, 4))},
            attrs={"task": "insert", "simulation": True})
    re.prepare_index(eps, d / "prepared", seed=0, test_fraction=0.34)
    run = d / "run"
    narrow = ["model.modalities.image.options.channels=[4,4,8,8,8,8]",
              "model.modalities.depth.options.channels=[4,4,8,8,8,8]", "model.heads.flow.options.channels=[8,8,8,8]"]
    code = cli(["train", str(REPO / "configs/vision_touch_quick.yaml"), f"data.path={d / 'prepared'}",
                "train.max_steps=2", "train.batch_size=4", "train.eval_batches=1", "train.eval_every=2",
                "train.checkpoint_every=2", "logging.wandb_mode=disabled", "logging.progress_bar=false", *narrow,
                "--run-dir", str(run)])
    assert code == 0
    manifest = json.loads((d / "prepared" / "manifest.json").read_text())
    test_eps = [i for i, e in enumerate(manifest["episodes"]) if e["split"] == "test"]
    train_eps = [i for i, e in enumerate(manifest["episodes"]) if e["split"] == "train"]
    return run, test_eps, train_eps


def test_writes_both_pictures(tiny_run, tmp_path, capsys):
    run, test_eps, _ = tiny_run
    mod = script()
    out = tmp_path / "pics"
    assert mod.main([str(run), "--steps", "3", "30", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "command: python scripts/robot_predictions.py" in text
    assert f"episode {test_eps[0]} (" in text and "steps 3 30" in text  # the default: the test episode
    assert png_size(out / mod.FLOW_PNG) == mod.flow_picture_size(2)
    assert png_size(out / mod.FORCE_PNG) == tuple(int(round(v * mod.DPI)) for v in mod.FORCE_SIZE)


def test_errors_exit_2_in_one_line(tiny_run, tmp_path, capsys):
    run, _, train_eps = tiny_run
    mod = script()
    out = tmp_path / "pics"

    def error(argv) -> str:
        capsys.readouterr()
        assert mod.main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and err.startswith("robot_predictions: error: "), err
        return err

    assert "no such run folder" in error([str(tmp_path / "nowhere"), "--out", str(out)])
    bare = tmp_path / "bare"
    bare.mkdir()
    shutil.copy(run / "config.yaml", bare / "config.yaml")
    assert "has no checkpoint" in error([str(bare), "--out", str(out)])
    assert "not in the test split" in error([str(run), "--episode", str(train_eps[0]), "--out", str(out)])
    assert "must lie in 0..48" in error([str(run), "--steps", "49", "--out", str(out)])
    assert not out.exists()
