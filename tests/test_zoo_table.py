"""The zoo comparison (issue 13): scripts/zoo_table.py on fake run folders (the key structure of what
`mmvae train` and `mmvae evaluate` write for MNIST–SVHN), and scripts/zoo_compare.sh's checks and names.

Nothing here trains: the run folders are written by hand, the shell script is only parsed and run up to its
data checks.
"""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from mmvae.config import load_config
from mmvae.families import FAMILIES, build_model
from mmvae.losses import check_loss_config

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "zoo_compare.sh"


def load_script(name: str):
    spec = importlib.util.spec_from_file_location(name, REPO / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


zoo_table = load_script("zoo_table")


# --- fake run folders -------------------------------------------------------------------------------
def modality(kind: str, shape: list[int], private_dim: int) -> dict:
    return {"kind": kind, "role": "observed", "shape": shape, "private_dim": private_dim, "private_feature_dim": 32,
            "hidden": [400] if kind == "image_mlp" else [256], "likelihood": "laplace", "likelihood_scale": 0.75,
            "recon_weight": "auto", "conditioned_on": [], "options": {}}


def config(name: str, family: str, private: bool, num_classes: int = 0, options: dict | None = None) -> dict:
    """The shape of a run folder's config.yaml (as `mmvae train` saves it)."""
    dims = (4, 8) if private else (0, 0)
    return {"schema_version": 2, "name": name, "seed": 0, "out_dir": "runs",
            "data": {"name": "mnist_svhn", "path": "data/mnist_svhn", "loader": "indexed", "on_device": False},
            "model": {"family": family, "family_options": options or {},
                      "modalities": {"mnist": modality("image_mlp", [1, 28, 28], dims[0]),
                                     "svhn": modality("image_conv", [3, 32, 32], dims[1])},
                      "joint_dim": 20, "joint_feature_dim": 64, "fusion": "poe", "num_classes": num_classes},
            "loss": {"prior_match": "kl", "weights": {}},
            "train": {"epochs": 1, "max_steps": 2000, "batch_size": 128, "lr": 0.001}}


def metrics(private: bool, cross: tuple[float, float, float], iwae: float | None = -2650.25) -> dict:
    """The keys `mmvae evaluate` writes for MNIST–SVHN (eval/metrics.json), values made up."""
    m = {"step": 2000, "test_samples": 2000, "test/recon/mnist": 581.2, "test/recon/svhn": 2029.2,
         "test/kl/joint": 9.6, "test/total": 2200.0, "classifier_test_accuracy/mnist": 0.992,
         "classifier_test_accuracy/svhn": 0.951, "coherence/mnist->svhn": cross[0], "coherence/svhn->mnist": cross[1]}
    for mod in ("mnist", "svhn"):
        m |= {f"recon_mae/{mod}": 0.2, f"recon_accuracy/{mod}": 0.9, f"swap/joint/{mod}": 0.8,
              f"swap/private/{mod}": 0.9, f"style_preservation/{mod}": 0.6}
    m |= {"coherence/cross_mean": (cross[0] + cross[1]) / 2, "swap/accuracy": 0.85, "coherence/joint": cross[2],
          "generative_samples": 2000, "joint_coherence_samples": 2000, "cycle_samples": 2000}
    if iwae is not None:
        m |= {"iwae_log_likelihood/K=256": iwae, "iwae_samples": 100}
    m |= {"probe/joint": 0.93, "probe/joint/mnist": 0.9, "probe/joint/svhn": 0.8}
    if private:
        m |= {"probe/private/mnist": 0.112, "probe/private/svhn": 0.125}
    m |= {"probe_train_samples": 2000, "probe_test_samples": 2000,
          "provenance": {"dataset": "mnist-svhn", "svhn": {"source": "synthetic", "reason": "requested"}}}
    return m


def write_run(folder: Path, cfg: dict, mets: dict | None, seconds: float = 250.0) -> Path:
    (folder / "eval").mkdir(parents=True)
    (folder / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    if mets is not None:
        (folder / "eval" / "metrics.json").write_text(json.dumps(mets, indent=2))
    (folder / "summary.json").write_text(json.dumps({"steps": 2000, "total_steps": 2000, "seconds": seconds,
                                                     "steps_this_session": 2000, "finished": True}))
    return folder


@pytest.fixture
def zoo(tmp_path: Path) -> Path:
    """A folder of three runs: dmvae (private latents, a published row), mvae (none), factorized with its label
    head whose evaluation lacks IWAE and joint coherence."""
    write_run(tmp_path / "dmvae", config("zoo_dmvae", "dmvae", True), metrics(True, (0.85, 0.80, 0.40)))
    write_run(tmp_path / "mvae", config("zoo_mvae", "mvae", False), metrics(False, (0.70, 0.60, 0.30)), 90.0)
    (tmp_path / "mvae" / "zoo_times.json").write_text(json.dumps({  # as scripts/zoo_compare.sh writes it
        "name": "mvae", "config": "configs/zoo/mvae.yaml", "steps": 2000, "k_cpu": 4, "resumed": False,
        "train_wall_seconds": 130.5, "evaluate_wall_seconds": 41.0}))
    partial = metrics(True, (0.95, 0.90, 0.5), iwae=None)
    del partial["coherence/joint"]
    write_run(tmp_path / "factorized", config("mnist_svhn_quick", "factorized", True, num_classes=10), partial)
    return tmp_path


def table_rows(text: str) -> dict[str, list[str]]:
    """Rows of the printed table by run-folder name (the `name` in the model cell)."""
    rows = {}
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        found = re.search(r"`([^`]+)`", cells[0]) if line.startswith("| ") else None
        if found:
            rows[found.group(1)] = cells
    return rows


def run_table(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / "scripts" / "zoo_table.py"), *map(str, args)],
                          capture_output=True, text=True, timeout=30)


