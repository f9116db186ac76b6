"""digits4: prepare (determinism, the FSDD split, bad inputs), the batch source, and one end-to-end CLI run."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from data_prep.errors import DataError
from mmvae.cli import main as cli
from mmvae.data.digits4 import Digits4
from tests.digits4_fixtures import prepare_args, tiny_inputs


def digests(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir()) if p.is_file()}


@pytest.fixture
def inputs(tmp_path, monkeypatch):
    return tiny_inputs(tmp_path, monkeypatch)


def test_prepare_is_byte_identical_and_keeps_test_recordings_out_of_train(inputs, tmp_path):
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    assert cli(prepare_args(inputs, a)) == 0
    assert cli(prepare_args(inputs, b)) == 0
    assert cli(prepare_args(inputs, c, seed=1)) == 0
    assert digests(a) == digests(b)
    assert digests(a)["train_tuples.npy"] != digests(c)["train_tuples.npy"]
    manifest = json.loads((a / "manifest.json").read_text())
    assert manifest["text"]["grammar"]["seed"] == 0 and manifest["text"]["grammar"]["vocab"][:2] == ["<pad>", "<eos>"]
    assert manifest["fsdd"]["sha256"] == hashlib.sha256(inputs["fsdd"].read_bytes()).hexdigest()
    # The split: test waves are exactly the takes 0-4 and no train wave equals a test wave.
    train, test = np.load(a / "train_audio_waves.npy"), np.load(a / "test_audio_waves.npy")
    assert len(test) == 2 * 10 * 5 and len(train) == 2 * 10 * 3
    assert not ({w.tobytes() for w in train} & {w.tobytes() for w in test})
    for split in ("train", "test"):
        tup = np.load(a / f"{split}_tuples.npy")
        y = np.load(a / f"{split}_mnist_labels.npy")[tup[:, 0]]
        assert (np.load(a / f"{split}_audio_labels.npy")[tup[:, 2]] == y).all()
        assert (np.load(a / f"{split}_text_labels.npy")[tup[:, 3]] == y).all()
        assert (np.load(a / f"{split}_svhn_labels.npy")[tup[:, 1]] == y).all()
    assert len(np.load(a / "train_tuples.npy")) == 2 * 200  # dm x sum n_d


def test_bad_inputs_are_one_line_errors_naming_the_file(inputs, tmp_path, capsys):
    bad = tmp_path / "broken.tar.gz"
    bad.write_bytes(inputs["fsdd"].read_bytes()[:300])
    args = prepare_args(inputs, tmp_path / "out")
    i = args.index("--fsdd") + 1
    for fsdd, problem in ((bad, "not a readable tar"), (tmp_path / "nowhere.tar.gz", "not found")):
        args[i] = str(fsdd)
        assert cli(args) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and str(fsdd) in err and problem in err
    # A prepared folder that lost a file.
    out = tmp_path / "ok"
    assert cli(prepare_args(inputs, out)) == 0
    (out / "test_text_tokens.npy").unlink()
    with pytest.raises(DataError, match="test_text_tokens.npy.*missing"):
        Digits4.load(out, "test")
    # Too long a sentence for --text-tokens.
    args = prepare_args(inputs, tmp_path / "short") + ["--text-tokens", "5"]
    assert cli(args) == 2
    assert "more than the maximum of 5 tokens" in capsys.readouterr().err


def test_source_masks_and_missing_modalities(inputs, tmp_path):
    out = tmp_path / "d4"
    assert cli(prepare_args(inputs, out)) == 0
    src = Digits4.load(out, "train", missing={"audio": 0.5, "text": 0.5}, seed=0)
    batch = src.gather(torch.arange(len(src)))
    assert batch["x"]["audio"].dtype == torch.int16 and batch["x"]["text"].dtype == torch.int64
    for m in ("audio", "text"):
        absent = ~batch["present"][m]
        assert 0.3 < absent.float().mean() < 0.7
        assert not batch["mask"][m][absent].any() and (batch["x"][m][absent] == 0).all()
    assert torch.stack(list(batch["present"].values())).any(0).all()  # never everything missing
    lengths = np.load(out / "train_audio_lengths.npy")[np.load(out / "train_tuples.npy")[:, 2]]
    full = Digits4.load(out, "train").gather(torch.arange(len(src)))
    assert (full["mask"]["audio"].sum(1).numpy() == lengths).all()


def tiny_config(path: Path, data: Path, run_root: Path) -> Path:
    cfg = yaml.safe_load((Path(__file__).resolve().parents[1] / "configs" / "digits4_quick.yaml").read_text())
    cfg["data"]["path"] = str(data)
    cfg["out_dir"] = str(run_root)
    mods = cfg["model"]["modalities"]
    mods["audio"]["shape"] = [2048]
    mods["text"]["options"]["vocab_file"] = str(data / "text_vocab.json")
    for m in mods.values():
        m["hidden"] = [32]
        m["private_feature_dim"] = 8
    mods["svhn"]["options"] = {"channels": [8, 8]}
    mods["audio"]["options"]["channels"] = [8, 8]
    mods["text"]["options"].update(gru_hidden=32, embed_dim=16)
    cfg["model"].update(joint_dim=4, joint_feature_dim=16, label_hidden=[16])
    cfg["train"].update(max_steps=6, batch_size=32, eval_every=3, checkpoint_every=3, log_every=3, warmup_steps=0,
                        eval_batches=1)
    cfg["logging"]["progress_bar"] = False
    cfg["logging"]["wandb_mode"] = "disabled"
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.mark.slow
def test_end_to_end_cli(inputs, tmp_path):
    data, run = tmp_path / "d4", tmp_path / "run"
    assert cli(prepare_args(inputs, data)) == 0
    assert cli(["classifiers", str(data), "--epochs", "1"]) == 0
    record = json.loads((data / "classifiers" / "digits4_classifiers.json").read_text())
    assert set(record["modalities"]) == {"mnist", "svhn", "audio", "text"}
    config = tiny_config(tmp_path / "tiny.yaml", data, tmp_path / "runs")
    assert cli(["train", str(config), "--run-dir", str(run)]) == 0
    assert cli(["evaluate", str(run), "--iwae-samples", "4", "--iwae-limit", "8", "--generative-limit", "40",
                "--probe-train", "60"]) == 0
    metrics = json.loads((run / "eval" / "metrics.json").read_text())
    subsets = [k for k in metrics if k.startswith("coherence/") and "->" in k and not k.startswith("coherence/others")]
    assert len(subsets) == 15 * 4  # every non-empty subset x every target
    for key in ("coherence/joint", "coherence/single_min", "coherence/others_min", "swap/audio", "swap/text",
                "probe/private/audio", "probe/private/text", "probe/joint/text", "classifier_test_accuracy/audio"):
        assert key in metrics
    assert cli(["swap", str(run), "--n", "3"]) == 0
    swaps = run / "swaps"
    assert (swaps / "within_audio.png").is_file() and (swaps / "within_text.md").is_file()
    assert (swaps / "cross_mnist_to_text.md").is_file() and (swaps / "cross_text_to_audio.png").is_file()
    assert list((swaps / "within_audio_wav").glob("*.wav"))
    assert cli(["sample", str(run), "--num", "4", "--nrow", "2"]) == 0
    assert cli(["attribute", str(run), "--samples", "3", "--show", "2", "--ig-steps", "4"]) == 0
    page = (run / "attribution" / "report.html").read_text()
    assert "<audio controls" in page and "ig/joint" in page
    doc = json.loads((run / "attribution" / "attributions.json").read_text())
    text_ig = doc["samples"][0]["modalities"]["text"]["raw"]["ig/joint"]
    assert any(abs(v) > 0 for v in text_ig)  # attributions on token embeddings, not zeros
