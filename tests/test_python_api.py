"""The Python API as documented: docs/python_api.md's example runs as written."""

from __future__ import annotations

import re

import pytest
import torch

import mmvae
from tests.conftest import REPO, tiny_config


def test_the_documented_example_runs(monkeypatch, tmp_path, capsys):
    monkeypatch.chdir(tmp_path)  # from any directory: the shipped config is found through the package
    text = (REPO / "docs/python_api.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    assert len(blocks) == 1
    exec(compile(blocks[0], "docs/python_api.md", "exec"), {})
    out = capsys.readouterr().out
    assert "label read from the bars alone" in out
    assert list(tmp_path.iterdir()) == []  # fit without a run folder wrote nothing


def test_the_api_names_are_the_documented_ones():
    assert set(mmvae.__all__) == {"Latents", "build", "decode", "encode", "fit", "generate", "load", "make_config",
                                  "swap_factors"}
    for name in mmvae.__all__:
        assert getattr(mmvae, name) is getattr(mmvae.api, name)


def test_fit_into_a_run_folder_loads_back_with_the_same_outputs(tmp_path):
    cfg = tiny_config(tmp_path, ("train.epochs=1",))
    model, _ = mmvae.fit(cfg, tmp_path / "run")
    run = mmvae.load(tmp_path / "run")
    x = {"wave": torch.randn(5, 32)}
    assert torch.equal(mmvae.encode(model, x).joint, mmvae.encode(run.model, x).joint)


def test_encode_refuses_unknown_modalities(tmp_path):
    model = mmvae.build(tiny_config(tmp_path))
    with pytest.raises(ValueError, match="unknown modalities"):
        mmvae.encode(model, {"audio": torch.zeros(2, 3)})