# --- zoo_table.py -----------------------------------------------------------------------------------
def test_the_table_has_one_row_per_run_in_the_zoo_order(zoo: Path, capsys) -> None:
    assert zoo_table.main([str(zoo)]) == 0
    out = capsys.readouterr().out
    header = out.splitlines()[0]
    assert [c.strip() for c in header.strip("|").split("|")] == zoo_table.COLUMNS
    rows = table_rows(out)
    assert list(rows) == ["factorized", "mvae", "dmvae"]  # scripts/zoo_compare.sh's FAMILIES order
    dm = dict(zip(zoo_table.COLUMNS, rows["dmvae"]))
    assert dm["model"] == "dmvae `dmvae`"
    assert (dm["M→S"], dm["S→M"], dm["joint"], dm["probe Z_y"]) == ("85.0", "80.0", "40.0", "93.0")
    assert dm["probe private (mnist/svhn)"] == "11.2 / 12.5" and dm["swap acc"] == "85.0"
    assert dm["IWAE (K, samples)"] == "-2650.2 (K=256, n=100)"
    assert dm["train time"] == "4.2 min / 2000 steps"
    assert dm["published M→S/S→M/joint (MultiVae; paper)"] == "89.2/81.3/46.0; 88.1/83.7/44.7"


def test_a_family_without_private_latents_prints_dashes(zoo: Path, capsys) -> None:
    zoo_table.main([str(zoo / "mvae")])
    mv = dict(zip(zoo_table.COLUMNS, table_rows(capsys.readouterr().out)["mvae"]))
    assert mv["probe private (mnist/svhn)"] == "–"
    assert mv["swap acc"] == "–"  # its swap/private/* is a reconstruction: swap/accuracy (0.85) is not shown
    assert mv["M→S"] == "70.0" and mv["train time"] == "90 s / 2000 steps (wall 2.2 min)"
    assert mv["published M→S/S→M/joint (MultiVae; paper)"] == "–"
    assert mv["gap to MultiVae M→S/S→M/joint (points)"] == "–"


def test_missing_metrics_print_a_dash_and_the_label_head_is_named(zoo: Path, capsys) -> None:
    zoo_table.main([str(zoo / "factorized")])
    fa = dict(zip(zoo_table.COLUMNS, table_rows(capsys.readouterr().out)["factorized"]))
    assert fa["model"] == "factorized (label head) `factorized`"
    assert fa["joint"] == "–" and fa["IWAE (K, samples)"] == "–" and fa["M→S"] == "95.0"


