#!/usr/bin/env python3
"""Latency of one ONNX model or TensorRT engine on the device this script runs on; prints one JSON object.

Copied to the device by ``e2rnas bench --host`` (``e2rnas.deploy_targets.remote``) and run there, so it imports
only the standard library, numpy and onnxruntime or tensorrt (CUDA through ctypes on libcudart): no e2rnas, no
torch. Backends, with ``--backend auto``: trtexec when present, else the TensorRT Python API, else ONNX Runtime.
Device facts (model, L4T/JetPack, TensorRT, nvpmodel mode, jetson_clocks, tegrastats power) are all optional.
Exit code 0 with ``{"ok": true, ...}``; 1 with ``{"ok": false, "error": "..."}``.
"""

from __future__ import annotations

import argparse
import ctypes
import glob
import hashlib
import json
import math
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np

PERCENTILES = (50, 90, 95, 99)
TRTEXEC_PATHS = ("/usr/src/tensorrt/bin/trtexec", "/usr/bin/trtexec")


class RunnerError(Exception):
    pass


# ----------------------------------------------------------------------------------------------- statistics
def summarize(times_ms, batch, timer):
    t = np.asarray(times_ms, dtype=np.float64)
    if t.size == 0:
        raise RunnerError("no timed runs")
    p = np.percentile(t, PERCENTILES)
    mean = float(t.mean())
    return {"batch": batch, "runs": int(t.size), "p50_ms": float(p[0]), "p90_ms": float(p[1]),
            "p95_ms": float(p[2]), "p99_ms": float(p[3]), "mean_ms": mean,
            "std_ms": float(t.std(ddof=1)) if t.size > 1 else 0.0, "min_ms": float(t.min()),
            "max_ms": float(t.max()), "throughput": batch / (mean / 1e3) if mean > 0 else None, "timer": timer}


def timing_loop(run, warmup, runs, duration, timed=None):
    for _ in range(warmup):
        run()
    times = []
    start = time.perf_counter()
    while True:
        if timed is not None:
            times.append(timed())
        else:
            t0 = time.perf_counter_ns()
            run()
            times.append((time.perf_counter_ns() - t0) / 1e6)
        if runs is not None and len(times) >= runs:
            return times
        if duration is not None and time.perf_counter() - start >= duration and len(times) >= 5:
            return times


# ------------------------------------------------------------------------------------------------ facts
def _read(path):
    try:
        with open(path, "rb") as fh:
            return fh.read().decode(errors="replace").replace("\x00", "").strip()
    except OSError:
        return None


