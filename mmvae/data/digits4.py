"""The four-modality digits benchmark over prepared arrays (`mmvae prepare digits4`): a batch source.

Arrays are held once: MNIST (N, 1, 28, 28) and SVHN (M, 3, 32, 32) uint8 images, FSDD waves (R, L) int16 with
their real lengths, sentences (S, T) int64 word ids, and the (P, 4) tuple index. A batch is built by indexing:

    x       {"mnist": uint8, "svhn": uint8, "audio": int16 (B, L), "text": int64 (B, T)}
    mask    {"audio": (B, L) True on real samples, "text": (B, T) True on words and <eos>}
    present every modality, except where a training option drops it: `data.missing = {modality: chance}` makes
            that modality absent from a tuple with that chance (drawn once per tuple from the config's seed; at
            least one modality stays in every tuple); the absent rows are zeros (and their masks all False)
    y       the tuple's digit

Every file is checked against the manifest's sha256 before it is used; shapes, dtypes, index ranges and the
tuples' shared labels after.
"""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from data_prep.digits4 import FORMAT, MODALITIES, VOCAB_FILE, check_prepared
from data_prep.errors import DataError
from mmvae.batch import Batch
from mmvae.data.mnist_svhn import load_checked

IMAGE_SHAPES = {"mnist": (1, 28, 28), "svhn": (3, 32, 32)}
PAD = 0


def _check(cond: bool, path: Path, problem: str) -> None:
    if not cond:
        raise DataError(path, problem)


def check_arrays(a: dict[str, np.ndarray], names: dict[str, str], d: Path) -> None:
    for m in ("mnist", "svhn"):
        img, lab = a[f"{m}_images"], a[f"{m}_labels"]
        _check(img.dtype == np.uint8 and img.shape[1:] == IMAGE_SHAPES[m], d / names[f"{m}_images"],
               f"expected (N, {', '.join(map(str, IMAGE_SHAPES[m]))}) uint8, got {img.shape} {img.dtype}")
        _check(lab.dtype == np.int64 and lab.shape == img.shape[:1], d / names[f"{m}_labels"],
               f"expected ({len(img)},) int64, got {lab.shape} {lab.dtype}")
    w, n = a["audio_waves"], a["audio_lengths"]
    _check(w.dtype == np.int16 and w.ndim == 2, d / names["audio_waves"], f"expected (R, L) int16, got {w.shape} {w.dtype}")
    for role in ("audio_lengths", "audio_labels", "audio_speakers"):
        _check(a[role].dtype == np.int64 and a[role].shape == (len(w),), d / names[role],
               f"expected ({len(w)},) int64, got {a[role].shape} {a[role].dtype}")
    _check(n.size == 0 or (n.min() >= 1 and n.max() <= w.shape[1]), d / names["audio_lengths"],
           f"lengths must lie in 1..{w.shape[1]}")
    t = a["text_tokens"]
    _check(t.dtype == np.int64 and t.ndim == 2, d / names["text_tokens"], f"expected (S, T) int64, got {t.shape} {t.dtype}")
    _check(a["text_labels"].dtype == np.int64 and a["text_labels"].shape == (len(t),), d / names["text_labels"],
           f"expected ({len(t)},) int64")
    tup = a["tuples"]
    path = d / names["tuples"]
    _check(tup.dtype == np.int64 and tup.ndim == 2 and tup.shape[1] == 4, path, f"expected (P, 4) int64, got {tup.shape} {tup.dtype}")
    sizes = [len(a["mnist_labels"]), len(a["svhn_labels"]), len(w), len(t)]
    for col, (m, size) in enumerate(zip(MODALITIES, sizes)):
        _check(tup.size == 0 or (tup[:, col].min() >= 0 and tup[:, col].max() < size), path,
               f"column {col} indexes outside the {size} {m} items")
    labels = [a["mnist_labels"], a["svhn_labels"], a["audio_labels"], a["text_labels"]]
    y = labels[0][tup[:, 0]]
    for col in range(1, 4):
        bad = np.flatnonzero(labels[col][tup[:, col]] != y)
        _check(bad.size == 0, path, f"tuple {bad[0] if bad.size else 0} joins different digits ({MODALITIES[0]} vs {MODALITIES[col]})")


def absent_draw(n: int, modalities: list[str], missing: dict[str, float], seed: int) -> dict[str, np.ndarray]:
    """Per tuple and modality: absent with chance missing[m]; at least one modality stays in every tuple."""
    unknown = sorted(set(missing) - set(modalities))
    if unknown:
        raise ValueError(f"data.missing names {unknown}, which are not modalities of this model {modalities}")
    bad = {m: p for m, p in missing.items() if not 0 <= p < 1}
    if bad:
        raise ValueError(f"data.missing chances must lie in [0, 1), got {bad}")
    rng = np.random.default_rng([seed, 4])
    chance = np.array([missing.get(m, 0.0) for m in modalities])
    absent = rng.random((n, len(modalities))) < chance
    everything = absent.all(1)
    if everything.any():  # restore one modality, chosen at random among those
        keep = rng.integers(0, len(modalities), size=int(everything.sum()))
        absent[np.flatnonzero(everything), keep] = False
    return {m: absent[:, i] for i, m in enumerate(modalities)}