def test_the_gap_is_ours_minus_the_published_reproduction_in_points(zoo: Path, capsys) -> None:
    zoo_table.main([str(zoo / "dmvae")])
    dm = dict(zip(zoo_table.COLUMNS, table_rows(capsys.readouterr().out)["dmvae"]))
    published = zoo_table.PUBLISHED["dmvae"]["multivae"]
    ours = (85.0, 80.0, 40.0)
    gap = dm["gap to MultiVae M→S/S→M/joint (points)"]
    assert gap == "/".join(f"{o - p:+.1f}" for o, p in zip(ours, published)) == "-4.2/-1.3/-6.0"
    assert zoo_table.gaps(metrics(True, (0.9, 0.5, 0.41)), "mmvae") == (2.0, -17.0, 0.0)
    assert zoo_table.gaps(metrics(True, (0.9, 0.5, 0.41)), "mopoe") is None  # no published MNIST–SVHN row


def test_the_published_figures_are_those_of_the_multivae_readme() -> None:
    assert zoo_table.PUBLISHED == {"mmvae": {"multivae": (88.0, 67.0, 41.0), "paper": (86.0, 69.0, 42.0)},
                                   "dmvae": {"multivae": (89.2, 81.3, 46.0), "paper": (88.1, 83.7, 44.7)}}
    assert set(zoo_table.PUBLISHED) <= set(FAMILIES)


def test_the_footnotes_give_the_sample_counts_and_the_svhn_source(zoo: Path, capsys) -> None:
    zoo_table.main([str(zoo)])
    out = capsys.readouterr().out
    assert "coherence and swaps on 2000 test pairs; joint coherence on 2000 prior draws" in out
    assert "probes fitted on 2000 training and scored on 2000 test samples" in out
    assert "IWAE on factorized: –, mvae: 100, dmvae: 100 test samples" in out  # differing counts: per run
    assert "SVHN source: synthetic" in out and "easier than real SVHN" in out
    assert "MultiVae README" in out


def test_a_run_without_metrics_is_a_one_line_error_naming_it(zoo: Path) -> None:
    bare = zoo / "mopoe"
    write_run(bare, config("zoo_mopoe", "mopoe", False), None)
    proc = run_table(zoo / "dmvae", bare)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.count("\n") == 1 and str(bare) in proc.stderr and "eval/metrics.json" in proc.stderr
    proc = run_table(zoo)  # in a parent folder too
    assert proc.returncode == 2 and str(bare) in proc.stderr
    proc = run_table(zoo / "nothing")
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1


# --- zoo_compare.sh ---------------------------------------------------------------------------------
def script_families() -> list[str]:
    found = re.search(r"^FAMILIES=\(([^)]*)\)", SCRIPT.read_text(), re.M)
    assert found, "zoo_compare.sh has no FAMILIES=(...) line"
    return found.group(1).split()


def bash_function(name: str, *calls: str) -> list[str]:
    """Run the script's shell function `name` on each argument; its output lines."""
    text = SCRIPT.read_text()
    body = re.search(rf"^{name}\(\) {{\n.*?^}}\n", text, re.M | re.S).group(0)
    proc = subprocess.run(["bash", "-c", f'K_CPU=4\n{body}\nfor a in "$@"; do {name} "$a"; done', "_", *calls],
                          capture_output=True, text=True, timeout=10, check=True)
    return proc.stdout.splitlines()


def test_zoo_compare_is_valid_bash_and_names_every_family() -> None:
    subprocess.run(["bash", "-n", str(SCRIPT)], check=True, timeout=10)
    names = script_families()
    assert set(FAMILIES) <= set(names), sorted(set(FAMILIES) - set(names))
    assert {"factorized", "factorized_unsupervised"} <= set(names)
    assert names[: len(zoo_table.ORDER)] == zoo_table.ORDER  # the table's row order
    configs = bash_function("config_of", *names)
    assert len(configs) == len(names) and all((REPO / c).is_file() for c in configs)
    assert dict(zip(names, bash_function("overrides_of", *names)))["mmvae"] == "model.family_options.K=4"
    assert bash_function("config_of", "configs/toy.yaml") == ["configs/toy.yaml"]  # any existing config path
    for name, path in zip(names, configs):
        family = load_config(REPO / path).model.family
        assert family == ("factorized" if name.startswith("factorized") else name)