def _cmd(argv, timeout=10):
    exe = shutil.which(argv[0])
    if exe is None:
        return None
    try:
        out = subprocess.run([exe, *argv[1:]], capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return (out.stdout + out.stderr).strip() if out.returncode == 0 else None


def _tensorrt_version():
    try:
        import tensorrt

        return tensorrt.__version__
    except Exception:
        return _cmd(["dpkg-query", "-W", "-f=${Version}", "tensorrt"])


def device_facts():
    facts = {"hostname": platform.node(), "machine": platform.machine(), "platform": platform.platform(),
             "python": platform.python_version(), "numpy": np.__version__, "cpu_count": os.cpu_count(),
             "model": _read("/proc/device-tree/model")}
    cpu = _read("/proc/cpuinfo") or ""
    m = re.search(r"^(?:model name|Model|Hardware)\s*:\s*(.+)$", cpu, re.M)
    facts["cpu"] = m.group(1).strip() if m else None
    tegra = _read("/etc/nv_tegra_release")
    if tegra:
        m = re.search(r"R(\d+)\s*\(release\),\s*REVISION:\s*([\d.]+)", tegra)
        facts["l4t"] = f"{m.group(1)}.{m.group(2)}" if m else tegra.splitlines()[0]
    facts["jetpack"] = _cmd(["dpkg-query", "-W", "-f=${Version}", "nvidia-jetpack"])
    facts["tensorrt"] = _tensorrt_version()
    try:
        import onnxruntime

        facts["onnxruntime"] = onnxruntime.__version__
        facts["onnxruntime_providers"] = onnxruntime.get_available_providers()
    except Exception:
        facts["onnxruntime"] = None
    nvp = _cmd(["nvpmodel", "-q"])
    if nvp:
        m = re.search(r"NV Power Mode:\s*(\S+)", nvp)
        facts["power_mode"] = m.group(1) if m else nvp.splitlines()[0]
        ids = [ln.strip() for ln in nvp.splitlines() if ln.strip().isdigit()]
        facts["power_mode_id"] = int(ids[0]) if ids else None
    clocks = _cmd(["jetson_clocks", "--show"])
    if clocks:
        facts["jetson_clocks"] = "\n".join(clocks.splitlines()[:12])
    return facts


class PowerSampler:
    """tegrastats in the background during timing; mean VDD_IN (or POM_5V_IN) in mW when the device reports it."""

    def __init__(self):
        self.proc = None
        self.exe = shutil.which("tegrastats")

    def __enter__(self):
        if self.exe:
            try:
                self.proc = subprocess.Popen([self.exe, "--interval", "100"], stdout=subprocess.PIPE,
                                             stderr=subprocess.DEVNULL, text=True)
            except OSError:
                self.proc = None
        return self

    def __exit__(self, *exc):
        self.lines = []
        if self.proc is not None:
            self.proc.terminate()
            try:
                out, _ = self.proc.communicate(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                out, _ = self.proc.communicate()
            self.lines = out.splitlines()

    def result(self):
        values = []
        for line in getattr(self, "lines", []):
            m = re.search(r"(?:VDD_IN|POM_5V_IN)\s+(\d+)(?:mW)?/(\d+)", line)
            if m:
                values.append(int(m.group(1)))
        if not values:
            return None
        return {"mean_mw": sum(values) / len(values), "samples": len(values), "rail": "VDD_IN/POM_5V_IN",
                "last_line": self.lines[-1][:300] if self.lines else None}


# ------------------------------------------------------------------------------------------- ONNX Runtime
def run_onnxruntime(args, batches):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.log_severity_level = 3
    if args.threads:
        opts.intra_op_num_threads = args.threads
    requested = [p for p in args.providers.split(",") if p]
    providers = requested + ([] if "CPUExecutionProvider" in requested else ["CPUExecutionProvider"])
    session = ort.InferenceSession(args.artifact, sess_options=opts, providers=providers)
    used = session.get_providers()
    missing = [p for p in requested if p != "CPUExecutionProvider" and p not in used]
    if missing:
        raise RunnerError(f"ONNX Runtime fell back to the CPU: {', '.join(missing)} requested, session uses "
                          f"{', '.join(used)}")
    inp = session.get_inputs()[0]
    shape = [d if isinstance(d, int) else None for d in inp.shape]
    chw = tuple(shape[1:]) if all(shape[1:]) else args.shape
    results, errors = [], {}
    for b in batches:
        if shape[0] not in (None, b):
            errors[str(b)] = f"the model has a fixed batch of {shape[0]}"
            continue
        x = np.random.default_rng(0).random((b, *chw), dtype=np.float32)
        feed = {inp.name: x}
        times = timing_loop(lambda feed=feed: session.run(None, feed), args.warmup, args.runs, args.duration)
        results.append(summarize(times, b, "perf_counter_ns"))
    return {"backend": "onnxruntime", "providers": used}, results, errors


# ----------------------------------------------------------------------------------- CUDA through ctypes
class Cuda:
    """The few CUDA runtime calls a TensorRT timing needs, from libcudart (no pycuda / cuda-python needed)."""

    def __init__(self):
        names = ["libcudart.so"] + sorted(glob.glob("/usr/local/cuda*/lib64/libcudart.so*"), reverse=True)
        names += sorted(glob.glob("/usr/local/cuda*/targets/*/lib/libcudart.so*"), reverse=True)
        self.lib = None
        for name in names:
            try:
                self.lib = ctypes.CDLL(name)
                break
            except OSError:
                continue
        if self.lib is None:
            raise RunnerError("libcudart not found: cannot run a TensorRT engine from Python on this device")
        vp = ctypes.c_void_p
        self.lib.cudaEventElapsedTime.argtypes = [ctypes.POINTER(ctypes.c_float), vp, vp]
        self.lib.cudaFree.argtypes = [vp]
        self.lib.cudaStreamSynchronize.argtypes = [vp]
        self.lib.cudaEventSynchronize.argtypes = [vp]
        self.lib.cudaGraphLaunch.argtypes = [vp, vp]
        self.lib.cudaEventRecord.argtypes = [vp, vp]
        self.lib.cudaMemcpy.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
        self.lib.cudaMalloc.argtypes = [ctypes.POINTER(ctypes.c_void_p), ctypes.c_size_t]
        self.lib.cudaStreamBeginCapture.argtypes = [ctypes.c_void_p, ctypes.c_int]
        self.lib.cudaStreamEndCapture.argtypes = [ctypes.c_void_p, ctypes.POINTER(ctypes.c_void_p)]
        self.lib.cudaGraphInstantiateWithFlags.argtypes = [ctypes.POINTER(ctypes.c_void_p), ctypes.c_void_p,
                                                           ctypes.c_ulonglong]

    def check(self, status, what):
        if status != 0:
            raise RunnerError(f"CUDA error {status} in {what}")

    def malloc(self, nbytes):
        ptr = ctypes.c_void_p()
        self.check(self.lib.cudaMalloc(ctypes.byref(ptr), ctypes.c_size_t(nbytes)), "cudaMalloc")
        return ptr.value

    def copy(self, dst, src, nbytes, kind):  # kind 1: host to device, 2: device to host
        self.check(self.lib.cudaMemcpy(dst, src, nbytes, kind), "cudaMemcpy")

    def handle(self, create):
        h = ctypes.c_void_p()
        self.check(getattr(self.lib, create)(ctypes.byref(h)), create)
        return h.value

    def elapsed_ms(self, start, end):
        ms = ctypes.c_float()
        self.check(self.lib.cudaEventElapsedTime(ctypes.byref(ms), start, end), "cudaEventElapsedTime")
        return float(ms.value)


def _build_engine(trt, args, max_batch):
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = 0
    if hasattr(trt.NetworkDefinitionCreationFlag, "EXPLICIT_BATCH"):  # the default (and deprecated) in TRT 10
        flags = 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    with open(args.artifact, "rb") as fh:
        if not parser.parse(fh.read()):
            raise RunnerError("TensorRT cannot parse the ONNX file: " + str(parser.get_error(0)))
    config = builder.create_builder_config()
    if args.workspace_mb:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, args.workspace_mb << 20)
    if args.precision == "fp16":
        config.set_flag(trt.BuilderFlag.FP16)
    inp = network.get_input(0)
    chw = tuple(inp.shape)[1:]
    if any(d < 0 for d in chw):
        chw = args.shape
    profile = builder.create_optimization_profile()
    profile.set_shape(inp.name, (1, *chw), (max_batch, *chw), (max_batch, *chw))
    config.add_optimization_profile(profile)
    blob = builder.build_serialized_network(network, config)
    if blob is None:
        raise RunnerError("TensorRT failed to build an engine from the ONNX file")
    return bytes(blob)


def run_tensorrt(args, batches):
    import tensorrt as trt

    cuda = Cuda()
    if args.artifact.endswith(".onnx"):
        blob = _build_engine(trt, args, max(batches))
    else:
        with open(args.artifact, "rb") as fh:
            blob = fh.read()
    runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
    engine = runtime.deserialize_cuda_engine(blob)
    if engine is None:
        raise RunnerError(f"TensorRT {trt.__version__} cannot deserialise the engine (another version or GPU?)")
    context = engine.create_execution_context()
    names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
    inp = next(n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT)
    out = next(n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT)
    in_dtype, out_dtype = trt.nptype(engine.get_tensor_dtype(inp)), trt.nptype(engine.get_tensor_dtype(out))
    shape = tuple(engine.get_tensor_shape(inp))
    stream = cuda.handle("cudaStreamCreate")
    start, end = cuda.handle("cudaEventCreate"), cuda.handle("cudaEventCreate")
    results, errors = [], {}
    for b in batches:
        if shape[0] != -1 and shape[0] != b:
            errors[str(b)] = f"the engine has a fixed batch of {shape[0]}"
            continue
        x = np.random.default_rng(0).random((b, *shape[1:]), dtype=np.float32).astype(in_dtype)
        context.set_input_shape(inp, x.shape)
        y_shape = tuple(context.get_tensor_shape(out))
        d_x = cuda.malloc(x.nbytes)
        d_y = cuda.malloc(int(np.prod(y_shape)) * np.dtype(out_dtype).itemsize)
        try:
            cuda.copy(d_x, x.ctypes.data, x.nbytes, 1)
            context.set_tensor_address(inp, d_x)
            context.set_tensor_address(out, d_y)

            def enqueue():
                if not context.execute_async_v3(stream):
                    raise RunnerError("TensorRT execution failed")

            enqueue()
            cuda.check(cuda.lib.cudaStreamSynchronize(stream), "cudaStreamSynchronize")
            run = enqueue
            if args.cuda_graph:
                graph, exe = ctypes.c_void_p(), ctypes.c_void_p()
                cuda.check(cuda.lib.cudaStreamBeginCapture(stream, 2), "cudaStreamBeginCapture")  # relaxed mode
                enqueue()
                cuda.check(cuda.lib.cudaStreamEndCapture(stream, ctypes.byref(graph)), "cudaStreamEndCapture")
                cuda.check(cuda.lib.cudaGraphInstantiateWithFlags(ctypes.byref(exe), graph, 0), "instantiate")

                def run(exe=exe):
                    cuda.check(cuda.lib.cudaGraphLaunch(exe, stream), "cudaGraphLaunch")

            def timed(run=run):
                cuda.check(cuda.lib.cudaEventRecord(start, stream), "cudaEventRecord")
                run()
                cuda.check(cuda.lib.cudaEventRecord(end, stream), "cudaEventRecord")
                cuda.check(cuda.lib.cudaEventSynchronize(end), "cudaEventSynchronize")
                return cuda.elapsed_ms(start, end)

            times = timing_loop(run, args.warmup, args.runs, args.duration, timed=timed)
            cuda.check(cuda.lib.cudaStreamSynchronize(stream), "cudaStreamSynchronize")
            results.append({**summarize(times, b, "cuda_event"), "cuda_graph": bool(args.cuda_graph)})
        finally:
            cuda.lib.cudaFree(d_x)
            cuda.lib.cudaFree(d_y)
    return {"backend": "tensorrt", "tensorrt": trt.__version__}, results, errors


# -------------------------------------------------------------------------------------------------- trtexec
def find_trtexec():
    return shutil.which("trtexec") or next((p for p in TRTEXEC_PATHS if os.access(p, os.X_OK)), None)


def run_trtexec(args, batches, exe):
    results, errors = [], {}
    for b in batches:
        dims = "x".join(str(d) for d in (b, *args.shape))
        with tempfile.TemporaryDirectory() as tmp:
            times_file = os.path.join(tmp, "times.json")
            cmd = [exe, f"--warmUp={max(200, args.warmup * 20)}", "--noDataTransfers", f"--exportTimes={times_file}"]
            if args.artifact.endswith(".onnx"):
                cmd += [f"--onnx={args.artifact}", f"--minShapes={args.input_name}:{dims}",
                        f"--optShapes={args.input_name}:{dims}", f"--maxShapes={args.input_name}:{dims}"]
                if args.precision in ("fp16", "int8"):
                    cmd.append(f"--{args.precision}")
                if args.workspace_mb:
                    cmd.append(f"--memPoolSize=workspace:{args.workspace_mb}")
            else:
                cmd += [f"--loadEngine={args.artifact}", f"--shapes={args.input_name}:{dims}"]
            cmd += ([f"--iterations={args.runs}", "--duration=0"] if args.runs
                    else [f"--duration={max(1, math.ceil(args.duration))}"])  # trtexec takes whole seconds
            if args.cuda_graph:
                cmd.append("--useCudaGraph")
            proc = subprocess.run(cmd, capture_output=True, text=True)
            if proc.returncode != 0:
                tail = [ln for ln in (proc.stdout + proc.stderr).splitlines() if ln.strip()][-1:]
                errors[str(b)] = "trtexec failed: " + (tail[0][:300] if tail else f"exit {proc.returncode}")
                continue
            with open(times_file) as fh:
                records = json.load(fh)
        times = [r.get("computeMs", r.get("latencyMs")) for r in records if isinstance(r, dict)
                 and ("computeMs" in r or "latencyMs" in r)]
        results.append({**summarize(times, b, "trtexec computeMs"), "cuda_graph": bool(args.cuda_graph)})
    return {"backend": "trtexec", "trtexec": exe}, results, errors


# ---------------------------------------------------------------------------------------------------- main
def choose_backend(args):
    if args.backend != "auto":
        return args.backend
    if find_trtexec():
        return "trtexec"
    try:
        import tensorrt  # noqa: F401

        return "tensorrt"
    except Exception:
        pass
    if args.artifact.endswith(".onnx"):
        return "onnxruntime"
    raise RunnerError("neither trtexec nor the TensorRT Python package is on this device: cannot run an engine")


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--artifact", required=True)
    ap.add_argument("--batch", default="1")
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--runs", type=int, default=None)
    ap.add_argument("--duration", type=float, default=None)
    ap.add_argument("--backend", default="auto", choices=("auto", "trtexec", "tensorrt", "onnxruntime"))
    ap.add_argument("--providers", default="CPUExecutionProvider")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--precision", default="fp32", choices=("fp32", "fp16", "int8"))
    ap.add_argument("--workspace-mb", type=int, default=None)
    ap.add_argument("--cuda-graph", action="store_true")
    ap.add_argument("--input-name", default="images")
    ap.add_argument("--input-shape", default="3x32x32", help="C x H x W")
    args = ap.parse_args(argv)
    try:
        args.shape = tuple(int(v) for v in args.input_shape.split("x"))
        batches = [int(b) for b in args.batch.split(",") if b]
        if args.runs is None and args.duration is None:
            args.runs = 100
        if not os.path.isfile(args.artifact):
            raise RunnerError(f"artifact not found on the device: {args.artifact}")
        facts = device_facts()
        backend = choose_backend(args)
        run = {"onnxruntime": run_onnxruntime, "tensorrt": run_tensorrt}.get(backend)
        with PowerSampler() as power:
            if backend == "trtexec":
                exe = find_trtexec()
                if exe is None:
                    raise RunnerError("trtexec not found on the device")
                info, results, errors = run_trtexec(args, batches, exe)
            else:
                info, results, errors = run(args, batches)
        print(json.dumps({"ok": True, **info, "results": results, "errors": errors, "device": facts,
                          "power": power.result(),
                          "artifact": {"path": args.artifact, "bytes": os.path.getsize(args.artifact),
                                       "sha256": sha256(args.artifact)}}))
        return 0
    except Exception as exc:
        print(json.dumps({"ok": False, "error": f"{type(exc).__name__}: {exc}".splitlines()[0]}))
        return 1


if __name__ == "__main__":
    sys.exit(main())
