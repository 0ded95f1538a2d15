"""The predict interface: a batch of pixels in [0, 1] (float32 NCHW numpy) in, logits out.

The same evaluation runs on a torch model, an ONNX model (ONNX Runtime) or a TensorRT engine. Backends are a
registry keyed by file suffix; heavy packages are imported when a predictor is made.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np
import torch

from e2rnas.errors import E2RNASError


@runtime_checkable
class Predictor(Protocol):
    name: str  # e.g. "torch", "onnxruntime", "tensorrt"

    def __call__(self, x: np.ndarray) -> np.ndarray: ...


class TorchPredictor:
    name = "torch"

    def __init__(self, module: torch.nn.Module, device: str | torch.device = "cpu"):
        self.module = module.eval().to(device)
        self.device = torch.device(device)

    @torch.no_grad()
    def __call__(self, x: np.ndarray) -> np.ndarray:
        return self.module(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)).to(self.device)).cpu().numpy()


class OnnxRuntimePredictor:
    name = "onnxruntime"

    def __init__(self, path: str | Path, providers: list[str] | None = None, threads: int | None = None):
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if threads:
            opts.intra_op_num_threads = threads
        self.session = ort.InferenceSession(str(path), sess_options=opts,
                                            providers=providers or ["CPUExecutionProvider"])
        inp = self.session.get_inputs()[0]
        self.input_name = inp.name
        # an fp16 file (export --precision fp16) takes and returns float16; callers always see float32
        self.input_dtype = np.float16 if inp.type == "tensor(float16)" else np.float32
        self.providers = self.session.get_providers()

    def __call__(self, x: np.ndarray) -> np.ndarray:
        out = self.session.run(None, {self.input_name: np.ascontiguousarray(x, dtype=self.input_dtype)})[0]
        return out if out.dtype == np.float32 else out.astype(np.float32)


def _torch_from_file(path: Path, device: str) -> Predictor:
    from e2rnas.model_io import load_model

    return TorchPredictor(load_model(path, device=device).model, device)


def _onnx_from_file(path: Path, device: str) -> Predictor:
    providers = ["CUDAExecutionProvider", "CPUExecutionProvider"] if device.startswith("cuda") else None
    return OnnxRuntimePredictor(path, providers=providers)


def _trt_from_file(path: Path, device: str) -> Predictor:
    from e2rnas.export.tensorrt import TensorRTPredictor  # lazy: tensorrt is optional

    return TensorRTPredictor(path)


#: file suffix -> factory(path, device)
PREDICTORS: dict[str, Callable[[Path, str], Predictor]] = {
    ".pt": _torch_from_file,
    ".onnx": _onnx_from_file,
    ".engine": _trt_from_file,
    ".plan": _trt_from_file,
}


def load_predictor(path: str | Path, *, device: str = "cpu") -> Predictor:
    path = Path(path)
    if not path.is_file():
        raise E2RNASError(f"artifact not found: {path}")
    factory = PREDICTORS.get(path.suffix)
    if factory is None:
        raise E2RNASError(f"{path}: unknown artifact type {path.suffix!r}; expected one of {', '.join(PREDICTORS)}")
    if path.suffix == ".onnx":  # a foreign file must give one line, not ONNX Runtime's protobuf traceback
        from e2rnas.deploy_targets.bench import onnx_metadata

        onnx_metadata(path)
    return factory(path, device)


def predict_batches(predictor: Predictor, x: torch.Tensor, *, batch_size: int = 256) -> np.ndarray:
    """Logits for a float tensor of images, in batches."""
    outs = [predictor(x[i:i + batch_size].numpy()) for i in range(0, len(x), batch_size)]
    return np.concatenate(outs) if outs else np.zeros((0, 0), dtype=np.float32)
