"""`mmvae <command>`: train, evaluate, sample, prepare, demo. Each has --help."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from mmvae.cli_types import non_negative_int, positive_int

DEFAULT_DEMO_CONFIG = "toy"  # a shipped config: found from any directory
DEMO_MARKER = ".mmvae-demo"

ON_CORRUPT_HELP = ("what to do when the newest checkpoint is corrupt or invalid: 'fallback' (default) uses the newest "
                   "valid older one, with a warning and `fell_back_from` in the summary; 'error' refuses (exit 2)")


def _add_train(sub) -> None:
    p = sub.add_parser("train", help="train a model from a YAML config",
                       description="Train from CONFIG with optional key=value overrides, e.g. train.lr=3e-4 model.fusion=concat. "
                                   "Under torchrun this trains with DDP.")
    p.add_argument("config", nargs="?", default=None,
                   help="experiment YAML, or a shipped config's name (`mmvae config list`); with --resume it may be "
                        "left out: the run's saved config is used")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides (dotted keys, YAML values)")
    p.add_argument("--run-dir", type=Path, default=None, help="run folder (default: <out_dir>/<name> from the config)")
    p.add_argument("--resume", action="store_true",
                   help="continue from the newest verified checkpoint in the run folder (bitwise exact)")
    p.add_argument("--stop-at-step", type=positive_int, default=None, help="checkpoint and exit after this step (simulates preemption)")
    p.add_argument("--on-corrupt", choices=["fallback", "error"], default="fallback", help=ON_CORRUPT_HELP)


def _add_evaluate(sub) -> None:
    p = sub.add_parser("evaluate", help="evaluate a run on its test split (JSON + markdown)",
                       description="Metrics of RUN's newest checkpoint on the test split: loss terms, label accuracy from the "
                                   "joint factor (all modalities and each alone), IWAE log-likelihood.")
    p.add_argument("run", type=Path, help="run folder")
    p.add_argument("--out", type=Path, default=None, help="output folder (default: RUN/eval)")
    p.add_argument("--limit", type=positive_int, default=None,
                   help="loss terms and label accuracy on a seeded class-balanced subset of N test samples (default: all)")
    p.add_argument("--iwae-samples", type=non_negative_int, default=1000, help="K for the IWAE estimate (0 to skip)")
    p.add_argument("--iwae-limit", type=positive_int, default=256, help="number of test samples for the IWAE estimate")
    p.add_argument("--generative-limit", type=positive_int, default=10_000,
                   help="test pairs for coherence/swap metrics and prior draws for joint coherence (MNIST–SVHN)")
    p.add_argument("--probe-train", type=positive_int, default=10_000, help="training samples for the linear probes (MNIST–SVHN)")
    p.add_argument("--seed", type=int, default=0, help="seed of the posterior samples and the subsets")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--on-corrupt", choices=["fallback", "error"], default="fallback", help=ON_CORRUPT_HELP)


def _add_sample(sub) -> None:
    p = sub.add_parser("sample", help="prior samples and reconstructions as PNG grids",
                       description="Decode prior draws and reconstruct test samples of RUN; one PNG per modality.")
    p.add_argument("run", type=Path, help="run folder")
    p.add_argument("--out", type=Path, default=None, help="output folder (default: RUN/samples)")
    p.add_argument("--num", type=positive_int, default=64, help="samples per grid")
    p.add_argument("--nrow", type=positive_int, default=8, help="samples per grid row")
    p.add_argument("--seed", type=int, default=0, help="seed of the prior draws and of the test samples shown")
    p.add_argument("--device", default="cpu", help="cpu or cuda")


def _add_demo(sub) -> None:
    p = sub.add_parser("demo", help="short training on the built-in toy dataset, then evaluate and sample",
                       description="Train the shipped toy config (two modalities with a known shared/private structure), "
                                   "then write its evaluation, sample and swap grids. Prints where everything went.")
    p.add_argument("--config", default=DEFAULT_DEMO_CONFIG, help="config file or shipped config name")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides (dotted keys, YAML values)")
    p.add_argument("--run-dir", type=Path, default=Path("runs/demo"),
                   help="run folder; a previous demo's folder there is replaced")


def _add_config(sub) -> None:
    p = sub.add_parser("config", help="list or print the shipped configs",
                       description="The configs that ship with mmvae: `mmvae config list`, `mmvae config show NAME`.")
    actions = p.add_subparsers(dest="config_command", required=True)
    actions.add_parser("list", help="names and first comment line of every shipped config")
    show = actions.add_parser("show", help="print a shipped config's YAML")
    show.add_argument("name", help="a name from `mmvae config list`")


# Subcommands that live beside their feature: module path -> (name of its `add_parser(subparsers)`,
# name of its `run(args) -> int`). Adding a command is one line here.
EXTENSION_COMMANDS: dict[str, tuple[str, str, str]] = {
    "prepare": ("data_prep.cli", "add_prepare_parser", "run_prepare"),
    "classifiers": ("mmvae.classifiers", "add_parser", "run"),
    "swap": ("mmvae.swap", "add_parser", "run"),
    "attribute": ("mmvae.attribute_cli", "add_parser", "run"),
}


def _extension(name: str):
    import importlib

    module_name, add_name, run_name = EXTENSION_COMMANDS[name]
    module = importlib.import_module(module_name)
    return getattr(module, add_name), getattr(module, run_name)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mmvae", description="Multimodal disentanglement: joint and private factors.")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_train(sub)
    _add_evaluate(sub)
    _add_sample(sub)
    _add_demo(sub)
    _add_config(sub)
    for name in EXTENSION_COMMANDS:
        add_parser, _ = _extension(name)
        add_parser(sub)
    _document_defaults(parser)
    return parser


def _document_defaults(parser: argparse.ArgumentParser) -> None:
    """Append "(default: X)" to every option's help that does not state its default already."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                _document_defaults(sub)
            continue
        if not action.option_strings or action.help in (None, argparse.SUPPRESS) or "default" in action.help:
            continue
        if action.default not in (None, False, argparse.SUPPRESS) and not isinstance(action, argparse._HelpAction):
            action.help = f"{action.help} (default: {action.default})"


