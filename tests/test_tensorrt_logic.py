"""TensorRT-path decisions that do not need a GPU: ModelOpt's calibration chunks for TensorRT 11, the ModelOpt and
sm 7.0 int8 gates, the CUDA-graph warm-up stream, ``set_input_shape``'s answer, engine identity notes and the
onnxruntime / onnxruntime-gpu conflict.
"""

from __future__ import annotations

import sys
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from e2rnas.deploy_targets.env import onnxruntime_install_problem, tensorrt_version
from e2rnas.deploy_targets.gpu_identity import GpuIdentity, identity_notes, identity_problem
from e2rnas.deploy_targets.runners import TensorRTRunner
from e2rnas.errors import E2RNASError
from e2rnas.export.tensorrt import (
    MODELOPT_MIN,
    modelopt_calibration,
    modelopt_problem,
    support_notes,
    support_problem,
)


def modelopt_chunks(data: np.ndarray, model_batch: int) -> list[np.ndarray]:
    """ModelOpt's own split of ``calibration_data`` (modelopt/onnx/quantization/calib_utils.py, tag 0.42.0,
    CalibrationDataProvider.__init__: ``n_itr = int(N / batch)``, then ``np.array_split(data, n_itr, axis=0)``;
    ``batch`` is the model's input batch, 1 when dynamic)."""
    n_itr = int(data.shape[0] / model_batch)
    return np.array_split(data, n_itr, axis=0)


@pytest.mark.parametrize("images, batch", [(100, 8), (5, 8), (16, 8), (7, 1), (7, None)])
def test_modelopt_gets_whole_batches_of_the_models_size(images, batch):
    x = np.random.default_rng(0).random((images, 3, 4, 4), dtype=np.float32)
    data, padded = modelopt_calibration(x, batch)
    chunks = modelopt_chunks(data, batch or 1)
    assert {len(c) for c in chunks} == {batch or 1} and padded == len(data) - images
    assert np.array_equal(data[:images], x)  # every image, in order; the tail repeats the first ones


def test_the_raw_image_count_is_what_broke_modelopt():
    x = np.zeros((100, 3, 4, 4), np.float32)
    assert {len(c) for c in modelopt_chunks(x, 8)} == {8, 9}  # 12 chunks of 100 images: wrong sizes
    with pytest.raises(ValueError):
        modelopt_chunks(x[:5], 8)  # fewer images than the batch: zero chunks


def test_modelopt_version_gate():
    assert "pip install 'nvidia-modelopt[onnx]>=0.42.0'" in modelopt_problem(None)
    old = modelopt_problem("0.41.0")
    assert old and "#794" in old and MODELOPT_MIN in old and "\n" not in old
    assert modelopt_problem("0.42.0") is None and modelopt_problem("0.45.0rc1") is None
    assert modelopt_problem("0.9.1") is not None


def test_int8_on_v100_is_allowed_with_a_note():
    assert support_problem("10.4.0", (7, 0), "int8") is None
    note = support_notes((7, 0), "int8")
    assert len(note) == 1 and "without int8 tensor cores" in note[0]
    assert support_notes((8, 0), "int8") == [] and support_notes((7, 0), "fp16") == []
    assert "10.4" in support_problem("10.5.0", (7, 0), "int8")  # Volta still ends at TensorRT 10.4
    assert support_problem("10.3.0", (6, 1), "fp16") is not None


class _FakeCuda:
    """Just enough of ``torch.cuda`` to see which stream each replay and event lands on."""

    def __init__(self, log):
        self.log, self.current = log, "default stream"

    @contextmanager
    def stream(self, s):
        prev, self.current = self.current, s
        try:
            yield
        finally:
            self.current = prev

    def Event(self, enable_timing=False):  # noqa: N802 - torch's name
        log = self.log

        class _Event:
            def record(self, stream=None):
                log.append(("event", stream))

            def synchronize(self):
                pass

            def elapsed_time(self, other):
                return 1.0

        return _Event()


def _graph_runner(log):
    runner = TensorRTRunner.__new__(TensorRTRunner)
    super(TensorRTRunner, runner).__init__()
    cuda = _FakeCuda(log)
    runner._torch = SimpleNamespace(cuda=cuda)
    runner._stream = SimpleNamespace(synchronize=lambda: log.append(("sync", "own stream")), name="own stream")
    runner._graph = SimpleNamespace(replay=lambda: log.append(("replay", getattr(cuda.current, "name",
                                                                                  cuda.current))))
    runner.cuda_graph, runner.fixed_batch, runner.max_batch = True, None, None
    runner._bind = lambda x: None  # the captured graph stands in for the engine
    runner._infer = lambda x: None
    runner._peak_memory_mb = lambda: None
    return runner


