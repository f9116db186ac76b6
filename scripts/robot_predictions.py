"""Pictures of a robot run's head predictions on one test episode (simulation), for the README:

    python scripts/robot_predictions.py RUN [--episode N] [--steps 8 20 32] [--out DIR] [--device cpu]

DIR/robot_flow_predicted.png   one row per step: RGB | true flow | predicted flow (the row's true-flow colour
                               scale, so lengths compare) | true flow mask | predicted mask probability; each row's
                               title gives the step, the row's flow EPE and its zero-flow EPE (pixels)
DIR/robot_force_contact.png    the episode's raw wrist force and torque (ee_forces_continuous, 50 x 50 readings
                               at 1 ms) with the simulator's contact flag shaded, and the contact head's
                               P(contact at t+1) for each step t against the true next-step contact

The episode (N = its number in the prepared folder, as in `meta["episode"]`) must be in the test split; by default
the first test episode with both free motion and contact. Every row is aligned: the test source is built with
`negative_fraction = 0`, so force and proprio are always the sample's own (checked). The model runs as
`mmvae.robot_metrics` runs it: eval mode, posterior means (`model(batch, sample=False)`), the heads found by kind.
DIR defaults to RUN/pictures. A missing run folder, a run without a checkpoint, an episode outside the test
split, a step outside 0..48: a one-line error, exit 2.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

import numpy as np
import torch

PROG = "robot_predictions"
FLOW_PNG, FORCE_PNG = "robot_flow_predicted.png", "robot_force_contact.png"

# Layout of the flow picture, in pixels (dpi 100): tiles are the 128 x 128 frames upscaled by SCALE.
DPI, SCALE, GAP, MARGIN, HEADER_H, TITLE_H, ROW_GAP, LEGEND_H = 100, 2, 8, 10, 62, 24, 6, 64
COLUMNS = ("RGB at t", "true flow t \u2192 t+1", "predicted flow\n(true flow's colour scale)",
           "true flow mask\n(moving pixels)", "predicted mask\nP(moving)")


class UsageError(Exception):
    """A one-line error for the user (exit 2)."""


def flow_picture_size(n_steps: int, image_size: int = 128) -> tuple[int, int]:
    """(width, height) in pixels of robot_flow_predicted.png for n_steps rows."""
    tile = image_size * SCALE
    width = 2 * MARGIN + len(COLUMNS) * tile + (len(COLUMNS) - 1) * GAP
    height = HEADER_H + n_steps * (TITLE_H + tile + ROW_GAP) + LEGEND_H
    return width, height


FORCE_SIZE = (10.0, 8.0)  # inches at DPI: robot_force_contact.png is 1000 x 800 pixels


def free_motion_and_contact(touching: np.ndarray, proprio: np.ndarray, min_steps: int = 3,
                            min_move: float = 0.003) -> bool:
    """An episode with >= min_steps steps in contact and >= min_steps steps that move the end effector by more
    than min_move metres without contact. touching: (50,) bool (any contact reading of the step), proprio: (50, 8)."""
    touching = np.asarray(touching, bool)
    moved = np.linalg.norm(np.diff(proprio[:, :3], axis=0), axis=1) > min_move  # step t-1 -> t, t = 1..49
    return int(touching.sum()) >= min_steps and int((moved & ~touching[1:]).sum()) >= min_steps


def robot_pictures():
    """scripts/robot_pictures.py as a module (flow_to_rgb, depth_to_rgb); scripts/ is not a package."""
    import importlib.util

    path = Path(__file__).resolve().parent / "robot_pictures.py"
    spec = importlib.util.spec_from_file_location("robot_pictures", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def open_run(run: Path, device: str):
    from mmvae.checkpoint import CheckpointError, NoCheckpointError
    from mmvae.runs import load_run

    if not run.is_dir():
        raise UsageError(f"{run}: no such run folder")
    if not (run / "config.yaml").is_file():
        raise UsageError(f"{run} is not a run folder: {run / 'config.yaml'} is missing")
    try:
        loaded = load_run(run, device)
    except NoCheckpointError:
        raise UsageError(f"{run} has no checkpoint yet (nothing in {run / 'checkpoints'})") from None
    except CheckpointError as e:
        raise UsageError(f"{run}: no usable checkpoint: {e}") from None
    if loaded.config.data.name != "vision_touch":
        raise UsageError(f"{run} is a {loaded.config.data.name!r} run, not a vision_touch (robot) run")
    return loaded


def aligned_test_source(config):
    """The run's test split as training built it (mmvae.data.robot.build), but without alignment negatives."""
    from mmvae.data.robot import RobotEpisodes, options_from_config

    opts = {**options_from_config(config), "negative_fraction": 0.0}
    return RobotEpisodes(config.data.path, "test", seed=config.seed, **opts)


