"""TensorRT engines built from the exported ONNX file, and ``TensorRTPredictor`` to run them.

``tensorrt`` is imported only inside the functions that need it, so this module imports on any CPU machine.
Precision depends on the TensorRT major version (``docs/export-tensorrt-precision.md``):

- 10.x: weakly typed networks with builder flags: ``FP16``; ``INT8`` with an entropy calibrator (fed with real
  images, calibration cache saved); fp32 clears the ``TF32`` flag so that "fp32" means fp32.
- 11.x: no precision flags; networks are strongly typed, so the ONNX graph is converted first: fp16 with NVIDIA
  ModelOpt AutoCast, int8 as Q/DQ nodes with ModelOpt's ONNX quantisation (both imported lazily).

Buffers are torch CUDA tensors (no pycuda); inference uses the TensorRT 10 tensor-name API
(``set_input_shape``, ``set_tensor_address``, ``execute_async_v3``).
"""

from __future__ import annotations

import importlib.util
import os
import re
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from e2rnas._io import atomic_write
from e2rnas.errors import E2RNASError
from e2rnas.export._registry import INPUT_NAME


class TensorRTUnavailable(E2RNASError):
    """TensorRT, a CUDA GPU, or a package a precision needs is missing, or the combination cannot work."""


@dataclass(frozen=True)
class TrtEnv:
    """The TensorRT build and the GPU an engine is made for (both are baked into the engine)."""

    version: str
    compute_capability: tuple[int, int]
    gpu: str
    gpu_memory_gb: float
    cuda: str | None
    uuid: str | None = None

    @property
    def major_minor(self) -> tuple[int, int]:
        return _major_minor(self.version)

    @property
    def strongly_typed(self) -> bool:
        return self.major_minor[0] >= 11

    def identity(self) -> Any:
        """The ``GpuIdentity`` an engine built here is tied to (recorded in its sidecar, compared by runners)."""
        from e2rnas.deploy_targets.gpu_identity import GpuIdentity

        return GpuIdentity(name=self.gpu, sm=f"{self.compute_capability[0]}.{self.compute_capability[1]}",
                           uuid=self.uuid, tensorrt=self.version)

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "strongly_typed": self.strongly_typed}


def _major_minor(version: str) -> tuple[int, int]:
    parts = (version.split(".") + ["0"])[:2]
    return int(parts[0]), int("".join(c for c in parts[1] if c.isdigit()) or 0)


def support_problem(version: str, compute_capability: tuple[int, int], precision: str) -> str | None:
    """Why this TensorRT version, GPU and precision cannot work together, or None when they can."""
    major, minor = _major_minor(version)
    cc = tuple(compute_capability)
    cc_text = f"{cc[0]}.{cc[1]}"
    if major < 10:
        return (f"TensorRT {version} is too old: e2rnas uses the TensorRT 10 API (tensor names, execute_async_v3); "
                f"install tensorrt>=10")
    if cc < (7, 0):
        return f"compute capability {cc_text} is not supported by TensorRT 10+ (needs 7.5+, or 7.0 with <= 10.4)"
    if cc < (7, 5) and (major, minor) >= (10, 5):
        return (f"compute capability {cc_text} (Volta, e.g. V100) needs TensorRT <= 10.4; TensorRT {version} "
                f"removed Volta support in 10.5")
    return None


def support_notes(compute_capability: tuple[int, int], precision: str) -> list[str]:
    """What works but differs from what one might expect (recorded in the engine's sidecar)."""
    if precision == "int8" and tuple(compute_capability) < (7, 2):
        # NVIDIA's support matrix lists INT8 for sm 7.0 (V100); it has no INT8 tensor cores, so INT8 runs on
        # DP4A CUDA-core kernels and is often no faster than fp16 there.
        return [f"compute capability {compute_capability[0]}.{compute_capability[1]} (Volta) runs int8 without int8 "
                "tensor cores: compare its latency with --precision fp16"]
    return []


#: ModelOpt versions before this built the calibration batches as ``[{}] * n_itr`` (one shared dict: every chunk
#: was the last one); fixed by NVIDIA/Model-Optimizer PR #794 ("Fix duplicated calib data"), first in 0.42.0
MODELOPT_MIN = "0.42.0"


