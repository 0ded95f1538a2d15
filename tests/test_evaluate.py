"""evaluate(): results, protocols, OoD, transfer attacks on a real ONNX Runtime session, and `e2rnas eval`."""

import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from e2rnas.cli.app import app
from e2rnas.data import load_dataset
from e2rnas.errors import E2RNASError
from e2rnas.evaluation.evaluate import PROTOCOLS, EvalProtocol, eval_data, evaluate, protocol_from
from e2rnas.model_io import load_model
from e2rnas.predict import OnnxRuntimePredictor, TorchPredictor
from e2rnas.space.genotypes import GENOTYPES
from e2rnas.space.network import count_params
from e2rnas.train.trainer import TrainConfig, train


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A briefly trained DARTS_V2 (3 cells, C=8) with the OoD loss, as `e2rnas train` leaves it."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny networks: one thread is faster, and immune to other jobs on the cores
    out = tmp_path_factory.mktemp("run")
    cfg = TrainConfig(dataset="digits", ood_dataset="digits-ood", ood_weight=0.5, layers=3, C=8, epochs=6,
                      batch_size=32, lr=0.05, cutout=0, crop_pad=2, flip=False, drop_path=0.0, auxiliary=True,
                      val_fraction=0.1)
    train(cfg, genotype=GENOTYPES["DARTS_V2"], out_dir=out, progress=False)
    yield out
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def onnx_path(run_dir):
    model = load_model(run_dir / "model.pt").model
    path = run_dir / "model.onnx"
    torch.onnx.export(model, (torch.rand(1, 3, 16, 16),), str(path), dynamo=False, input_names=["pixels"],
                      output_names=["logits"], dynamic_axes={"pixels": {0: "batch"}, "logits": {0: "batch"}})
    return path


def test_result_holds_every_number(run_dir):
    loaded = load_model(run_dir / "model.pt")
    data = eval_data(loaded.meta["data"])
    assert data.ood is not None and data.ood.name == "digits-ood"
    protocol = replace(PROTOCOLS["paper"], max_samples=150)
    r = evaluate(TorchPredictor(loaded.model), test=data.test, ood=data.ood, protocol=protocol)
    assert r["samples"] == {"test": 150, "ood": 150}
    assert r["attack"] == "white-box" and r["predictor"] == "torch"
    assert r["clean_acc"] > 0.7 and r["test_err"] == pytest.approx(1 - r["clean_acc"])
    assert 0 <= r["pgd_acc"] <= r["fgsm_acc"] <= r["clean_acc"]
    assert set(r["ood"]) >= {"aupr_out", "aupr_in", "auroc", "fpr95"}
    assert r["ood"]["auroc"] > 0.5  # the OoD loss was trained in: in-distribution MSP is higher
    p = r["protocol"]
    assert p["eps"] == pytest.approx(2 / 255) and p["steps"] == 10 and p["pgd_step_size"] == pytest.approx(0.5 / 255)
    json.dumps(r)  # JSON-ready


def test_max_samples_and_metric_selection(run_dir):
    loaded = load_model(run_dir / "model.pt")
    test = load_dataset("digits", split="test")
    r = evaluate(TorchPredictor(loaded.model), test=test, protocol=EvalProtocol(max_samples=37),
                 metrics=("accuracy",))
    assert r["samples"]["test"] == 37 and r["pgd_acc"] is None and r["ood"] is None
    with pytest.raises(E2RNASError, match="unknown metric"):
        evaluate(TorchPredictor(loaded.model), test=test, protocol=EvalProtocol(), metrics=("speed",))


def test_protocol_presets_and_validation():
    rb = PROTOCOLS["robustbench"]
    assert rb.eps == pytest.approx(8 / 255) and rb.steps == 20 and rb.random_start
    assert protocol_from("paper", steps=20, eps=None).steps == 20
    assert EvalProtocol(eps=0.01, steps=4).pgd_step == pytest.approx(2.5 * 0.01 / 4)
    with pytest.raises(E2RNASError, match="unknown evaluation preset"):
        protocol_from("nope")
    with pytest.raises(E2RNASError, match="eps"):
        EvalProtocol(eps=2.0)


