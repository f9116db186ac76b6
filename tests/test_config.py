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
        mod = model.modalities[m]
        if mod.display in ("spectrogram", "tokens"):  # modelled shape differs from the stored one (log-mel, packed logits)
            assert mod.log_prob(out.params[m], out.inputs[m]).shape == (4,)
        else:
            assert out.params[m].shape[1:] == tuple(mc.shape)
