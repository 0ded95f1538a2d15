"""Bad inputs get one line and a non-zero exit, and nothing is written beside the user's files."""

import json
import subprocess

import pytest
from _cli_process import run_cli
from typer.testing import CliRunner

from e2rnas.cli.app import app
from e2rnas.space.cost import CostModel, DeployShape
from e2rnas.space.genotypes import GENOTYPES


def _e2rnas(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    return run_cli(args, timeout=timeout)


def test_search_refuses_an_out_dir_of_foreign_files(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    proc = _e2rnas("search", "--out", str(tmp_path), "--epochs", "1", "--warmup-epochs", "0")
    assert proc.returncode == 2 and "did not write (notes.txt)" in proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]


def test_search_rejects_zero_steps_per_epoch(tmp_path):
    result = CliRunner().invoke(app, ["search", "--max-steps-per-epoch", "0", "--out", str(tmp_path / "r")])
    assert result.exit_code != 0 and "max_steps_per_epoch" in str(result.exception) + result.output
    assert not (tmp_path / "r").exists()


def test_search_without_an_ood_set(tmp_path):
    out = tmp_path / "r"
    result = CliRunner().invoke(app, ["search", "--ood-dataset", "none", "--epochs", "1", "--warmup-epochs", "0",
                                      "--max-steps-per-epoch", "1", "--layers", "3", "--channels", "4",
                                      "--out", str(out), "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "summary.json").read_text())
    assert summary["ood_dataset"] is None and "ood" not in summary["objectives"]


def test_cost_of_a_run_uses_its_recorded_deploy_shape(tmp_path):
    shape = DeployShape(layers=5, C=8, num_classes=5, input_size=16)
    (tmp_path / "summary.json").write_text(json.dumps({"deploy_shape": vars(shape)}))
    GENOTYPES["DARTS_V2"].save(tmp_path / "genotype.json")
    result = CliRunner().invoke(app, ["cost", str(tmp_path), "--json"])
    assert result.exit_code == 0, result.output
    got = json.loads(result.stdout)
    assert got["deploy_shape"]["C"] == 8
    assert got["total"]["params_m"] == CostModel(shape).genotype_cost(GENOTYPES["DARTS_V2"]).params_m


def test_eval_of_a_file_that_is_not_onnx(tmp_path):
    fake = tmp_path / "model.onnx"
    fake.write_text("not a model")
    proc = _e2rnas("eval", str(fake))
    assert proc.returncode == 2 and "not a readable ONNX file" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_a_device_this_machine_lacks_is_one_line(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA GPU: --device cuda is valid here")
    for cmd in (["search", "--out", str(tmp_path / "s")], ["train", "DARTS_V2", "--out", str(tmp_path / "t")]):
        proc = _e2rnas(*cmd, "--device", "cuda")
        assert proc.returncode == 2 and "no CUDA GPU" in proc.stderr and "Traceback" not in proc.stderr
    proc = _e2rnas("search", "--device", "tpu9", "--out", str(tmp_path / "x"))
    assert proc.returncode == 2 and "is not a device" in proc.stderr
    from e2rnas.cli._options import resolve_device

    assert resolve_device("auto") == "cpu" and resolve_device(None) == "cpu"


def test_a_data_loading_error_is_one_line_without_the_search_header(tmp_path):
    proc = _e2rnas("search", "--dataset", f"npz:{tmp_path / 'missing.npz'}", "--out", str(tmp_path / "r"))
    assert proc.returncode == 2 and "missing.npz" in proc.stderr
    assert "run directory" not in proc.stdout and "search:" not in proc.stdout


def test_cost_splits_into_fixed_and_each_cell_and_names_its_shape(tmp_path):
    """fixed + every cell = total, each cell measured alone equals its row; --deploy-* and --layers both work."""
    from e2rnas.space.network import Network, count_macs, count_params

    g = GENOTYPES["DARTS_V2"]
    result = CliRunner().invoke(app, ["cost", "DARTS_V2", "--deploy-layers", "5", "--deploy-channels", "8",
                                      "--deploy-image-size", "16", "--json"])
    assert result.exit_code == 0, result.output
    got = json.loads(result.stdout)
    assert [c["type"] for c in got["cells"]] == ["normal", "reduce", "normal", "reduce", "normal"]
    assert got["deploy_shape_from"].startswith("flags over the DARTS evaluation network's")
    params = got["fixed"]["params_m"] + sum(c["params_m"] for c in got["cells"])
    assert params == pytest.approx(got["total"]["params_m"], rel=1e-12)
    assert got["normal_cells"]["macs_m"] + got["reduce_cells"]["macs_m"] + got["fixed"]["macs_m"] == pytest.approx(
        got["total"]["macs_m"], rel=1e-12)
    net = Network(g, 8, 5, 10, input_size=16)  # what the rows add up to is what the built network counts
    assert got["total"]["params_m"] == pytest.approx(count_params(net, exclude_aux=True) / 1e6, rel=1e-12)
    cell0 = sum(p.numel() for p in net.cells[0].parameters())
    pre = sum(p.numel() for m in (net.cells[0].preprocess0, net.cells[0].preprocess1) for p in m.parameters())
    assert got["cells"][0]["params_m"] == pytest.approx((cell0 - pre) / 1e6, rel=1e-12)
    assert count_macs(net, input_size=16) / 1e6 == pytest.approx(got["total"]["macs_m"], rel=1e-9)
    old = CliRunner().invoke(app, ["cost", "DARTS_V2", "--layers", "5", "--channels", "8", "--image-size", "16",
                                   "--json"])
    assert json.loads(old.stdout)["cells"] == got["cells"]
    text = CliRunner().invoke(app, ["cost", "DARTS_V2", "--deploy-layers", "5"]).output
    assert "cell 4 (normal" in text and "deploy shape: 5 cells C=36 32px 10 classes (flags over" in text
