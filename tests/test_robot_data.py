"""Issue 12, the data side: the robot episode format (reader, validator, refuse / skip-and-count), the prepared
index and alignment negatives (the >= 0.06 rule, determinism across ranks and resume), the batch source, the exact
optical flow on a scene with a known motion, the simulator's determinism and `mmvae prepare robot-sim`."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

h5py = pytest.importorskip("h5py")

from data_prep import robot_episodes as re  # noqa: E402
from data_prep.errors import DataError  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
S, SUB, H = re.STEPS, re.SUBSTEPS, re.IMAGE_SIZE


def episode_arrays(seed: int, centre=(0.0, 0.0, 0.0)) -> dict[str, np.ndarray]:
    """Random arrays in exactly the format (Lee et al.'s dtypes: float64 for the small keys)."""
    rng = np.random.default_rng(seed)
    pos = np.asarray(centre) + np.cumsum(rng.normal(0, 0.01, (S, 3)), axis=0)
    proprio = np.concatenate([pos, rng.normal(0, 0.3, (S, 5))], axis=1)
    return {
        "image": rng.integers(0, 256, (S, H, H, 3), dtype=np.uint8),
        "depth_data": rng.uniform(0.5, 2.0, (S, H, H, 1)).astype(np.float32),
        "optical_flow": (rng.normal(0, 1, (S, H, H, 2)) * (rng.random((S, H, H, 1)) < 0.3)).astype(np.float32),
        "ee_forces_continuous": rng.normal(0, 2, (S, SUB, 6)),
        "contact": (rng.random((S, SUB)) < 0.3).astype(np.int64),
        "proprio": proprio,
        "action": rng.normal(0, 0.01, (S, 4)),
    }


def write_plain(path: Path, arrays: dict[str, np.ndarray]) -> Path:
    """Written with plain h5py (contiguous datasets, as a foreign writer would), not through write_episode."""
    with h5py.File(path, "w") as f:
        for k, v in arrays.items():
            f.create_dataset(k, data=v)
        f.create_dataset("joint_pos", data=np.zeros((S, 7)))  # another key: allowed, ignored
    return path


@pytest.fixture(scope="module")
def episodes_dir(tmp_path_factory) -> Path:
    """Four good episodes at distinct end-effector places: two written plainly, two by write_episode."""
    d = tmp_path_factory.mktemp("episodes")
    for i in range(4):
        a = episode_arrays(i, centre=(0.1 * i, 0.0, 0.0))
        if i % 2:
            re.write_episode(d / f"ep{i}.h5", a)
        else:
            write_plain(d / f"ep{i}.h5", a)
    return d


@pytest.fixture(scope="module")
def prepared(episodes_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("prepared")
    re.prepare_index(episodes_dir, out, seed=5, test_fraction=0.25)
    return out


# --------------------------------------------------------------------------------------------- reader, validator


def test_reader_reads_the_exact_format(tmp_path):
    a = episode_arrays(0)
    for path in (write_plain(tmp_path / "plain.h5", a), tmp_path / "ours.h5"):
        if path.name == "ours.h5":
            re.write_episode(path, a, {"simulation": True})
        assert re.check_episode(path) is None
        got = re.read_episode(path)
        assert set(got) == set(re.KEYS)
        for k in re.KEYS:
            np.testing.assert_array_equal(got[k], a[k])


def _broken(tmp_path: Path, name: str, change) -> Path:
    a = episode_arrays(1)
    change(a)
    return write_plain(tmp_path / name, a)


def _nan_at(key, step):
    def change(a):
        a[key] = a[key].copy()
        a[key][step].flat[3] = np.nan
    return change


MALFORMED = [
    ("missing.h5", lambda a: a.pop("optical_flow"), "optical_flow", None, "is missing"),
    ("shape.h5", lambda a: a.update(image=a["image"][:, :64]), "image", None, "has shape (50, 64, 128, 3)"),
    ("dtype.h5", lambda a: a.update(depth_data=a["depth_data"].astype(np.float64)), "depth_data", None,
     "has dtype float64, expected float32"),
    ("image_dtype.h5", lambda a: a.update(image=a["image"].astype(np.float32)), "image", None, "expected uint8"),
    ("nan_depth.h5", _nan_at("depth_data", 17), "depth_data", 17, "non-finite"),
    ("inf_force.h5", lambda a: a["ee_forces_continuous"].__setitem__((33, 4, 2), np.inf), "ee_forces_continuous", 33,
     "non-finite"),
    ("nan_proprio.h5", _nan_at("proprio", 0), "proprio", 0, "non-finite"),
    ("contact.h5", lambda a: a["contact"].__setitem__((8, 1), 3), "contact", 8, "other than 0 and 1"),
]


@pytest.mark.parametrize("name,change,key,step,text", MALFORMED, ids=[m[0] for m in MALFORMED])
def test_malformed_episodes_are_named_by_file_key_and_step(tmp_path, name, change, key, step, text):
    path = _broken(tmp_path, name, change)
    problem = re.check_episode(path)
    assert problem is not None and problem.key == key and problem.step == step and text in problem.problem
    with pytest.raises(DataError) as e:
        re.read_episode(path)
    msg = str(e.value)
    assert str(path) in msg and repr(key) in msg and "\n" not in msg
    if step is not None:
        assert f"step {step}" in msg


def test_not_hdf5_is_named(tmp_path):
    bad = tmp_path / "junk.h5"
    bad.write_bytes(b"not an hdf5 file")
    problem = re.check_episode(bad)
    assert problem is not None and problem.key is None and "not a readable HDF5" in problem.problem


def test_refuse_or_skip_and_count(tmp_path, episodes_dir):
    d = tmp_path / "mixed"
    d.mkdir()
    for p in sorted(episodes_dir.glob("*.h5"))[:3]:
        (d / p.name).write_bytes(p.read_bytes())
    _broken(d, "zz_nan.h5", _nan_at("optical_flow", 41))
    _broken(d, "zz_missing.h5", lambda a: a.pop("contact"))
    with pytest.raises(DataError, match=r"zz_missing\.h5: key 'contact': is missing"):
        re.prepare_index(d, tmp_path / "refused", on_bad="refuse")
    assert not (tmp_path / "refused" / re.MANIFEST).exists()
    m = re.prepare_index(d, tmp_path / "skipped", on_bad="skip", test_fraction=0.3)
    assert m["counts"] == {"episodes_found": 5, "episodes_used": 3, "episodes_skipped": 2}
    skipped = {Path(s["file"]).name: s for s in m["skipped"]}
    assert skipped["zz_nan.h5"]["key"] == "optical_flow" and skipped["zz_nan.h5"]["step"] == 41
    assert skipped["zz_missing.h5"]["key"] == "contact" and skipped["zz_missing.h5"]["step"] is None
    assert len(m["episodes"]) == 3 and all("zz" not in e["file"] for e in m["episodes"])


# ------------------------------------------------------------------------------------ prepared index, negatives


def test_prepared_folder(prepared):
    m = re.read_manifest(prepared)
    assert m["simulation"] is False and m["counts"]["episodes_used"] == 4
    assert {m["splits"][s]["episodes"] for s in ("train", "test")} == {3, 1}
    train = np.load(prepared / "train_index.npy")
    test = np.load(prepared / "test_index.npy")
    assert train.shape == (3 * 49, 2) and test.shape == (49, 2) and train.dtype == np.int64
    assert not set(train[:, 0]) & set(test[:, 0])  # split by episode
    assert train[:, 1].max() == 48  # t+1 exists
    for name, rec in m["files"].items():
        assert hashlib.sha256((prepared / name).read_bytes()).hexdigest() == rec["sha256"]
    for rec in m["episodes"]:
        assert hashlib.sha256((prepared / rec["file"]).read_bytes()).hexdigest() == rec["sha256"]


def test_negatives_are_other_episodes_at_least_min_distance_away(prepared):
    m = re.read_manifest(prepared)
    proprio = np.load(prepared / "sensor_proprio.npy")
    for split in ("train", "test"):
        index = np.load(prepared / f"{split}_index.npy")
        neg = np.load(prepared / f"{split}_negatives.npy")
        assert neg.shape == (len(index), m["negatives_per_sample"])
        if split == "test":  # one episode: nothing qualifies
            assert (neg == -1).all() and m["splits"]["test"]["samples_without_negative"] == len(index)
            continue
        assert (neg >= 0).all()
        ee = proprio[index[:, 0], index[:, 1], :3]
        for col in range(neg.shape[1]):
            j = neg[:, col]
            assert (index[j, 0] != index[:, 0]).all()
            assert (np.linalg.norm(ee[j] - ee, axis=1) >= re.MIN_DISTANCE).all()


def test_draw_negatives_rule_when_few_qualify():
    rng = np.random.default_rng(0)
    ee = rng.uniform(0, 0.03, (200, 3))  # all within 0.06 of each other ...
    ee[-1] = [1.0, 1.0, 1.0]  # ... except one far point
    episode = np.repeat(np.arange(20), 10)
    neg = re.draw_negatives(ee, episode, 4, seed=1)
    far = np.linalg.norm(ee[:, None] - ee[None], axis=2)
    for i in range(len(ee)):
        for j in neg[i]:
            if j >= 0:
                assert episode[j] != episode[i] and far[i, j] >= re.MIN_DISTANCE
    assert (neg[:-10] == 199).all()  # the only qualifying row for everyone outside its episode
    assert (neg[-10:-1] == -1).all()  # its episode-mates have none
    assert (neg[-1] >= 0).all() and (episode[neg[-1]] != 19).all()
    np.testing.assert_array_equal(neg, re.draw_negatives(ee, episode, 4, seed=1))


# ----------------------------------------------------------------------------------------------- batch source


def test_batch_follows_the_contract_and_the_construction(prepared):
    from mmvae.batch import check_batch
    from mmvae.data.robot import MODALITIES, SHAPES, TARGETS, RobotEpisodes

    src = RobotEpisodes(prepared, "train", seed=3)
    m = re.read_manifest(prepared)
    idx = torch.arange(0, len(src), 5)
    b = src.gather(idx)
    check_batch(b, list(MODALITIES))
    for name, shape in SHAPES.items():
        assert tuple(b["x"][name].shape[1:]) == shape
    assert b["x"]["image"].dtype == torch.uint8 and b["x"]["depth"].dtype == torch.float32
    assert set(b["targets"]) == set(TARGETS) and all(bool(p.all()) for p in b["present"].values())
    index = np.load(prepared / "train_index.npy")
    for row, i in enumerate(idx.tolist()):
        e, t = index[i]
        a = re.read_episode(prepared / m["episodes"][e]["file"])
        np.testing.assert_array_equal(b["x"]["image"][row].numpy(), a["image"][t].transpose(2, 0, 1))
        np.testing.assert_array_equal(b["x"]["depth"][row].numpy(), a["depth_data"][t].transpose(2, 0, 1))
        np.testing.assert_array_equal(b["targets"]["flow"][row].numpy(), a["optical_flow"][t].transpose(2, 0, 1))
        np.testing.assert_array_equal(b["targets"]["flow_mask"][row, 0].numpy(), (a["optical_flow"][t] != 0).any(-1))
        np.testing.assert_allclose(b["x"]["action"][row].numpy(), a["action"][t + 1], rtol=1e-6)
        assert b["targets"]["contact_next"][row].item() == float(a["contact"][t + 1].any())
        np.testing.assert_allclose(b["targets"]["pose_next"][row].numpy(), a["proprio"][t + 1][:4], rtol=1e-6)
        pe, pt = int(b["meta"]["pair_episode"][row]), int(b["meta"]["pair_step"][row])
        aligned = b["targets"]["aligned"][row].item()
        assert (aligned == 1.0) == ((pe, pt) == (e, t))
        pa = a if pe == e else re.read_episode(prepared / m["episodes"][pe]["file"])
        want = np.tanh(pa["ee_forces_continuous"][pt][-32:].T.astype(np.float32))
        np.testing.assert_allclose(b["x"]["force"][row].numpy(), want, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(b["x"]["proprio"][row].numpy(), pa["proprio"][pt], rtol=1e-6)
        if not aligned:
            ee = np.linalg.norm(pa["proprio"][pt][:3] - a["proprio"][t][:3])
            assert pe != e and ee >= re.MIN_DISTANCE
    share = 1 - src.gather(torch.arange(len(src)))["targets"]["aligned"].mean().item()
    assert 0.35 < share < 0.65  # negative_fraction 0.5


def test_episodes_reopened_past_the_file_cache_read_the_same_frames_without_hdf5(prepared, monkeypatch):
    """More episodes than open files: a closed episode reopens from its kept offsets (os.open, no h5py) and reads
    the same bytes."""
    import h5py

    import mmvae.data.robot as robot

    src = robot.RobotEpisodes(prepared, "train", seed=3)
    idx = torch.arange(0, len(src), 3)
    first = src.gather(idx)
    monkeypatch.setattr(robot, "FILE_CACHE", 1)  # every other episode closes the last one
    src.files.open.clear()
    opened = []
    real = h5py.File
    monkeypatch.setattr(h5py, "File", lambda *a, **k: (opened.append(a[0]), real(*a, **k))[1])
    again = src.gather(idx)
    assert opened == []  # every episode was located in the first gather
    for key in ("image", "depth"):
        assert torch.equal(first["x"][key], again["x"][key])
    assert torch.equal(first["targets"]["flow"], again["targets"]["flow"])
    assert len(src.files.open) == 1 and len(src.files.located) == len(set(src.samples[idx.numpy(), 0].tolist()))
    src.files.located.clear()  # the control: without kept offsets every reopen goes through h5py
    src.gather(idx)
    assert len(opened) >= len(set(src.samples[idx.numpy(), 0].tolist()))


def test_negatives_are_the_same_on_every_rank_and_after_resume(prepared):
    from mmvae.data.loader import ShuffledBatches
    from mmvae.data.robot import RobotEpisodes, alignment_pairs

    def pairs_of(batches):
        out = {}
        for b in batches:
            for k in range(len(b["meta"]["episode"])):
                key = (int(b["meta"]["episode"][k]), int(b["meta"]["step"][k]))
                out[key] = (int(b["meta"]["pair_episode"][k]), int(b["meta"]["pair_step"][k]))
        return out

    single = pairs_of(ShuffledBatches(RobotEpisodes(prepared, "train", seed=11), 16, seed=0, world_size=1).epoch(0))
    ranks = {}
    for r in range(2):  # each rank its own source object, as in DDP
        ranks.update(pairs_of(ShuffledBatches(RobotEpisodes(prepared, "train", seed=11), 16, seed=0, rank=r,
                                              world_size=2).epoch(0)))
    common = set(single) & set(ranks)
    assert len(common) > 50 and all(single[k] == ranks[k] for k in common)
    # resume: a fresh source started mid-epoch gives the same pairs as the uninterrupted epoch
    loader = ShuffledBatches(RobotEpisodes(prepared, "train", seed=11), 16, seed=0)
    full = list(loader.epoch(1))
    resumed = list(ShuffledBatches(RobotEpisodes(prepared, "train", seed=11), 16, seed=0).epoch(1, start_batch=3))
    for a, b in zip(full[3:], resumed):
        for key in ("pair_episode", "pair_step"):
            assert torch.equal(a["meta"][key], b["meta"][key])
        assert torch.equal(a["targets"]["aligned"], b["targets"]["aligned"])
    # a pure function: other batch compositions, other epochs, other orders
    samples = np.load(prepared / "train_index.npy")
    negs = np.load(prepared / "train_negatives.npy")
    idx = np.arange(len(samples))
    al, pair = alignment_pairs(idx, samples, negs, 11, 0.5)
    al2, pair2 = alignment_pairs(idx[::-1].copy(), samples, negs, 11, 0.5)
    np.testing.assert_array_equal(pair, pair2[::-1])
    al3, pair3 = alignment_pairs(idx, samples, negs, 12, 0.5)
    assert (pair3 != pair).any()  # another seed, other negatives


def test_time_shift_negatives(prepared):
    from mmvae.data.robot import RobotEpisodes

    src = RobotEpisodes(prepared, "train", seed=2, negatives="time_shift", shift=(5, 20))
    b = src.gather(torch.arange(len(src)))
    neg = b["targets"]["aligned"] == 0
    assert 0.3 < neg.float().mean() < 0.7
    assert torch.equal(b["meta"]["pair_episode"], b["meta"]["episode"])
    shift = (b["meta"]["pair_step"] - b["meta"]["step"]).abs()
    assert (shift[neg] >= 5).all() and (shift[neg] <= 20).all() and (shift[~neg] == 0).all()
    again = RobotEpisodes(prepared, "train", seed=2, negatives="time_shift").gather(torch.arange(len(src)))
    assert torch.equal(again["meta"]["pair_step"], b["meta"]["pair_step"])


def test_source_checks_its_files(prepared, tmp_path):
    import shutil

    from mmvae.data.robot import RobotEpisodes

    copy = tmp_path / "copy"
    shutil.copytree(prepared, copy)
    (copy / "train_negatives.npy").write_bytes((copy / "train_negatives.npy").read_bytes()[:-8] + b"\0" * 8)
    with pytest.raises(DataError, match="train_negatives.npy: sha256 mismatch"):
        RobotEpisodes(copy, "train")
    with pytest.raises(DataError, match="has no split 'valid'"):
        RobotEpisodes(prepared, "valid")


def test_registry_entry_is_labelled_a_simulation():
    from mmvae.data.registry import DATASETS
    from mmvae.data.robot import provenance_notes

    entry = DATASETS["vision_touch"]
    assert entry.needs_path and "SIMULATED" in entry.description
    assert "SIMULATION" in provenance_notes({"simulation": True, "generator": {"name": "mmvae.robot_sim"}})[0]


# --------------------------------------------------------------------------------------- flow from the simulation

def _mujoco():
    """mujoco with a working offscreen GL context (EGL), else the test is skipped saying why."""
    os.environ.setdefault("MUJOCO_GL", "egl")
    os.environ.setdefault("LP_NUM_THREADS", "1")
    mj = pytest.importorskip("mujoco")
    try:
        mj.GLContext(8, 8).free()
    except Exception as e:  # noqa: BLE001 - no EGL display: nothing to render with
        pytest.skip(f"no offscreen OpenGL for MuJoCo (MUJOCO_GL={os.environ['MUJOCO_GL']}): {e}")
    return mj


BOX_SCENE = """
<mujoco>
  <visual><quality offsamples="0"/></visual>
  <worldbody>
    <light pos="0 0 3" dir="0 0 -1" directional="true" castshadow="false"/>
    <camera name="cam" pos="0 0 1" fovy="60"/>
    <geom name="back" type="plane" size="2 2 0.1" pos="0 0 -1"/>
    <body name="box" mocap="true" pos="0 0 0"><geom type="box" size="0.1 0.1 0.05" rgba="1 0 0 1"/></body>
  </worldbody>
</mujoco>
"""


def test_flow_of_a_box_translated_by_a_known_amount():
    mj = _mujoco()
    from data_prep.robot_sim import FrameRenderer, exact_flow, focal_pixels

    m = mj.MjModel.from_xml_string(BOX_SCENE)
    d = mj.MjData(m)
    size = 64
    r = FrameRenderer(m, m.camera("cam").id, size)
    mj.mj_forward(m, d)
    _, depth0, body0 = r.render(d)
    box = m.body("box").id
    sel0 = body0 == box
    # the camera looks down -z from z = 1; the box top is at z = 0.05: depth 0.95
    np.testing.assert_allclose(depth0[sel0], 0.95, atol=2e-4)
    np.testing.assert_allclose(depth0[body0 == 0], 2.0, atol=2e-3)
    x0 = (d.xpos.copy(), d.xmat.reshape(-1, 3, 3).copy())
    shift = np.array([0.03, -0.02, 0.0])  # world x = image right, world y = image up
    d.mocap_pos[0] = shift
    mj.mj_forward(m, d)
    x1 = (d.xpos.copy(), d.xmat.reshape(-1, 3, 3).copy())
    cam_pos, cam_mat = d.cam_xpos[0].copy(), d.cam_xmat[0].reshape(3, 3).copy()
    flow = exact_flow(body0, depth0, cam_pos, cam_mat, float(m.cam_fovy[0]), *x0, *x1)
    f = focal_pixels(60.0, size)
    want = np.array([f * shift[0] / 0.95, -f * shift[1] / 0.95])  # rows grow downwards
    np.testing.assert_allclose(flow[sel0], np.broadcast_to(want, flow[sel0].shape), atol=0.02)
    assert (flow[~sel0] == 0).all()  # the background did not move: exactly 0
    # the rendered box at t+1 is where the flow says (its centroid, within a pixel)
    _, _, body1 = r.render(d)
    c0 = np.argwhere(sel0).mean(0)
    c1 = np.argwhere(body1 == box).mean(0)
    np.testing.assert_allclose(c1 - c0, want[::-1], atol=0.5)


def test_frames_equal_mujoco_renderer():
    """One lit pass + one segmentation pass give what mujoco.Renderer gives in three."""
    mj = _mujoco()
    from data_prep.robot_sim import FrameRenderer

    m = mj.MjModel.from_xml_string(BOX_SCENE)
    d = mj.MjData(m)
    d.mocap_pos[0] = [0.05, 0.02, 0.1]
    mj.mj_forward(m, d)
    rgb, depth, body = FrameRenderer(m, 0, 64).render(d)
    r = mj.Renderer(m, 64, 64)
    r.update_scene(d, camera=0)
    np.testing.assert_array_equal(rgb, r.render())
    r.enable_depth_rendering()
    r.update_scene(d, camera=0)
    np.testing.assert_array_equal(depth, r.render())
    r.enable_segmentation_rendering()
    r.update_scene(d, camera=0)
    seg = r.render()
    want = np.where(seg[..., 1] == int(mj.mjtObj.mjOBJ_GEOM), m.geom_bodyid[np.clip(seg[..., 0], 0, None)], -1)
    np.testing.assert_array_equal(body, want)
    r.close()


def test_flow_of_a_rotation_and_an_approach():
    mj = _mujoco()
    from data_prep.robot_sim import FrameRenderer, exact_flow, focal_pixels, project

    m = mj.MjModel.from_xml_string(BOX_SCENE)
    d = mj.MjData(m)
    size = 64
    r = FrameRenderer(m, 0, size)
    mj.mj_forward(m, d)
    _, depth0, body0 = r.render(d)
    x0 = (d.xpos.copy(), d.xmat.reshape(-1, 3, 3).copy())
    d.mocap_pos[0] = [0, 0, 0.2]  # towards the camera: the box grows, flow points outwards
    d.mocap_quat[0] = [np.cos(0.1), 0, 0, np.sin(0.1)]  # and turns by 0.2 rad about the view axis
    mj.mj_forward(m, d)
    cam_pos, cam_mat = d.cam_xpos[0].copy(), d.cam_xmat[0].reshape(3, 3).copy()
    flow = exact_flow(body0, depth0, cam_pos, cam_mat, 60.0, *x0, d.xpos.copy(), d.xmat.reshape(-1, 3, 3).copy())
    # a corner pixel of the box: where its 3-D point goes, computed independently
    rows, cols = np.nonzero(body0 == 1)
    i, j = rows[np.argmax(rows + cols)], cols[np.argmax(rows + cols)]
    f = focal_pixels(60.0, size)
    p = np.array([(j + 0.5 - size / 2) * 0.95 / f, -(i + 0.5 - size / 2) * 0.95 / f, 0.05])  # camera at z = 1
    c, s = np.cos(0.2), np.sin(0.2)
    p1 = np.array([c * p[0] - s * p[1], s * p[0] + c * p[1], p[2] + 0.2])
    u1, v1, _ = project(p1, cam_pos, cam_mat, f, size, size)
    np.testing.assert_allclose(flow[i, j], [u1 - (j + 0.5), v1 - (i + 0.5)], atol=0.05)


# ------------------------------------------------------------------------------------- simulator and command


@pytest.mark.slow
def test_simulator_is_deterministic_and_writes_the_format(tmp_path):
    _mujoco()
    from data_prep.robot_sim import Sim

    sim = Sim()
    digests = []
    for k in range(2):
        arrays, record = sim.episode(seed=4, index=1)
        path = tmp_path / f"run{k}.h5"
        re.write_episode(path, arrays, {"simulation": True})
        digests.append(hashlib.sha256(path.read_bytes()).hexdigest())
    assert digests[0] == digests[1]
    assert re.check_episode(tmp_path / "run0.h5") is None
    a = re.read_episode(tmp_path / "run0.h5")
    assert a["image"].std() > 10 and (a["depth_data"] > 0).all()
    assert (a["optical_flow"] != 0).any() and (a["optical_flow"] == 0).any()  # the arm moves, the table does not
    assert np.abs(a["ee_forces_continuous"]).max() > 0


@pytest.fixture(scope="module")
def sim_out(tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    _mujoco()
    out = tmp_path_factory.mktemp("sim") / "robot"
    proc = subprocess.run([sys.executable, "-m", "mmvae.cli", "prepare", "robot-sim", "--episodes", "2", "--seed",
                           "4", "--out", str(out), "--workers", "2"], capture_output=True, text=True, cwd=REPO,
                          env={**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}, timeout=120)
    return out, proc


@pytest.mark.slow
def test_prepare_robot_sim_writes_labelled_episodes(sim_out):
    out, proc = sim_out
    assert proc.returncode == 0, proc.stderr
    assert "SIMULATION" in proc.stdout
    m = json.loads((out / "manifest.json").read_text())
    assert m["simulation"] is True and m["generator"]["simulation"] is True and m["generator"]["seed"] == 4
    assert m["generator"]["name"] == "mmvae.robot_sim" and m["generator"]["version"]
    assert m["counts"]["episodes_used"] == 2 and len(list((out / "episodes").glob("*.h5"))) == 2
    with h5py.File(out / "episodes" / "episode_00000.h5") as f:
        assert bool(f.attrs["simulation"]) and f.attrs["generator"] == "mmvae.robot_sim"
    from mmvae.data.robot import RobotEpisodes

    src = RobotEpisodes(out, "train", seed=0)
    assert src.provenance["simulation"] is True and len(src) == 49


@pytest.mark.slow
def test_prepare_robot_sim_episode_matches_in_process_run(sim_out, tmp_path):
    """The same seed gives the same file, whichever process simulated it."""
    _mujoco()
    from data_prep.robot_sim import Sim

    out, proc = sim_out
    assert proc.returncode == 0, proc.stderr
    arrays, record = Sim().episode(seed=4, index=1)
    re.write_episode(tmp_path / "e.h5", arrays, {"simulation": True, "generator": "mmvae.robot_sim",
                                                 "generator_version": "1", "seed": 4, "episode": 1,
                                                 "task": record["task"]})
    assert (tmp_path / "e.h5").read_bytes() == (out / "episodes" / "episode_00001.h5").read_bytes()


@pytest.mark.parametrize("args,text", [
    (["--episodes", "0"], "argument --episodes: must be >= 2"),
    (["--episodes", "2", "--workers", "0"], "argument --workers: must be >= 1"),
    (["--episodes", "2", "--test-fraction", "1.5"], "argument --test-fraction: must lie in (0, 1)"),
    (["--episodes", "2", "--negatives", "0"], "argument --negatives: must be >= 1"),
])
def test_prepare_robot_sim_bad_args_exit_2_in_one_line(tmp_path, capsys, args, text):
    from mmvae.cli import main

    assert main(["prepare", "robot-sim", "--out", str(tmp_path / "o"), *args]) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and text in lines[0] and lines[0].startswith("mmvae prepare: error:")
    assert not (tmp_path / "o").exists()


def test_prepare_robot_refuses_an_existing_dataset_and_bad_folders(prepared, tmp_path, capsys):
    from mmvae.cli import main

    assert main(["prepare", "robot", "--episodes-dir", str(tmp_path / "nope"), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "is not a folder of episode files" in err[0]
    assert main(["prepare", "robot", "--episodes-dir", str(tmp_path), "--out", str(prepared)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "already holds a prepared dataset" in err[0]
