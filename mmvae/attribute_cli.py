"""`mmvae attribute RUN --samples N --out DIR`: gradient-attribution report (HTML + JSON) of a trained run."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch


def add_parser(sub) -> None:
    """Register the `attribute` subcommand."""
    p = sub.add_parser(
        "attribute", help="gradient-attribution report of a run (self-contained HTML + JSON)",
        description="For N seeded samples of RUN's data: per modality and part, ‖∂ℓ/∂F‖ (loss mode) and ‖∂x̂/∂F‖ "
                    "(Jacobian mode) for the joint feature F_y and each private feature F_m, integrated gradients of "
                    "the label logit and the joint factor, and deletion curves. Writes DIR/report.html and "
                    "DIR/attributions.json.",
    )
    p.add_argument("run", type=Path, help="run folder")
    p.add_argument("--samples", type=int, default=64, help="number of samples to attribute (default 64)")
    p.add_argument("--out", type=Path, default=None, help="output folder (default: RUN/attribution)")
    p.add_argument("--split", choices=["test", "train"], default="test", help="which split the samples come from")
    p.add_argument("--seed", type=int, default=0, help="picks the samples and the random deletion orders")
    p.add_argument("--show", type=int, default=16, help="samples shown one by one in the page (all enter the summary)")
    p.add_argument("--top-k", type=int, default=10, help="top parts listed per sample and kind")
    p.add_argument("--modes", default="loss,jacobian", help="comma-separated subset of loss,jacobian")
    p.add_argument("--no-private", action="store_true", help="skip attributions to the private features")
    p.add_argument("--no-ig", action="store_true", help="skip integrated gradients")
    p.add_argument("--no-deletion", action="store_true", help="skip the deletion (faithfulness) test")
    p.add_argument("--ig-steps", type=int, default=32, help="integration steps of integrated gradients")
    p.add_argument("--target", choices=["predicted", "label"], default="predicted",
                   help="which class's logit integrated gradients explain")
    p.add_argument("--device", default="cpu", help="cpu or cuda")


def select_indices(source, samples: int, seed: int) -> torch.Tensor:
    """`samples` distinct indices of `source`: seeded, class-balanced and in random order (a split may be stored
    grouped by class, so sorted or leading indices would show one class first)."""
    from mmvae.data.sampling import balanced_subset, source_labels

    size = len(source)
    if samples < 1:
        raise ValueError(f"--samples must be >= 1, got {samples}")
    if samples > size:
        raise ValueError(f"--samples {samples} is more than the {size} samples in the split")
    return balanced_subset(source_labels(source), samples, seed)


def run(args: argparse.Namespace) -> int:
    """Attribute, write the report, print where it went and the headline checks."""
    from mmvae.attribution_report import write_report
    from mmvae.data.registry import build_sources
    from mmvae.data.source import batch_to
    from mmvae.interpret import AttributionSettings, attribute, reconstruction_term_weights
    from mmvae.runs import load_run

    started = time.perf_counter()
    torch.manual_seed(args.seed)
    settings = AttributionSettings(
        modes=tuple(s.strip() for s in args.modes.split(",") if s.strip()), private=not args.no_private,
        integrated_gradients=not args.no_ig, deletion=not args.no_deletion, ig_steps=args.ig_steps,
        target=args.target, seed=args.seed,
    )
    loaded = load_run(args.run, args.device)
    train_source, test_source = build_sources(loaded.config)
    source = test_source if args.split == "test" else train_source
    indices = select_indices(source, args.samples, args.seed)
    device = next(loaded.model.parameters()).device
    batch = batch_to(source.gather(indices.to(source.device)), device)
    weights = reconstruction_term_weights(loaded.model, loaded.config.loss, loaded.step)
    from mmvae.progress import Progress

    progress = Progress(None, "attribute", "phase")
    progress.event(f"{args.samples} samples: feature gradients, integrated gradients, deletion test ...")
    result = attribute(loaded.model, batch, settings, weights,
                       f"loss.weights of the run's config at step {loaded.step} x the family's term scales",
                       on_phase=lambda name, s: progress.event(f"{name} done in {s:.1f} s"))
    meta = {
        "model": {"run_dir": str(args.run), "step": loaded.step, "config_name": loaded.config.name,
                  "fusion": loaded.config.model.fusion, "joint_dim": loaded.config.model.joint_dim,
                  "joint_feature_dim": loaded.config.model.joint_feature_dim,
                  "modalities": {m: f"{mc.kind} {mc.shape} ({mc.likelihood})" for m, mc in loaded.config.model.modalities.items()}},
        "data": {"dataset": loaded.config.data.name, "split": args.split, "seed": args.seed,
                 "provenance": dict(getattr(source, "provenance", None) or {})},
        "indices": indices.tolist(),
    }
    paths = write_report(result, loaded.model, settings, meta, args.out or args.run / "attribution", args.show, args.top_k)
    for name, comp in result.completeness.items():
        print(f"{name}: completeness relative error {comp.relative_error:.4f} ({'ok' if comp.ok else 'ABOVE tolerance'})")
    for m, curves in result.deletion.items():
        for c in curves:
            print(f"deletion {m} {c.score} by {c.ranking}: {deletion_line(c)}")
    print(f"attributed {args.samples} samples in {time.perf_counter() - started:.1f} s")
    print(f"wrote {paths['html']} and {paths['json']}")
    return 0


def deletion_line(c) -> str:
    """One console line per deletion curve: verdict, area ratio and its interval, the counts behind it."""
    counts = f"{c.samples} samples, {c.repeats} random orders"
    if c.area_ratio is None:
        return (f"n/a (random-order area {c.area_random:.3g} is not above {c.min_area:g} x the unmasked score "
                f"{c.reference if c.reference is None else f'{c.reference:.3g}'}; {counts})")
    ci = "" if c.ci is None else f", {c.confidence:.0%} CI [{c.ci[0]:.2f}, {c.ci[1]:.2f}]".replace("inf", "∞")
    return f"{c.verdict} (area ratio top / random {c.area_ratio:.2f}{ci}; {counts})"
