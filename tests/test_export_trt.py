"""TensorRT export. Tests marked ``trt`` build real engines and run where tensorrt and a CUDA GPU exist; they are
skipped with the reason elsewhere. The version/GPU rules, the file names and the behaviour without TensorRT are
plain logic and run everywhere."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from _deploy_helpers import train_digits_model

from e2rnas.errors import E2RNASError
from e2rnas.export import TensorRTUnavailable, artifact_name, export_model
from e2rnas.export.tensorrt import support_problem
from e2rnas.predict import load_predictor
from e2rnas.space.cost import DeployShape


def _trt_missing() -> str | None:
    try:
        import tensorrt  # noqa: F401
    except (ImportError, OSError) as exc:
        return f"tensorrt is not installed ({type(exc).__name__})"
    if not torch.cuda.is_available():
        return "no CUDA GPU is visible"
    return None


MISSING = _trt_missing()
needs_trt = pytest.mark.skipif(MISSING is not None, reason=f"needs TensorRT and a CUDA GPU: {MISSING}")
TINY = DeployShape(layers=5, C=4, num_classes=5, input_size=16)
FAST = dict(exporter="torchscript", check_batch=7, validation_samples=14)


@pytest.mark.parametrize("version, cc, precision, expected", [
    ("10.8.0.43", (9, 0), "fp16", None),
    ("10.8.0.43", (8, 6), "int8", None),
    ("11.1.0", (9, 0), "int8", None),
    ("10.4.0", (7, 0), "fp32", None),  # a V100 still works up to TensorRT 10.4
    ("10.5.0", (7, 0), "fp32", "needs TensorRT <= 10.4"),
    ("10.13.3", (7, 0), "fp16", "needs TensorRT <= 10.4"),
    ("10.4.0", (7, 0), "int8", None),  # NVIDIA's support matrix lists int8 on sm 7.0: allowed, with a note
    ("10.8.0", (6, 1), "fp32", "not supported"),
    ("8.6.1", (8, 6), "fp32", "too old"),
])
def test_support_rules(version, cc, precision, expected):
    problem = support_problem(version, cc, precision)
    assert problem is None if expected is None else expected in problem


def test_engine_names_carry_version_gpu_and_precision():
    assert artifact_name("tensorrt", "fp16", trt_version="10.8.0.43", compute_capability=(9, 0), gpu="h200") == \
        "model.trt10.8.0.43.sm90.h200.fp16.engine"
    assert artifact_name("tensorrt", "int8", static_batch=8, trt_version="11.1.0", compute_capability=(8, 6),
                         gpu="jetson agx orin") == "model.bs8.trt11.1.0.sm86.jetson-agx-orin.int8.engine"


@pytest.mark.skipif(MISSING is None, reason="TensorRT and a GPU are present: the missing-TensorRT path cannot run")
def test_without_tensorrt_one_line_error_and_nothing_written(tmp_path):
    out = tmp_path / "out"
    with pytest.raises(TensorRTUnavailable) as err:
        export_model("DARTS_V2", out_dir=out, trt=True, onnx=True, shape=TINY, **FAST)
    message = str(err.value)
    assert "\n" not in message and ("TensorRT is not installed" in message or "no CUDA GPU" in message)
    assert not out.exists()
    engine = tmp_path / "model.engine"
    engine.write_bytes(b"not an engine")
    with pytest.raises(TensorRTUnavailable):
        load_predictor(engine)


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """A small trained digits model, so that int8 top-1 agreement means something."""
    return train_digits_model(tmp_path_factory.mktemp("trained") / "model.pt")


@pytest.mark.trt
@needs_trt
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_engine_builds_matches_and_records_its_build(precision, tmp_path):
    results = export_model("DARTS_V2", out_dir=tmp_path, trt=True, precision=precision, shape=TINY, max_batch=16,
                           **FAST)
    onnx_res, engine = results
    assert onnx_res.ok and engine.ok, engine.details
    env = engine.details["environment"]
    built_for = json.loads(Path(engine.path).with_suffix(".json").read_text())["identity"]
    name = artifact_name("tensorrt", precision, trt_version=env["version"],
                         compute_capability=tuple(env["compute_capability"]), gpu=built_for["model"])
    assert Path(engine.path).name == name
    sidecar = json.loads(Path(engine.path).with_suffix(".json").read_text())
    assert sidecar["precision"] == precision and sidecar["profile"] == {"min": 1, "opt": 1, "max": 16}
    assert sidecar["environment"]["gpu"] and sidecar["build_s"] > 0 and sidecar["built_at"]
    assert engine.details["vs_onnxruntime"]["max_abs_diff"] < (1e-3 if precision == "fp32" else 5e-2)
    runner = load_predictor(engine.path)
    assert runner.name == "tensorrt"
    x = np.random.default_rng(0).random((20, 3, 16, 16), dtype=np.float32)  # above max_batch: chunked
    assert runner(x).shape == (20, 5)
    # the timing cache is saved and reused by the next build
    again = export_model("DARTS_V2", out_dir=tmp_path, trt=True, precision=precision, shape=TINY, max_batch=16,
                         **FAST)[1]
    assert again.ok and again.details["timing_cache"]["reused"]


@pytest.mark.trt
@needs_trt
def test_int8_engine_calibrates_on_real_images(trained, tmp_path):
    results = export_model(trained, out_dir=tmp_path, trt=True, precision="int8", calib_samples=128,
                           validation_samples=96, check_batch=16, exporter="torchscript")
    engine = results[-1]
    assert engine.format == "tensorrt" and engine.ok, engine.details
    assert engine.top1_agreement >= 0.9
    if not engine.details["strongly_typed"]:
        assert Path(engine.details["calibration"]["cache"]).is_file()  # TensorRT 10: calibration cache saved


@pytest.mark.trt
@needs_trt
def test_static_batch_engine_and_parser_errors(tmp_path):
    from e2rnas.export.tensorrt import build_engine, require

    (onnx_res, engine) = export_model("PDARTS", out_dir=tmp_path, trt=True, dynamic_batch=False, batch=4,
                                      shape=TINY, **FAST)
    assert engine.ok and ".bs4." in Path(engine.path).name and engine.details["static_batch"] == 4
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"\x08\x07garbage")
    with pytest.raises(E2RNASError) as err:
        build_engine(broken, tmp_path / "x.engine", env=require("fp32"), precision="fp32", cache_dir=tmp_path)
    assert "parser" in str(err.value) and "\n" not in str(err.value)
