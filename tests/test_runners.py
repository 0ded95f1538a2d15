"""Runners on real runtimes: ONNX Runtime and torch on the CPU; TensorRT and CUDA where present."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from _deploy_helpers import export_onnx, make_tiny_run

from e2rnas.deploy_targets.env import environment, physical_cores, usable_cpus
from e2rnas.deploy_targets.profiles import TARGETS
from e2rnas.deploy_targets.runners import (
    MIN_RUNS,
    OrtRunner,
    TorchRunner,
    artifact_format,
    open_runner,
    profile_op_share,
    summarize,
)
from e2rnas.errors import E2RNASError


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return make_tiny_run(tmp_path_factory.mktemp("tiny"))


def _ordered(s) -> None:
    assert s.min_ms > 0
    assert s.min_ms <= s.p50_ms <= s.p90_ms <= s.p95_ms <= s.p99_ms <= s.max_ms
    assert s.std_ms >= 0
    assert s.throughput == pytest.approx(s.batch / (s.mean_ms / 1e3))


def test_summarize_known_values() -> None:
    s = summarize([1.0, 2.0, 3.0, 4.0], batch=8, timer="perf_counter_ns")
    assert (s.p50_ms, s.mean_ms, s.min_ms, s.max_ms, s.runs) == (2.5, 2.5, 1.0, 4.0, 4)
    assert s.throughput == pytest.approx(8 / 2.5e-3) and s.percentile(99) == s.p99_ms
    with pytest.raises(E2RNASError):
        s.percentile(75)
    with pytest.raises(E2RNASError):
        summarize([], batch=1, timer="x")


def test_noise_warning_from_spread_and_tail() -> None:
    steady = summarize([1.0, 1.01, 0.99, 1.0, 1.02, 1.0], batch=1, timer="perf_counter_ns")
    assert steady.noise_warning() is None and steady.cv < 0.05
    tail = summarize([1.0] * 18 + [3.0, 3.0], batch=4, timer="cuda_event")
    warning = tail.noise_warning()
    assert warning and warning.startswith("batch 4: noisy timing") and "p95/p50" in warning
    spread = summarize([1.0, 1.3, 0.8, 1.25, 0.75, 1.1], batch=1, timer="perf_counter_ns")
    assert "coefficient of variation" in spread.noise_warning()
    few = summarize([1.0, 5.0], batch=1, timer="perf_counter_ns")  # too few runs to call it noisy
    assert few.noise_warning() is None


def test_time_based_warmup_and_no_host_column_on_cpu(tiny) -> None:
    with OrtRunner(tiny["onnx"], threads=1) as r:
        s = r.measure(1, warmup=0, runs=3, warmup_s=0.05)
        assert s.warmup_ms >= 50 and s.host_p50_ms is None and not r.on_gpu
        quick = r.measure(1, warmup=1, runs=3)  # CPU runners: no time-based warm-up by default
        assert quick.warmup_ms < 50


def test_onnxruntime_cpu_end_to_end(tiny) -> None:
    x = np.random.default_rng(1).random((5, 3, 16, 16), dtype=np.float32)
    with torch.no_grad():
        ref = tiny["module"](torch.from_numpy(x)).numpy()
    with OrtRunner(tiny["onnx"], threads=1) as r:
        assert r.providers == ["CPUExecutionProvider"]
        assert r.info()["providers"] == ["CPUExecutionProvider"] and r.input_shape == (3, 16, 16)
        np.testing.assert_allclose(r(x), ref, atol=1e-4)
        for batch in (1, 4):
            s = r.measure(batch, warmup=2, runs=15)
            assert s.batch == batch and s.runs == 15 and s.timer == "perf_counter_ns"
            _ordered(s)
        assert s.peak_memory_mb is None or s.peak_memory_mb >= 0
        d = r.measure(1, warmup=0, duration=0.05)
        assert d.runs >= MIN_RUNS
    assert r.session is None  # released on exit


def test_cuda_provider_falling_back_to_cpu_is_an_error(tiny) -> None:
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this onnxruntime has a CUDA provider: nothing falls back")
    with pytest.raises(E2RNASError, match="fell back to the CPU") as info:
        with OrtRunner(tiny["onnx"], providers=["CUDAExecutionProvider"]):
            pass
    assert "\n" not in str(info.value)
    with pytest.raises(E2RNASError, match="fell back"):  # the cuda target asks for the GPU provider
        with open_runner(tiny["onnx"], target=TARGETS["cuda"]):
            pass


def test_torch_runner_and_threads_restored(tiny) -> None:
    before = torch.get_num_threads()
    with TorchRunner.from_file(tiny["model"], threads=1) as r:
        assert torch.get_num_threads() == 1 and r.input_shape == (3, 16, 16)
        s = r.measure(2, warmup=1, runs=8)
        _ordered(s)
        assert s.peak_memory_mb is None or s.peak_memory_mb >= 0
        assert r(np.zeros((3, 3, 16, 16), np.float32)).shape == (3, 5)
    assert torch.get_num_threads() == before


def test_static_batch_artifact_pads_and_refuses_other_batches(tiny, tmp_path) -> None:
    path = export_onnx(tiny["module"], tmp_path / "model.bs2.onnx", static_batch=2)
    x = np.random.default_rng(2).random((5, 3, 16, 16), dtype=np.float32)
    with OrtRunner(path, threads=1) as r:
        assert r.fixed_batch == 2 and r.accepts_batch(2) and not r.accepts_batch(1)
        with torch.no_grad():
            np.testing.assert_allclose(r(x), tiny["module"](torch.from_numpy(x)).numpy(), atol=1e-4)
        with pytest.raises(E2RNASError, match="does not accept batch 1"):
            r.measure(1, runs=2)


def test_ort_profile_gives_op_shares(tiny, tmp_path) -> None:
    with OrtRunner(tiny["onnx"], threads=1, profile=True, profile_prefix=tmp_path / "prof") as r:
        r.measure(1, warmup=1, runs=3)
        shares = profile_op_share(r.end_profiling())
    assert sum(shares.values()) == pytest.approx(1.0) and "Conv" in shares


def test_open_runner_checks_the_target(tiny, tmp_path) -> None:
    engine = tmp_path / "model.trt10.8.sm90.fp16.engine"
    engine.write_bytes(b"not an engine")
    assert artifact_format(engine) == "tensorrt-fp16" and artifact_format(tiny["onnx"]) == "onnx"
    assert artifact_format(tmp_path / "model.int8.onnx") == "onnx-int8"
    with pytest.raises(E2RNASError, match="does not run tensorrt"):
        open_runner(engine, target=TARGETS["cpu"])
    with pytest.raises(E2RNASError, match="unknown artifact type"):
        open_runner(tmp_path / "model.tflite", target=TARGETS["cpu"])
    with pytest.raises(E2RNASError, match="not found"):
        OrtRunner(tmp_path / "missing.onnx")


def test_environment_facts() -> None:
    env = environment(threads=2, gpu=False)
    assert env["versions"]["onnxruntime"] and env["versions"]["torch"] and env["versions"]["python"]
    assert 1 <= physical_cores() <= usable_cpus() and env["threads"] == 2
    assert "CPUExecutionProvider" in env["onnxruntime_providers"]


@pytest.mark.gpu
def test_torch_cuda_events_and_graph(tiny) -> None:
    if not torch.cuda.is_available():
        pytest.skip("no CUDA GPU")
    for graph in (False, True):
        with TorchRunner.from_file(tiny["model"], device="cuda", cuda_graph=graph) as r:
            s = r.measure(4, warmup=3, runs=20)
            assert s.timer == "cuda_event" and s.cuda_graph == graph and s.peak_memory_mb > 0
            _ordered(s)


@pytest.mark.trt
def test_tensorrt_runner(tiny, tmp_path) -> None:
    trt = pytest.importorskip("tensorrt", reason="TensorRT is not installed")
    if not torch.cuda.is_available():
        pytest.skip("no CUDA GPU")
    from e2rnas.deploy_targets.runners import TensorRTRunner

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)
    parser = trt.OnnxParser(network, logger)
    assert parser.parse(tiny["onnx"].read_bytes())
    config = builder.create_builder_config()
    profile = builder.create_optimization_profile()
    profile.set_shape("images", (1, 3, 16, 16), (4, 3, 16, 16), (8, 3, 16, 16))
    config.add_optimization_profile(profile)
    engine = tmp_path / "model.fp32.engine"
    engine.write_bytes(bytes(builder.build_serialized_network(network, config)))
    x = np.random.default_rng(0).random((3, 3, 16, 16), dtype=np.float32)
    with torch.no_grad():
        ref = tiny["module"](torch.from_numpy(x)).numpy()
    for graph in (False, True):
        with TensorRTRunner(engine, cuda_graph=graph) as r:
            assert r.max_batch == 8
            np.testing.assert_allclose(r(x), ref, atol=1e-3)
            _ordered(r.measure(4, warmup=3, runs=20))