def cmd_train(args) -> int:
    from mmvae.config import ConfigError, load_config
    from mmvae.preflight import check_train
    from mmvae.train import train

    overrides = list(args.overrides)
    config_arg = args.config
    if config_arg is not None and "=" in config_arg and not Path(config_arg).is_file():
        overrides.insert(0, config_arg)  # `mmvae train --resume --run-dir R key=value`: no CONFIG given
        config_arg = None
    if config_arg is None:
        if not (args.resume and args.run_dir):
            raise ConfigError("mmvae train needs CONFIG (a YAML file or a shipped name, see `mmvae config list`); "
                              "only `--resume --run-dir RUN` may leave it out")
        config_arg = args.run_dir / "config.yaml"
        if not config_arg.is_file():
            raise ConfigError(f"--resume: {config_arg} does not exist: {args.run_dir} is not a run folder")
    config = load_config(config_arg, overrides)
    check_train(config, args.run_dir, args.resume)  # untrainable configs refused before anything is written
    summary = train(config, args.run_dir, resume=args.resume, stop_at_step=args.stop_at_step, on_corrupt=args.on_corrupt)
    resumed_from = summary["steps"] - summary["steps_this_session"]
    _warn_fell_back("train", summary.get("fell_back_from"), f"training resumed from step {resumed_from}")
    if args.resume and summary["steps_this_session"] == 0 and summary["finished"]:
        print(f"mmvae train: the run was already finished at step {summary['steps']:,}; nothing was trained "
              "(raise train.max_steps or train.epochs to continue it)", file=sys.stderr)
    print(json.dumps(summary, indent=2))
    return 0


def cmd_config(args) -> int:
    from mmvae.config import ConfigError, did_you_mean, shipped_configs

    shipped = shipped_configs()
    if args.config_command == "list":
        for name, path in shipped.items():
            first = next((line.lstrip("# ").strip() for line in path.read_text().splitlines() if line.startswith("#")), "")
            print(f"{name:20s} {first}")
        return 0
    if args.name not in shipped:
        raise ConfigError(f"no shipped config {args.name!r}{did_you_mean(args.name, shipped)}; "
                          f"shipped: {sorted(shipped)}")
    print(shipped[args.name].read_text(), end="")
    return 0
def _warn_fell_back(command: str, rejected: list | None, used: str) -> None:
    """issue 15: one clear line when the newest checkpoint was rejected and an older one was used."""
    if rejected:
        print(f"mmvae {command}: warning: the newest checkpoint was rejected ({rejected[0]}); {used} instead "
              f"(`fell_back_from` in the summary; --on-corrupt error refuses)", file=sys.stderr)