def test_onnx_runtime_transfer_evaluation(run_dir, onnx_path):
    loaded = load_model(run_dir / "model.pt")
    test = load_dataset("digits", split="test").head(100)
    proto = EvalProtocol(eps=8 / 255)
    ort = OnnxRuntimePredictor(onnx_path)
    x, _ = test.tensors()
    np.testing.assert_allclose(ort(x[:8].numpy()), TorchPredictor(loaded.model)(x[:8].numpy()), atol=1e-4)
    white = evaluate(TorchPredictor(loaded.model), test=test, protocol=proto, metrics=("accuracy", "robustness"))
    moved = evaluate(ort, test=test, protocol=proto, attack_model=loaded.model, metrics=("accuracy", "robustness"))
    assert moved["attack"] == "transfer from torch" and moved["predictor"] == "onnxruntime"
    n = len(test)
    assert abs(moved["clean_acc"] - white["clean_acc"]) <= 1 / n
    assert abs(moved["pgd_acc"] - white["pgd_acc"]) <= 2 / n  # same images; ORT and torch agree to ~1e-5
    skipped = evaluate(ort, test=test, protocol=proto, metrics=("accuracy", "robustness"))
    assert skipped["pgd_acc"] is None and "robustness skipped" in skipped["notes"][0]


def test_cli_eval_model_pt(run_dir, tmp_path):
    result = CliRunner().invoke(app, ["eval", str(run_dir / "model.pt"), "--max-samples", "60", "--eps", "4/255",
                                      "--out", str(tmp_path), "--json"])
    assert result.exit_code == 0, result.output
    r = json.loads(result.stdout)
    assert r == json.loads((tmp_path / "eval.json").read_text())
    assert r["samples"] == {"test": 60, "ood": 60} and r["protocol"]["eps"] == pytest.approx(4 / 255)
    assert r["architecture"] == "DARTS_V2" and r["data"]["ood_dataset"] == "digits-ood"
    assert r["cost"]["params"] == count_params(load_model(run_dir / "model.pt").model, exclude_aux=True)
    assert r["cost"]["flops"] == 2 * r["cost"]["macs"] > 0


def test_cli_eval_table_and_onnx(run_dir, onnx_path, tmp_path):
    runner = CliRunner()
    table = runner.invoke(app, ["eval", str(run_dir / "model.pt"), "--max-samples", "30", "--preset", "robustbench",
                                "--out", str(tmp_path)])
    assert table.exit_code == 0, table.output
    assert "Table I" in table.stdout and "PGD" in table.stdout and "8/255" in table.stdout
    bare = runner.invoke(app, ["eval", str(onnx_path), "--dataset", "digits", "--max-samples", "30", "--json",
                               "--out", str(tmp_path)])
    assert bare.exit_code == 0, bare.output
    r = json.loads(bare.stdout)
    assert r["pgd_acc"] is None and r["cost"] is None and r["ood"] is None
    src = runner.invoke(app, ["eval", str(onnx_path), "--source-model", str(run_dir / "model.pt"),
                              "--max-samples", "30", "--json", "--out", str(tmp_path)])
    assert src.exit_code == 0, src.output
    r = json.loads(src.stdout)
    assert r["attack"] == "transfer from torch" and r["ood"] is not None and r["cost"]["params"] > 0


def test_cli_eval_bad_input(run_dir, onnx_path, tmp_path):
    runner = CliRunner()
    assert isinstance(runner.invoke(app, ["eval", str(onnx_path)]).exception, E2RNASError)  # no data set known
    bad_eps = runner.invoke(app, ["eval", str(run_dir / "model.pt"), "--eps", "two"])
    assert isinstance(bad_eps.exception, E2RNASError) and "--eps" in str(bad_eps.exception)
    proc = subprocess.run([str(Path(sys.executable).parent / "e2rnas"), "eval", str(tmp_path / "missing.pt")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert len(proc.stderr.strip().splitlines()) == 1 and "missing.pt" in proc.stderr


def test_ood_pool_is_described_and_sized_on_its_own(run_dir):
    loaded = load_model(run_dir / "model.pt")
    data = eval_data(loaded.meta["data"])
    protocol = EvalProtocol(max_samples=120, ood_max_samples=40)
    r = evaluate(TorchPredictor(loaded.model), test=data.test, ood=data.ood, protocol=protocol,
                 metrics=("accuracy", "ood"))
    pool = r["ood_pool"]
    assert (pool["in_distribution"], pool["ood"]) == (120, 40)
    assert pool["fraction_ood"] == pytest.approx(40 / 160) == pool["aupr_out_chance"]
