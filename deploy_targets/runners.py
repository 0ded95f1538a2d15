"""Runners: one artifact loaded on one device, as a context manager that times itself.

``with OrtRunner("model.onnx", threads=2) as r: stats = r.measure(batch=1, runs=200)``. Each runner also is a
``Predictor`` (``r(x) -> logits``), so the accuracy, PGD and AUPR of ``bench`` run through the same session that
was timed. Timing: ``time.perf_counter_ns`` around each call on the CPU; CUDA events around each call on the GPU
(torch CUDA, TensorRT), optionally replaying a captured CUDA graph. tensorrt is imported only by its runner.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from e2rnas.errors import E2RNASError

PERCENTILES = (50, 90, 95, 99)
DEFAULT_RUNS = 100
MIN_RUNS = 5  # with --duration, at least this many calls even on a slow device
GPU_WARMUP_S = 0.2  # GPU runners warm up for at least this long (trtexec's default --warmUp is 200 ms)
NOISY_CV = 0.10
NOISY_P95_P50 = 1.5


@dataclass(frozen=True)
class LatencyStats:
    """Per-call latency of one batch size. ``throughput`` is images/s = batch / mean latency."""

    batch: int
    runs: int
    p50_ms: float
    p90_ms: float
    p95_ms: float
    p99_ms: float
    mean_ms: float
    std_ms: float
    min_ms: float
    max_ms: float
    throughput: float
    timer: str  # "perf_counter_ns" (host wall clock) or "cuda_event" (GPU compute time between two events)
    peak_memory_mb: float | None = None  # memory the runner added (weights, arenas, activations), peak so far
    cuda_graph: bool = False
    # GPU runners also time whole calls on the host: numpy in, copy to the device, run, copy back, synchronise.
    host_p50_ms: float | None = None
    host_mean_ms: float | None = None
    warmup_ms: float | None = None  # how long the untimed warm-up ran

    @property
    def cv(self) -> float:
        """Coefficient of variation of the per-call times (std / mean)."""
        return self.std_ms / self.mean_ms if self.mean_ms > 0 else 0.0

    def noise_warning(self) -> str | None:
        """One line when the timings are too spread to compare rows at the 10% level, else None."""
        reasons = []
        if self.runs >= 5 and self.cv > NOISY_CV:
            reasons.append(f"coefficient of variation {self.cv:.2f} > {NOISY_CV}")
        if self.runs >= 5 and self.p50_ms > 0 and self.p95_ms / self.p50_ms > NOISY_P95_P50:
            reasons.append(f"p95/p50 {self.p95_ms / self.p50_ms:.2f} > {NOISY_P95_P50}")
        if not reasons:
            return None
        return (f"batch {self.batch}: noisy timing ({', '.join(reasons)}): other load, clock changes or too few runs; "
                f"re-run on an idle machine or with --duration")

    def percentile(self, p: int) -> float:
        if p not in PERCENTILES:
            raise E2RNASError(f"latency percentile must be one of {', '.join(map(str, PERCENTILES))}, got {p}")
        return getattr(self, f"p{p}_ms")

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def summarize(times_ms: Sequence[float], *, batch: int, timer: str, peak_memory_mb: float | None = None,
              cuda_graph: bool = False, host_times_ms: Sequence[float] | None = None,
              warmup_ms: float | None = None) -> LatencyStats:
    t = np.asarray(times_ms, dtype=np.float64)
    if t.size == 0:
        raise E2RNASError("no timed runs: use --runs >= 1 or a longer --duration")
    p = np.percentile(t, PERCENTILES)
    mean = float(t.mean())
    host = np.asarray(host_times_ms, dtype=np.float64) if host_times_ms else None
    return LatencyStats(batch=batch, runs=int(t.size), p50_ms=float(p[0]), p90_ms=float(p[1]), p95_ms=float(p[2]),
                        p99_ms=float(p[3]), mean_ms=mean, std_ms=float(t.std(ddof=1)) if t.size > 1 else 0.0,
                        min_ms=float(t.min()), max_ms=float(t.max()),
                        throughput=batch / (mean / 1e3) if mean > 0 else math.inf, timer=timer,
                        peak_memory_mb=peak_memory_mb, cuda_graph=cuda_graph,
                        host_p50_ms=float(np.median(host)) if host is not None else None,
                        host_mean_ms=float(host.mean()) if host is not None else None, warmup_ms=warmup_ms)


def _proc_status_kb(key: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def _reset_rss_peak() -> bool:
    """Reset VmHWM (peak RSS) of this process; Linux >= 4.0 lets a process do it for itself."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


