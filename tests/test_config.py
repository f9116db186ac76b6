"""Typed configs: unknown keys and wrong types name the key; overrides; every shipped config builds."""

from pathlib import Path

import pytest
import torch

from mmvae.config import ConfigError, load_config
from mmvae.data.registry import build_sources
from mmvae.model import FactorizedMultimodalVAE
from tests.conftest import REPO

SHIPPED = sorted((REPO / "configs").glob("*.yaml"))


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "c.yaml"
    path.write_text(text)
    return path


def test_overrides_are_typed(tmp_path):
    cfg = load_config(REPO / "configs/toy.yaml", ["train.lr=3e-4", "model.fusion=concat", "model.fusion_hidden=[8, 8]"])
    assert cfg.train.lr == pytest.approx(3e-4) and cfg.model.fusion == "concat" and cfg.model.fusion_hidden == [8, 8]


def test_unknown_key_is_an_error_naming_it(tmp_path):
    with pytest.raises(ConfigError, match="unknown key 'train.learning_rate'"):
        load_config(REPO / "configs/toy.yaml", ["train.learning_rate=1"])
    path = _write(tmp_path, (REPO / "configs/toy.yaml").read_text() + "\nextra_section: 1\n")
    with pytest.raises(ConfigError, match="unknown key 'extra_section'"):
        load_config(path)


def test_wrong_type_is_an_error_naming_the_key():
    with pytest.raises(ConfigError, match="key 'train.epochs'.*got 'many'"):
        load_config(REPO / "configs/toy.yaml", ["train.epochs=many"])
    with pytest.raises(ConfigError, match="key 'model.fusion'"):
        load_config(REPO / "configs/toy.yaml", ["model.fusion=average"])


def test_malformed_override_and_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="not of the form key=value"):
        load_config(REPO / "configs/toy.yaml", ["train.lr"])
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="mapping at the top level"):
        load_config(_write(tmp_path, "- 1\n- 2\n"))


@pytest.mark.parametrize("path", SHIPPED, ids=[p.name for p in SHIPPED])
def test_every_shipped_config_builds_and_runs_a_forward_pass(path):
    cfg = load_config(path)
    model = FactorizedMultimodalVAE(cfg.model)
    if cfg.data.name == "toy":
        batch = build_sources(cfg)[1].gather(torch.arange(4))
    else:  # datasets that need preparing: a zero batch of the configured shapes
        batch = {
            "x": {m: torch.zeros(4, *mc.shape, dtype=torch.uint8) for m, mc in cfg.model.modalities.items()},
            "present": {m: torch.ones(4, dtype=torch.bool) for m in cfg.model.modalities},
            "y": torch.zeros(4, dtype=torch.long),
        }
    out = model(batch)
    for m, mc in cfg.model.modalities.items():
        if mc.role == "condition":  # encoded only (e.g. the robot action): no likelihood parameters
            continue
        mod = model.modalities[m]
        if mod.display in ("spectrogram", "tokens"):  # modelled shape differs from the stored one (log-mel, packed logits)
            assert mod.log_prob(out.params[m], out.inputs[m]).shape == (4,)
        else:
            assert out.params[m].shape[1:] == tuple(mc.shape)


# --- issue 15: YAML limits, duplicate keys, binary files, sizes ------------------------------------------------

def _bomb(levels: int = 9) -> str:
    lines = ['l0: &l0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    for i in range(1, levels):
        lines.append(f"l{i}: &l{i} [" + ", ".join([f"*l{i - 1}"] * 9) + "]")
    return "\n".join(lines) + f"\nmodel: {{joint_dim: *l{levels - 1}}}\n"


def test_an_alias_bomb_is_refused_before_anything_expands_it(tmp_path):
    import time

    path = _write(tmp_path, _bomb())
    assert path.stat().st_size < 1024
    started = time.perf_counter()
    with pytest.raises(ConfigError, match=r"c\.yaml: the document expands to .* values through its aliases"):
        load_config(path)
    assert time.perf_counter() - started < 2  # it used to hang in the error formatter
    flow = "[&l0 [lol, lol, lol, lol, lol, lol, lol, lol, lol], " + ", ".join(
        f"&l{i} [" + ", ".join([f"*l{i - 1}"] * 9) + "]" for i in range(1, 9)) + "]"
    with pytest.raises(ConfigError, match="override 'model.joint_dim=.*refusing an alias bomb"):
        load_config(REPO / "configs/toy.yaml", ["model.joint_dim=" + flow])


def test_recursive_aliases_are_refused_in_files_and_overrides(tmp_path):
    with pytest.raises(ConfigError, match="line 1: alias \\*a refers to a value that contains it"):
        load_config(REPO / "configs/toy.yaml", ["model.joint_dim=&a [*a]"])
    with pytest.raises(ConfigError, match="line 2: alias \\*m refers to a value that contains it"):
        load_config(_write(tmp_path, "model: &m\n  modalities: *m\n"))


def test_a_few_aliases_are_fine(tmp_path):
    text = (REPO / "configs/toy.yaml").read_text()
    text = text.replace("fusion_hidden: [128]", "fusion_hidden: &w [128]").replace("label_hidden: [64]", "label_hidden: *w")
    assert "&w" in text and "*w" in text
    cfg = load_config(_write(tmp_path, text))
    assert cfg.model.fusion_hidden == cfg.model.label_hidden == [128]


def test_a_duplicated_key_is_an_error_naming_it_and_its_line(tmp_path):
    path = _write(tmp_path, "model: {joint_dim: 3}\ntrain: {lr: 0.1}\nmodel: {joint_dim: 4}\n")
    with pytest.raises(ConfigError, match=r"line 3: duplicate key 'model' \(first at line 1\)"):
        load_config(path)
    with pytest.raises(ConfigError, match="line 1: duplicate key 'lr'"):
        load_config(REPO / "configs/toy.yaml", ["train={lr: 1, lr: 2}"])


def test_binary_garbage_deep_nesting_and_directories_are_one_line_errors(tmp_path):
    path = tmp_path / "garbage.yaml"
    path.write_bytes(bytes(range(256)) * 4)
    with pytest.raises(ConfigError, match="garbage.yaml is not UTF-8 text") as info:
        load_config(path)
    assert "\n" not in str(info.value)
    with pytest.raises(ConfigError, match="nested more than 64 levels"):
        load_config(_write(tmp_path, "a: " + "[" * 5000 + "]" * 5000 + "\n"))
    with pytest.raises(ConfigError, match="is not a regular file"):
        load_config(tmp_path)


def test_huge_inputs_are_truncated_in_errors():
    with pytest.raises(ConfigError) as info:
        load_config(REPO / "configs/toy.yaml", ["model.joint_dim=" + "x" * 100_000])
    line = str(info.value).splitlines()[-1]
    assert len(line.split("): ", 1)[-1]) < 200 and "key 'model.joint_dim'" in line  # past the "(SOURCE): " prefix


@pytest.mark.parametrize("override", ["model.modalities.bars.hidden=[0]", "model.modalities.wave.shape=[-1]",
                                      "model.fusion_hidden=[64, 0]", "model.label_hidden=[-2]",
                                      "train.betas=[1.5, 0.9]", "train.lr=.inf", "train.lr=.nan", "seed=-1"])
def test_zero_negative_and_non_finite_sizes_are_refused(override):
    key = override.split("=")[0]
    with pytest.raises(ConfigError, match=f"key '{key}"):
        load_config(REPO / "configs/toy.yaml", [override])