def modelopt_problem(version: str | None) -> str | None:
    """Why this ModelOpt cannot convert a graph for TensorRT 11 (missing or too old), or None."""
    if version is None:
        return ("builds strongly typed networks only: the ONNX graph must be converted by NVIDIA ModelOpt first: "
                f"pip install 'nvidia-modelopt[onnx]>={MODELOPT_MIN}'")
    have = tuple(int(p) for p in re.findall(r"\d+", version)[:3])
    if have < tuple(int(p) for p in MODELOPT_MIN.split(".")):
        return (f"needs nvidia-modelopt >= {MODELOPT_MIN} (this is {version}: older versions calibrate int8 on one "
                f"chunk of the images, NVIDIA/Model-Optimizer PR #794): pip install -U 'nvidia-modelopt[onnx]'")
    return None


def modelopt_calibration(images: np.ndarray, static_batch: int | None) -> tuple[np.ndarray, int]:
    """The calibration array to hand ModelOpt, and how many images were repeated to make it.

    ModelOpt splits the array into ``int(N / B)`` chunks with ``np.array_split`` (B: the model's batch, 1 when
    dynamic; ``modelopt/onnx/quantization/calib_utils.py``): N not a multiple of B gives chunks of the wrong size
    and N < B zero chunks (a ValueError). A static batch therefore gets whole batches, the last one filled from
    the first images, exactly as TensorRT 10's calibrator gets them (``calibration_batches``)."""
    if not static_batch or static_batch == 1:
        return np.ascontiguousarray(images, dtype=np.float32), 0
    from e2rnas.export.calibration import calibration_batches

    batches, padded = calibration_batches(images, int(static_batch))
    return np.concatenate(batches), padded


def _import_trt() -> Any:
    try:
        import tensorrt as trt
    except (ImportError, OSError) as exc:  # OSError: the wheel is there but its CUDA libraries are not
        raise TensorRTUnavailable(f"TensorRT is not installed ({type(exc).__name__}): pip install 'tensorrt>=10' on a "
                                  f"machine with an NVIDIA GPU, or export with --onnx only") from exc
    return trt


def require(precision: str) -> TrtEnv:
    """The TensorRT environment, or a one-line ``TensorRTUnavailable`` saying what is missing (nothing is written)."""
    trt = _import_trt()
    import torch

    if not torch.cuda.is_available():
        raise TensorRTUnavailable("no CUDA GPU is visible (torch.cuda.is_available() is False): TensorRT builds an "
                                  "engine on the GPU that will run it")
    from e2rnas.deploy_targets.gpu_identity import current_identity

    props = torch.cuda.get_device_properties(torch.cuda.current_device())
    ident = current_identity()
    env = TrtEnv(version=trt.__version__, compute_capability=(props.major, props.minor),
                 gpu=ident.name if ident else props.name, gpu_memory_gb=round(props.total_memory / 2**30, 1),
                 cuda=torch.version.cuda, uuid=ident.uuid if ident else None)
    problem = support_problem(env.version, env.compute_capability, precision)
    if problem:
        raise TensorRTUnavailable(problem)
    if env.strongly_typed and precision != "fp32":
        from e2rnas.deploy_targets.env import package_version

        version = package_version("nvidia-modelopt")
        if version is None and importlib.util.find_spec("modelopt") is not None:  # a source checkout
            import modelopt

            version = str(getattr(modelopt, "__version__", "0"))
        problem = modelopt_problem(version)
        if problem:
            raise TensorRTUnavailable(f"TensorRT {env.version} {problem} ({precision})")
    return env


def _logger(trt: Any) -> Any:
    level = trt.Logger.VERBOSE if os.environ.get("E2RNAS_TRT_VERBOSE") else trt.Logger.WARNING
    return trt.Logger(level)


def _write_buffer(path: Path, buffer: Any) -> None:
    with open(path, "wb") as fh:
        fh.write(buffer)  # IHostMemory and the calibrator's cache both expose the buffer protocol