def cmd_evaluate(args) -> int:
    from mmvae.data.registry import DATASETS, build_sources
    from mmvae.evaluate import evaluate_run
    from mmvae.runs import load_run

    run = load_run(args.run, args.device, on_corrupt=args.on_corrupt)
    _warn_fell_back("evaluate", run.fell_back_from, f"evaluating the older {run.checkpoint} (step {run.step})")
    entry = DATASETS[run.config.data.name]
    if entry.preflight is not None:
        entry.preflight(run.config)  # before any work: e.g. the cached classifiers exist
    train, test = build_sources(run.config)
    out = args.out or args.run / "eval"
    metrics = evaluate_run(run, test, out, args.limit, args.iwae_samples, args.iwae_limit, args.seed,
                           train=train, generative_limit=args.generative_limit, probe_train=args.probe_train)
    if run.fell_back_from:  # issue 15: the summary says which newer checkpoints were rejected
        metrics["fell_back_from"] = run.fell_back_from
        (out / "metrics.json").write_text(json.dumps(metrics, indent=2, default=str))
        with (out / "metrics.md").open("a") as f:
            f.write(f"\nNot the newest checkpoint: {len(run.fell_back_from)} newer one(s) were rejected "
                    f"(`fell_back_from` in metrics.json).\n")
    print((out / "metrics.md").read_text())
    print(f"wrote {out / 'metrics.json'} and {out / 'metrics.md'}")
    return 0 if metrics else 1


def cmd_sample(args) -> int:
    from mmvae.runs import load_run
    from mmvae.sample import write_samples

    run = load_run(args.run, args.device)
    _warn_fell_back("sample", run.fell_back_from, f"sampling the older {run.checkpoint} (step {run.step})")
    for path in write_samples(run, args.out or args.run / "samples", args.num, args.nrow, args.seed):
        print(f"wrote {path}")
    return 0


def cmd_demo(args) -> int:
    from mmvae.config import load_config
    from mmvae.data.registry import build_sources
    from mmvae.evaluate import evaluate_run
    from mmvae.runs import load_run
    from mmvae.sample import write_samples
    from mmvae.swap import write_swap_grids
    from mmvae.train import train

    config = load_config(args.config, args.overrides)
    marker = args.run_dir / DEMO_MARKER
    if args.run_dir.exists() and any(args.run_dir.iterdir()):
        if not marker.is_file():
            raise FileExistsError(f"{args.run_dir} exists and was not made by `mmvae demo`; choose another --run-dir")
        import shutil

        from mmvae.runlock import check_not_held

        check_not_held(args.run_dir)  # issue 15: never delete a folder a live training is writing

        shutil.rmtree(args.run_dir)  # a previous demo's folder: the demo always starts afresh
    args.run_dir.mkdir(parents=True, exist_ok=True)
    marker.write_text("made by `mmvae demo`; the next demo replaces this folder\n")
    started = time.time()
    summary = train(config, args.run_dir)
    run = load_run(args.run_dir)
    train_source, test = build_sources(run.config)
    metrics = evaluate_run(run, test, args.run_dir / "eval", iwae_samples=100, iwae_limit=256, train=train_source,
                           generative_limit=1024, probe_train=4096)
    written = write_samples(run, args.run_dir / "samples")
    written += write_swap_grids(run, args.run_dir / "swaps", n=8, seed=0)
    print((args.run_dir / "eval" / "metrics.md").read_text())
    print(demo_headline(metrics, run))
    print(f"demo: {summary['steps']} steps in {summary['seconds']:.1f} s of training, {time.time() - started:.1f} s in all")
    print(f"run folder: {args.run_dir} (config.yaml, metrics.jsonl, checkpoints/, eval/, samples/, swaps/)")
    for path in written:
        print(f"  {path}")
    return 0