class Digits4:
    """Batch source over one split of a prepared digits4 folder."""

    def __init__(self, arrays: dict[str, Tensor], modalities: list[str], present: dict[str, Tensor] | None,
                 provenance: dict, split: str):
        self.a, self.modalities, self.split = arrays, list(modalities), split
        self._present = present  # None: every modality of every tuple
        self._provenance = provenance
        self.y = arrays["mnist_labels"][arrays["tuples"][:, 0]]

    @classmethod
    def load(cls, prepared_dir: str | Path, split: str = "train", modalities: list[str] | None = None,
             missing: dict[str, float] | None = None, seed: int = 0, verify: bool = True) -> "Digits4":
        d = Path(prepared_dir)
        manifest = check_prepared(d)
        if split not in manifest.get("splits", {}):
            raise DataError(d / "manifest.json", f"has no split {split!r}")
        names = manifest["splits"][split]["files"]
        arrays = {role: load_checked(d, name, manifest, verify) for role, name in names.items()}
        check_arrays(arrays, names, d)
        modalities = list(modalities or MODALITIES)
        extra = sorted(set(modalities) - set(MODALITIES))
        if extra:
            raise DataError(d / "manifest.json", f"digits4 has no modalities {extra} (it has {list(MODALITIES)})")
        tensors = {k: torch.from_numpy(v) for k, v in arrays.items()}
        present = None
        if missing and any(v > 0 for v in missing.values()):
            drawn = absent_draw(len(arrays["tuples"]), modalities, missing, seed)
            present = {m: torch.from_numpy(~a) for m, a in drawn.items()}
        prov = {**manifest, "split": split, "missing": dict(missing or {})}
        return cls(tensors, modalities, present, prov, split)

    def __len__(self) -> int:
        return self.a["tuples"].shape[0]

    @property
    def device(self) -> torch.device:
        return self.a["tuples"].device

    @property
    def provenance(self) -> dict:
        return copy.deepcopy(self._provenance)

    @property
    def vocab_file(self) -> str:
        return VOCAB_FILE

    def gather(self, index: Tensor) -> Batch:
        a = self.a
        tup = a["tuples"].index_select(0, index)
        b = tup.shape[0]
        ones = torch.ones(b, dtype=torch.bool, device=tup.device)
        present = {m: (self._present[m].index_select(0, index) if self._present is not None else ones.clone())
                   for m in self.modalities}
        x, mask = {}, {}
        col = {m: i for i, m in enumerate(MODALITIES)}
        for m in self.modalities:
            rows = tup[:, col[m]]
            if m in ("mnist", "svhn"):
                x[m] = a[f"{m}_images"].index_select(0, rows)
            elif m == "audio":
                x[m] = a["audio_waves"].index_select(0, rows)
                lengths = a["audio_lengths"].index_select(0, rows)
                mask[m] = torch.arange(x[m].shape[1], device=tup.device).unsqueeze(0) < lengths.unsqueeze(1)
            else:
                x[m] = a["text_tokens"].index_select(0, rows)
                mask[m] = x[m] != PAD
            if self._present is not None:  # zero the filler rows of absent modalities
                keep = present[m].view(-1, *([1] * (x[m].dim() - 1)))
                x[m] = torch.where(keep, x[m], torch.zeros_like(x[m]))
                if m in mask:
                    mask[m] = mask[m] & present[m].unsqueeze(1)
        batch: Batch = {"x": x, "present": present}
        if mask:
            batch["mask"] = mask
        batch["y"] = self.y.index_select(0, index)
        return batch

    def to(self, device: torch.device | str) -> "Digits4":
        device = torch.device(device)
        if device == self.device:
            return self
        arrays = {k: v.to(device) for k, v in self.a.items()}
        present = None if self._present is None else {m: p.to(device) for m, p in self._present.items()}
        return Digits4(arrays, self.modalities, present, self._provenance, self.split)


def check_vocab(config) -> None:
    """A text modality must use the vocabulary the data was written with (text_vocab.json)."""
    import json

    from mmvae.config import ConfigError

    mc = config.model.modalities.get("text")
    if mc is None:
        return
    data_vocab_path = Path(config.data.path) / VOCAB_FILE
    data_vocab = json.loads(data_vocab_path.read_text())
    vocab_file = mc.options.get("vocab_file")
    if vocab_file is None:
        from data_prep.sentences import VOCAB as model_vocab
    else:
        model_vocab = json.loads(Path(vocab_file).read_text())
    if list(model_vocab) != list(data_vocab):
        raise ConfigError(f"{data_vocab_path}: the text vocabulary of the data differs from the model's "
                          f"({vocab_file or 'the built-in grammar vocabulary'}); set model.modalities.text.options.vocab_file "
                          f"to {data_vocab_path}")


def build(config) -> tuple[Digits4, Digits4]:
    """(train, test) for a config: the model's modalities; `data.missing` applies to the training split only."""
    names = [m for m in config.model.modalities if m in MODALITIES]
    path = config.data.path
    check_prepared(path)
    check_vocab(config)
    missing = dict(getattr(config.data, "missing", {}) or {})
    train = Digits4.load(path, "train", names, missing, config.seed)
    test = Digits4.load(path, "test", names)
    return train, test


# (metric, op, full target, quick floor): the targets; the same for both budgets.
ORDER = MODALITIES
DIGITS4_TARGETS = [
    ("classifier_test_accuracy/mnist", ">=", 0.99, 0.99),
    ("classifier_test_accuracy/svhn", ">=", 0.95, 0.95),
    ("classifier_test_accuracy/audio", ">=", 0.95, 0.95),
    ("classifier_test_accuracy/text", ">=", 0.99, 0.99),
    ("coherence/single_min", ">=", 0.80, 0.80),
    ("coherence/others_min", ">=", 0.90, 0.90),
    ("coherence/joint", ">=", 0.40, 0.40),
    *[(f"probe/private/{m}", "<=", 0.25, 0.25) for m in ORDER],
    *[(f"swap/{m}", ">=", 0.85, 0.85) for m in ORDER],
]

__all__ = ["DIGITS4_TARGETS", "FORMAT", "Digits4", "build"]
