"""Issue 12, the model side: the robot modality kinds (skips, causal force convolutions), the self-supervised heads'
loss terms with known answers, the robot metrics on known arrays, and train -> evaluate through the CLI on a tiny
prepared folder of random episodes (docs/robot.md, "The model side")."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mmvae.config import HeadConfig, ModalityConfig, load_config
from mmvae.heads import HEADS, HeadInput, ModelDims
from mmvae.heads_robot import end_point_error, row_mean
from mmvae.losses import compute_loss
from mmvae.modalities import MODALITY_KINDS, Encoding, build_modality
from mmvae.model import FactorizedMultimodalVAE
from mmvae.robot_metrics import binary_metrics, flow_epe, head_metrics, pose_mse
from tests.conftest import REPO

H = 128
SMALL_CONV = {"channels": [4, 4, 8, 8, 8, 8], "kernels": [7, 5, 5, 3, 3, 3]}


def contract_batch(b: int, aligned: list[int] | None = None, seed: int = 0) -> dict:
    """A batch as the vision_touch source delivers it (mmvae/data/robot.py's docstring), random values."""
    g = torch.Generator().manual_seed(seed)
    aligned_t = torch.tensor(aligned if aligned is not None else [1] * b, dtype=torch.float32)
    flow = torch.randn(b, 2, H, H, generator=g) * (torch.rand(b, 1, H, H, generator=g) < 0.3)
    pose = torch.randn(b, 4, generator=g) * 0.1
    delta = torch.randn(b, 4, generator=g) * 0.01
    return {
        "x": {"image": torch.randint(0, 256, (b, 3, H, H), generator=g, dtype=torch.uint8),
              "depth": torch.rand(b, 1, H, H, generator=g) * 2,
              "force": torch.tanh(torch.randn(b, 6, 32, generator=g)),
              "proprio": torch.randn(b, 8, generator=g) * 0.1,
              "action": torch.randn(b, 4, generator=g) * 0.01},
        "present": {m: torch.ones(b, dtype=torch.bool) for m in ("image", "depth", "force", "proprio", "action")},
        "targets": {"contact_next": (torch.rand(b, generator=g) < 0.3).float(), "pose_next": pose + delta,
                    "pose_delta": delta, "flow": flow, "flow_mask": (flow.abs().sum(1, keepdim=True) > 0).float(),
                    "aligned": aligned_t},
    }


def small_lee_tree(decoders: bool = False) -> dict:
    """configs/vision_touch_lee.yaml's model at tiny widths."""
    cfg = load_config(REPO / "configs/vision_touch_lee.yaml")
    tree = cfg.model.model_dump()
    tree["joint_dim"], tree["joint_feature_dim"] = 8, 16
    for m in ("image", "depth"):
        tree["modalities"][m]["options"].update(SMALL_CONV, decoder=decoders)
    tree["modalities"]["force"]["options"].update(channels=[8, 8, 8, 8, 8], decoder=decoders)
    tree["modalities"]["proprio"]["hidden"] = [16]
    tree["modalities"]["proprio"]["options"]["decoder"] = decoders
    tree["heads"]["flow"]["options"]["channels"] = [8, 8, 8, 8]
    for h in ("contact", "alignment", "next_pose"):
        tree["heads"][h]["hidden"] = [16]
    return tree


# ------------------------------------------------------------------------------------------------ modalities
def test_kinds_and_heads_are_registered():
    assert {"rgb_conv", "depth_conv", "force_causal", "proprio_mlp", "action_mlp"} <= set(MODALITY_KINDS)
    assert {"flow", "contact", "alignment", "next_pose"} <= set(HEADS)


@pytest.mark.parametrize("kind,shape,dtype", [("rgb_conv", (3, H, H), torch.uint8), ("depth_conv", (1, H, H), torch.float32)])
def test_conv_encoders_expose_six_skips_128_to_2(kind, shape, dtype):
    mc = ModalityConfig(kind=kind, shape=list(shape), hidden=[], likelihood="gaussian")  # Lee et al.'s widths
    mod = build_modality("m", mc, decoder_in=20)
    x = torch.randint(0, 256, (2, *shape), dtype=torch.uint8) if dtype == torch.uint8 else torch.rand(2, *shape) * 3
    inp = mod.preprocess(x)
    assert 0 <= float(inp.min()) and float(inp.max()) <= 1
    enc = mod.encode(inp)
    assert [tuple(s.shape) for s in enc.skips] == [(2, *s) for s in mod.skip_shapes]
    assert [s.shape[-1] for s in enc.skips] == [64, 32, 16, 8, 4, 2]
    assert [s.shape[1] for s in enc.skips] == [16, 32, 64, 64, 128, 128]
    assert enc.h.shape == (2, mod.feature_dim) == (2, 128 * 2 * 2)
    assert mod.decode(torch.randn(2, 20)).shape == (2, *shape)  # the mirrored decoder


def test_decoder_false_builds_a_parameter_free_constant():
    mc = ModalityConfig(kind="rgb_conv", shape=[3, H, H], hidden=[], likelihood="gaussian",
                        options={**SMALL_CONV, "decoder": False})
    with_dec = build_modality("m", mc.model_copy(update={"options": SMALL_CONV}), decoder_in=20)
    mod = build_modality("m", mc, decoder_in=20)
    assert sum(p.numel() for p in mod.parameters()) < sum(p.numel() for p in with_dec.parameters())
    assert not list(mod.decoder.parameters())
    out = mod.decode(torch.randn(3, 20))
    assert out.shape == (3, 3, H, H) and float(out.abs().max()) == 0


def causal_violations(levels_fn, x: torch.Tensor, strides: list[int]) -> int:
    """For every level l and every t', perturb readings >= t'; count outputs j of level l that change although
    they may only see readings <= (j + 1) * S_l - 1 < t' (S_l: the product of the strides up to l)."""
    base = levels_fn(x)
    bad = 0
    for t in range(1, x.shape[-1]):
        y = x.clone()
        y[..., t:] += torch.randn_like(y[..., t:])
        for level, (a, b) in enumerate(zip(base, levels_fn(y))):
            s = math.prod(strides[: level + 1])
            seen = [(j + 1) * s - 1 for j in range(a.shape[-1])]  # last reading output j may see
            for j, last in enumerate(seen):
                if last < t and not torch.equal(a[..., j], b[..., j]):
                    bad += 1
    return bad


@pytest.mark.parametrize("kernel", [2, 4])
def test_force_convolutions_are_causal(kernel):
    torch.manual_seed(0)
    mc = ModalityConfig(kind="force_causal", shape=[6, 32], hidden=[], likelihood="gaussian",
                        options={"kernel": kernel})
    mod = build_modality("force", mc, decoder_in=None)
    x = torch.randn(3, 6, 32)
    maps = mod.causal_levels(x)
    assert [m.shape[-1] for m in maps] == [16, 8, 4, 2, 1] and mod.encode(x).h.shape == (3, mod.feature_dim)
    assert causal_violations(mod.causal_levels, x, [2] * 5) == 0
    # ... and not trivially: output 0 of level 0 does change with the readings it sees (0 and 1).
    y = x.clone()
    y[..., 1] += 1.0
    assert not torch.equal(mod.causal_levels(y)[0][..., 0], maps[0][..., 0])
    assert mod.to_parts(torch.ones(3, 6, 32)).shape == (3, 32) and mod.parts_shape == (32,)  # a part per time step


def test_the_causality_check_catches_a_non_causal_convolution():
    torch.manual_seed(0)
    # Centred k5 s2 p2: output j sees readings 2j - 2 .. 2j + 2, one past the end of its stride window.
    convs = [nn.Conv1d(6, 8, 5, 2, padding=2), *[nn.Conv1d(8, 8, 5, 2, padding=2) for _ in range(4)]]

    def levels(x):
        out = []
        for c in convs:
            x = c(x)
            out.append(x)
        return tuple(out)

    with torch.no_grad():
        assert causal_violations(levels, torch.randn(2, 6, 32), [2] * 5) > 0


# ------------------------------------------------------------------------------------------------ heads
def head(kind: str, dims: ModelDims | None = None, **options):
    dims = dims or ModelDims(8, 16, {}, {"action": 4}, {"image": [(4, 64, 64), (4, 32, 32), (8, 16, 16), (8, 8, 8),
                                                                    (8, 4, 4), (8, 2, 2)]})
    cond = ["action"] if kind != "alignment" else []
    return HEADS[kind](kind, HeadConfig(kind=kind, hidden=[16], conditioned_on=cond, options=options), dims)


def test_end_point_error_of_a_known_flow_pair():
    target = torch.randn(2, 2, 8, 8)
    pred = target.clone()
    pred[:, 0] += 3.0
    pred[:, 1] -= 4.0  # every pixel off by (3, -4): EPE 5
    assert torch.allclose(end_point_error(pred, target), torch.tensor([5.0, 5.0]))
    pred[:, :, :4] = target[:, :, :4]  # half the pixels exact: EPE 2.5
    assert torch.allclose(end_point_error(pred, target), torch.tensor([2.5, 2.5]))


def test_zero_flow_baseline_epe_is_the_mean_flow_magnitude():
    target = torch.zeros(2, 2, 4, 4)
    target[0, 0], target[0, 1] = 3.0, 4.0  # sample 0 moves by 5 px everywhere, sample 1 is still
    m = flow_epe(torch.zeros_like(target), target)
    assert m["epe"] == pytest.approx(2.5) and m["epe_zero_baseline"] == pytest.approx(2.5)
    assert flow_epe(target, target)["epe"] == 0.0


def test_flow_head_shapes_and_terms_on_known_outputs():
    h = head("flow")
    b = 3
    enc = {"image": Encoding(torch.zeros(b, 32), skips=tuple(torch.randn(b, *s) for s in h.skips))}
    out = h(HeadInput(torch.zeros(b, 8), torch.randn(b, 16), {}, enc, {"action": torch.randn(b, 4)}, {}))
    assert out["flow"].shape == (b, 2, H, H) and out["mask_logits"].shape == (b, 1, H, H)
    assert out["flow_low"].shape == (b, 2, 32, 32)  # predicted at 32 x 32, upsampled to 128
    assert h.term_names() == ["ssl/flow", "ssl/flow_mask"]
    batch = contract_batch(b, aligned=[1, 0, 1])
    known = {"flow": batch["targets"]["flow"] + torch.tensor([3.0, 4.0]).view(1, 2, 1, 1),
             "mask_logits": torch.zeros(b, 1, H, H)}
    known["flow"][1] += 100.0  # a misaligned row: not counted
    terms = h.terms(known, batch)
    assert float(terms["ssl/flow"]) == pytest.approx(5.0, rel=1e-5)
    assert float(terms["ssl/flow_mask"]) == pytest.approx(math.log(2), rel=1e-5)  # logit 0 against 0/1 targets
    everything = head("flow", aligned_only=False).terms(known, batch)["ssl/flow"]
    assert float(everything) > 5.0


def test_contact_bce_of_known_logits_counts_aligned_rows_only():
    h = head("contact")
    logits = torch.tensor([0.0, math.log(3.0), 2.0])
    batch = {"present": {"image": torch.ones(3, dtype=torch.bool)},
             "targets": {"contact_next": torch.tensor([1.0, 0.0, 1.0]), "aligned": torch.tensor([1.0, 1.0, 0.0])}}
    assert float(h.terms(logits, batch)["ssl/contact"]) == pytest.approx((math.log(2) + math.log(4)) / 2, rel=1e-6)
    h2 = head("contact", aligned_only=False)
    full = (math.log(2) + math.log(4) + math.log(1 + math.exp(-2))) / 3
    assert float(h2.terms(logits, batch)["ssl/contact"]) == pytest.approx(full, rel=1e-6)
    # a batch with no aligned row: 0, and no gradient
    batch["targets"]["aligned"] = torch.zeros(3)
    lg = logits.clone().requires_grad_()
    t = h.terms(lg, batch)["ssl/contact"]
    t.backward()
    assert float(t.detach()) == 0 and float(lg.grad.abs().sum()) == 0


def test_alignment_bce_over_mixed_rows_in_one_forward():
    h = head("alignment")
    calls = []
    h.register_forward_hook(lambda *_: calls.append(1))
    b = 6
    aligned = torch.tensor([1.0, 0.0, 1.0, 1.0, 0.0, 1.0])  # mixed in one batch, as the data source gives them
    inp = HeadInput(torch.zeros(b, 8), torch.randn(b, 16), {}, {}, {}, {})
    logits = h(inp)
    assert logits.shape == (b,) and len(calls) == 1
    batch = {"present": {"image": torch.ones(b, dtype=torch.bool)}, "targets": {"aligned": aligned}}
    bce = F.binary_cross_entropy_with_logits(logits, aligned, reduction="none")
    expected = 0.5 * bce[aligned == 1].mean() + 0.5 * bce[aligned == 0].mean()
    assert torch.allclose(h.terms(logits, batch)["ssl/alignment"], expected)
    # known logits: softplus(-x) for aligned rows, softplus(x) for misaligned ones
    known = torch.tensor([2.0, -1.0, 0.0, 3.0])
    batch = {"present": {"image": torch.ones(4, dtype=torch.bool)}, "targets": {"aligned": torch.tensor([1.0, 1.0, 0.0, 0.0])}}
    sp = lambda v: math.log1p(math.exp(v))  # noqa: E731
    balanced = 0.5 * (sp(-2) + sp(1)) / 2 + 0.5 * (sp(0) + sp(3)) / 2
    assert float(h.terms(known, batch)["ssl/alignment"]) == pytest.approx(balanced, rel=1e-6)
    mean = head("alignment", reduction="mean").terms(known, batch)["ssl/alignment"]
    assert float(mean) == pytest.approx((sp(-2) + sp(1) + sp(0) + sp(3)) / 4, rel=1e-6)


@pytest.mark.parametrize("target", ["pose_delta", "pose_next"])
def test_next_pose_mse_of_a_known_prediction(target):
    h = head("next_pose", target=target)
    batch = contract_batch(2, aligned=[1, 0])
    pred = batch["targets"][target] + torch.tensor([[1.0, 0.0, 0.0, 1.0], [9.0, 9.0, 9.0, 9.0]])
    assert float(h.terms(pred, batch)["ssl/next_pose"]) == pytest.approx(0.5)  # (1 + 0 + 0 + 1) / 4, row 0 only


def test_next_pose_scale_weighs_each_value_and_keeps_the_output_in_target_units():
    h = head("next_pose", scale=[100.0, 100.0, 100.0, 10.0])
    batch = contract_batch(2, aligned=[1, 0])
    target = batch["targets"]["pose_delta"]
    pred = target + torch.tensor([[0.01, 0.0, 0.0, 0.1], [9.0, 9.0, 9.0, 9.0]])  # 1 cm and 0.1 rad off in row 0
    assert float(h.terms(pred, batch)["ssl/next_pose"]) == pytest.approx((1.0 + 1.0) / 4, rel=1e-5)
    inp = HeadInput(torch.zeros(2, 8), torch.randn(2, 16), {}, {}, {"action": torch.randn(2, 4)}, {})
    raw = h.net(torch.cat([inp.f_joint, inp.cond["action"]], dim=-1))
    assert torch.allclose(h(inp), raw / torch.tensor([100.0, 100.0, 100.0, 10.0]))  # the net works in scaled units
    assert float(head("next_pose", scale=100.0).terms(pred, batch)["ssl/next_pose"]) == pytest.approx((1 + 100) / 4,
                                                                                                       rel=1e-5)
    with pytest.raises(ValueError, match="option scale must be one positive number or 4"):
        head("next_pose", scale=[1.0, 2.0])


def test_alignment_reads_modality_features_beside_the_joint_factor():
    dims = ModelDims(8, 16, {}, {"action": 4, "force": 6, "proprio": 5}, {})
    h = head("alignment", dims, reads=["force", "proprio"])
    assert h.net[0].in_features == 16 + 6 + 5
    enc = {"force": Encoding(torch.randn(3, 6)), "proprio": Encoding(torch.randn(3, 5))}
    inp = HeadInput(torch.zeros(3, 8), torch.randn(3, 16), {}, enc, {}, {})
    before = h(inp)
    enc["proprio"] = Encoding(torch.randn(3, 5))  # another moment's proprio: the logit sees it
    assert not torch.allclose(before, h(HeadInput(torch.zeros(3, 8), inp.f_joint, {}, enc, {}, {})))
    assert head("alignment", dims).net[0].in_features == 16  # default: F_y only (Lee et al.)
    with pytest.raises(ValueError, match=r"option reads names \['forces'\]"):
        head("alignment", dims, reads=["forces"])


def test_alignment_compare_dim_joins_squared_differences_in_a_learnt_common_space():
    dims = ModelDims(8, 16, {}, {"action": 4, "image": 10, "force": 6, "proprio": 5}, {})
    h = head("alignment", dims, reads=["image", "force", "proprio"], compare_dim=3)
    assert h.pairs == [("image", "force"), ("image", "proprio"), ("force", "proprio")]
    assert h.net[0].in_features == 16 + 10 + 6 + 5 + 3 * 3
    enc = {m: Encoding(torch.randn(4, w)) for m, w in (("image", 10), ("force", 6), ("proprio", 5))}
    inp = HeadInput(torch.zeros(4, 8), torch.randn(4, 16), {}, enc, {}, {})
    # known answer: the input the MLP sees ends with (P_a h_a - P_b h_b)^2 for each pair
    seen = []
    h.net[0].register_forward_hook(lambda mod, args, out: seen.append(args[0]))
    h(inp)
    p = {m: h.project[m](enc[m].h) for m in enc}
    tail = torch.cat([(p[a] - p[b]) ** 2 for a, b in h.pairs], dim=-1)
    assert torch.allclose(seen[0][:, -9:], tail)
    with torch.no_grad():  # projections that agree on every modality: the differences are 0
        for m in h.project:
            h.project[m].weight.zero_()
            h.project[m].bias.fill_(1.0)
    seen.clear()
    h(inp)
    assert float(seen[0][:, -9:].detach().abs().max()) == 0.0
    with pytest.raises(ValueError, match="compare_dim needs two or more modalities"):
        head("alignment", dims, reads=["image"], compare_dim=3)


def test_flow_head_can_join_the_action_vector_to_every_level():
    plain, every = head("flow"), head("flow", condition_every_level=True)
    assert sum(p.numel() for p in every.parameters()) > sum(p.numel() for p in plain.parameters())
    b = 2
    enc = {"image": Encoding(torch.zeros(b, 32), skips=tuple(torch.randn(b, *s) for s in every.skips))}
    action = torch.randn(b, 4)
    out = every(HeadInput(torch.zeros(b, 8), torch.randn(b, 16), {}, enc, {"action": action}, {}))
    assert out["flow"].shape == (b, 2, H, H) and out["flow_low"].shape == (b, 2, 32, 32)
    # the action reaches the 32 x 32 prediction through the tiled vector even with the deepest path cut off
    with torch.no_grad():
        every.ups[0][0].weight.zero_()
        every.ups[0][0].bias.zero_()
        f_joint = torch.randn(b, 16)
        a = every(HeadInput(torch.zeros(b, 8), f_joint, {}, enc, {"action": action}, {}))["flow_low"]
        c = every(HeadInput(torch.zeros(b, 8), f_joint, {}, enc, {"action": -action}, {}))["flow_low"]
    assert not torch.allclose(a, c)


def test_row_mean_weighs_rows():
    assert float(row_mean(torch.tensor([1.0, 3.0, 100.0]), torch.tensor([1.0, 1.0, 0.0]))) == 2.0


def test_flow_head_refuses_a_source_without_skips():
    with pytest.raises(ValueError, match="no modality with skip features"):
        head("flow", ModelDims(8, 16, {}, {"action": 4}, {}))
    with pytest.raises(ValueError, match="predict_size 24"):
        head("flow", predict_size=24)


# ------------------------------------------------------------------------------------------------ metrics
def test_binary_metrics_of_a_known_confusion_matrix():
    # tp 3, fn 1, fp 2, tn 4
    target = np.array([1, 1, 1, 1, 0, 0, 0, 0, 0, 0], bool)
    pred = np.array([1, 1, 1, 0, 1, 1, 0, 0, 0, 0], bool)
    m = binary_metrics(pred, target)
    assert m["accuracy"] == pytest.approx(0.7)
    assert m["recall"] == pytest.approx(0.75) and m["precision"] == pytest.approx(0.6)
    assert m["balanced_accuracy"] == pytest.approx((0.75 + 4 / 6) / 2)
    assert m["f1"] == pytest.approx(2 * 3 / (2 * 3 + 2 + 1))
    assert m["base_rate"] == pytest.approx(0.4) and m["predicted_rate"] == pytest.approx(0.5) and m["samples"] == 10
    always_no = binary_metrics(np.zeros(10, bool), target)  # the majority guess on imbalanced data
    assert always_no["accuracy"] == pytest.approx(0.6) and always_no["balanced_accuracy"] == pytest.approx(0.5)
    assert always_no["f1"] == 0.0 and math.isnan(always_no["precision"])


def test_pose_mse_against_the_no_motion_baseline():
    target = np.array([[0.1, 0.0, 0.0, 0.0], [0.0, 0.2, 0.0, 0.0]])
    m = pose_mse(target, target, np.zeros_like(target))
    assert m["mse"] == 0 and m["mse_no_motion"] == pytest.approx((0.01 + 0.04) / 8)
    assert m["mse_xyz_no_motion"] == pytest.approx((0.01 + 0.04) / 6)


def test_the_lee_preset_on_a_contract_batch():
    """configs/vision_touch_lee.yaml at tiny widths: the five ssl terms and the KL, no reconstruction, every
    parameter reached by the loss, and misaligned rows move neither the contact nor the pose head."""
    from mmvae.config import LossConfig, ModelConfig

    cfg = load_config(REPO / "configs/vision_touch_lee.yaml")
    model = FactorizedMultimodalVAE(ModelConfig.model_validate(small_lee_tree()))
    batch = contract_batch(4, aligned=[1, 0, 1, 0])
    loss = compute_loss(model, model(batch), batch, cfg.loss, step=0)
    assert set(loss.terms) == {"ssl/flow", "ssl/flow_mask", "ssl/contact", "ssl/alignment", "ssl/next_pose", "kl/joint"}
    assert loss.weights["ssl/flow"] == 10.0 and loss.weights["kl/joint"] == 0.05
    loss.total.backward()
    unused = [n for n, p in model.named_parameters() if p.grad is None]
    assert unused == []  # what DDP needs
    model.zero_grad()
    out = model(batch, sample=False)
    for name in ("contact", "next_pose"):
        out.heads[name].retain_grad()
    terms = compute_loss(model, out, batch, LossConfig(terms=["heads"]), step=0).terms
    (terms["ssl/contact"] + terms["ssl/next_pose"]).backward()
    for name in ("contact", "next_pose"):
        g = out.heads[name].grad.reshape(4, -1).abs().sum(1)
        assert float(g[1]) == 0 and float(g[3]) == 0 and float(g[0]) > 0


def test_head_metrics_on_a_model(monkeypatch):
    from mmvae.config import ModelConfig

    model = FactorizedMultimodalVAE(ModelConfig.model_validate(small_lee_tree()))
    batches = contract_batch(6, aligned=[1, 1, 0, 1, 0, 1])

    class Source:
        device = torch.device("cpu")

        def __len__(self):
            return 6

        def gather(self, index):
            from mmvae.batch import take

            return take(batches, index)

    m = head_metrics(model, Source(), limit=None)
    assert m["robot_eval_samples"] == 6 and m["robot_aligned_samples"] == 4
    for key in ("flow/epe", "flow/epe_zero_baseline", "flow_mask/accuracy", "contact/balanced_accuracy",
                "contact/f1", "contact/base_rate", "alignment/accuracy", "next_pose/mse", "next_pose/mse_no_motion"):
        assert key in m and isinstance(m[key], float), key
    aligned = batches["targets"]["aligned"] > 0.5
    assert m["contact/base_rate"] == pytest.approx(float(batches["targets"]["contact_next"][aligned].mean()))
    zero = torch.linalg.vector_norm(batches["targets"]["flow"][aligned], dim=1).mean()
    assert m["flow/epe_zero_baseline"] == pytest.approx(float(zero), rel=1e-5)


# ------------------------------------------------------------------------------------------------ CLI
@pytest.fixture(scope="module")
def tiny_prepared(tmp_path_factory):
    """Three random episodes in Lee et al.'s format, prepared (no simulator)."""
    pytest.importorskip("h5py")
    from data_prep import robot_episodes as re

    d = tmp_path_factory.mktemp("robot")
    eps = d / "episodes"
    eps.mkdir()
    s, sub = re.STEPS, re.SUBSTEPS
    for i in range(3):
        rng = np.random.default_rng(i)
        pos = np.array([0.1 * i, 0, 0]) + np.cumsum(rng.normal(0, 0.01, (s, 3)), axis=0)
        re.write_episode(eps / f"ep{i}.h5", {
            "image": rng.integers(0, 256, (s, H, H, 3), dtype=np.uint8),
            "depth_data": rng.uniform(0.5, 2.0, (s, H, H, 1)).astype(np.float32),
            "optical_flow": (rng.normal(0, 1, (s, H, H, 2)) * (rng.random((s, H, H, 1)) < 0.3)).astype(np.float32),
            "ee_forces_continuous": rng.normal(0, 2, (s, sub, 6)), "contact": (rng.random((s, sub)) < 0.3).astype(np.int64),
            "proprio": np.concatenate([pos, rng.normal(0, 0.3, (s, 5))], axis=1), "action": rng.normal(0, 0.01, (s, 4))})
    re.prepare_index(eps, d / "prepared", seed=0, test_fraction=0.34)
    return d / "prepared"


def test_train_then_evaluate_through_the_cli(tiny_prepared, tmp_path, monkeypatch):
    from mmvae.cli import main
    run = tmp_path / "run"
    narrow = ["model.modalities.image.options.channels=[4,4,8,8,8,8]", "model.modalities.depth.options.channels=[4,4,8,8,8,8]",
              "model.heads.flow.options.channels=[8,8,8,8]"]
    code = main(["train", str(REPO / "configs/vision_touch_quick.yaml"), f"data.path={tiny_prepared}", "train.max_steps=2",
                 "train.batch_size=4", "train.eval_batches=1", "train.eval_every=2", "train.checkpoint_every=2",
                 "logging.wandb_mode=disabled", "logging.progress_bar=false", *narrow, "--run-dir", str(run)])
    assert code == 0
    code = main(["evaluate", str(run), "--iwae-samples", "0", "--limit", "8", "--generative-limit", "8",
                 "--probe-train", "24"])
    assert code == 0
    metrics = json.loads((run / "eval" / "metrics.json").read_text())
    for key in ("test/ssl/flow", "test/ssl/contact", "test/ssl/alignment", "test/recon/image", "flow/epe",
                "flow/epe_zero_baseline", "contact/balanced_accuracy", "alignment/accuracy", "next_pose/mse_no_motion",
                "probe/contact/joint/accuracy", "probe/pose/private/force/r2", "robot_probe_train_samples"):
        assert key in metrics, key
    assert metrics["robot_eval_samples"] == 8
    md = (run / "eval" / "metrics.md").read_text()
    assert "| flow/epe |" in md and "pixels" in md


def test_contact_head_and_joint_attributions_over_force_steps_and_pixels():
    from mmvae.config import ModelConfig
    from mmvae.robot_attribution import robot_attribution_report

    torch.manual_seed(0)
    model = FactorizedMultimodalVAE(ModelConfig.model_validate(small_lee_tree())).eval()
    report = robot_attribution_report(model, contract_batch(2), steps=16)
    for key in ("contact", "joint"):
        mods = report[key]["modalities"]
        assert len(mods["force"]["mean_abs_per_part"]) == 32  # one value per force reading
        assert np.asarray(mods["image"]["mean_abs_per_part"]).shape == (H, H)  # one per pixel
        assert sum(m["share"] for m in mods.values()) == pytest.approx(1.0)
        assert report[key]["completeness_relative_error"] < 0.2


def test_ablation_variants_keep_the_full_models_reconstruction_weights():
    """'auto' reconstruction weights depend on the smallest modality present: without proprio the image would weigh
    24x (no force) to 2,048x (vision only) more against the heads. Every variant's config must give each modality
    the weight it has in the full model, so the variants differ only in their inputs."""
    import importlib.util

    import yaml

    from mmvae.api import make_config
    from mmvae.families import build_model

    spec = importlib.util.spec_from_file_location("robot_ablation", REPO / "scripts" / "robot_ablation.py")
    ablation = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ablation)
    tree = yaml.safe_load((REPO / "configs" / "vision_touch_quick.yaml").read_text())
    full = build_model(make_config(tree).model).reconstruction_weights()
    for variant, kept in ablation.VARIANTS.items():
        weights = build_model(make_config(ablation.ablation_tree(tree, variant)).model).reconstruction_weights()
        assert set(weights) == set(kept)
        assert weights == pytest.approx({m: full[m] for m in kept}), variant
    assert full["image"] < full["force"] < full["proprio"] == 1.0  # the quick config's weights are size-corrected
