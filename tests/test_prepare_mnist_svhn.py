"""End to end: `prepare mnist-svhn` on tiny fixtures (and on real MNIST when present), then load and batch."""

from __future__ import annotations

import argparse
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import scipy.io
import torch
from torch.utils.data import DataLoader, DistributedSampler

from data_prep import mnist, street_digits, svhn
from data_prep.cli import add_prepare_parser, run_prepare
from data_prep.errors import DataError
from data_prep.pairing import pair_count
from mmvae.data.mnist_style import STYLE_NAMES, measure_style
from mmvae.data.mnist_svhn import MnistSvhnDataset, MnistSvhnPairs, collate_pairs, svhn_factors_note
from mmvae.data.source import BatchSource

SHARED_MNIST = Path(__file__).parents[1] / "../shared/data/mnist"
SIZES = {"train": 60, "test": 30}


def parse(*argv: str) -> argparse.Namespace:
    """Arguments as `mmvae prepare mnist-svhn ARGV` would parse them."""
    parser = argparse.ArgumentParser()
    add_prepare_parser(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(["prepare", "mnist-svhn", *argv])


@pytest.fixture
def raw(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Tiny MNIST IDX files (60 train, 30 test; labels cycle 0–9) whose md5s are the expected ones."""
    folder = tmp_path / "mnist"
    folder.mkdir()
    rng = np.random.default_rng(0)
    md5 = {}
    for split, n in SIZES.items():
        stems = mnist.MNIST_FILES[split]
        arrays = (rng.integers(0, 256, (n, 28, 28), dtype=np.uint8), (np.arange(n) % 10).astype(np.uint8))
        for stem, array in zip(stems, arrays):
            mnist.write_idx(folder / f"{stem}.gz", array)
            md5[stem] = mnist.read_idx(folder / f"{stem}.gz")[1]["raw_md5"]
    monkeypatch.setattr(mnist, "MNIST_RAW_MD5", md5)
    return folder


@pytest.fixture
def svhn_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Tiny official-layout SVHN files (50 train, 25 test; labels 1–10) whose md5s are the expected ones."""
    folder = tmp_path / "svhn"
    folder.mkdir()
    rng = np.random.default_rng(1)
    md5 = {}
    for split, n in {"train": 50, "test": 25}.items():
        path = folder / svhn.SVHN_FILES[split]
        scipy.io.savemat(path, {"X": rng.integers(0, 256, (32, 32, 3, n), dtype=np.uint8),
                                "y": (np.arange(n) % 10 + 1).astype(np.uint8)[:, None]})
        md5[path.name] = hashlib.md5(path.read_bytes()).hexdigest()
    monkeypatch.setattr(svhn, "SVHN_MD5", md5)
    return folder


def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make every SVHN download fail as it does without a network."""
    def fail(dest_dir, splits=("train", "test")):
        raise DataError(Path(dest_dir) / "train_32x32.mat", "could not be downloaded (offline?): simulated")

    monkeypatch.setattr(svhn, "download_svhn", fail)


def synthetic_args(raw: Path, out: Path, seed: int = 0) -> argparse.Namespace:
    """Tiny synthetic-SVHN preparation arguments."""
    return parse("--raw", str(raw), "--svhn", "synthetic", "--dm", "3", "--seed", str(seed), "--out", str(out),
                 "--svhn-train-size", "80", "--svhn-test-size", "40")


def test_end_to_end_synthetic(raw: Path, tmp_path: Path) -> None:
    out = tmp_path / "prepared"
    assert run_prepare(synthetic_args(raw, out)) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["svhn"]["source"] == "synthetic" and manifest["svhn"]["requested"] == "synthetic"
    assert manifest["svhn"]["generator"]["sizes"] == {"train": 80, "test": 40}
    assert manifest["protocol"]["dm"] == 3 and manifest["protocol"]["seed"] == 0
    for name, record in manifest["files"].items():
        assert hashlib.sha256((out / name).read_bytes()).hexdigest() == record["sha256"]
    assert set(manifest["mnist"]["files"]) == {f"{s}.gz" for pair in mnist.MNIST_FILES.values() for s in pair}
    for split in ("train", "test"):
        source = MnistSvhnPairs.load(out, split)
        assert isinstance(source, BatchSource)
        mnist_labels = np.load(out / f"{split}_mnist_labels.npy")
        svhn_labels = np.load(out / f"{split}_svhn_labels.npy")
        assert len(source) == manifest["splits"][split]["pairs"] == pair_count(mnist_labels, svhn_labels, 3)
        batch = source.gather(torch.arange(len(source)))
        assert batch["x"]["mnist"].dtype == torch.uint8 and batch["x"]["svhn"].shape[1:] == (3, 32, 32)
        pairs = np.load(out / f"{split}_pairs.npy")
        assert (mnist_labels[pairs[:, 0]] == svhn_labels[pairs[:, 1]]).all()
        np.testing.assert_array_equal(batch["y"].numpy(), mnist_labels[pairs[:, 0]])


def test_same_seed_identical_files_other_seed_different(raw: Path, tmp_path: Path) -> None:
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    for out, seed in ((a, 0), (b, 0), (c, 1)):
        assert run_prepare(synthetic_args(raw, out, seed)) == 0
    files = lambda d: {p.name: p.read_bytes() for p in d.glob("*.npy")}  # noqa: E731
    assert files(a) == files(b)
    assert json.loads((a / "manifest.json").read_text())["files"] == json.loads((b / "manifest.json").read_text())["files"]
    assert files(a)["train_pairs.npy"] != files(c)["train_pairs.npy"]
    assert files(a)["train_svhn_images.npy"] != files(c)["train_svhn_images.npy"]


def test_real_svhn_files_are_used_and_recorded(raw: Path, svhn_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "prepared"
    assert run_prepare(parse("--raw", str(raw), "--svhn", "real", "--svhn-dir", str(svhn_dir), "--dm", "2",
                             "--out", str(out), "--no-download")) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["svhn"]["source"] == "real"
    assert manifest["svhn"]["files"]["train_32x32.mat"]["md5"] == svhn.SVHN_MD5["train_32x32.mat"]
    x = scipy.io.loadmat(svhn_dir / "train_32x32.mat")["X"]
    np.testing.assert_array_equal(np.load(out / "train_svhn_images.npy"), x.transpose(3, 2, 0, 1))
    assert np.load(out / "train_svhn_labels.npy")[:10].tolist() == [1, 2, 3, 4, 5, 6, 7, 8, 9, 0]
    # n_d = min(6 MNIST, 5 SVHN) per digit in train, min(3, 2 or 3) in test
    assert manifest["splits"]["train"]["pairs"] == 2 * 50 and manifest["splits"]["test"]["pairs"] == 2 * 25
    # real SVHN has no known style: no factor files, and the manifest says so
    assert manifest["svhn"]["factors"] == {"recorded": False, "reason": "real SVHN records no style factors"}
    assert not list(out.glob("*_svhn_factors.npy")) and not [n for n in manifest["files"] if "factors" in n]
    source = MnistSvhnPairs.load(out, "test")
    assert source.svhn_factors is None and source.svhn_factor_names == ()
    meta = source.with_factors().gather(torch.arange(4))["meta"]
    assert set(meta) == {"mnist_factors"}  # the measured MNIST style is there whatever the SVHN source
    assert svhn_factors_note(manifest) == "real SVHN records no style factors"


def test_auto_takes_real_files_when_present(raw: Path, svhn_dir: Path, tmp_path: Path, monkeypatch) -> None:
    offline(monkeypatch)
    out = tmp_path / "prepared"
    assert run_prepare(parse("--raw", str(raw), "--svhn-dir", str(svhn_dir), "--dm", "1", "--out", str(out))) == 0
    svhn_record = json.loads((out / "manifest.json").read_text())["svhn"]
    assert (svhn_record["requested"], svhn_record["source"]) == ("auto", "real")
    assert "found" in svhn_record["reason"]


def test_auto_generates_when_download_fails(raw: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    offline(monkeypatch)
    out = tmp_path / "prepared"
    assert run_prepare(parse("--raw", str(raw), "--dm", "1", "--out", str(out),
                             "--svhn-train-size", "30", "--svhn-test-size", "20")) == 0
    svhn_record = json.loads((out / "manifest.json").read_text())["svhn"]
    assert (svhn_record["requested"], svhn_record["source"]) == ("auto", "synthetic")
    assert "download failed" in svhn_record["reason"] and "simulated" in svhn_record["reason"]
    assert "SVHN source: synthetic" in capsys.readouterr().out


def test_auto_without_network_permission(raw: Path, tmp_path: Path) -> None:
    out = tmp_path / "prepared"
    assert run_prepare(parse("--raw", str(raw), "--dm", "1", "--out", str(out), "--no-download",
                             "--svhn-train-size", "30", "--svhn-test-size", "20")) == 0
    assert "downloading is disabled" in json.loads((out / "manifest.json").read_text())["svhn"]["reason"]


def test_real_without_files_fails_clearly(raw: Path, tmp_path: Path, capsys) -> None:
    missing = tmp_path / "nowhere"
    assert run_prepare(parse("--raw", str(raw), "--svhn", "real", "--svhn-dir", str(missing),
                             "--out", str(tmp_path / "o"), "--no-download")) == 1
    assert f"error: {missing}: official train_32x32.mat/test_32x32.mat not found" in capsys.readouterr().err
    assert not (tmp_path / "o" / "manifest.json").exists()


def test_corrupted_mnist_magic_stops_with_file_name(raw: Path, tmp_path: Path, capsys) -> None:
    data = bytearray(mnist.read_bytes(raw / "t10k-labels-idx1-ubyte.gz")[0])
    data[2] = 0x42
    (raw / "t10k-labels-idx1-ubyte").write_bytes(bytes(data))  # the raw file is read in preference to .gz
    assert run_prepare(synthetic_args(raw, tmp_path / "o")) == 1
    assert f"error: {raw / 't10k-labels-idx1-ubyte'}: has a bad IDX magic 00004201" in capsys.readouterr().err
    assert not (tmp_path / "o" / "manifest.json").exists()


def test_loader_rejects_tampered_or_missing_files(raw: Path, tmp_path: Path) -> None:
    out = tmp_path / "prepared"
    assert run_prepare(synthetic_args(raw, out)) == 0
    path = out / "train_svhn_images.npy"
    data = bytearray(path.read_bytes())
    data[-1] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(DataError, match=r"train_svhn_images\.npy: sha256 mismatch"):
        MnistSvhnPairs.load(out, "train")
    MnistSvhnPairs.load(out, "test")  # control: the other split's files are intact
    with pytest.raises(DataError, match="has no split 'val'"):
        MnistSvhnPairs.load(out, "val")
    (out / "manifest.json").unlink()
    with pytest.raises(DataError, match=r"manifest\.json: not found"):
        MnistSvhnPairs.load(out, "test")


def test_gather_dataset_and_distributed_sampler(raw: Path, tmp_path: Path) -> None:
    out = tmp_path / "prepared"
    assert run_prepare(synthetic_args(raw, out)) == 0
    source = MnistSvhnPairs.load(out, "train")
    assert source.to("cpu") is source and source.device == torch.device("cpu")
    assert source.provenance["svhn"]["source"] == "synthetic"
    index = torch.tensor([5, 0, 5])
    batch = source.gather(index)
    pair = source.pairs[index]
    assert torch.equal(batch["x"]["mnist"], source.mnist[pair[:, 0]])
    assert torch.equal(batch["x"]["svhn"], source.svhn[pair[:, 1]])
    assert all(batch["present"][m].dtype == torch.bool and batch["present"][m].all() for m in ("mnist", "svhn"))
    assert batch["y"].dtype == torch.int64 and batch["x"]["mnist"].data_ptr() != source.mnist.data_ptr()

    dataset = MnistSvhnDataset(source)
    seen = []
    for rank in range(2):
        sampler = DistributedSampler(dataset, num_replicas=2, rank=rank, shuffle=True, seed=0)
        loader = DataLoader(dataset, batch_size=16, sampler=sampler, collate_fn=collate_pairs)
        for batch in loader:
            assert batch["x"]["mnist"].shape[1:] == (1, 28, 28) and batch["x"]["svhn"].shape[1:] == (3, 32, 32)
            assert batch["y"].shape == batch["present"]["svhn"].shape
        seen += list(sampler)
    assert set(seen) == set(range(len(dataset)))
    sample = dataset[7]
    assert sample["x"]["svhn"].shape == (3, 32, 32) and sample["y"] == source.y[7]
    stacked = collate_pairs([dataset[1], dataset[2]])
    assert torch.equal(stacked["x"]["mnist"], source.gather(torch.tensor([1, 2]))["x"]["mnist"])


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_gpu_resident_gather(raw: Path, tmp_path: Path) -> None:
    out = tmp_path / "prepared"
    assert run_prepare(synthetic_args(raw, out)) == 0
    cpu = MnistSvhnPairs.load(out, "train")
    gpu = cpu.to("cuda")
    index = torch.randperm(len(cpu))[:32]
    batch = gpu.gather(index.cuda())
    assert batch["x"]["svhn"].is_cuda and batch["present"]["mnist"].is_cuda
    assert torch.equal(batch["x"]["svhn"].cpu(), cpu.gather(index)["x"]["svhn"])
    meta, expected = gpu.with_factors().gather(index.cuda())["meta"], cpu.with_factors().gather(index)["meta"]
    assert set(meta) == {"mnist_factors", "svhn_factors"} and all(t.is_cuda for t in meta.values())
    assert all(torch.equal(meta[k].cpu(), expected[k]) for k in meta)


@pytest.mark.skipif(not SHARED_MNIST.is_dir(), reason="real MNIST not in ../shared/data/mnist")
def test_real_mnist_integration(tmp_path: Path) -> None:
    out = tmp_path / "prepared"
    args = parse("--raw", str(SHARED_MNIST), "--svhn", "synthetic", "--dm", "2", "--out", str(out),
                 "--svhn-train-size", "2000", "--svhn-test-size", "500")
    assert run_prepare(args) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    files = manifest["mnist"]["files"]
    assert files["train-images-idx3-ubyte.gz"]["raw_md5"] == "6bbc9ace898e44ae57da46a324031adb"
    assert files["t10k-labels-idx1-ubyte.gz"]["raw_md5"] == "27ae3e4e09519cfbb04c329615203637"
    train = MnistSvhnPairs.load(out, "train")
    assert train.mnist.shape == (60000, 1, 28, 28)
    kept = manifest["splits"]["train"]["kept_per_class"]
    assert len(train) == 2 * sum(kept) and sum(kept) <= 2000
    batch = train.gather(torch.randint(0, len(train), (64,)))
    assert batch["x"]["mnist"].float().mean() > 10  # real digits, not blank


def test_synthetic_factor_files_hold_what_the_generator_drew(raw: Path, tmp_path: Path) -> None:
    out = tmp_path / "prepared"
    assert run_prepare(synthetic_args(raw, out)) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    record = manifest["svhn"]["factors"]
    assert record["recorded"] and record["names"] == list(street_digits.FACTOR_NAMES)
    assert record["discrete"] == list(street_digits.FACTOR_DISCRETE) and set(record["meaning"]) == set(record["names"])
    for split, n in {"train": 80, "test": 40}.items():
        name = record["files"][split]
        assert name == f"{split}_svhn_factors.npy"
        assert hashlib.sha256((out / name).read_bytes()).hexdigest() == manifest["files"][name]["sha256"]
        _, _, drawn = street_digits.generate_street_digits(n, seed=0, split=split, return_factors=True)
        np.testing.assert_array_equal(np.load(out / name), drawn)  # regenerated: the very values drawn
        source = MnistSvhnPairs.load(out, split)
        np.testing.assert_array_equal(source.svhn_factors.numpy(), drawn)
        assert source.svhn_factor_names == street_digits.FACTOR_NAMES
        index = torch.tensor([3, 0, 3, len(source) - 1])
        assert "meta" not in source.gather(index)  # the training path carries no factors
        batch = source.with_factors().gather(index)
        pair = source.pairs[index].numpy()
        np.testing.assert_array_equal(batch["meta"]["svhn_factors"].numpy(), drawn[pair[:, 1]])
        assert batch["meta"]["svhn_factors"].dtype == torch.float32
        mnist_images = np.load(out / f"{split}_mnist_images.npy")[pair[:, 0]]
        np.testing.assert_array_equal(batch["meta"]["mnist_factors"].numpy(), measure_style(mnist_images))
        assert batch["meta"]["mnist_factors"].shape == (4, len(STYLE_NAMES))
        torch.testing.assert_close(batch["x"], source.gather(index)["x"])  # the same batch otherwise
    assert svhn_factors_note(manifest) is None


def test_a_folder_prepared_before_factors_loads_and_takes_them_later(raw: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "prepared"
    assert run_prepare(synthetic_args(raw, out)) == 0
    new = json.loads((out / "manifest.json").read_text())
    expected = {split: (out / f"{split}_svhn_factors.npy").read_bytes() for split in ("train", "test")}
    old = json.loads(json.dumps(new))  # what the previous version wrote: no factor record, no factor files
    del old["svhn"]["factors"]
    for split in ("train", "test"):
        del old["files"][f"{split}_svhn_factors.npy"]
        (out / f"{split}_svhn_factors.npy").unlink()
    (out / "manifest.json").write_text(json.dumps(old, indent=2, sort_keys=True) + "\n")
    source = MnistSvhnPairs.load(out, "test")
    assert source.svhn_factors is None and "svhn_factors" not in source.with_factors().gather(torch.arange(3))["meta"]
    assert "mmvae prepare svhn-factors" in svhn_factors_note(old)

    assert run_prepare(parse_factors(out)) == 0
    assert f"added {len(street_digits.FACTORS)} street-digit factors" in capsys.readouterr().out
    assert json.loads((out / "manifest.json").read_text()) == new  # as if prepared with factors
    assert {split: (out / f"{split}_svhn_factors.npy").read_bytes() for split in ("train", "test")} == expected
    MnistSvhnPairs.load(out, "train")  # checksums and shapes pass

    images = np.load(out / "test_svhn_images.npy")  # negative control: other images than the generator makes
    images[0, 0, 0, 0] ^= 1
    np.save(out / "test_svhn_images.npy", images)
    assert run_prepare(parse_factors(out)) == 1
    assert "test_svhn_images.npy: differs from what the generator makes" in capsys.readouterr().err


def test_factors_are_refused_for_real_svhn(raw: Path, svhn_dir: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "prepared"
    assert run_prepare(parse("--raw", str(raw), "--svhn", "real", "--svhn-dir", str(svhn_dir), "--dm", "1",
                             "--out", str(out), "--no-download")) == 0
    assert run_prepare(parse_factors(out)) == 1
    assert "real SVHN records no style factors" in capsys.readouterr().err


def parse_factors(folder: Path) -> argparse.Namespace:
    """Arguments as `mmvae prepare svhn-factors FOLDER` would parse them."""
    parser = argparse.ArgumentParser()
    add_prepare_parser(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(["prepare", "svhn-factors", str(folder)])
