"""scripts/bench_multivae.py cannot rot silently: our side of its worker trains each pairing's config.

Only our side runs (no MultiVae venv, no network): the config the script builds for every model of its table
(the real family when registered, else the factorized stand-in), two steps on tiny data, once through the
worker's command line (the RESULT line the script parses) and in-process for every pairing.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
BATCH = 8


def load_script(name: str):
    spec = importlib.util.spec_from_file_location(name, REPO / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


bench = load_script("bench_multivae")
worker = load_script("bench_multivae_worker")


@pytest.fixture
def pairs(tmp_path) -> Path:
    rng = np.random.default_rng(0)
    path = tmp_path / "pairs.npz"
    np.savez(path, mnist=rng.integers(0, 256, (2 * BATCH, 1, 28, 28), dtype=np.uint8),
             svhn=rng.integers(0, 256, (2 * BATCH, 3, 32, 32), dtype=np.uint8))
    return path


def ours_spec(pairing, data: Path, optimizer: str = "own") -> dict:
    family, _ = bench.resolve_ours(pairing, stand_in="factorized")
    private = dict(pairing.private) if family == pairing.family else {}
    args = SimpleNamespace(seed=0, batch=BATCH, lr=1e-3)
    return {"side": "ours", "model": pairing.name, "data": str(data), "batch": BATCH, "warmup": 1, "steps": 2,
            "threads": 1, "seed": 0, "lr": 1e-3, "optimizer": optimizer, "nets": {**bench.NETS, "private": dict(pairing.private)},
            "ours_config": bench.ours_config(pairing, family, args, private)}


def check(result: dict, pairing) -> None:
    assert result["side"] == "ours" and result["model"] == pairing.name
    assert result["steps"] == 2 and result["batch"] == BATCH
    assert result["pairs_per_s"] > 0 and result["params"] > 0
    assert result["rss_baseline_mib"] > 0
    assert result["rss_peak_mib"] >= result["rss_baseline_mib"] - 1  # the kernel's RSS counters are approximate
    assert result["finite"] and math.isfinite(result["last_loss"])


def test_worker_command_line_prints_a_result(pairs, tmp_path):
    pairing = bench.PAIRINGS[0]
    spec_path = tmp_path / "spec.json"
    spec_path.write_text(json.dumps(ours_spec(pairing, pairs)))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, str(bench.WORKER), str(spec_path)], capture_output=True, text=True,
                          env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    assert len(lines) == 1
    check(json.loads(lines[0][len("RESULT "):]), pairing)


@pytest.mark.parametrize("pairing", bench.PAIRINGS, ids=lambda p: p.name)
def test_ours_side_of_every_pairing_trains(pairing, pairs):
    import torch

    threads = torch.get_num_threads()
    try:
        # Adam here: the fused AdamW of "own" imports torch._dynamo, which the command-line test already pays.
        check(worker.run(ours_spec(pairing, pairs, optimizer="adam")), pairing)
    finally:
        torch.set_num_threads(threads)


def test_unregistered_family_is_skipped_without_a_stand_in():
    missing = bench.Pairing("MVAE", "no-such-family")
    family, note = bench.resolve_ours(missing, stand_in=None)
    assert family is None and "not registered" in note and "skipped" in note
    family, note = bench.resolve_ours(missing, stand_in="factorized")
    assert family == "factorized" and "NOT a comparison" in note
