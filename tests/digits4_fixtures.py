"""Tiny raw inputs for digits4 in exactly the shipped formats: MNIST IDX (gzip), SVHN .mat, the FSDD tarball
(16-bit PCM mono wavs at 8 kHz named {digit}_{speaker}_{take}.wav inside recordings/)."""

from __future__ import annotations

import hashlib
import io
import tarfile
from pathlib import Path

import numpy as np
import scipy.io
import soundfile as sf

from data_prep import mnist, svhn

SR = 8000


def tone(digit: int, take: int, n: int | None = None, sr: int = SR) -> np.ndarray:
    """A digit-dependent two-tone chirp (int16), its length varying with the take."""
    n = n or 900 + 97 * take
    t = np.arange(n) / sr
    f = 300 + 250 * digit
    w = 0.5 * np.sin(2 * np.pi * f * t) + 0.2 * np.sin(2 * np.pi * 1.5 * f * t + take)
    return (w * 20000).astype(np.int16)


def wav_bytes(wave: np.ndarray, sr: int = SR, subtype: str = "PCM_16") -> bytes:
    buf = io.BytesIO()
    sf.write(buf, wave, sr, subtype=subtype, format="WAV")
    return buf.getvalue()


def write_tar(path: Path, members: dict[str, bytes], gz: bool = True) -> Path:
    with tarfile.open(path, "w:gz" if gz else "w") as tar:
        info = tarfile.TarInfo("recordings")
        info.type = tarfile.DIRTYPE
        tar.addfile(info)
        for name, data in sorted(members.items()):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mtime = 0
            tar.addfile(info, io.BytesIO(data))
    return path


def fsdd_tar(path: Path, speakers=("ann", "bob"), takes: int = 8) -> Path:
    """speakers x 10 digits x `takes` recordings (takes 0–4 are the test split)."""
    members = {f"recordings/{d}_{s}_{k}.wav": wav_bytes(tone(d, k + 10 * i))
               for i, s in enumerate(speakers) for d in range(10) for k in range(takes)}
    return write_tar(path, members)


def mnist_raw(folder: Path, monkeypatch, sizes=None) -> Path:
    """Tiny MNIST IDX files (labels cycle 0–9) with their md5s made the expected ones; digits drawn as bars."""
    sizes = sizes or {"train": 200, "test": 60}
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    md5 = {}
    for split, n in sizes.items():
        labels = (np.arange(n) % 10).astype(np.uint8)
        images = rng.integers(0, 40, (n, 28, 28)).astype(np.uint8)
        for i, d in enumerate(labels):
            images[i, 2 + 2 * d : 5 + 2 * d, 4:24] = 255  # the digit as a bar's height
        for stem, array in zip(mnist.MNIST_FILES[split], (images, labels)):
            mnist.write_idx(folder / f"{stem}.gz", array)
            md5[stem] = mnist.read_idx(folder / f"{stem}.gz")[1]["raw_md5"]
    monkeypatch.setattr(mnist, "MNIST_RAW_MD5", md5)
    return folder


def svhn_mat(folder: Path, monkeypatch, sizes=None) -> Path:
    """Tiny official-layout SVHN files (labels 1–10, 10 = digit 0) with matching md5s; the digit as a column."""
    sizes = sizes or {"train": 200, "test": 60}
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1)
    md5 = {}
    for split, n in sizes.items():
        digits = np.arange(n) % 10
        x = rng.integers(0, 60, (32, 32, 3, n)).astype(np.uint8)
        for i, d in enumerate(digits):
            x[:, 2 + 3 * d : 4 + 3 * d, :, i] = 250
        path = folder / svhn.SVHN_FILES[split]
        scipy.io.savemat(path, {"X": x, "y": np.where(digits == 0, 10, digits).astype(np.uint8)[:, None]})
        md5[path.name] = hashlib.md5(path.read_bytes()).hexdigest()
    monkeypatch.setattr(svhn, "SVHN_MD5", md5)
    return folder


def tiny_inputs(tmp_path: Path, monkeypatch) -> dict[str, Path]:
    return {"raw": mnist_raw(tmp_path / "mnist", monkeypatch), "svhn": svhn_mat(tmp_path / "svhn", monkeypatch),
            "fsdd": fsdd_tar(tmp_path / "fsdd_recordings.tar.gz")}


def prepare_args(inputs: dict[str, Path], out: Path, seed: int = 0, dm: int = 2) -> list[str]:
    return ["prepare", "digits4", "--raw", str(inputs["raw"]), "--fsdd", str(inputs["fsdd"]), "--svhn", "real",
            "--svhn-dir", str(inputs["svhn"]), "--no-download", "--dm", str(dm), "--seed", str(seed),
            "--audio-length", "2048", "--sentences-train", "20", "--sentences-test", "5", "--out", str(out)]
