"""``e2rnas bench`` end to end on the CPU target: torch, ONNX and INT8 ONNX rows, metrics re-measured per artifact."""

from __future__ import annotations

import json

import numpy as np
import pytest
from _cli_process import run_cli
from _deploy_helpers import FAST, make_tiny_run
from typer.testing import CliRunner

from e2rnas.cli.app import app


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return make_tiny_run(tmp_path_factory.mktemp("run"))


@pytest.fixture(scope="module")
def int8(run):
    """A static QDQ INT8 model, calibrated on real digits images (what an int8 CPU export produces)."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    from e2rnas.data import load_dataset

    x = load_dataset("digits", split="train").head(32).tensors()[0].numpy()

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter([{"images": x[i:i + 8]} for i in range(0, len(x), 8)])

        def get_next(self):
            return next(self.batches, None)

    out = run["onnx"].with_name("model.int8.onnx")
    quantize_static(str(run["onnx"]), str(out), Reader(), quant_format=QuantFormat.QDQ,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, per_channel=True)
    return out


def test_bench_cpu_all_metrics(run, int8, tmp_path) -> None:
    args = ["bench", str(run["model"]), str(run["onnx"]), str(int8), "--target", "cpu", "--batch", "1,3",
            "--metrics", "latency,accuracy,robustness,ood", "--max-samples", "24", "--out", str(tmp_path), "--json",
            *FAST]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data == json.loads((tmp_path / "bench.json").read_text())
    rows = {r["format"]: r for r in data["rows"]}
    assert set(rows) == {"torch", "onnx", "onnx-int8"}
    for r in rows.values():
        assert r["status"] == "ok" and r["size_mb"] > 0
        for b in ("1", "3"):
            s = r["latency"][b]
            assert s["runs"] == 5 and 0 < s["min_ms"] <= s["p50_ms"] <= s["p90_ms"] <= s["p95_ms"] <= s["p99_ms"]
            assert s["throughput"] == pytest.approx(int(b) / (s["mean_ms"] / 1e3))
        m = r["metrics"]
        assert 0 <= m["accuracy"] <= 1 and 0 <= m["pgd_accuracy"] <= 1 and 0 <= m["aupr_out"] <= 1
        assert m["samples"] == {"test": 24, "ood": 24}
    assert rows["torch"]["metrics"]["attack"] == "white-box"
    assert rows["onnx"]["metrics"]["attack"] == "transfer from torch"  # adversarial images made on model.pt
    assert rows["onnx"]["runner"]["providers"] == ["CPUExecutionProvider"]
    assert rows["onnx"]["metrics"]["accuracy"] == rows["torch"]["metrics"]["accuracy"]  # fp32 ONNX == torch
    env = data["environment"]
    assert env["threads"] == 1 and env["cpu"] and env["versions"]["onnxruntime"] and env["versions"]["torch"]
    assert data["data"]["dataset"] == "digits" and data["data"]["ood_dataset"] == "digits-ood"


def test_bench_table_output(run, tmp_path) -> None:
    result = CliRunner().invoke(app, ["bench", str(run["onnx"]), "--out", str(tmp_path), *FAST],
                                env={"COLUMNS": "160"})
    assert result.exit_code == 0, result.output
    assert "p50 ms" in result.output and "onnx" in result.output and "CPUExecutionProvider" in result.output
    # no terminal: a line when it starts, one per artifact measured, one when it ends (a spinner prints nothing)
    assert "bench: measuring 1 artifact(s) on cpu: started" in result.output
    assert "bench: measuring 1 artifact(s) on cpu: model.onnx ok 1/1" in result.output
    assert "bench: measuring 1 artifact(s) on cpu: done in" in result.output


def test_broken_artifact_is_a_failed_row_exit_1(run, tmp_path) -> None:
    bad = tmp_path / "broken.onnx"
    bad.write_bytes(np.arange(10, dtype=np.uint8).tobytes())
    result = CliRunner().invoke(app, ["bench", str(run["onnx"]), str(bad), "--out", str(tmp_path), "--json", *FAST])
    assert result.exit_code == 1
    rows = json.loads(result.stdout)["rows"]
    assert [r["status"] for r in rows] == ["ok", "error"] and "ONNX" in rows[1]["error"]


@pytest.mark.parametrize("extra, match", [
    (["--target", "tpu"], "unknown target"),
    (["--metrics", "latency,speed"], "unknown metric"),
    (["--batch", "1,x"], "comma-separated"),
    (["--target", "jetson-orin-nano"], "--host"),
    (["--host", "me@127.0.0.1"], "remote targets"),
])
def test_bad_bench_input_exits_2(run, extra, match: str) -> None:
    proc = run_cli(["bench", run["onnx"], *extra])
    assert proc.returncode == 2, proc.stderr
    assert match in proc.stderr.replace("\n", " ")