def test_the_unsupervised_factorized_config_is_the_quick_config_without_its_label_head() -> None:
    quick = load_config(REPO / "configs" / "mnist_svhn_quick.yaml")
    unsup = load_config(REPO / "configs" / "zoo" / "factorized_unsupervised.yaml")
    assert unsup.model.num_classes == 0 and quick.model.num_classes == 10
    assert unsup.model.modalities == quick.model.modalities and unsup.train == quick.train
    assert {k: v for k, v in quick.loss.weights.items() if k != "label"} == unsup.loss.weights
    check_loss_config(build_model(unsup.model), unsup.loss)  # every weight key matches a term


def test_zoo_compare_stops_with_the_command_that_makes_what_is_missing(tmp_path: Path) -> None:
    def run(*args, **env):
        return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True, timeout=10, cwd=REPO,
                              env={"PATH": "/usr/bin:/bin", "MMVAE": "mmvae", "OUT": str(tmp_path / "runs"), **env})

    proc = run(DATA=str(tmp_path / "data"))
    assert proc.returncode == 2
    assert f"mmvae prepare mnist-svhn --svhn auto --dm 30 --seed 0 --out {tmp_path / 'data'}" in proc.stderr
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "manifest.json").write_text("{}")
    proc = run(DATA=str(tmp_path / "data"))
    assert proc.returncode == 2 and f"mmvae classifiers {tmp_path / 'data'}" in proc.stderr
    proc = run("nonsense", DATA=str(tmp_path / "data"))
    assert proc.returncode == 2 and "unknown name 'nonsense'" in proc.stderr
    proc = run(str(tmp_path / "missing.yaml"), DATA=str(tmp_path / "data"))  # a config path must exist
    assert proc.returncode == 2 and "unknown name" in proc.stderr
    assert not (tmp_path / "runs").exists()  # nothing trained


# --- disentangle_table.py ---------------------------------------------------------------------------
disentangle_table = load_script("disentangle_table")


def test_the_disentangle_table_reads_dci_cycles_and_the_label_regime(tmp_path: Path, capsys) -> None:
    full = metrics(True, (0.9, 0.8, 0.5)) | {
        "cycle/style/mnist": 0.81, "cycle/style/svhn": 0.97, "disentanglement_samples": 2000,
        "dci/informativeness/joint/digit": 0.953, "dci/informativeness/private/mnist/digit": 0.12,
        "dci/informativeness/private/svhn/digit": 0.2, "dci/informativeness/private/svhn/style": 0.41,
        "dci/informativeness/joint/svhn_style": 0.1, "dci/informativeness/private/mnist/style": 0.3,
        "dci/informativeness/joint/mnist_style": 0.25}
    few = config("few", "factorized", True, num_classes=10)
    few["data"]["label_fraction"] = 0.1
    unsup = config("unsup", "factorized", True, num_classes=10)
    unsup["loss"]["weights"]["label"] = 0
    write_run(tmp_path / "a_all", config("all", "factorized", True, num_classes=10), full)
    write_run(tmp_path / "b_few", few, full)
    write_run(tmp_path / "c_unsup", unsup, metrics(True, (0.3, 0.2, 0.1)))  # older evaluation: no DCI keys
    assert disentangle_table.main([str(tmp_path)]) == 0
    out = capsys.readouterr().out
    rows = table_rows(out)
    assert list(rows) == ["a_all", "b_few", "c_unsup"]
    a = dict(zip(disentangle_table.HEADER, rows["a_all"]))
    assert a["probe Z_mnist / Z_svhn (chance 10)"] == "11.2 / 12.5"
    assert a["cycle style mnist / svhn (chance 50)"] == "81.0 / 97.0"
    assert a["DCI-i digit: Z_y / Z_mnist / Z_svhn"] == "0.95 / 0.12 / 0.20"
    assert a["DCI-i SVHN style: Z_svhn / Z_y"] == "0.41 / 0.10" and a["labels"] == "all"
    assert dict(zip(disentangle_table.HEADER, rows["b_few"]))["labels"] == "10 %"
    c = dict(zip(disentangle_table.HEADER, rows["c_unsup"]))
    assert c["labels"] == "none" and c["DCI-i digit: Z_y / Z_mnist / Z_svhn"] == "– / – / –"
    assert "DCI on 2000 test pairs" in out
    assert disentangle_table.main([str(tmp_path / "missing")]) == 2
