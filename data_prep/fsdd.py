"""The Free Spoken Digit Dataset read from its tarball as shipped: `recordings/{digit}_{speaker}_{take}.wav`,
8 kHz mono 16-bit PCM. The usual split: takes 0–4 of every speaker and digit are the test set.

Every problem is a DataError naming the file (a member inside the tarball is named `TARBALL:MEMBER`): a missing
or corrupt tarball, a wav with another sample rate, channel count or sample format, an empty or undecodable wav,
a member name outside the pattern, duplicated recordings, no recordings at all.
"""

from __future__ import annotations

import hashlib
import io
import re
import tarfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from data_prep.errors import DataError

SAMPLE_RATE = 8000
TEST_TAKES = range(0, 5)
KNOWN_SHA256 = "f19814a642af455d727161c83a4178f271707ee978e3dd1cf2cf40209f6deb84"  # the tarball in shared/data/fsdd
NAME = re.compile(r"^(?:.*/)?(\d)_([A-Za-z]+)_(\d+)\.wav$")


@dataclass
class Recordings:
    """All recordings: int16 waves (lists of 1-D arrays), digit, speaker name, take and member name per recording."""

    waves: list[np.ndarray]
    digits: np.ndarray
    speakers: list[str]
    takes: np.ndarray
    names: list[str]
    source: dict = field(default_factory=dict)

    def split_index(self, split: str) -> np.ndarray:
        """Indices of the usual split's recordings, sorted by member name (a stable order)."""
        test = np.isin(self.takes, list(TEST_TAKES))
        keep = test if split == "test" else ~test
        return np.array(sorted(np.flatnonzero(keep), key=lambda i: self.names[i]), dtype=np.int64)


def sha256_file(path: Path) -> str:
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def read_wav_bytes(data: bytes, where: str, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Decode one wav (bytes) to int16 samples, checking rate, channels, format and length."""
    import soundfile as sf

    if not data:
        raise DataError(where, "is an empty file")
    try:
        info = sf.info(io.BytesIO(data))
        wave, rate = sf.read(io.BytesIO(data), dtype="int16", always_2d=True)
    except (RuntimeError, sf.LibsndfileError, ValueError) as e:  # LibsndfileError subclasses RuntimeError
        raise DataError(where, f"is not a decodable wav ({str(e).strip() or type(e).__name__})") from None
    if rate != sample_rate:
        raise DataError(where, f"has sample rate {rate} Hz, expected {sample_rate} Hz")
    if wave.shape[1] != 1:
        raise DataError(where, f"has {wave.shape[1]} channels, expected mono")
    if info.subtype != "PCM_16":
        raise DataError(where, f"has sample format {info.subtype}, expected 16-bit PCM (PCM_16)")
    if wave.shape[0] == 0:
        raise DataError(where, "holds no samples")
    return np.ascontiguousarray(wave[:, 0])


def read_fsdd_tar(path: str | Path, sample_rate: int = SAMPLE_RATE) -> Recordings:
    """Every recording of an FSDD tarball (gzip or plain tar), checked; the tarball's sha256 is recorded."""
    path = Path(path)
    if not path.is_file():
        raise DataError(path, "not found (the FSDD tarball fsdd_recordings.tar.gz)")
    digest = sha256_file(path)
    waves, digits, speakers, takes, names = [], [], [], [], []
    try:
        with tarfile.open(path, mode="r:*") as tar:
            for member in tar:
                if not member.isfile() or not member.name.endswith(".wav"):
                    continue
                where = f"{path}:{member.name}"
                match = NAME.match(member.name)
                if match is None:
                    raise DataError(where, "is not named {digit}_{speaker}_{take}.wav")
                handle = tar.extractfile(member)
                data = handle.read() if handle is not None else b""
                waves.append(read_wav_bytes(data, where, sample_rate))
                digits.append(int(match.group(1)))
                speakers.append(match.group(2))
                takes.append(int(match.group(3)))
                names.append(member.name)
    except DataError:
        raise
    except (tarfile.TarError, EOFError, zlib.error, OSError) as e:
        raise DataError(path, f"is not a readable tar archive ({type(e).__name__}: {e})") from None
    if not waves:
        raise DataError(path, "holds no recordings/*.wav")
    keys = list(zip(digits, speakers, takes))
    if len(set(keys)) != len(keys):
        dup = next(k for k in keys if keys.count(k) > 1)
        raise DataError(path, f"holds the recording {dup[0]}_{dup[1]}_{dup[2]}.wav more than once")
    source = {"file": str(path.resolve()), "sha256": digest, "known_sha256": KNOWN_SHA256,
              "matches_known": digest == KNOWN_SHA256, "recordings": len(waves), "sample_rate": sample_rate}
    return Recordings(waves, np.asarray(digits, dtype=np.int64), speakers, np.asarray(takes, dtype=np.int64), names, source)


def fixed_length(waves: list[np.ndarray], length: int) -> tuple[np.ndarray, np.ndarray]:
    """Trim (keep the start) or zero-pad every wave to `length`: (N, length) int16 and the real lengths (N,) int64."""
    out = np.zeros((len(waves), length), dtype=np.int16)
    lengths = np.zeros(len(waves), dtype=np.int64)
    for i, w in enumerate(waves):
        n = min(len(w), length)
        out[i, :n] = w[:n]
        lengths[i] = n
    return out, lengths
