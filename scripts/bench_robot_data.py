"""Short benchmark of the robot data side: simulation throughput (episodes per minute) and the cost of building
training batches from the HDF5 episodes (ms per batch, samples/s, MB/s), single process.

    python scripts/bench_robot_data.py --episodes 8 --workers 2 --seconds 3 [--prepared DIR] [--keep DIR]

With --prepared DIR the simulation is skipped and DIR's episodes are read. Results print as one JSON object.
The figures depend on what else runs on the machine: say so when quoting them.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--episodes", type=int, default=8)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--seconds", type=float, default=3.0, help="time spent building batches")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--prepared", type=Path, default=None, help="an existing prepared folder (skips the simulation)")
    p.add_argument("--keep", type=Path, default=None, help="simulate into this folder and keep it")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    os.environ.setdefault("MUJOCO_GL", "egl")
    import numpy as np
    import torch

    from data_prep import robot_episodes, robot_sim
    from mmvae.data.robot import RobotEpisodes

    torch.set_num_threads(1)
    result: dict = {"simulation": True, "cpu_count": os.cpu_count(),
                    "load_average_before": [round(x, 2) for x in os.getloadavg()]}
    tmp = None
    if args.prepared is None:
        out = args.keep or Path(tempfile.mkdtemp(prefix="bench_robot_"))
        tmp = None if args.keep else out
        t0 = time.perf_counter()
        records = robot_sim.simulate(args.episodes, args.seed, out / "episodes", workers=args.workers)
        sim_s = time.perf_counter() - t0
        robot_episodes.prepare_index(out / "episodes", out, seed=args.seed, simulation=True,
                                     generator=robot_sim.generator_record(args.seed, args.episodes))
        per = [r["seconds"] for r in records]
        result.update({"episodes": args.episodes, "workers": args.workers, "sim_seconds": round(sim_s, 2),
                       "episodes_per_minute": round(args.episodes / sim_s * 60, 1),
                       "seconds_per_episode_in_worker": round(float(np.median(per)), 2),
                       "tasks": {t: sum(r["task"] == t for r in records) for t in robot_sim.TASKS}})
        prepared = out
    else:
        prepared = args.prepared
    src = RobotEpisodes(prepared, "train", seed=0)
    g = torch.Generator().manual_seed(0)
    src.gather(torch.randint(0, len(src), (args.batch_size,), generator=g))  # open the files once
    n, t0 = 0, time.perf_counter()
    nbytes = 0
    while time.perf_counter() - t0 < args.seconds:
        b = src.gather(torch.randint(0, len(src), (args.batch_size,), generator=g))
        n += 1
        nbytes += sum(t.numel() * t.element_size() for k in ("x", "targets") for t in b[k].values())
    dt = time.perf_counter() - t0
    t1 = time.perf_counter()
    for _ in range(max(1, n // 4)):
        idx = torch.randint(0, len(src), (args.batch_size,), generator=g).numpy()
        own = src.samples[idx]
        src.read_frames(own[:, 0], own[:, 1])
    read_only = (time.perf_counter() - t1) / max(1, n // 4)
    result.update({"batch_size": args.batch_size, "batches": n, "ms_per_batch": round(dt / n * 1e3, 2),
                   "ms_per_batch_hdf5_reads_only": round(read_only * 1e3, 2),
                   "samples_per_second": round(n * args.batch_size / dt), "batch_mb_per_second": round(nbytes / dt / 2**20),
                   "train_samples": len(src), "page_cache": "warm (files just written or read)",
                   "load_average_after": [round(x, 2) for x in os.getloadavg()]})
    print(json.dumps(result, indent=2))
    if tmp is not None:
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