def choose_episode(source, episode: int | None) -> int:
    test_eps = [int(e) for e in np.unique(source.samples[:, 0])]
    if episode is not None:
        if episode not in test_eps:
            shown = ", ".join(map(str, test_eps[:12])) + (", ..." if len(test_eps) > 12 else "")
            raise UsageError(f"episode {episode} is not in the test split (test episodes: {shown})")
        return episode
    for e in test_eps:
        if free_motion_and_contact(source.contact[e].numpy(), source.proprio[e].numpy()):
            return e
    print(f"note: no test episode has both free motion and contact; using the first, {test_eps[0]}")
    return test_eps[0]


@torch.no_grad()
def predict_episode(model, source, episode: int) -> dict[str, np.ndarray]:
    """Every test row of the episode (steps 0..48) through the model as mmvae.robot_metrics does: eval mode,
    posterior means. Returns per step: image, flow, flow_mask, flow_pred, mask_prob, epe, epe_zero, contact_prob,
    contact_next (all numpy, indexed by the step's position in `steps`)."""
    from mmvae.batch import batch_to
    from mmvae.heads_robot import ContactHead, FlowHead
    from mmvae.robot_metrics import EVAL_BATCH, _aligned, _heads_of, flow_epe

    flow_heads, contact_heads = _heads_of(model, FlowHead), _heads_of(model, ContactHead)
    if not flow_heads or not contact_heads:
        raise UsageError(f"the model has no {'flow' if not flow_heads else 'contact'} head "
                         f"(heads: {sorted(getattr(model, 'heads', {}))})")
    flow_name, contact_name = flow_heads[0], contact_heads[0]
    flow_head, contact_head = model.heads[flow_name], model.heads[contact_name]
    rows = np.flatnonzero(source.samples[:, 0] == episode)
    rows = rows[np.argsort(source.samples[rows, 1], kind="stable")]
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    parts: dict[str, list] = {}
    for lo in range(0, rows.size, EVAL_BATCH):
        index = torch.from_numpy(rows[lo:lo + EVAL_BATCH])
        batch = batch_to(source.gather(index.to(source.device)), device)
        meta = batch["meta"]
        own = (meta["pair_episode"] == meta["episode"]) & (meta["pair_step"] == meta["step"])
        if not bool(_aligned(batch).all()) or not bool(own.all()):
            raise RuntimeError("an alignment negative reached the batch although negative_fraction is 0")
        out = model(batch, sample=False)
        targets = batch["targets"]
        flow_t = targets[flow_head.options.target].float()
        flow_p = out.heads[flow_name]["flow"].float()
        errs = [flow_epe(flow_p[i:i + 1], flow_t[i:i + 1]) for i in range(flow_t.shape[0])]
        mask_logits = out.heads[flow_name].get("mask_logits")
        values = {
            "step": meta["step"], "image": batch["x"]["image"].permute(0, 2, 3, 1),
            "flow": flow_t.permute(0, 2, 3, 1), "flow_pred": flow_p.permute(0, 2, 3, 1),
            "flow_mask": targets[flow_head.options.mask_target][:, 0],
            "mask_prob": (torch.sigmoid(mask_logits[:, 0].float()) if mask_logits is not None
                          else torch.full_like(flow_t[:, 0], float("nan"))),
            "epe": torch.tensor([e["epe"] for e in errs]),
            "epe_zero": torch.tensor([e["epe_zero_baseline"] for e in errs]),
            "contact_prob": torch.sigmoid(out.heads[contact_name].float()),
            "contact_next": targets[contact_head.options.target].float(),
        }
        for k, v in values.items():
            parts.setdefault(k, []).append(v.detach().cpu())
    model.train(was_training)
    return {k: torch.cat(v).numpy() for k, v in parts.items()}


