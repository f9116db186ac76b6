"""Frozen digit classifiers for the four digits4 modalities (the mmvae/classifiers.py pattern).

`mmvae classifiers DIR` on a digits4 folder trains, on the training split's unpaired items, one classifier per
modality and caches them in DIR/classifiers/ (safetensors + digits4_classifiers.json with their test accuracy):
  mnist, svhn  the conv net of mmvae/classifiers.py on [0, 1] images
  audio        a conv net over log-mel features (B, n_mels, frames) computed exactly as the audio modality's
               preprocess with the options recorded here (a model whose audio options differ cannot be scored)
  text         word embeddings, two conv layers, max-pooling over positions, on word ids (B, T)
Every classifier reads the modelled form a decoder's mean produces, so generated samples are scored directly.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from data_prep.digits4 import FORMAT, MANIFEST, VOCAB_FILE, check_prepared
from mmvae.classifiers import CACHE_DIR, digit_classifier, train_classifier
from mmvae.data.mnist_svhn import load_checked
from mmvae.modalities.audio import INT16_SCALE, AudioOptions, LogMel, frame_mask

RECORD = "digits4_classifiers.json"


def is_digits4(prepared_dir: str | Path) -> bool:
    try:
        return json.loads((Path(prepared_dir) / MANIFEST).read_text()).get("format") == FORMAT
    except (OSError, ValueError):
        return False


class ImageClassifier(nn.Module):
    def __init__(self, shape):
        super().__init__()
        self.net = digit_classifier(tuple(shape))

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x.float() / 255.0 if not x.dtype.is_floating_point else x.float())


class AudioClassifier(nn.Module):
    def __init__(self, n_mels: int, frames: int):
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv1d(n_mels, 64, 5, padding=2), nn.BatchNorm1d(64), nn.ReLU(),
            nn.Conv1d(64, 128, 5, padding=2, stride=2), nn.BatchNorm1d(128), nn.ReLU(),
            nn.Conv1d(128, 128, 3, padding=1, stride=2), nn.BatchNorm1d(128), nn.ReLU(),
            nn.AdaptiveMaxPool1d(1), nn.Flatten(), nn.Dropout(0.3), nn.Linear(128, 10))

    def forward(self, feats: Tensor) -> Tensor:
        return self.net(feats.float())


class TextClassifier(nn.Module):
    def __init__(self, vocab_size: int):
        super().__init__()
        self.embed = nn.Embedding(vocab_size, 32, padding_idx=0)
        self.conv = nn.Sequential(nn.Conv1d(32, 64, 3, padding=1), nn.ReLU(), nn.Conv1d(64, 64, 3, padding=1), nn.ReLU())
        self.out = nn.Linear(64, 10)

    def forward(self, ids: Tensor) -> Tensor:
        ids = ids.long().clamp(0, self.embed.num_embeddings - 1)
        h = self.conv(self.embed(ids).transpose(1, 2))  # (B, 64, T)
        h = torch.where((ids != 0).unsqueeze(1), h, torch.full_like(h, -1e4))
        return self.out(h.max(-1).values)


def audio_features(waves: Tensor, lengths: Tensor, opts: AudioOptions, batch: int = 512) -> Tensor:
    """int16 (R, L) waves -> (R, n_mels, frames) log-mel features, as Audio.preprocess computes them."""
    logmel = LogMel(opts)
    out = []
    for s in range(0, len(waves), batch):
        w = waves[s : s + batch].float() / INT16_SCALE
        mask = torch.arange(w.shape[1]).unsqueeze(0) < lengths[s : s + batch].unsqueeze(1)
        w = torch.where(mask, w, torch.zeros_like(w))
        f = logmel(w)
        fm = frame_mask(mask, opts.hop_length, f.shape[-1]).unsqueeze(1)
        out.append(torch.where(fm, f, torch.zeros_like(f)))
    return torch.cat(out)


def _fit(net: nn.Module, x: Tensor, y: Tensor, epochs: int, seed: int, device, augment=None, lr=2e-3, batch=64) -> nn.Module:
    torch.manual_seed(seed)
    net = net.to(device)
    steps = epochs * max(1, len(x) // batch)
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps)
    gen = torch.Generator().manual_seed(seed)
    net.train()
    for _ in range(epochs):
        order = torch.randperm(len(x), generator=gen)
        for b in range(max(1, len(x) // batch)):
            idx = order[b * batch : (b + 1) * batch]
            xb = x[idx]
            if augment is not None:
                xb = augment(xb, gen)
            loss = nn.functional.cross_entropy(net(xb.to(device)), y[idx].to(device))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    return net.eval()


@torch.no_grad()
def accuracy(net: nn.Module, x: Tensor, y: Tensor, batch: int = 1024) -> float:
    net.eval()
    device = next(net.parameters()).device
    correct = sum(int((net(x[s : s + batch].to(device)).argmax(-1).cpu() == y[s : s + batch]).sum())
                  for s in range(0, len(x), batch))
    return correct / max(1, len(x))


def _roll_frames(x: Tensor, gen: torch.Generator) -> Tensor:
    shift = int(torch.randint(-3, 4, (1,), generator=gen))
    gain = float(torch.empty(1).uniform_(-0.05, 0.05, generator=gen))
    return (torch.roll(x, shift, dims=2) + gain * (x > 0)).clamp(0, 1)


def train_digits4_classifiers(prepared_dir: str | Path, epochs: int = 4, seed: int = 0, device: str = "cpu",
                              audio_epochs: int = 40, text_epochs: int = 10, log=print,
                              modalities: tuple[str, ...] = ("mnist", "svhn", "audio", "text")) -> dict:
    d = Path(prepared_dir)
    manifest = check_prepared(d)
    out_dir = d / CACHE_DIR
    out_dir.mkdir(exist_ok=True)
    dev = torch.device(device)
    opts = AudioOptions(sample_rate=manifest["fsdd"]["sample_rate"])
    vocab = json.loads((d / VOCAB_FILE).read_text())

    def arrays(split: str, role: str) -> Tensor:
        return torch.from_numpy(load_checked(d, manifest["splits"][split]["files"][role], manifest))

    record = {"format": "mmvae.digits4.classifiers/1", "epochs": {"images": epochs, "audio": audio_epochs, "text": text_epochs},
              "seed": seed, "svhn_source": manifest.get("svhn", {}).get("source"),
              "audio_options": opts.model_dump(), "vocab_size": len(vocab), "modalities": {}}
    previous = out_dir / RECORD
    if set(modalities) != set(("mnist", "svhn", "audio", "text")) and previous.is_file():
        old = json.loads(previous.read_text())  # retraining some: keep the others' entries (with their epochs)
        record["modalities"] = {m: r for m, r in old.get("modalities", {}).items() if m not in modalities}
    for m in modalities:
        started = time.time()
        if m in ("mnist", "svhn"):
            xs = {s: arrays(s, f"{m}_images") for s in ("train", "test")}
            ys = {s: arrays(s, f"{m}_labels").long() for s in ("train", "test")}
            inner = train_classifier(xs["train"], ys["train"], epochs=epochs, seed=seed, device=dev)
            net = ImageClassifier(xs["train"].shape[1:])
            net.net = inner
            info = {"shape": list(xs["train"].shape[1:])}
        elif m == "audio":
            xs = {s: audio_features(arrays(s, "audio_waves"), arrays(s, "audio_lengths"), opts) for s in ("train", "test")}
            ys = {s: arrays(s, "audio_labels").long() for s in ("train", "test")}
            net = _fit(AudioClassifier(opts.n_mels, xs["train"].shape[-1]), xs["train"], ys["train"], audio_epochs, seed,
                       dev, augment=_roll_frames)
            info = {"n_mels": opts.n_mels, "frames": int(xs["train"].shape[-1]), "test_set": "FSDD takes 0-4"}
        else:
            xs = {s: arrays(s, "text_tokens") for s in ("train", "test")}
            ys = {s: arrays(s, "text_labels").long() for s in ("train", "test")}
            net = _fit(TextClassifier(len(vocab)), xs["train"], ys["train"], text_epochs, seed, dev)
            info = {"vocab_size": len(vocab), "tokens": int(xs["train"].shape[1])}
        acc = accuracy(net, xs["test"], ys["test"])
        save_file({k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()}, str(out_dir / f"d4_{m}.safetensors"))
        record["modalities"][m] = {**info, "epochs": epochs if m in ("mnist", "svhn") else (audio_epochs if m == "audio" else text_epochs),
                                   "test_accuracy": acc, "train_items": int(len(xs["train"])),
                                   "test_items": int(len(xs["test"])), "seconds": time.time() - started}
        log(f"classifier {m}: test accuracy {acc:.4f} on {len(xs['test'])} items ({time.time() - started:.0f} s)")
        # After every classifier (atomically), so an interrupted run keeps the record of what it finished.
        tmp = out_dir / (RECORD + ".tmp")
        tmp.write_text(json.dumps(record, indent=2))
        tmp.replace(out_dir / RECORD)
    return record


def load_digits4_classifiers(prepared_dir: str | Path, device: str | torch.device = "cpu") -> tuple[dict[str, nn.Module], dict]:
    out_dir = Path(prepared_dir) / CACHE_DIR
    path = out_dir / RECORD
    if not path.is_file():
        raise FileNotFoundError(f"no digits4 classifiers in {out_dir}: train them once with `mmvae classifiers {prepared_dir}`")
    record = json.loads(path.read_text())
    nets: dict[str, nn.Module] = {}
    for m, info in record["modalities"].items():
        if m in ("mnist", "svhn"):
            net: nn.Module = ImageClassifier(info["shape"])
        elif m == "audio":
            net = AudioClassifier(info["n_mels"], info["frames"])
        else:
            net = TextClassifier(info["vocab_size"])
        net.load_state_dict(load_file(str(out_dir / f"d4_{m}.safetensors")))
        nets[m] = net.to(device).eval().requires_grad_(False)
    return nets, record


def run_cli(args) -> int:
    """--epochs E: E epochs for the image nets, 10·E for audio (2,700 recordings), 3·E for text."""
    record = train_digits4_classifiers(args.prepared, args.epochs, args.seed, args.device,
                                       audio_epochs=10 * args.epochs, text_epochs=3 * args.epochs)
    print(json.dumps(record, indent=2))
    return 0


def check_audio_options(model, record: dict) -> None:
    """The audio classifier was trained on features with the recorded options; a model must use the same."""
    from mmvae.config import ConfigError

    for m in model.names:
        mod = model.modalities[m]
        if mod.kind == "audio":
            mine = {k: v for k, v in mod.options.model_dump().items() if k in ("sample_rate", "n_fft", "hop_length", "n_mels",
                                                                               "f_min", "f_max", "db_floor", "db_ceiling")}
            theirs = {k: record["audio_options"][k] for k in mine}
            if mine != theirs:
                raise ConfigError(f"modality '{m}': its feature options {mine} differ from those the audio classifier "
                                  f"was trained on {theirs}; retrain the classifiers or use the same options")


__all__ = ["is_digits4", "train_digits4_classifiers", "load_digits4_classifiers", "np"]