def build_engine(onnx_path: Path, engine_path: Path, *, env: TrtEnv, precision: str, workspace_mb: int = 1024,
                 dynamic_batch: bool = True, batch: int = 1, max_batch: int = 64,
                 calibration: np.ndarray | None = None, cache_dir: Path, cache_tag: str = "") -> dict[str, Any]:
    """Parse ``onnx_path``, build a serialized engine into ``engine_path``; return the build record.

    ``cache_dir`` holds the timing cache (reused by later builds for the same TensorRT and GPU) and, for int8 on
    TensorRT 10, the calibration cache (``cache_tag`` ties it to the ONNX file and the calibration images).
    """
    trt = _import_trt()
    logger = _logger(trt)
    tag = f"trt{env.version}.{env.identity().tag()}"  # a timing cache is valid for one TensorRT and GPU model
    record: dict[str, Any] = {"precision": precision, "workspace_mb": workspace_mb, "dynamic_batch": dynamic_batch,
                              "strongly_typed": env.strongly_typed, "tensorrt": env.version}
    with tempfile.TemporaryDirectory(prefix="e2rnas-trt-") as tmp:
        source = onnx_path
        notes = support_notes(env.compute_capability, precision)
        if notes:
            record["notes"] = notes
        if env.strongly_typed and precision != "fp32":
            source = Path(tmp) / f"model.{precision}.onnx"
            record["conversion"] = _convert_for_strong_typing(onnx_path, source, precision, calibration,
                                                              None if dynamic_batch else _static_batch(onnx_path))
        builder = trt.Builder(logger)
        flags = 0
        if env.strongly_typed and hasattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED"):
            flags = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
        network = builder.create_network(flags)
        parser = trt.OnnxParser(network, logger)
        if not parser.parse_from_file(str(source)):
            errors = [_parser_error(parser.get_error(i)) for i in range(parser.num_errors)]
            raise E2RNASError(f"TensorRT's ONNX parser rejected {onnx_path.name} ({len(errors)} error(s)): "
                              + " | ".join(errors or ["no error reported"]))
        config = builder.create_builder_config()
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_mb) << 20)
        inp = network.get_input(0)
        chw = tuple(inp.shape)[1:]
        if dynamic_batch:
            if tuple(inp.shape)[0] != -1:
                raise E2RNASError(f"{onnx_path.name} has a static batch {tuple(inp.shape)[0]}; export it with a "
                                  f"dynamic batch or build with --static-batch")
            profile = builder.create_optimization_profile()
            profile.set_shape(inp.name, (1, *chw), (batch, *chw), (max_batch, *chw))
            config.add_optimization_profile(profile)
            record["profile"] = {"min": 1, "opt": batch, "max": max_batch}
        else:
            record["static_batch"] = int(tuple(inp.shape)[0])
        calibrator = _set_precision(trt, builder, config, env, precision, calibration, (inp.name, chw),
                                    dynamic_batch, cache_dir / f"calib.{tag}.{cache_tag or 'default'}.cache", record)
        timing_path = cache_dir / f"timing.{tag}.cache"
        blob = timing_path.read_bytes() if timing_path.is_file() else b""
        cache = config.create_timing_cache(blob)
        reused = bool(blob)
        if cache is None or not config.set_timing_cache(cache, ignore_mismatch=False):  # stale or foreign cache
            config.set_timing_cache(config.create_timing_cache(b""), ignore_mismatch=False)
            reused = False
        t0 = time.perf_counter()
        plan = builder.build_serialized_network(network, config)
        record["build_s"] = round(time.perf_counter() - t0, 3)
        del calibrator  # kept alive until the build has finished with it
        if plan is None:
            raise E2RNASError("TensorRT could not build the engine (set E2RNAS_TRT_VERBOSE=1 for the builder log)")
        _write_buffer(engine_path, plan)
        timing = config.get_timing_cache()
        if timing is not None:
            atomic_write(timing_path, lambda t: _write_buffer(t, timing.serialize()))
        record["timing_cache"] = {"path": str(timing_path), "reused": bool(reused)}
    return record