def demo_headline(metrics: dict, run) -> str:
    """What the demo shows, in a few lines: is the class shared and the style private?"""
    from mmvae.data.registry import DATASETS
    from mmvae.evaluate import metric_help

    lines = ["", "What the demo shows (toy data, scored by oracle readers that invert the generator):"]
    for key, op, bound, _ in DATASETS[run.config.data.name].targets:
        if key in metrics:
            ok = metrics[key] >= bound if op == ">=" else metrics[key] <= bound
            _, meaning = metric_help(key, run.config.data.name)
            lines.append(f"  {key:22s} {metrics[key]:.3f}  {'met' if ok else 'MISSED'} ({op} {bound:g})  {meaning}")
    style = {k: v for k, v in metrics.items() if k.startswith("style_transfer/") and k != "style_transfer/mean"}
    if style:
        lines.append("  style carried by a Z_m swap, per factor: "
                     + ", ".join(f"{k.split('/', 1)[1]} {v:.2f}" for k, v in style.items()) + "  (chance 0.5)")
    lines.append("  swap grids: swaps/within_*.png (row: class, column: style) and swaps/cross_*.png")
    return "\n".join(lines)


# issue 15: options of extension commands (parsers defined in their own modules) that must be >= 1.
POSITIVE_OPTIONS = {"swap": ("n",), "attribute": ("samples", "ig_steps", "top_k")}


def _check_args(args) -> str | None:
    """issue 15: checks argparse cannot express for every command: --device, and sizes of extension options."""
    for dest in POSITIVE_OPTIONS.get(args.command, ()):
        value = getattr(args, dest, None)
        if isinstance(value, int) and value < 1:
            return f"argument --{dest.replace('_', '-')}: must be >= 1, got {value}"
    device = getattr(args, "device", None)
    if isinstance(device, str):
        import torch

        try:
            parsed = torch.device(device)
        except (RuntimeError, ValueError):
            return f"argument --device: {device[:40]!r} is not a device (cpu, cuda or cuda:N)"
        if parsed.type not in ("cpu", "cuda"):
            return f"argument --device: {device[:40]!r} is not supported (cpu, cuda or cuda:N)"
        if parsed.type == "cuda" and not torch.cuda.is_available():
            return f"argument --device: {device[:40]!r} requested but no CUDA device is available"
        if parsed.type == "cuda" and parsed.index is not None and parsed.index >= torch.cuda.device_count():
            return f"argument --device: {device[:40]!r} but only {torch.cuda.device_count()} CUDA device(s) are visible"
    return None


def _os_error_line(exc: OSError, args) -> str:
    """issue 15: one line for a file-system failure: what ran out or failed, and where."""
    import errno

    where = exc.filename or next((str(getattr(args, k)) for k in ("run_dir", "run", "out") if getattr(args, k, None)),
                                 "the working directory")
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        what = "no space left on the device" if exc.errno == errno.ENOSPC else "disk quota exceeded"
        return (f"{what} while writing {where}; free some space and rerun"
                + (" with --resume (the last checkpoint is intact)" if args.command == "train" else ""))
    return f"{exc.strerror or exc}: {where}"


def main(argv: list[str] | None = None) -> int:
    from mmvae.checkpoint import CheckpointError
    from mmvae.config import ConfigError

    from data_prep.errors import DataError
    from mmvae.runlock import RunLockError
    from mmvae.train import NonFiniteLossError

    known_errors = (ConfigError, CheckpointError, DataError, NonFiniteLossError, FileNotFoundError, FileExistsError,
                    RunLockError)  # issue 15: RunLockError
    args = build_parser().parse_args(argv)
    handlers = {"train": cmd_train, "evaluate": cmd_evaluate, "sample": cmd_sample, "demo": cmd_demo,
                "config": cmd_config}
    handler = handlers.get(args.command) or _extension(args.command)[1]
    problem = _check_args(args)  # issue 15
    if problem:
        print(f"mmvae {args.command}: error: {problem}", file=sys.stderr)
        return 2
    try:
        return handler(args)
    except known_errors as exc:
        print(f"mmvae {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # issue 15: disk full, permissions, ... in one line (exit 2)
        print(f"mmvae {args.command}: error: {_os_error_line(exc, args)}", file=sys.stderr)
        return 2
    except (MemoryError, RuntimeError) as exc:  # issue 15: running out of memory (host or device) in one line
        text = str(exc)
        if not isinstance(exc, MemoryError) and "out of memory" not in text and "can't allocate memory" not in text:
            raise
        where = "GPU" if "CUDA" in text or "cuda" in text else "host"
        print(f"mmvae {args.command}: error: out of {where} memory ({text.splitlines()[0][:120] if text else 'MemoryError'}); "
              "reduce the sizes in the config or the options", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