def test_graph_warmup_replays_on_the_stream_that_is_synchronised_before_timing():
    log = []
    stats = _graph_runner(log).measure(1, warmup=5, runs=3, warmup_s=0.0)
    replays = [where for what, where in log if what == "replay"]
    assert replays == ["own stream"] * 8  # 5 warm-up + 3 timed, none queued on the default stream
    first_event = next(i for i, (what, _) in enumerate(log) if what == "event")
    assert ("sync", "own stream") in log[:first_event]  # the warm-up was waited for before the first sample
    assert stats.runs == 3 and stats.cuda_graph


def test_a_refused_input_shape_is_an_error_not_a_garbage_run(tmp_path):
    runner = TensorRTRunner.__new__(TensorRTRunner)
    runner.path, runner.fixed_batch, runner.max_batch = tmp_path / "m.engine", None, 8
    runner._torch, runner.device, runner._in_dtype = torch, torch.device("cpu"), torch.float32
    runner.input_name, runner.output_name = "images", "logits"
    calls = []
    runner.context = SimpleNamespace(set_input_shape=lambda name, shape: calls.append(shape) or False)
    with pytest.raises(E2RNASError, match=r"refused input shape \(9, 3, 4, 4\).*max batch 8"):
        runner._prepare(np.zeros((9, 3, 4, 4), np.float32))
    assert calls == [(9, 3, 4, 4)]


H200 = GpuIdentity(name="NVIDIA H200", sm="9.0", uuid="GPU-aaaa", tensorrt="10.8.0.43")


def test_identity_notes_compare_the_uuid_and_say_when_the_version_was_not_compared():
    built = H200.as_dict()
    assert identity_notes(built, H200) == ["same GPU that built it (GPU-aaaa)"]
    other_card = GpuIdentity(name="NVIDIA H200", sm="9.0", uuid="GPU-bbbb", tensorrt="10.8.0.43")
    assert identity_problem(built, other_card) is None
    assert identity_notes(built, other_card) == ["built on another NVIDIA H200 (GPU-aaaa); this card is GPU-bbbb"]
    apt = GpuIdentity(name="NVIDIA H200", sm="9.0", uuid="GPU-aaaa", tensorrt=None)  # no pip metadata
    assert identity_problem(built, apt) is None
    assert any("not compared" in n and "10.8.0.43" in n for n in identity_notes(built, apt))
    assert any("no GPU UUID" in n for n in identity_notes({"sm": "9.0", "tensorrt": "10.8.0.43"}, H200))


def test_tensorrt_version_falls_back_to_the_imported_module(monkeypatch):
    import e2rnas.deploy_targets.env as env

    monkeypatch.setattr(env, "package_version", lambda name: None)  # apt-installed: no dist-info
    monkeypatch.setitem(sys.modules, "tensorrt", SimpleNamespace(__version__="10.3.0"))
    assert tensorrt_version() == "10.3.0"
    monkeypatch.delitem(sys.modules, "tensorrt")
    assert tensorrt_version() is None


def test_onnxruntime_and_onnxruntime_gpu_side_by_side_is_named_with_the_fix():
    problem = onnxruntime_install_problem({"onnxruntime": "1.23.2", "onnxruntime-gpu": "1.23.2"})
    assert problem and "\n" not in problem and "pip uninstall -y onnxruntime onnxruntime-gpu" in problem
    assert onnxruntime_install_problem({"onnxruntime": "1.23.2", "onnxruntime-gpu": None}) is None
    assert onnxruntime_install_problem({"onnxruntime": None, "onnxruntime-gpu": "1.23.2"}) is None


def test_the_gpu_extra_no_longer_installs_both_onnxruntime_wheels():
    tomllib = pytest.importorskip("tomllib", reason="Python 3.10 has no tomllib")
    project = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    names = [d.split(">")[0].split("[")[0] for d in project["dependencies"] + extras["gpu"]]
    assert not ({"onnxruntime", "onnxruntime-gpu"} <= set(names))
    assert any(d.startswith("nvidia-modelopt[onnx]>=" + MODELOPT_MIN) for d in extras["modelopt"])
