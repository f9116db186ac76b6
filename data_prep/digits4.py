"""Prepare the four-modality digits benchmark: MNIST, SVHN (or the street-digit stand-in), spoken digits (FSDD)
and a sentence about the digit, as index tuples over arrays held once.

Pairing extends the MNIST–SVHN protocol (data_prep/pairing.py): per digit d, n_d = min(#MNIST_d, #SVHN_d, 10,000)
images of each, `dm` independent permutations of each side zipped into pairs; each pair then gets
  * a recording of the same digit, drawn by cycling seeded permutations of that digit's recordings of the split
    (FSDD's usual split: takes 0–4 test, 5–49 train, so no test recording is ever in training), and
  * a sentence of the same digit, drawn the same way from a seeded pool of `sentences_per_digit` sentences per digit
    written by the grammar of data_prep/sentences.py (a pool, so that the frozen text encoder sees each distinct
    sentence once; the pool sizes are in the manifest).

Files, per split: {split}_mnist_images/labels, {split}_svhn_images/labels (as MNIST–SVHN), {split}_audio_waves
(R, L) int16 trimmed or zero-padded to `audio_length` samples, {split}_audio_lengths (R,) real lengths,
{split}_audio_labels, {split}_audio_speakers (index into the manifest's speaker list), {split}_text_tokens (S, T)
int64 word ids, {split}_text_labels, {split}_text_styles (S, 4: template, form, prefix, suffix) and
{split}_tuples (P, 4) int64 (mnist, svhn, audio, text indices); text_vocab.json; manifest.json (written last)
with every file's sha256, the raw sources' checksums, the grammar, its seed and vocabulary. No timestamps: the same
inputs and seed give byte-identical files.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np

from data_prep import fsdd, pairing, sentences
from data_prep.errors import DataError
from data_prep.mnist_svhn import load_mnist, resolve_svhn, save_array, write_manifest

FORMAT = "mmvae.digits4/1"
MANIFEST = "manifest.json"
VOCAB_FILE = "text_vocab.json"
SPLITS = ("train", "test")
SPLIT_STREAMS = {"train": 0, "test": 1}
MODALITIES = ("mnist", "svhn", "audio", "text")
ROLES = ("mnist_images", "mnist_labels", "svhn_images", "svhn_labels", "audio_waves", "audio_lengths", "audio_labels",
         "audio_speakers", "text_tokens", "text_labels", "text_styles", "tuples")
AUDIO_LENGTH = 6144  # 0.768 s at 8 kHz: 96 % of FSDD's recordings fit whole
TEXT_TOKENS = 16
SENTENCES_PER_DIGIT = {"train": 500, "test": 100}

Log = Callable[[str], None]


def array_name(split: str, role: str) -> str:
    return f"{split}_{role}.npy"


def cycled(indices: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """n items drawn by concatenating seeded permutations of `indices` (every item used before any repeats)."""
    if len(indices) == 0:
        raise ValueError("no items to draw from")
    rounds = -(-n // len(indices))
    return np.concatenate([rng.permutation(indices) for _ in range(rounds)])[:n].astype(np.int64)


def assign_by_digit(tuple_labels: np.ndarray, item_labels: np.ndarray, rng: np.random.Generator, what: str) -> np.ndarray:
    """For each tuple an item of the same digit, by cycling seeded permutations of that digit's items."""
    out = np.empty(len(tuple_labels), dtype=np.int64)
    for d in range(pairing.NUM_CLASSES):
        rows = np.flatnonzero(tuple_labels == d)
        if rows.size == 0:
            continue
        items = np.flatnonzero(item_labels == d)
        if items.size == 0:
            raise ValueError(f"no {what} of digit {d} to pair with")
        out[rows] = cycled(items, rows.size, rng)
    return out


def sentence_pool(split: str, per_digit: int, seed: int, max_tokens: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[str]]:
    labels = np.repeat(np.arange(pairing.NUM_CLASSES, dtype=np.int64), per_digit)
    texts, styles = sentences.write_sentences(labels, seed, SPLIT_STREAMS[split])
    tokens = sentences.encode_sentences(texts, max_tokens, where=f"{split} sentences (grammar seed {seed})")
    return tokens, labels, styles, texts