def _set_precision(trt: Any, builder: Any, config: Any, env: TrtEnv, precision: str,
                   calibration: np.ndarray | None, input_shape: tuple[str, tuple[int, ...]], dynamic: bool,
                   calib_cache: Path,
                   record: dict[str, Any]) -> Any:
    """10.x builder flags (11.x: the precision is in the converted graph). Returns the calibrator to keep alive."""
    if precision == "fp32" and hasattr(trt.BuilderFlag, "TF32"):
        config.clear_flag(trt.BuilderFlag.TF32)  # TF32 is on by default on Ampere+; fp32 parity needs it off
    if env.strongly_typed or precision == "fp32":
        return None
    if precision == "fp16":
        config.set_flag(trt.BuilderFlag.FP16)
        return None
    if calibration is None or len(calibration) == 0:
        raise E2RNASError("int8 needs calibration images (--calib-data, or the model's data set)")
    from e2rnas.export.calibration import calibration_batch, calibration_batches

    # TensorRT 10 reads as many images per batch as the network's input holds (get_batch_size is ignored since
    # 10.0): a static batch N calibrates at N, a dynamic one at its calibration profile's batch
    calib_batch = calibration_batch(None if dynamic else record.get("static_batch"), 32, len(calibration))
    batches, padded = calibration_batches(calibration, calib_batch)
    calibrator = _entropy_calibrator(trt, batches, calib_cache)
    config.set_flag(trt.BuilderFlag.INT8)
    config.int8_calibrator = calibrator
    if dynamic:  # calibration runs at one fixed shape: a profile of its own
        name, chw = input_shape
        profile = builder.create_optimization_profile()
        shape = (calib_batch, *chw)
        profile.set_shape(name, shape, shape, shape)
        config.set_calibration_profile(profile)
    record["calibration"] = {"algorithm": "entropy2", "images": int(len(calibration)), "batch": calib_batch,
                             "padded": padded, "cache": str(calib_cache), "cache_reused": calib_cache.is_file()}
    return calibrator


def _entropy_calibrator(trt: Any, batches: list[np.ndarray], cache_path: Path) -> Any:
    """``batches``: float32 arrays of exactly the network's calibration batch (``calibration_batches``)."""
    import torch

    batch_size = len(batches[0])

    class EntropyCalibrator(trt.IInt8EntropyCalibrator2):
        """Feeds real images to TensorRT 10's calibration from one reused CUDA buffer."""

        def __init__(self) -> None:
            trt.IInt8EntropyCalibrator2.__init__(self)
            self.index = 0
            self.buffer = torch.empty(batches[0].shape, dtype=torch.float32, device="cuda")

        def get_batch_size(self) -> int:
            return batch_size

        def get_batch(self, names: list[str]) -> list[int] | None:
            if self.index >= len(batches):
                return None
            self.buffer.copy_(torch.from_numpy(batches[self.index]))
            torch.cuda.synchronize()
            self.index += 1
            return [int(self.buffer.data_ptr())]

        def read_calibration_cache(self) -> bytes | None:
            return cache_path.read_bytes() if cache_path.is_file() else None

        def write_calibration_cache(self, cache: Any) -> None:
            atomic_write(cache_path, lambda t: _write_buffer(t, cache))

    return EntropyCalibrator()


def _static_batch(onnx_path: Path) -> int | None:
    from e2rnas.export.graph_facts import static_batch_of

    return static_batch_of(onnx_path)


def _convert_for_strong_typing(src: Path, dst: Path, precision: str, calibration: np.ndarray | None,
                               static_batch: int | None = None) -> dict[str, Any]:
    """TensorRT 11.x: reduced precision lives in the graph (casts or Q/DQ nodes), made by NVIDIA ModelOpt."""
    import onnx

    t0 = time.perf_counter()
    if precision == "fp16":
        from modelopt.onnx.autocast import convert_to_mixed_precision

        onnx.save(convert_to_mixed_precision(onnx_path=str(src), low_precision_type="fp16", keep_io_types=True),
                  str(dst))
        return {"tool": "modelopt.onnx.autocast", "low_precision_type": "fp16", "keep_io_types": True,
                "convert_s": round(time.perf_counter() - t0, 3)}
    if calibration is None or len(calibration) == 0:
        raise E2RNASError("int8 needs calibration images (--calib-data, or the model's data set)")
    from modelopt.onnx.quantization import quantize

    data, padded = modelopt_calibration(calibration, static_batch)
    quantize(onnx_path=str(src), quantize_mode="int8", calibration_data={INPUT_NAME: data},
             calibration_method="entropy", calibration_eps=["cpu"], high_precision_dtype="fp32",
             output_path=str(dst))
    return {"tool": "modelopt.onnx.quantization", "quantize_mode": "int8", "calibration_method": "entropy",
            "calibration_images": int(len(calibration)), "calibration_batch": static_batch or 1,
            "padded": padded, "convert_s": round(time.perf_counter() - t0, 3)}