def flow_figure(pred: dict[str, np.ndarray], steps: list[int], title: str, contact_steps: np.ndarray):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    flow_to_rgb = robot_pictures().flow_to_rgb

    size = pred["image"].shape[1]
    tile = size * SCALE
    width, height = flow_picture_size(len(steps), size)
    fig = plt.figure(figsize=(width / DPI, height / DPI), dpi=DPI)
    fig.text(MARGIN / width, 1 - 4 / height, title, ha="left", va="top", fontsize=9, weight="bold")

    def axes_at(x: float, top: float, w: float, h: float, frame: bool = True):  # pixels, from the top left
        ax = fig.add_axes([x / width, 1 - (top + h) / height, w / width, h / height])
        ax.set_xticks([])
        ax.set_yticks([])
        for spine in ax.spines.values():  # a thin frame: white (zero) flow would melt into the page
            spine.set_visible(frame)
            spine.set_color("0.6")
            spine.set_linewidth(0.8)
        return ax

    for c, name in enumerate(COLUMNS):
        x = MARGIN + c * (tile + GAP)
        fig.text((x + tile / 2) / width, 1 - (HEADER_H - 3) / height, name, ha="center", va="bottom", fontsize=8.5)
    position = {int(s): i for i, s in enumerate(pred["step"])}
    up = lambda a: np.kron(a, np.ones((SCALE, SCALE) + (1,) * (a.ndim - 2), a.dtype))  # noqa: E731
    for r, t in enumerate(steps):
        i = position[t]
        true_max = float(np.hypot(pred["flow"][i][..., 0], pred["flow"][i][..., 1]).max())
        pred_max = float(np.hypot(pred["flow_pred"][i][..., 0], pred["flow_pred"][i][..., 1]).max())
        scale = true_max if true_max > 0 else max(pred_max, 1e-6)  # nothing moves: the prediction's own scale
        note = (f"largest |flow|: true {true_max:.2f} px" + (" (= full colour)" if true_max > 0 else "")
                + f", predicted {pred_max:.2f} px" + (" (= full colour)" if true_max <= 0 else ""))
        top = HEADER_H + r * (TITLE_H + tile + ROW_GAP)
        contact = ("contact at t" if contact_steps[t] else "no contact at t") + \
                  (", contact at t+1" if pred["contact_next"][i] > 0.5 else ", none at t+1")
        fig.text(MARGIN / width, 1 - (top + TITLE_H - 5) / height,
                 f"step {t}:  EPE {pred['epe'][i]:.3f} px,  zero-flow EPE {pred['epe_zero'][i]:.3f} px   |   "
                 f"{note}   |   {contact}", ha="left", va="bottom", fontsize=8.5)
        tiles = [pred["image"][i], flow_to_rgb(pred["flow"][i], scale), flow_to_rgb(pred["flow_pred"][i], scale)]
        for c, img in enumerate(tiles):
            axes_at(MARGIN + c * (tile + GAP), top + TITLE_H, tile, tile).imshow(up(img), interpolation="nearest")
        for c, m in ((3, pred["flow_mask"][i]), (4, pred["mask_prob"][i])):
            ax = axes_at(MARGIN + c * (tile + GAP), top + TITLE_H, tile, tile)
            mask_im = ax.imshow(up(m.astype(np.float32)), cmap="viridis", vmin=0, vmax=1, interpolation="nearest")

    # Legend band: the flow colour wheel and the mask colour bar.
    top = height - LEGEND_H + 8
    wheel = LEGEND_H - 16
    yy, xx = np.mgrid[-1:1:wheel * 1j, -1:1:wheel * 1j]
    disc = flow_to_rgb(np.stack([xx, yy], -1), 1.0)
    disc[np.hypot(xx, yy) > 1] = 255
    axes_at(MARGIN, top, wheel, wheel, frame=False).imshow(disc, interpolation="nearest")
    fig.text((MARGIN + wheel + 8) / width, 1 - (top + wheel / 2) / height,
             "flow colour: hue = direction (red right, yellow-green up, cyan left, blue-violet down),\n"
             "saturation = length relative to the row's largest true |flow|; white = 0",
             ha="left", va="center", fontsize=8)
    bar_x = MARGIN + 3 * (tile + GAP)
    cax = fig.add_axes([bar_x / width, 1 - (top + 14) / height, (2 * tile + GAP) / width, 12 / height])
    bar = fig.colorbar(mask_im, cax=cax, orientation="horizontal")
    bar.ax.tick_params(labelsize=7.5, length=2, pad=1)
    bar.set_label("mask: 0 = still, 1 = moving (true: 0/1; predicted: probability)", fontsize=8, labelpad=2)
    return fig