def prepare(
    raw_dir: str | Path,
    fsdd_tar: str | Path,
    svhn_source: str = "auto",
    dm: int = 5,
    seed: int = 0,
    out_dir: str | Path = "data/digits4",
    svhn_dir: str | Path | None = None,
    svhn_sizes: dict[str, int] | None = None,
    download: bool = True,
    audio_length: int = AUDIO_LENGTH,
    text_tokens: int = TEXT_TOKENS,
    sentences_per_digit: dict[str, int] | None = None,
    workers: int = 1,
    log: Log = print,
) -> dict:
    """Prepare digits4 into `out_dir` and return the manifest written there."""
    if dm < 1:
        raise ValueError(f"dm must be >= 1, got {dm}")
    if audio_length < 1 or text_tokens < 2:
        raise ValueError(f"audio_length must be >= 1 and text_tokens >= 2, got {audio_length}, {text_tokens}")
    per_digit = {**SENTENCES_PER_DIGIT, **(sentences_per_digit or {})}
    raw_dir, out_dir = Path(raw_dir), Path(out_dir)
    svhn_dir = out_dir / "svhn_raw" if svhn_dir is None else Path(svhn_dir)
    recordings = fsdd.read_fsdd_tar(fsdd_tar)  # first: the cheapest input to get wrong
    log(f"FSDD: {len(recordings.waves):,} recordings from {fsdd_tar} (sha256 {recordings.source['sha256'][:12]}…)")
    mnist_data = load_mnist(raw_dir, download, log)
    svhn_data, svhn_record = resolve_svhn(svhn_source, svhn_dir, seed, svhn_sizes, download, workers, log)
    log(f"SVHN source: {svhn_record['source']} ({svhn_record['reason']})")
    speakers = sorted(set(recordings.speakers))
    speaker_id = {s: i for i, s in enumerate(speakers)}
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / MANIFEST).unlink(missing_ok=True)  # the folder is not valid until the new manifest lands
    files, splits = {}, {}
    vocab_path = out_dir / VOCAB_FILE
    tmp = out_dir / f".{VOCAB_FILE}.tmp"
    tmp.write_text(json.dumps(sentences.VOCAB) + "\n")
    os.replace(tmp, vocab_path)
    files[VOCAB_FILE] = {"sha256": fsdd.sha256_file(vocab_path), "bytes": vocab_path.stat().st_size}
    examples = {}
    for split in SPLITS:
        m, s = mnist_data[split], svhn_data[split]
        stream = SPLIT_STREAMS[split]
        pairs = pairing.pair_indices(m.labels, s.labels, dm, seed, stream)
        labels = m.labels[pairs[:, 0]]
        rec = recordings.split_index(split)
        waves, lengths = fsdd.fixed_length([recordings.waves[i] for i in rec], audio_length)
        audio_labels = recordings.digits[rec]
        audio_speakers = np.asarray([speaker_id[recordings.speakers[i]] for i in rec], dtype=np.int64)
        tokens, text_labels, styles, texts = sentence_pool(split, per_digit[split], seed, text_tokens)
        rng = np.random.default_rng([seed, stream, 3])
        audio_idx = assign_by_digit(labels, audio_labels, rng, f"{split} recordings")
        text_idx = assign_by_digit(labels, text_labels, rng, f"{split} sentences")
        tuples = np.concatenate([pairs, audio_idx[:, None], text_idx[:, None]], axis=1).astype(np.int64)
        arrays = {"mnist_images": m.images, "mnist_labels": m.labels, "svhn_images": s.images, "svhn_labels": s.labels,
                  "audio_waves": waves, "audio_lengths": lengths, "audio_labels": audio_labels,
                  "audio_speakers": audio_speakers, "text_tokens": tokens, "text_labels": text_labels,
                  "text_styles": styles, "tuples": tuples}
        names = {role: array_name(split, role) for role in ROLES}
        for role in ROLES:
            files[names[role]] = save_array(out_dir, names[role], arrays[role])
        kept = pairing.kept_per_class(m.labels, s.labels)
        splits[split] = {"tuples": len(tuples), "kept_per_class": kept.tolist(), "mnist_images": len(m.labels),
                         "svhn_images": len(s.labels), "recordings": len(rec), "sentences": len(tokens),
                         "recording_names_sha256": fsdd.hashlib.sha256("\n".join(recordings.names[i] for i in rec).encode()).hexdigest(),
                         "trimmed_recordings": int((np.asarray([len(recordings.waves[i]) for i in rec]) > audio_length).sum()),
                         "files": names}
        examples[split] = texts[:: max(1, len(texts) // 10)][:10]
        log(f"{split}: {len(tuples):,} tuples, {len(rec):,} recordings, {len(tokens):,} sentences (dm={dm})")
    manifest = {
        "format": FORMAT,
        "dataset": "digits4",
        "modalities": list(MODALITIES),
        "protocol": {"name": "MNIST-SVHN pairs (Shi et al. 2019) + an FSDD recording and a sentence of the same digit",
                     "dm": dm, "seed": seed, "max_per_class": pairing.MAX_PER_CLASS,
                     "recordings": "cycled seeded permutations of the digit's recordings of the split",
                     "sentences": "cycled seeded permutations of the digit's sentence pool of the split"},
        "mnist": {"dir": str(raw_dir.resolve()), "files": {n: i for sp in SPLITS for n, i in mnist_data[sp].files.items()}},
        "svhn": svhn_record,
        "fsdd": {**recordings.source, "split": "takes 0-4 of every speaker and digit are test, 5-49 train",
                 "speakers": speakers, "audio_length": audio_length, "stored": "int16, trimmed (start kept) or zero-padded"},
        "text": {"grammar": sentences.grammar_record(seed), "max_tokens": text_tokens, "vocab_file": VOCAB_FILE,
                 "sentences_per_digit": per_digit, "examples": examples},
        "splits": splits,
        "files": files,
    }
    write_manifest(out_dir, manifest)
    log(f"wrote {out_dir / MANIFEST}")
    return manifest


def check_prepared(prepared_dir: str | Path) -> dict:
    """The manifest of a prepared digits4 folder, after checking that every file it lists is there."""
    prepared_dir = Path(prepared_dir)
    path = prepared_dir / MANIFEST
    try:
        manifest = json.loads(path.read_text())
    except FileNotFoundError:
        raise DataError(path, "not found: prepare the data first (`mmvae prepare digits4 ...`)") from None
    except (OSError, json.JSONDecodeError) as e:
        raise DataError(path, f"is unreadable or not JSON ({e})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        got = manifest.get("format") if isinstance(manifest, dict) else None
        raise DataError(path, f"has format {got!r}, expected {FORMAT!r}")
    for name in manifest.get("files", {}):
        if not (prepared_dir / name).is_file():
            raise DataError(prepared_dir / name, "is missing (listed in manifest.json); prepare the folder again")
    return manifest
