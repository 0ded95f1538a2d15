"""An fp16 ONNX file (``export --precision fp16``: float16 input and output) through every path that feeds ONNX
Runtime: ``OrtRunner`` (bench, check), and the device runner (``bench --host``), here on this machine's CPU provider.

Before the fix each of them fed float32 and ONNX Runtime refused the call ("Unexpected input data type. Actual:
(tensor(float)), expected: (tensor(float16))"); the first test keeps that premise honest.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from _deploy_helpers import make_tiny_run

from e2rnas.deploy_targets import remote_runner as R
from e2rnas.deploy_targets.bench import bench
from e2rnas.deploy_targets.budget import Budget, check
from e2rnas.deploy_targets.profiles import TARGETS
from e2rnas.deploy_targets.runners import OrtRunner, artifact_format
from e2rnas.export.fp16 import convert_to_fp16

CPU = TARGETS["cpu"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A real network's fp32 and fp16 ONNX files, the fp16 one alone in the run's export directory."""
    run = make_tiny_run(tmp_path_factory.mktemp("fp16"))
    fp16 = run["root"] / "export" / "model.fp16.onnx"
    convert_to_fp16(run["onnx"], fp16)
    fp32 = run["root"] / "model.fp32.onnx"
    run["onnx"].rename(fp32)
    return {**run, "fp16": fp16, "fp32": fp32}


def _x(n: int) -> np.ndarray:
    return np.random.default_rng(3).random((n, 3, 16, 16), dtype=np.float32)


def test_onnxruntime_refuses_float32_for_a_float16_input(tiny):
    import onnxruntime as ort

    session = ort.InferenceSession(str(tiny["fp16"]), providers=["CPUExecutionProvider"])
    assert session.get_inputs()[0].type == "tensor(float16)"
    with pytest.raises(Exception, match="tensor\\(float16\\)"):
        session.run(None, {"images": _x(1)})


def test_ort_runner_feeds_the_dtype_the_session_declares(tiny):
    x = _x(5)
    with torch.no_grad():
        ref = tiny["module"](torch.from_numpy(x)).numpy()
    with OrtRunner(tiny["fp16"], threads=1) as r:
        assert r.input_dtype is np.float16 and r.input_shape == (3, 16, 16)
        out = r(x)
        assert out.dtype == np.float32 and out.shape == (5, 5)
        np.testing.assert_allclose(out, ref, atol=2e-2)  # fp16 weights and activations
        s = r.measure(2, warmup=1, runs=4)
        assert s.runs == 4 and 0 < s.p50_ms <= s.max_ms
    with OrtRunner(tiny["fp32"], threads=1) as r:
        assert r.input_dtype is np.float32
        np.testing.assert_allclose(r(x), ref, atol=1e-4)


def test_bench_measures_and_evaluates_the_fp16_file(tiny):
    result = bench([tiny["fp16"]], target=CPU, batch_sizes=(1, 2), metrics=("latency", "accuracy"), warmup=1,
                   runs=3, threads=1, max_samples=40)
    row = result["rows"][0]
    assert row["format"] == "onnx-fp16" == artifact_format(tiny["fp16"])
    assert (row["status"], row["error"]) == ("ok", None)
    assert set(row["latency"]) == {"1", "2"} and row["latency"]["1"]["runs"] == 3
    assert 0.0 <= row["metrics"]["accuracy"] <= 1.0


def test_check_picks_and_measures_the_fp16_file(tiny):
    result = check(tiny["root"], budget=Budget(max_latency_ms=1e4, artifact="onnx-fp16"), target=CPU, warmup=0,
                   runs=3, threads=1)
    assert result["artifact"] == str(tiny["fp16"])
    line = next(ln for ln in result["lines"] if ln["key"] == "max_latency_ms")
    assert line["source"] == "onnx-fp16 on cpu" and line["measured"] > 0 and line["passed"]


def _device_run(capsys, *argv: str) -> dict:
    code = R.main(list(argv))
    data = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert code == (0 if data["ok"] else 1)
    return data


def test_device_runner_times_the_fp16_file_with_onnxruntime(tiny, capsys):
    data = _device_run(capsys, "--artifact", str(tiny["fp16"]), "--backend", "onnxruntime", "--batch", "1,3",
                       "--warmup", "1", "--runs", "3", "--threads", "1", "--input-shape", "3x16x16")
    assert data["ok"], data.get("error")
    assert data["input_type"] == "tensor(float16)" and [r["batch"] for r in data["results"]] == [1, 3]
    assert all(r["runs"] == 3 and r["p50_ms"] > 0 for r in data["results"])
    fp32 = _device_run(capsys, "--artifact", str(tiny["fp32"]), "--backend", "onnxruntime", "--runs", "2",
                       "--warmup", "0", "--threads", "1", "--input-shape", "3x16x16")
    assert fp32["ok"] and fp32["input_type"] == "tensor(float)"


def test_device_without_the_cuda_provider_says_so_in_one_line(tiny, capsys):
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this onnxruntime has the CUDA provider")
    data = _device_run(capsys, "--artifact", str(tiny["fp16"]), "--backend", "onnxruntime", "--providers",
                       "CUDAExecutionProvider", "--runs", "2", "--input-shape", "3x16x16")
    assert not data["ok"] and "\n" not in data["error"]
    assert "no CUDAExecutionProvider" in data["error"] and "aarch64 onnxruntime-gpu" in data["error"]
    # --backend auto on a device with neither trtexec nor TensorRT: ONNX Runtime only when it has the provider
    if R.find_trtexec() is None:
        data = _device_run(capsys, "--artifact", str(tiny["fp16"]), "--providers", "CUDAExecutionProvider",
                           "--runs", "2", "--input-shape", "3x16x16")
        assert not data["ok"] and "neither trtexec nor the TensorRT Python package" in data["error"]
