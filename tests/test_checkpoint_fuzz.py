"""Fuzzing the newest checkpoint of a real run: typed refusal or verified fallback, never a crash (issue 15).

A tiny run has checkpoints at steps 8 and 16. Each case copies it and damages step 16 -- truncations and
byte flips of each file, dropped, renamed and retyped state.json keys, dropped, renamed, reshaped and
retyped tensors -- and then recomputes the manifest's sizes and sha256, so that the checksums pass and the
content checks (mmvae.checkpoint_schema) and everything behind them are what is exercised. Then:

- a reader (`load_run`) must return a model or raise CheckpointError;
- the writer (`train(..., resume=True)`, one more step) must raise CheckpointError naming a file of the run
  (a typed refusal), or fall back to step 8 and report it in `fell_back_from`, or accept step 16 when the
  damage left a sound checkpoint (a flipped bit in a weight) and train on. NonFiniteLossError, the typed
  stop for a loss that became NaN, also counts as handled.

Anything else -- another exception, or the process dying (a segfault in a kernel fed bad shapes) -- fails.
The cases run in a child process so that a segfault is reported with the case that caused it.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
import traceback
from pathlib import Path

import pytest
import torch

from tests.conftest import REPO

CASES_PER_KIND = {"truncate": 6, "flip": 10, "state_drop": 10, "state_rename": 6, "state_retype": 20,
                  "tensor_drop": 4, "tensor_rename": 6, "tensor_reshape": 8, "tensor_retype": 6, "tensor_extra": 3}
FILES = ("state.json", "model.safetensors", "optimizer.safetensors")


def _paths(node, prefix=()):
    """Dotted paths into a JSON tree: every dict key, and the first and last item of each list."""
    if isinstance(node, dict):
        for k, v in node.items():
            yield prefix + (k,)
            yield from _paths(v, prefix + (k,))
    elif isinstance(node, list) and node:
        for i in sorted({0, len(node) - 1}):
            yield prefix + (i,)
            yield from _paths(node[i], prefix + (i,))


def _parent(state, path):
    node = state
    for p in path[:-1]:
        node = node[p]
    return node


def _cases(rng: random.Random, state: dict, groups: dict[str, list[str]]):
    """(name, function(folder)) pairs; each damages one checkpoint folder and fixes its manifest."""
    from tests.ckpt_tools import rewrite_bytes, rewrite_group, rewrite_state

    cases = []
    for _ in range(CASES_PER_KIND["truncate"]):
        name = rng.choice(FILES)
        frac = rng.random()
        cases.append((f"truncate {name} at {frac:.2f}",
                      lambda f, n=name, x=frac: rewrite_bytes(f, n, lambda b: b[: int(len(b) * x)])))
    for _ in range(CASES_PER_KIND["flip"]):
        name = rng.choice(FILES)
        header = rng.random() < 0.6  # safetensors: bias towards the JSON header at the start
        pos, bit = rng.random(), 1 << rng.randrange(8)

        def flip(b, header=header, pos=pos, bit=bit):
            b = bytearray(b)
            limit = min(len(b), 8 + int.from_bytes(b[:8], "little")) if header and b[:1] != b"{" else len(b)
            i = int(pos * max(1, limit - 1))
            b[i] ^= bit
            return bytes(b)

        cases.append((f"flip bit {bit} of {name} at {pos:.3f}{' (header)' if header else ''}",
                      lambda f, n=name, fn=flip: rewrite_bytes(f, n, fn)))
    paths = [p for p in _paths(state) if not (len(p) > 1 and p[0] == "config")] + [("config",), ("config", "train")]
    for _ in range(CASES_PER_KIND["state_drop"]):
        path = rng.choice(paths)
        cases.append((f"drop state {'.'.join(map(str, path))}",
                      lambda f, p=path: rewrite_state(f, lambda s: _parent(s, p).pop(p[-1]))))
    dict_paths = [p for p in paths if isinstance(p[-1], str)]
    for _ in range(CASES_PER_KIND["state_rename"]):
        path = rng.choice(dict_paths)
        cases.append((f"rename state {'.'.join(map(str, path))}",
                      lambda f, p=path: rewrite_state(f, lambda s: _parent(s, p).__setitem__(p[-1] + "_x",
                                                                                              _parent(s, p).pop(p[-1])))))
    values = ["16", -1, 2.5, None, [], {}, True, 10**20, "", [1, 2]]
    for _ in range(CASES_PER_KIND["state_retype"]):
        path, value = rng.choice(paths), rng.choice(values)
        cases.append((f"set state {'.'.join(map(str, path))} = {value!r}",
                      lambda f, p=path, v=value: rewrite_state(f, lambda s: _parent(s, p).__setitem__(p[-1], v))))
    for kind in ("tensor_drop", "tensor_rename", "tensor_reshape", "tensor_retype", "tensor_extra"):
        for _ in range(CASES_PER_KIND[kind]):
            group = rng.choice(["model", "optimizer", "optimizer"])
            key = rng.choice(groups[group])
            if kind == "tensor_drop":
                change, what = (lambda t, k=key: t.pop(k)), "drop"
            elif kind == "tensor_rename":
                new = rng.choice([key + "x", "999." + key.split(".")[-1], "-1.exp_avg", "x" + key])
                change, what = (lambda t, k=key, n=new: t.__setitem__(n, t.pop(k))), f"rename to {new}"
            elif kind == "tensor_reshape":
                how = rng.choice(["flatten", "shrink", "unsqueeze", "empty", "one"])
                fns = {"flatten": lambda x: x.reshape(-1).clone(), "shrink": lambda x: x.reshape(-1)[:-1].clone(),
                       "unsqueeze": lambda x: x.unsqueeze(0).clone(), "empty": lambda x: x.reshape(-1)[:0].clone(),
                       "one": lambda x: torch.zeros(1, dtype=x.dtype)}
                change, what = (lambda t, k=key, fn=fns[how]: t.__setitem__(k, fn(t[k]))), f"reshape ({how})"
            elif kind == "tensor_retype":
                dtype = rng.choice([torch.float64, torch.float16, torch.int64, torch.bool, torch.bfloat16])
                change, what = (lambda t, k=key, d=dtype: t.__setitem__(k, t[k].to(d))), f"retype to {dtype}"
            else:
                extra = rng.choice(["0.extra", "bogus", "40.exp_avg"])
                change, what = (lambda t, k=key, e=extra: t.__setitem__(e, t[k].clone())), f"add {extra}"
            cases.append((f"{group}/{key}: {what}", lambda f, g=group, c=change: rewrite_group(f, g, c)))
    return cases


def drive(base_run: str, work: str, seed: int) -> None:
    """Child process: run every case, print one JSON line per case (and 'start' lines, to name a crash)."""
    torch.set_num_threads(1)
    from safetensors.torch import load_file

    from mmvae.checkpoint import CheckpointError
    from mmvae.runs import load_run
    from mmvae.train import NonFiniteLossError, train
    from tests.ckpt_tools import BASE_OVERRIDES, copy_run, step_folder
    from tests.conftest import tiny_config

    base, work = Path(base_run), Path(work)
    newest = step_folder(base, 16)
    state = json.loads((newest / "state.json").read_text())
    groups = {g: sorted(load_file(str(newest / f"{g}.safetensors"))) for g in ("model", "optimizer")}
    config = tiny_config(work, (*BASE_OVERRIDES, "train.epochs=3"))  # one more epoch: resuming trains
    for index, (name, damage) in enumerate(_cases(random.Random(seed), state, groups)):
        print(json.dumps({"start": index, "case": name}), flush=True)
        run = copy_run(base, work / f"case{index:03d}")
        record: dict = {"index": index, "case": name}
        try:
            damage(step_folder(run, 16))
            try:
                loaded = load_run(run)
                record["reader"] = f"step {loaded.step}"
            except CheckpointError as exc:
                record["reader"] = "refused"
                record["reader_message"] = str(exc)
            try:
                summary = train(config, run, resume=True, stop_at_step=17)
                resumed_from = summary["steps"] - summary["steps_this_session"]
                if summary["fell_back_from"]:
                    record["writer"] = "fell_back" if resumed_from == 8 else f"fell_back_to_{resumed_from}"
                else:
                    record["writer"] = "accepted" if resumed_from == 16 else f"accepted_{resumed_from}"
            except CheckpointError as exc:
                record["writer"] = "refused"
                record["message"] = str(exc)
            except NonFiniteLossError as exc:
                record["writer"] = "stopped_non_finite"
                record["message"] = str(exc)
        except Exception as exc:  # noqa: BLE001 - the point: anything else is a failure
            record["writer"] = "CRASH"
            record["message"] = "".join(traceback.format_exception(exc))[-2500:]
        print(json.dumps(record), flush=True)
        shutil.rmtree(run, ignore_errors=True)


@pytest.fixture(scope="module")
def base_run(tmp_path_factory):
    from tests.ckpt_tools import make_base_run

    return make_base_run(tmp_path_factory.mktemp("fuzz_base"))[1]


@pytest.mark.parametrize("seed", [15])
def test_fuzzed_checkpoints_are_refused_or_fallen_back_never_a_crash(base_run, tmp_path, seed):
    env = {**os.environ, "WANDB_MODE": "disabled", "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    code = f"from tests.test_checkpoint_fuzz import drive; drive({str(base_run)!r}, {str(tmp_path)!r}, {seed})"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=REPO, timeout=600)
    lines = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    records = [r for r in lines if "writer" in r]
    started = [r for r in lines if "start" in r]
    assert proc.returncode == 0, (f"the fuzz driver died (exit {proc.returncode}) during case "
                                  f"{started[-1] if started else '?'}:\n{proc.stderr[-3000:]}")
    assert len(records) == sum(CASES_PER_KIND.values())
    crashes = [r for r in records if r["writer"] not in ("refused", "fell_back", "accepted", "stopped_non_finite")]
    assert not crashes, json.dumps(crashes, indent=1)[:6000]
    for r in records:
        if r["writer"] == "refused":  # a typed refusal names a file of the run and a problem
            assert str(tmp_path) in r["message"] and ": " in r["message"], r
    outcomes = {k: sum(r["writer"] == k for r in records) for k in ("refused", "fell_back", "accepted")}
    # The damage is mostly caught: most cases fall back to step 8 (or are refused); only harmless ones pass.
    assert outcomes["fell_back"] + outcomes["refused"] > 0.7 * len(records), outcomes
