"""Frozen digit classifiers, one per image modality, that score generated samples.

Trained once per prepared dataset by `mmvae classifiers DIR` on the unpaired training images, cached
in DIR/classifiers/ as safetensors plus a JSON record of their test accuracy.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from mmvae.data.mnist_svhn import MANIFEST, load_checked, read_manifest

CACHE_DIR = "classifiers"
MODALITIES = ("mnist", "svhn")


def digit_classifier(shape: tuple[int, int, int], num_classes: int = 10) -> nn.Sequential:
    """A small conv net for C x H x W images in [0, 1] (H, W divisible by 4)."""
    c, h, w = shape
    return nn.Sequential(
        nn.Conv2d(c, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
        nn.Conv2d(32, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Dropout(0.3), nn.Linear(64 * (h // 4) * (w // 4), 128), nn.ReLU(),
        nn.Linear(128, num_classes),
    )


def load_unpaired(prepared_dir: Path, split: str) -> dict[str, tuple[Tensor, Tensor]]:
    """{modality: (uint8 images (N, C, H, W), labels (N,))} of one split, checksums verified."""
    manifest = read_manifest(prepared_dir)
    files = manifest["splits"][split]["files"]
    out = {}
    for m in MODALITIES:
        images = load_checked(prepared_dir, files[f"{m}_images"], manifest, True)
        labels = load_checked(prepared_dir, files[f"{m}_labels"], manifest, True)
        out[m] = (torch.from_numpy(images), torch.from_numpy(labels).long())
    return out


@torch.no_grad()
def accuracy(net: nn.Module, images: Tensor, labels: Tensor, batch_size: int = 1024) -> float:
    """Fraction of uint8 or float images classified as `labels`."""
    net.eval()
    device = next(net.parameters()).device
    correct = 0
    for s in range(0, images.shape[0], batch_size):
        pred = predict(net, images[s : s + batch_size].to(device))
        correct += int((pred.cpu() == labels[s : s + batch_size]).sum())
    return correct / images.shape[0]


def predict(net: nn.Module, images: Tensor) -> Tensor:
    """Class predictions for uint8 [0, 255] or float [0, 1] images."""
    x = images.float() / 255.0 if not images.dtype.is_floating_point else images.float()
    return net(x).argmax(-1)


def train_classifier(images: Tensor, labels: Tensor, epochs: int, seed: int, device: torch.device,
                     batch_size: int = 128, lr: float = 2e-3) -> nn.Module:
    """Adam with a one-cycle schedule; small random shifts as the only augmentation."""
    torch.manual_seed(seed)
    net = digit_classifier(tuple(images.shape[1:])).to(device)
    if epochs < 1 or images.shape[0] == 0:
        raise ValueError(f"classifier training needs epochs >= 1 and images (got epochs={epochs}, {images.shape[0]} images)")
    batches = max(1, images.shape[0] // batch_size)  # drop the last partial batch, unless it is the only one
    steps = epochs * batches
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps)
    gen = torch.Generator().manual_seed(seed)
    net.train()
    from mmvae.progress import Progress

    progress = Progress(steps, f"classifier {tuple(images.shape[1:])}", "step", every_s=15.0)
    for epoch in range(epochs):
        order = torch.randperm(images.shape[0], generator=gen)
        for b in range(batches):
            idx = order[b * batch_size : (b + 1) * batch_size]
            x = images[idx].to(device).float() / 255.0
            dx, dy = torch.randint(-2, 3, (2,), generator=gen).tolist()
            x = torch.roll(x, shifts=(dy, dx), dims=(2, 3))
            loss = nn.functional.cross_entropy(net(x), labels[idx].to(device))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            progress.update(epoch * batches + b + 1)
    progress.close()
    return net.eval()


def train_digit_classifiers(prepared_dir: str | Path, epochs: int = 4, seed: int = 0, device: str = "cpu",
                            log=print) -> dict:
    """Train and cache one classifier per modality; returns (and writes) their record with test accuracy."""
    prepared_dir = Path(prepared_dir)
    train, test = load_unpaired(prepared_dir, "train"), load_unpaired(prepared_dir, "test")
    out_dir = prepared_dir / CACHE_DIR
    out_dir.mkdir(exist_ok=True)
    manifest = read_manifest(prepared_dir)
    record = {"epochs": epochs, "seed": seed, "svhn_source": manifest.get("svhn", {}).get("source"), "modalities": {}}
    for m in MODALITIES:
        started = time.time()
        net = train_classifier(*train[m], epochs=epochs, seed=seed, device=torch.device(device))
        acc = accuracy(net, *test[m])
        save_file({k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()}, str(out_dir / f"{m}.safetensors"))
        record["modalities"][m] = {"shape": list(train[m][0].shape[1:]), "test_accuracy": acc,
                                   "train_images": int(train[m][0].shape[0]), "seconds": time.time() - started}
        log(f"classifier {m}: test accuracy {acc:.4f} ({time.time() - started:.0f} s)")
    (out_dir / "classifiers.json").write_text(json.dumps(record, indent=2))
    return record


def load_digit_classifiers(prepared_dir: str | Path, device: str | torch.device = "cpu") -> tuple[dict[str, nn.Module], dict]:
    """The cached classifiers of a prepared dataset, frozen, and their record."""
    out_dir = Path(prepared_dir) / CACHE_DIR
    record_path = out_dir / "classifiers.json"
    if not record_path.is_file():
        raise FileNotFoundError(
            f"no digit classifiers in {out_dir}: train them once with `mmvae classifiers {prepared_dir}`"
        )
    record = json.loads(record_path.read_text())
    nets = {}
    for m, info in record["modalities"].items():
        net = digit_classifier(tuple(info["shape"]))
        net.load_state_dict(load_file(str(out_dir / f"{m}.safetensors")))
        nets[m] = net.to(device).eval().requires_grad_(False)
    return nets, record


def add_parser(sub) -> None:
    from data_prep.cli import positive_int

    p = sub.add_parser("classifiers", help="train and cache the digit classifiers used by `mmvae evaluate`",
                       description=f"Train one digit classifier per modality on a prepared MNIST–SVHN folder's training "
                                   f"images; cache them in DIR/{CACHE_DIR}/ with their test accuracy.")
    p.add_argument("prepared", type=Path, help=f"prepared MNIST–SVHN folder (holds {MANIFEST})")
    p.add_argument("--epochs", type=positive_int, default=4, help="training epochs per classifier")
    p.add_argument("--seed", type=int, default=0, help="seed of the initial weights and batch order")
    p.add_argument("--device", default="cpu", help="cpu or cuda")


def run(args) -> int:
    from mmvae.digits4_classifiers import is_digits4, run_cli

    if is_digits4(args.prepared):  # a digits4 folder: classifiers for images, audio and text
        return run_cli(args)
    record = train_digit_classifiers(args.prepared, args.epochs, args.seed, args.device)
    print(json.dumps(record, indent=2))
    return 0