class Runner:
    """Base: context manager, timing loop, statistics. Subclasses load, bind an input and run."""

    name = "runner"
    timer = "perf_counter_ns"
    fixed_batch: int | None = None  # set when the artifact only accepts one batch size
    max_batch: int | None = None  # set when the artifact accepts batches up to a size (TensorRT profiles)
    input_shape: tuple[int, int, int] = (3, 32, 32)  # C, H, W
    cuda_graph = False

    def __init__(self) -> None:
        self._rss0: int | None = None
        self._rss_resettable = False

    # -- life cycle -------------------------------------------------------------------------------------------
    def __enter__(self) -> Runner:
        self._rss_resettable = _reset_rss_peak()
        self._rss0 = _proc_status_kb("VmRSS")
        self.activate()
        return self

    def __exit__(self, *exc: object) -> None:
        self.deactivate()

    def activate(self) -> None:
        raise NotImplementedError

    def deactivate(self) -> None:
        pass

    # -- inference --------------------------------------------------------------------------------------------
    def _infer(self, x: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def infer(self, x: np.ndarray) -> np.ndarray:
        """Logits for a float32 NCHW batch in [0, 1]; padded or split to the sizes the artifact accepts."""
        x = np.ascontiguousarray(x, dtype=np.float32)
        step = self.fixed_batch or self.max_batch
        if step is None or len(x) == step:
            return self._infer(x)
        outs = []
        for i in range(0, len(x), step):
            chunk = x[i:i + step]
            n = len(chunk)
            if self.fixed_batch and n < step:
                chunk = np.concatenate([chunk, np.zeros((step - n, *chunk.shape[1:]), np.float32)])
            outs.append(self._infer(chunk)[:n])
        return np.concatenate(outs)

    __call__ = infer  # a runner is a Predictor

    def accepts_batch(self, batch: int) -> bool:
        if self.fixed_batch is not None:
            return batch == self.fixed_batch
        return self.max_batch is None or batch <= self.max_batch

    # -- timing -----------------------------------------------------------------------------------------------
    def _bind(self, x: np.ndarray) -> None:
        """Place the timing input where the runtime reads it (device memory on a GPU)."""
        raise NotImplementedError

    def _run_bound(self) -> None:
        raise NotImplementedError

    def _timed_run(self) -> float:
        t0 = time.perf_counter_ns()
        self._run_bound()
        return (time.perf_counter_ns() - t0) / 1e6

    def _peak_memory_mb(self) -> float | None:
        hwm = _proc_status_kb("VmHWM")
        if not self._rss_resettable or hwm is None or self._rss0 is None:
            return None
        return max(0.0, (hwm - self._rss0) / 1024)

    def _host_run(self, x: np.ndarray) -> float:
        """One whole call timed on the host: input copied in, run, output copied back (GPU runners)."""
        t0 = time.perf_counter_ns()
        self._infer(x)
        return (time.perf_counter_ns() - t0) / 1e6

    def measure(self, batch: int, *, warmup: int = 10, runs: int | None = None, duration: float | None = None,
                seed: int = 0, warmup_s: float | None = None) -> LatencyStats:
        """Time ``runs`` calls (or calls for ``duration`` seconds) on a random batch after the warm-up.

        The warm-up is ``warmup`` calls and, on GPU runners, at least ``warmup_s`` seconds (default 0.2 s, as
        trtexec: a GPU needs time to reach its boost clock). GPU runners report GPU compute time (CUDA events)
        and, as ``host_p50_ms``, the same number of whole calls timed on the host with the copies included."""
        if not self.accepts_batch(batch):
            raise E2RNASError(f"{self.name} artifact does not accept batch {batch} "
                              f"(fixed batch {self.fixed_batch}, max batch {self.max_batch})")
        if runs is not None and runs < 1:
            raise E2RNASError("runs must be >= 1")
        if runs is None and duration is None:
            runs = DEFAULT_RUNS
        gpu = self.on_gpu
        warmup_s = (GPU_WARMUP_S if gpu else 0.0) if warmup_s is None else warmup_s
        x = np.random.default_rng(seed).random((batch, *self.input_shape), dtype=np.float32)
        self._bind(x)
        t0, calls = time.perf_counter(), 0
        while calls < max(0, warmup) or time.perf_counter() - t0 < warmup_s:
            self._run_bound()
            calls += 1
            if gpu and calls % 8 == 0:
                self._synchronize()
        if gpu:
            self._synchronize()
        warmup_ms = (time.perf_counter() - t0) * 1e3
        times: list[float] = []
        start = time.perf_counter()
        while True:
            times.append(self._timed_run())
            if runs is not None and len(times) >= runs:
                break
            if duration is not None and time.perf_counter() - start >= duration and len(times) >= MIN_RUNS:
                break
        host = [self._host_run(x) for _ in range(len(times))] if gpu else None
        return summarize(times, batch=batch, timer=self.timer, peak_memory_mb=self._peak_memory_mb(),
                         cuda_graph=self.cuda_graph, host_times_ms=host, warmup_ms=warmup_ms)

    @property
    def on_gpu(self) -> bool:
        return self.timer == "cuda_event"

    def _synchronize(self) -> None:
        """Wait for queued GPU work (GPU runners); a no-op on the CPU."""

    def info(self) -> dict[str, Any]:
        return {"runner": self.name, "input_shape": list(self.input_shape), "fixed_batch": self.fixed_batch,
                "max_batch": self.max_batch}


# ---------------------------------------------------------------------------------------------------- torch
class TorchRunner(Runner):
    """A torch module in eval mode, fp32, on ``device``; optional channels_last and CUDA graph replay."""

    name = "torch"

    def __init__(self, module: Any, *, device: str = "cpu", input_shape: tuple[int, int, int] = (3, 32, 32),
                 threads: int | None = None, channels_last: bool = False, cuda_graph: bool = False,
                 tf32: bool = False):
        super().__init__()
        import torch

        self.device = torch.device(device)
        if cuda_graph and self.device.type != "cuda":
            raise E2RNASError("CUDA graph replay needs a CUDA device")
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise E2RNASError(f"torch cannot see a CUDA GPU for device {device!r}; use --target cpu")
        self.module, self.input_shape, self.threads = module, tuple(input_shape), threads
        self.channels_last, self.cuda_graph, self.tf32 = channels_last, cuda_graph, tf32
        self.timer = "cuda_event" if self.device.type == "cuda" else "perf_counter_ns"
        self._saved_threads: int | None = None
        self._saved_tf32: tuple[bool, bool] | None = None

    @classmethod
    def from_file(cls, path: str | Path, **kwargs: Any) -> TorchRunner:
        from e2rnas.model_io import load_model

        loaded = load_model(path)
        return cls(loaded.model, input_shape=(3, loaded.spec.input_size, loaded.spec.input_size), **kwargs)

    def activate(self) -> None:
        import torch

        if self.threads:
            self._saved_threads = torch.get_num_threads()
            torch.set_num_threads(self.threads)
        self.module = self.module.eval().to(self.device)
        if self.channels_last:
            self.module = self.module.to(memory_format=torch.channels_last)
        if self.device.type == "cuda":
            from e2rnas.deploy_targets.gpu_identity import check_torch_on_device

            problem = check_torch_on_device(self.device)
            if problem:
                raise E2RNASError(problem)
            # fp32 means fp32: cuDNN convolutions default to TF32 on Ampere and later (10-bit mantissa).
            self._saved_tf32 = _set_tf32(self.tf32)
            torch.cuda.synchronize(self.device)
            self._cuda0 = torch.cuda.memory_allocated(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        self._graph = None

    def deactivate(self) -> None:
        import torch

        self._graph = None
        if self.channels_last:  # the module may be shared: give it back in the default layout
            self.module = self.module.to(memory_format=torch.contiguous_format)
        if self._saved_threads is not None:
            torch.set_num_threads(self._saved_threads)
        if self._saved_tf32 is not None:
            _set_tf32(*self._saved_tf32)
            self._saved_tf32 = None

    def _synchronize(self) -> None:
        if self.device.type == "cuda":
            import torch

            torch.cuda.synchronize(self.device)

    def _host_run(self, x: np.ndarray) -> float:
        if self._graph is None:
            return super()._host_run(x)
        import torch

        t0 = time.perf_counter_ns()  # the graph reads its static input buffer: copy in, replay, copy out
        self._x.copy_(torch.from_numpy(x).to(self.device, non_blocking=False).contiguous(memory_format=
                                                                                          self._x_format()))
        self._graph.replay()
        self._y.float().cpu()
        return (time.perf_counter_ns() - t0) / 1e6

    def _x_format(self) -> Any:
        import torch

        return torch.channels_last if self.channels_last else torch.contiguous_format

    def _to_device(self, x: np.ndarray) -> Any:
        import torch

        t = torch.from_numpy(x).to(self.device)
        return t.contiguous(memory_format=torch.channels_last) if self.channels_last else t

    def _infer(self, x: np.ndarray) -> np.ndarray:
        import torch

        with torch.inference_mode():
            return self.module(self._to_device(x)).float().cpu().numpy()

    def _bind(self, x: np.ndarray) -> None:
        import torch

        self._x = self._to_device(x)
        self._graph = None
        if self.cuda_graph:
            # Warm up on a side stream, then capture one call; replay() re-runs it on the same static buffers.
            stream = torch.cuda.Stream(self.device)
            stream.wait_stream(torch.cuda.current_stream(self.device))
            with torch.cuda.stream(stream), torch.inference_mode():
                for _ in range(3):
                    self.module(self._x)
            torch.cuda.current_stream(self.device).wait_stream(stream)
            self._graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(self._graph), torch.inference_mode():
                self._y = self.module(self._x)

    def _run_bound(self) -> None:
        import torch

        if self._graph is not None:
            self._graph.replay()
            return
        with torch.inference_mode():
            self._y = self.module(self._x)

    def _timed_run(self) -> float:
        if self.device.type != "cuda":
            return super()._timed_run()
        import torch

        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        self._run_bound()
        end.record()
        end.synchronize()
        return float(start.elapsed_time(end))

    def _peak_memory_mb(self) -> float | None:
        if self.device.type != "cuda":
            return super()._peak_memory_mb()
        import torch

        return (torch.cuda.max_memory_allocated(self.device) - self._cuda0) / 2**20

    def info(self) -> dict[str, Any]:
        return {**super().info(), "device": str(self.device), "channels_last": self.channels_last,
                "cuda_graph": self.cuda_graph, "threads": self.threads,
                "tf32": self.tf32 if self.device.type == "cuda" else None}


def _set_tf32(enabled: bool, cudnn: bool | None = None) -> tuple[bool, bool]:
    """Set TF32 for cuBLAS matmuls and cuDNN convolutions (``cudnn`` defaults to ``enabled``); return the old pair."""
    import warnings

    import torch

    with warnings.catch_warnings():  # torch >= 2.9 suggests its fp32_precision API; the flags still work
        warnings.simplefilter("ignore")
        old = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
        torch.backends.cuda.matmul.allow_tf32 = enabled
        torch.backends.cudnn.allow_tf32 = enabled if cudnn is None else cudnn
    return old


# ---------------------------------------------------------------------------------------------- ONNX Runtime
GRAPH_OPT_LEVELS = {"disable": "ORT_DISABLE_ALL", "basic": "ORT_ENABLE_BASIC", "extended": "ORT_ENABLE_EXTENDED",
                    "all": "ORT_ENABLE_ALL"}
#: ONNX Runtime's input type string -> the numpy dtype fed to it (images arrive as float32 in [0, 1])
ORT_INPUT_DTYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16}


class OrtRunner(Runner):
    """An ONNX Runtime session. The providers the session really uses are recorded in ``providers``; a requested
    GPU provider missing from them (ONNX Runtime only warns and runs on the CPU) is an error."""

    name = "onnxruntime"

    def __init__(self, path: str | Path, *, providers: Sequence[str] = ("CPUExecutionProvider",),
                 threads: int | None = None, optimization: str = "all", execution_mode: str = "sequential",
                 spinning: bool | None = None, inter_op_threads: int | None = None, profile: bool = False,
                 profile_prefix: str | Path | None = None):
        super().__init__()
        if optimization not in GRAPH_OPT_LEVELS:
            raise E2RNASError(f"unknown graph optimisation {optimization!r}; choose from {', '.join(GRAPH_OPT_LEVELS)}")
        if execution_mode not in ("sequential", "parallel"):
            raise E2RNASError(f"execution mode must be sequential or parallel, got {execution_mode!r}")
        self.path = Path(path)
        if not self.path.is_file():
            raise E2RNASError(f"ONNX file not found: {self.path}")
        self.requested = list(providers)
        self.threads, self.optimization, self.execution_mode = threads, optimization, execution_mode
        self.spinning, self.inter_op_threads = spinning, inter_op_threads
        self.profile, self.profile_prefix = profile, profile_prefix
        self.providers: list[str] = []
        self.session: Any = None

    def _session_options(self) -> Any:
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.graph_optimization_level = getattr(ort.GraphOptimizationLevel, GRAPH_OPT_LEVELS[self.optimization])
        opts.execution_mode = (ort.ExecutionMode.ORT_SEQUENTIAL if self.execution_mode == "sequential"
                               else ort.ExecutionMode.ORT_PARALLEL)
        if self.threads:
            opts.intra_op_num_threads = self.threads
        if self.inter_op_threads:
            opts.inter_op_num_threads = self.inter_op_threads
        if self.spinning is not None:
            opts.add_session_config_entry("session.intra_op.allow_spinning", "1" if self.spinning else "0")
        if self.profile:
            opts.enable_profiling = True
            if self.profile_prefix:
                opts.profile_file_prefix = str(self.profile_prefix)
        opts.log_severity_level = 3  # errors only: the fall-back warning is turned into our own error below
        return opts

    def activate(self) -> None:
        import onnxruntime as ort

        providers = list(self.requested)
        if "CPUExecutionProvider" not in providers:
            providers.append("CPUExecutionProvider")  # ops a GPU provider lacks run here, as ORT intends
        try:
            self.session = ort.InferenceSession(str(self.path), sess_options=self._session_options(),
                                                providers=providers)
        except Exception as exc:  # ORT raises its own Fail/InvalidGraph types
            raise E2RNASError(f"ONNX Runtime cannot load {self.path}: {str(exc).splitlines()[0]}") from exc
        self.providers = self.session.get_providers()
        missing = [p for p in self.requested if p != "CPUExecutionProvider" and p not in self.providers]
        if missing:
            from e2rnas.deploy_targets.env import onnxruntime_install_problem

            self.session = None
            fix = onnxruntime_install_problem() or ("install onnxruntime-gpu matching your CUDA in place of "
                                                    "onnxruntime, or use --target cpu")
            raise E2RNASError(
                f"ONNX Runtime fell back to the CPU: {', '.join(missing)} requested, session uses "
                f"{', '.join(self.providers)} (available: {', '.join(ort.get_available_providers())}); {fix}")
        inp = self.session.get_inputs()[0]
        self.input_name = inp.name
        # an fp16 file (export --precision fp16) declares float16 input and output: feed what the session declares
        self.input_dtype = ORT_INPUT_DTYPES.get(inp.type)
        if self.input_dtype is None:
            self.session = None
            raise E2RNASError(f"{self.path}: input {inp.name!r} is {inp.type}; a runner feeds float or float16 images")
        dims = list(inp.shape)
        if len(dims) != 4 or not all(isinstance(d, int) for d in dims[1:]):
            raise E2RNASError(f"{self.path}: expected an NCHW image input with fixed C, H, W, got {dims}")
        self.input_shape = tuple(dims[1:])
        self.fixed_batch = dims[0] if isinstance(dims[0], int) and dims[0] > 0 else None
        self._gpu = any(p in self.providers for p in ("CUDAExecutionProvider", "TensorrtExecutionProvider"))
        # ORT runs on its own CUDA stream and synchronises at the end of Run(): the host clock around a Run with
        # inputs and outputs bound on the device is the GPU time plus launch overhead, and the row says so.
        self.timer = "perf_counter_ns (device I/O binding)" if self._gpu else "perf_counter_ns"

    def deactivate(self) -> None:
        self.session = None

    def end_profiling(self) -> Path | None:
        return Path(self.session.end_profiling()) if self.profile and self.session is not None else None

    @property
    def on_gpu(self) -> bool:
        return bool(getattr(self, "_gpu", False))

    def _infer(self, x: np.ndarray) -> np.ndarray:
        out = self.session.run(None, {self.input_name: x.astype(self.input_dtype, copy=False)})[0]
        return out if out.dtype == np.float32 else out.astype(np.float32)

    def _bind(self, x: np.ndarray) -> None:
        x = x.astype(self.input_dtype, copy=False)  # converted once, outside the timed calls
        self._feed = {self.input_name: x}
        self._binding = None
        if self._gpu:  # keep input and output on the GPU so the timing is the model, not PCIe copies
            import onnxruntime as ort

            self._binding = self.session.io_binding()
            self._binding.bind_ortvalue_input(self.input_name, ort.OrtValue.ortvalue_from_numpy(x, "cuda", 0))
            self._binding.bind_output(self.session.get_outputs()[0].name, "cuda")

    def _run_bound(self) -> None:
        if self._binding is not None:
            self.session.run_with_iobinding(self._binding)
        else:
            self.session.run(None, self._feed)

    def info(self) -> dict[str, Any]:
        return {**super().info(), "providers": self.providers, "requested_providers": self.requested,
                "threads": self.threads, "optimization": self.optimization, "execution_mode": self.execution_mode,
                "spinning": self.spinning}


def profile_op_share(profile_json: str | Path) -> dict[str, float]:
    """Fraction of kernel time per ONNX op type, from an ONNX Runtime profile (``enable_profiling``)."""
    events = json.loads(Path(profile_json).read_text())
    totals: dict[str, float] = {}
    for ev in events:
        if ev.get("cat") == "Node" and str(ev.get("name", "")).endswith("_kernel_time"):
            op = ev.get("args", {}).get("op_name", "?")
            totals[op] = totals.get(op, 0.0) + float(ev.get("dur", 0))
    total = sum(totals.values()) or 1.0
    return dict(sorted(((k, v / total) for k, v in totals.items()), key=lambda kv: -kv[1]))


# ------------------------------------------------------------------------------------------------- TensorRT
class TensorRTRunner(Runner):
    """A serialised TensorRT engine (TensorRT >= 8.5 tensor API: set_tensor_address + execute_async_v3), with
    buffers and CUDA events from torch; ``cuda_graph`` captures one enqueue and replays it."""

    name = "tensorrt"
    timer = "cuda_event"

    def __init__(self, path: str | Path, *, cuda_graph: bool = False, device: int = 0):
        super().__init__()
        self.path, self.cuda_graph, self.device_index = Path(path), cuda_graph, device
        if not self.path.is_file():
            raise E2RNASError(f"TensorRT engine not found: {self.path}")

    def activate(self) -> None:
        try:
            import tensorrt as trt
        except ImportError as exc:
            raise E2RNASError("TensorRT is not installed here: install it (pip install tensorrt) on the GPU "
                              "machine, or measure the engine on its device with --host") from exc
        import torch

        if not torch.cuda.is_available():
            raise E2RNASError("a TensorRT engine needs a CUDA GPU, and torch sees none here")
        self._trt, self._torch = trt, torch
        self.device = torch.device("cuda", self.device_index)
        torch.cuda.set_device(self.device)
        self._cuda0 = torch.cuda.memory_allocated(self.device)
        torch.cuda.reset_peak_memory_stats(self.device)
        self._logger = trt.Logger(trt.Logger.WARNING)
        self._runtime = trt.Runtime(self._logger)
        from e2rnas.deploy_targets.gpu_identity import (
            current_identity,
            engine_identity_notes,
            engine_identity_problem,
        )

        current = current_identity(self.device_index)
        if current is not None and current.tensorrt is None:  # apt/tar TensorRT has no pip metadata: ask the module
            current = dataclasses.replace(current, tensorrt=trt.__version__)
        problem = engine_identity_problem(self.path, current)
        if problem:
            raise E2RNASError(problem)
        self.identity_notes = engine_identity_notes(self.path, current)
        self.engine = self._runtime.deserialize_cuda_engine(self.path.read_bytes())
        if self.engine is None:
            raise E2RNASError(f"{self.path}: TensorRT could not deserialise the engine (built for another "
                              f"TensorRT version or GPU? this is TensorRT {trt.__version__})")
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        inputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        outputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        if len(inputs) != 1 or len(outputs) != 1:
            raise E2RNASError(f"{self.path}: expected one input and one output, got {inputs} -> {outputs}")
        self.input_name, self.output_name = inputs[0], outputs[0]
        shape = tuple(self.engine.get_tensor_shape(self.input_name))
        self.input_shape = tuple(int(d) for d in shape[1:])
        if shape[0] == -1:
            _, _, max_shape = self.engine.get_tensor_profile_shape(self.input_name, 0)
            self.max_batch = int(max_shape[0])
        else:
            self.fixed_batch = int(shape[0])
        self._in_dtype = _torch_dtype(trt.nptype(self.engine.get_tensor_dtype(self.input_name)))
        self._out_dtype = _torch_dtype(trt.nptype(self.engine.get_tensor_dtype(self.output_name)))
        self._stream = torch.cuda.Stream(self.device)
        self._graph = None

    def deactivate(self) -> None:
        self._graph = None
        self.context = None
        self.engine = None

    def _prepare(self, x: np.ndarray) -> None:
        torch = self._torch
        self._x = torch.from_numpy(x).to(self.device).to(self._in_dtype).contiguous()
        if not self.context.set_input_shape(self.input_name, tuple(self._x.shape)):
            raise E2RNASError(f"{self.path}: TensorRT refused input shape {tuple(self._x.shape)} (outside the "
                              f"engine's profile: fixed batch {self.fixed_batch}, max batch {self.max_batch})")
        out_shape = tuple(self.context.get_tensor_shape(self.output_name))
        self._y = torch.empty(out_shape, dtype=self._out_dtype, device=self.device)
        self.context.set_tensor_address(self.input_name, self._x.data_ptr())
        self.context.set_tensor_address(self.output_name, self._y.data_ptr())
        self._stream.wait_stream(torch.cuda.current_stream(self.device))  # the copy above ran on another stream

    def _enqueue(self) -> None:
        if not self.context.execute_async_v3(self._stream.cuda_stream):
            raise E2RNASError(f"{self.path}: TensorRT execution failed")

    def _infer(self, x: np.ndarray) -> np.ndarray:
        self._graph = None
        self._prepare(x)
        self._enqueue()
        self._stream.synchronize()
        return self._y.float().cpu().numpy()

    def _bind(self, x: np.ndarray) -> None:
        self._prepare(x)
        self._enqueue()  # one call before capture: TensorRT does shape-dependent set-up on the first enqueue
        self._stream.synchronize()
        self._graph = None
        if self.cuda_graph:
            torch = self._torch
            self._graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(self._graph, stream=self._stream):
                self._enqueue()

    def _run_bound(self) -> None:
        # A graph replays on the *current* stream (torch.cuda.CUDAGraph.replay): make it the runner's own, so that
        # warm-up replays are on the stream ``_synchronize`` waits on and not queued ahead of the first timed call.
        if self._graph is not None:
            with self._torch.cuda.stream(self._stream):
                self._graph.replay()
        else:
            self._enqueue()

    def _timed_run(self) -> float:
        torch = self._torch
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record(self._stream)
        self._run_bound()
        end.record(self._stream)
        end.synchronize()
        return float(start.elapsed_time(end))

    def _synchronize(self) -> None:
        self._stream.synchronize()

    def _peak_memory_mb(self) -> float | None:
        # TensorRT's activation memory is its own allocation: add the engine's device-memory need to the buffers.
        size = getattr(self.engine, "device_memory_size_v2", None) or getattr(self.engine, "device_memory_size", 0)
        return (self._torch.cuda.max_memory_allocated(self.device) - self._cuda0 + int(size)) / 2**20

    def info(self) -> dict[str, Any]:
        return {**super().info(), "tensorrt": getattr(self._trt, "__version__", None), "cuda_graph": self.cuda_graph,
                "identity_notes": getattr(self, "identity_notes", [])}


def _torch_dtype(np_dtype: Any) -> Any:
    import torch

    return {np.dtype(np.float32): torch.float32, np.dtype(np.float16): torch.float16,
            np.dtype(np.int8): torch.int8, np.dtype(np.int32): torch.int32}[np.dtype(np_dtype)]


# ------------------------------------------------------------------------------------------------- factory
#: artifact kind -> (backend name, suffix test)
def artifact_backend(path: str | Path) -> str:
    suffix = Path(path).suffix
    backend = {".pt": "torch", ".onnx": "onnxruntime", ".engine": "tensorrt", ".plan": "tensorrt"}.get(suffix)
    if backend is None:
        raise E2RNASError(f"{path}: unknown artifact type {suffix!r}; expected model.pt, .onnx, .engine or .plan")
    return backend


def artifact_format(path: str | Path) -> str:
    """A short label for tables: torch, onnx, onnx-int8, tensorrt-fp16, ..."""
    p = Path(path)
    backend = artifact_backend(p)
    if backend == "torch":
        return "torch"
    parts = p.name.split(".")
    precision = next((q for q in ("int8", "fp16", "fp32") if q in parts), None)
    base = "onnx" if backend == "onnxruntime" else "tensorrt"
    return f"{base}-{precision}" if precision and not (base == "onnx" and precision == "fp32") else base


RUNNERS: dict[str, Callable[..., Runner]] = {
    "torch": lambda path, target, threads, cuda_graph: TorchRunner.from_file(
        path, device=target.device, threads=threads, cuda_graph=cuda_graph and target.device == "cuda"),
    "onnxruntime": lambda path, target, threads, cuda_graph: OrtRunner(
        path, providers=target.ort_providers, threads=threads),
    "tensorrt": lambda path, target, threads, cuda_graph: TensorRTRunner(path, cuda_graph=cuda_graph),
}


def open_runner(path: str | Path, *, target: Any, threads: int | None = None,
                cuda_graph: bool | None = None) -> Runner:
    """The runner for an artifact on a (local) target; the target must list the artifact's backend."""
    backend = artifact_backend(path)
    if backend not in target.backends:
        raise E2RNASError(f"target {target.name} does not run {backend} artifacts ({Path(path).name}); "
                          f"it runs {', '.join(target.backends)}")
    if target.device == "cuda" and not target.remote:
        # A named GPU target (v100, a100, h100) measured on another GPU would be relabelled numbers: refuse.
        from e2rnas.deploy_targets.gpu_identity import current_identity, target_problem

        problem = target_problem(target_name=target.name, compute_capability=target.compute_capability,
                                 current=current_identity())
        if problem:
            raise E2RNASError(problem)
    return RUNNERS[backend](Path(path), target, threads, target.cuda_graph if cuda_graph is None else cuda_graph)