def contact_runs(flags: np.ndarray) -> list[tuple[int, int]]:
    """[start, stop) index runs where flags is true."""
    f = np.concatenate([[0], flags.astype(np.int8), [0]])
    d = np.diff(f)
    return list(zip(np.flatnonzero(d == 1), np.flatnonzero(d == -1)))


def force_figure(forces: np.ndarray, contact: np.ndarray, pred: dict[str, np.ndarray], dt: float, title: str):
    """forces (50, 50, 6), contact (50, 50) raw readings; pred from predict_episode."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps, sub = contact.shape
    flat_f = forces.reshape(steps * sub, 6)
    flat_c = contact.reshape(-1) > 0.5
    time = np.arange(steps * sub) * dt
    period = sub * dt
    fig, axes = plt.subplots(3, 1, figsize=FORCE_SIZE, dpi=DPI, sharex=True,
                             gridspec_kw={"height_ratios": [1.2, 1.2, 1.0]})
    for ax in axes:
        for a, b in contact_runs(flat_c):
            ax.axvspan(a * dt, b * dt, color="0.88", lw=0, zorder=0)
        ax.grid(alpha=0.3, lw=0.5)
    colours = ("tab:red", "tab:green", "tab:blue")
    for k, axis in enumerate("xyz"):
        axes[0].plot(time, flat_f[:, k], color=colours[k], lw=0.8, label=f"F{axis}")
        axes[1].plot(time, flat_f[:, 3 + k], color=colours[k], lw=0.8, label=f"T{axis}")
    axes[0].set_ylabel("force (N)")
    axes[1].set_ylabel("torque (N\u00b7m)")
    shade = plt.Rectangle((0, 0), 1, 1, color="0.88")
    for ax in axes[:2]:
        handles, labels = ax.get_legend_handles_labels()
        ax.legend(handles + [shade], labels + ["contact (simulator)"], fontsize=8, loc="upper left", ncol=4,
                  framealpha=0.9)
    # Step t's prediction is about the readings of step t+1: drawn over step t+1's interval.
    t = pred["step"].astype(np.int64)
    edges = np.concatenate([(t + 1) * period, [(t[-1] + 2) * period]])
    axes[2].stairs(pred["contact_next"], edges, baseline=None, color="black", lw=1.4,
                   label="true contact at t+1 (any reading of step t+1)")
    axes[2].stairs(pred["contact_prob"], edges, baseline=None, color="tab:orange", lw=1.6,
                   label="contact head: P(contact at t+1), made at step t")
    axes[2].axhline(0.5, color="0.5", lw=0.7, ls="--")
    axes[2].set_ylim(-0.05, 1.42)  # room for the legend above the curves
    axes[2].set_yticks([0, 0.25, 0.5, 0.75, 1])
    axes[2].set_ylabel("P(contact at t+1)")
    top = axes[0].secondary_xaxis("top", functions=(lambda x: x / period, lambda s: s * period))
    top.set_xlabel("step t", fontsize=9)
    top.tick_params(labelsize=8)
    axes[2].legend(fontsize=8, loc="upper left", ncol=2, framealpha=0.9)
    axes[2].set_xlabel(f"time (s); step t spans [t, t+1) \u00d7 {period * 1000:.0f} ms, {sub} readings at "
                       f"{dt * 1000:g} ms")
    axes[2].set_xlim(0, steps * period)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    p = argparse.ArgumentParser(prog=PROG, description=__doc__.splitlines()[0])
    p.add_argument("run", type=Path)
    p.add_argument("--episode", type=int, default=None, help="a test episode (default: the first with free "
                   "motion and contact)")
    p.add_argument("--steps", nargs="+", type=int, default=[8, 20, 32])
    p.add_argument("--out", type=Path, default=None, help="default: RUN/pictures")
    p.add_argument("--device", default="cpu")
    args = p.parse_args(argv)
    print("command: python scripts/robot_predictions.py " + shlex.join(argv))
    try:
        return _run(args)
    except UsageError as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return 2


def _run(args) -> int:
    import h5py

    from data_prep.errors import DataError
    from data_prep.robot_episodes import STEPS, read_manifest

    bad = [s for s in args.steps if not 0 <= s <= STEPS - 2]
    if bad:
        raise UsageError(f"--steps {bad}: a step must lie in 0..{STEPS - 2} (each needs its next step)")
    loaded = open_run(args.run, args.device)
    try:
        source = aligned_test_source(loaded.config)
    except DataError as e:
        raise UsageError(str(e)) from None
    episode = choose_episode(source, args.episode)
    path = Path(source.files.paths[episode])
    with h5py.File(path, "r") as f:
        forces = np.asarray(f["ee_forces_continuous"], np.float64)
        contact = np.asarray(f["contact"], np.float64)
        task = f.attrs.get("task", None)
        simulation = bool(f.attrs.get("simulation", False))
    task = task.decode() if isinstance(task, bytes) else task
    manifest = read_manifest(loaded.config.data.path)
    simulation = simulation or bool(manifest.get("simulation", False))
    dt = float((manifest.get("generator") or {}).get("timestep", 0.001))
    what = f"episode {episode} ({path.name}{', ' + task if task else ''}, test split)"
    print(f"run {args.run} at step {loaded.step} ({loaded.checkpoint}); {what}; steps {' '.join(map(str, args.steps))}")

    pred = predict_episode(loaded.model, source, episode)
    contact_steps = contact.any(axis=1)
    sim = "Simulation" if simulation else "Episodes not marked as a simulation"
    out = args.out or args.run / "pictures"
    out.mkdir(parents=True, exist_ok=True)
    fig = flow_figure(pred, list(args.steps), f"{sim}: {what}, flow head of {args.run} at training step "
                      f"{loaded.step} (EPE in pixels, posterior means)", contact_steps)
    fig.savefig(out / FLOW_PNG, dpi=DPI)
    fig2 = force_figure(forces, contact, pred, dt, f"{sim}: {what}\nwrist force/torque and the contact head of "
                        f"{args.run} at training step {loaded.step}")
    fig2.savefig(out / FORCE_PNG, dpi=DPI)
    import matplotlib.pyplot as plt

    plt.close("all")
    for t in args.steps:
        i = int(np.flatnonzero(pred["step"] == t)[0])
        print(f"  step {t}: EPE {pred['epe'][i]:.3f} px, zero-flow EPE {pred['epe_zero'][i]:.3f} px, "
              f"P(contact at t+1) {pred['contact_prob'][i]:.2f} (true {int(pred['contact_next'][i])})")
    print(f"wrote {out / FLOW_PNG} and {out / FORCE_PNG}")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # mmvae and data_prep from the checkout
    sys.exit(main())