def _parser_error(err: Any) -> str:
    where = []
    for attr in ("node", "node_name", "node_operator"):
        value = getattr(err, attr, None)
        value = value() if callable(value) else value
        if value not in (None, "", -1):
            where.append(str(value))
    desc = err.desc() if callable(getattr(err, "desc", None)) else str(err)
    return (f"node {' '.join(where)}: " if where else "") + " ".join(str(desc).split())


class TensorRTPredictor:
    """Runs a serialized engine: float32 NCHW numpy pixels in, float32 logits out (the ``Predictor`` protocol)."""

    name = "tensorrt"

    def __init__(self, path: str | Path, device: int | None = None):
        trt = _import_trt()
        import torch

        if not torch.cuda.is_available():
            raise TensorRTUnavailable("no CUDA GPU is visible: a TensorRT engine runs only on the GPU it was built for")
        self.device = torch.device("cuda", torch.cuda.current_device() if device is None else device)
        self.path = Path(path)
        self.runtime = trt.Runtime(_logger(trt))
        self.engine = self.runtime.deserialize_cuda_engine(self.path.read_bytes())
        if self.engine is None:
            raise E2RNASError(f"{self.path}: TensorRT {trt.__version__} cannot load this engine; an engine loads only "
                              f"with the TensorRT version and GPU it was built for (see its name and .json sidecar)")
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        inputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        outputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        if len(inputs) != 1 or len(outputs) != 1:
            raise E2RNASError(f"{self.path}: expected one input and one output, found {inputs} -> {outputs}")
        self.input_name, self.output_name = inputs[0], outputs[0]
        self.input_dtype = _torch_dtype(trt, self.engine.get_tensor_dtype(self.input_name))
        self.output_dtype = _torch_dtype(trt, self.engine.get_tensor_dtype(self.output_name))
        batch = tuple(self.engine.get_tensor_shape(self.input_name))[0]
        self.static_batch = None if batch == -1 else int(batch)
        self.max_batch = (int(self.engine.get_tensor_profile_shape(self.input_name, 0)[2][0])
                          if self.static_batch is None else self.static_batch)
        self.stream = torch.cuda.Stream(device=self.device)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(x, dtype=np.float32)
        return np.concatenate([self._run(x[i:i + self.max_batch]) for i in range(0, len(x), self.max_batch)])

    def _run(self, x: np.ndarray) -> np.ndarray:
        import torch

        n = len(x)
        if self.static_batch and n < self.static_batch:  # a static engine takes exactly its batch: pad, then cut
            x = np.concatenate([x, np.repeat(x[-1:], self.static_batch - n, axis=0)])
        with torch.cuda.stream(self.stream):
            inp = torch.from_numpy(x).to(self.device).to(self.input_dtype).contiguous()
            if not self.context.set_input_shape(self.input_name, tuple(inp.shape)):
                raise E2RNASError(f"batch {len(x)} is outside the engine's profile (max {self.max_batch})")
            out = torch.empty(tuple(self.context.get_tensor_shape(self.output_name)), dtype=self.output_dtype,
                              device=self.device)
            self.context.set_tensor_address(self.input_name, int(inp.data_ptr()))
            self.context.set_tensor_address(self.output_name, int(out.data_ptr()))
            ok = self.context.execute_async_v3(self.stream.cuda_stream)
        self.stream.synchronize()
        if not ok:
            raise E2RNASError(f"{self.path}: TensorRT inference failed")
        return out[:n].float().cpu().numpy()


def _torch_dtype(trt: Any, dtype: Any) -> Any:
    import torch

    table = {trt.DataType.FLOAT: torch.float32, trt.DataType.HALF: torch.float16, trt.DataType.INT8: torch.int8,
             trt.DataType.INT32: torch.int32}
    if hasattr(trt.DataType, "BF16"):
        table[trt.DataType.BF16] = torch.bfloat16
    if dtype not in table:
        raise E2RNASError(f"engine tensor type {dtype} is not supported by TensorRTPredictor")
    return table[dtype]
