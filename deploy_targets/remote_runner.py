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
    """(times in ms, tegrastats power): power is sampled only inside the timed window, after the warm-up."""
    for _ in range(warmup):
        run()
    times = []
    with PowerSampler() as power:
        start = time.perf_counter()
        while True:
            if timed is not None:
                times.append(timed())
            else:
                t0 = time.perf_counter_ns()
                run()
                times.append((time.perf_counter_ns() - t0) / 1e6)
            if runs is not None and len(times) >= runs:
                break
            if duration is not None and time.perf_counter() - start >= duration and len(times) >= 5:
                break
    return times, power.result()


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


def _tensorrt_version(trtexec=None):
    """The device's TensorRT: the Python package, else the Debian packages (JetPack ships trtexec in
    libnvinfer-bin), else the version trtexec prints in its banner."""
    try:
        import tensorrt

        return tensorrt.__version__
    except Exception:
        pass
    for pkg in ("tensorrt", "libnvinfer-bin", "libnvinfer10", "libnvinfer8"):
        version = _cmd(["dpkg-query", "-W", "-f=${Version}", pkg])
        if version:
            return version.split("-")[0].split("+")[0]
    exe = find_trtexec(trtexec)
    return trtexec_version(exe) if exe else None


def trtexec_version(exe):
    """The TensorRT version of *this* trtexec binary (another install's Python package may differ): every run,
    ``--help`` included, starts with the banner "&&&& RUNNING TensorRT.trtexec [TensorRT v100300] # ..."
    (``reportTestStart`` before the options are read: samples/trtexec/trtexec.cpp, main)."""
    try:
        out = subprocess.run([exe, "--help"], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return parse_trt_version(out.stdout + out.stderr)


def parse_trt_version(text):
    """TensorRT's version from trtexec output: "TensorRT version: 10.3.0", or the banner's "[TensorRT v100300]"
    (NV_TENSORRT_VERSION: major*10000+minor*100+patch since 10.0, major*1000+minor*100+patch in 8.x)."""
    m = re.search(r"TensorRT version:\s*(\d+\.\d+\.\d+)", text or "")
    if m:
        return m.group(1)
    m = re.search(r"\[TensorRT v(\d+)\]", text or "")
    if not m:
        return None
    n = int(m.group(1))
    if n >= 100000:
        return f"{n // 10000}.{n // 100 % 100}.{n % 100}"
    return f"{n // 1000}.{n // 100 % 10}.{n % 100}"


def trt_major_minor(version):
    m = re.match(r"(\d+)\.(\d+)", version or "")
    return (int(m.group(1)), int(m.group(2))) if m else None


def _gpu_facts():
    """GPU name, driver and compute capability from nvidia-smi (discrete GPUs; Jetsons have none: their
    device-tree model names the module)."""
    out = _cmd(["nvidia-smi", "--query-gpu=name,driver_version,compute_cap,uuid", "--format=csv,noheader"])
    if not out:
        return {}
    parts = [p.strip() for p in out.splitlines()[0].split(",")]
    keys = ("gpu", "driver", "compute_capability", "gpu_uuid")
    return {keys[i]: parts[i] for i in range(min(len(keys), len(parts))) if parts[i]}  # no zip(strict=): 3.8


def release_facts(root="/"):
    """Board and L4T release from the files every JetPack has (``/proc/device-tree/model``,
    ``/etc/nv_tegra_release``: "# R36 (release), REVISION: 4.7, ..." is L4T 36.4.7); ``root`` for tests."""
    def read(path):
        return _read(os.path.join(root, path.lstrip("/")))

    facts = {"model": read("/proc/device-tree/model")}
    cpu = read("/proc/cpuinfo") or ""
    m = re.search(r"^(?:model name|Model|Hardware)\s*:\s*(.+)$", cpu, re.M)
    facts["cpu"] = m.group(1).strip() if m else None
    tegra = read("/etc/nv_tegra_release")
    if tegra:
        m = re.search(r"R(\d+)\s*\(release\),\s*REVISION:\s*([\d.]+)", tegra)
        facts["l4t"] = f"{m.group(1)}.{m.group(2).rstrip('.')}" if m else tegra.splitlines()[0]
    return facts


def device_facts(trtexec=None):
    facts = {"hostname": platform.node(), "machine": platform.machine(), "platform": platform.platform(),
             "python": platform.python_version(), "numpy": np.__version__, "cpu_count": os.cpu_count()}
    facts.update(release_facts())
    facts["jetpack"] = _cmd(["dpkg-query", "-W", "-f=${Version}", "nvidia-jetpack"])
    facts["tensorrt"] = _tensorrt_version(trtexec)
    facts.update(_gpu_facts())
    nvcc = _cmd(["nvcc", "--version"]) or _cmd(["/usr/local/cuda/bin/nvcc", "--version"])
    m = re.search(r"release ([\d.]+)", nvcc or "")
    facts["cuda"] = m.group(1) if m else None
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


#: rails that measure the whole module's input (Orin Nano/NX, Xavier NX, TX2: VDD_IN; Nano: POM_5V_IN)
TOTAL_RAILS = ("VDD_IN", "POM_5V_IN")
#: AGX Orin has no total rail; its first INA3221 measures these three inputs (GPU+SoC, CPU+CV, 5 V system), and
#: their sum is taken as the module's power (a choice, named in the result; docs/deploy-sources.md, point 8)
AGX_ORIN_RAILS = ("VDD_GPU_SOC", "VDD_CPU_CV", "VIN_SYS_5V0")
_RAIL = re.compile(r"\b([A-Z][A-Z0-9_]*[A-Z0-9])\s+(\d+)(?:mW)?/(\d+)(?:mW)?\b")


def parse_tegrastats(lines):
    """Mean power of each rail over tegrastats lines (``NAME cur/avg``, with or without ``mW``), and the module
    power: a total rail where the module has one, else the AGX Orin sum. None when no line has a rail."""
    samples = {}
    for line in lines:
        for name, cur, _avg in _RAIL.findall(line):
            samples.setdefault(name, []).append(int(cur))
    if not samples:
        return None
    rails = {name: sum(v) / len(v) for name, v in samples.items()}
    total = next((r for r in TOTAL_RAILS if r in rails), None)
    if total:
        mean, rail, n = rails[total], total, len(samples[total])
    elif all(r in rails for r in AGX_ORIN_RAILS):
        mean, rail = sum(rails[r] for r in AGX_ORIN_RAILS), "+".join(AGX_ORIN_RAILS)
        n = min(len(samples[r]) for r in AGX_ORIN_RAILS)
    else:
        mean, rail, n = None, None, max(len(v) for v in samples.values())
    return {"mean_mw": mean, "samples": n, "rail": rail, "rails_mean_mw": rails,
            "note": None if rail else "no total rail known for this module: see rails_mean_mw"}


class PowerSampler:
    """tegrastats in the background during timing; the module's mean power and every rail (``parse_tegrastats``)."""

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
        lines = getattr(self, "lines", [])
        power = parse_tegrastats(lines)
        if power is not None:
            power["last_line"] = lines[-1][:400] if lines else None
        return power


# ------------------------------------------------------------------------------------------- ONNX Runtime
#: ONNX Runtime's input type -> numpy dtype (an fp16 export declares float16 input)
ORT_INPUT_DTYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16}


def ort_provider_problem(requested, available):
    """Why ONNX Runtime here cannot honour the requested GPU providers (None when it can). There is no aarch64
    onnxruntime-gpu on PyPI (microsoft/onnxruntime#20503): a stock JetPack's pip ORT has the CPU provider only."""
    missing = [p for p in requested if p != "CPUExecutionProvider" and p not in available]
    if not missing:
        return None
    return (f"ONNX Runtime on this device has no {', '.join(missing)} (available: {', '.join(available)}); PyPI has "
            "no aarch64 onnxruntime-gpu: install a Jetson build of onnxruntime-gpu, or run a TensorRT-compatible "
            "file (symmetric Q/DQ int8, fp16 or fp32) through trtexec/TensorRT")


def _import_ort():
    try:
        import onnxruntime as ort
    except ImportError as exc:
        raise RunnerError(f"onnxruntime is not installed on this device ({exc}); JetPack ships TensorRT and "
                          "trtexec, not ONNX Runtime: run a TensorRT-compatible file, or install onnxruntime") from exc
    return ort


def run_onnxruntime(args, batches):
    ort = _import_ort()
    requested = [p for p in args.providers.split(",") if p]
    problem = ort_provider_problem(requested, ort.get_available_providers())
    if problem:
        raise RunnerError(problem)
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.log_severity_level = 3
    if args.threads:
        opts.intra_op_num_threads = args.threads
    providers = requested + ([] if "CPUExecutionProvider" in requested else ["CPUExecutionProvider"])
    session = ort.InferenceSession(args.artifact, sess_options=opts, providers=providers)
    used = session.get_providers()
    missing = [p for p in requested if p != "CPUExecutionProvider" and p not in used]
    if missing:
        raise RunnerError(f"ONNX Runtime fell back to the CPU: {', '.join(missing)} requested, session uses "
                          f"{', '.join(used)}")
    inp = session.get_inputs()[0]
    dtype = ORT_INPUT_DTYPES.get(inp.type)
    if dtype is None:
        raise RunnerError(f"input {inp.name!r} is {inp.type}; the runner feeds float or float16 images")
    shape = [d if isinstance(d, int) else None for d in inp.shape]
    chw = tuple(shape[1:]) if all(shape[1:]) else args.shape
    results, errors = [], {}
    for b in batches:
        if shape[0] not in (None, b):
            errors[str(b)] = f"the model has a fixed batch of {shape[0]}"
            continue
        x = np.random.default_rng(0).random((b, *chw), dtype=np.float32).astype(dtype)
        feed = {inp.name: x}
        times, power = timing_loop(lambda feed=feed: session.run(None, feed), args.warmup, args.runs,
                                   args.duration)
        results.append({**summarize(times, b, "perf_counter_ns"), "power": power})
    return {"backend": "onnxruntime", "providers": used, "input_type": inp.type}, results, errors


# ------------------------------------------------------------------------------ TensorRT build decisions
#: the newest ONNX opset TensorRT 8.x's parser implements (onnx-tensorrt docs/operators.md, 8.5: "supports
#: operators up to Opset 17"); JetPack 5.1 ships TensorRT 8.5, JetPack 6.0 8.6, JetPack 6.1/6.2 TensorRT 10.3
TRT8_MAX_OPSET = 17


def opset_problem(opset, trt_version):
    """Why a TensorRT 8.x parser cannot take this opset (None when it can, or when either is unknown)."""
    mm = trt_major_minor(trt_version)
    if opset is None or mm is None or mm[0] >= 10 or opset <= TRT8_MAX_OPSET:
        return None
    return (f"TensorRT {trt_version} (JetPack 5.x ships 8.5, JetPack 6.0 8.6) parses ONNX up to opset "
            f"{TRT8_MAX_OPSET}; this file is opset {opset}: export with --exporter torchscript --opset 17, or use "
            "JetPack 6.1+ (TensorRT 10.3)")


def precision_plan(requested, graph, trt_version, backend, opset=None):
    """What to ask TensorRT for when it compiles an ONNX graph, and what that builds.

    ``graph`` is the precision the ONNX file carries (fp32, fp16, or int8 for symmetric Q/DQ). TensorRT 11
    networks are strongly typed: no FP16/INT8 builder flags and no trtexec --fp16/--int8, the graph's own types
    are built. TensorRT <= 10 is weakly typed: --fp16 / --int8 (a Q/DQ graph needs --int8 on 8.x). trtexec has no
    calibration: --int8 on an fp32 graph times placeholder scales (latency only); the Python API path refuses it.
    Returns {"flag": None|"fp16"|"int8", "built": precision, "note": str|None, "skip": str|None}.
    """
    mm = trt_major_minor(trt_version)
    plan = {"flag": None, "built": graph, "note": None, "skip": None}
    if mm is None:
        plan["skip"] = "TensorRT version unknown on the device: cannot tell 10.x builder flags from 11.x typing"
        return plan
    plan["skip"] = opset_problem(opset, trt_version)
    if plan["skip"]:
        return plan
    if mm[0] >= 11:
        if requested != graph:
            plan["note"] = (f"TensorRT {trt_version} is strongly typed: it builds the graph's {graph}, not the "
                            f"{requested} asked for; export a {requested} graph (--precision {requested}) for that")
        return plan
    if graph == "int8":
        plan.update(flag="int8", built="int8")
    elif graph == "fp16" or requested == "fp16":
        plan.update(flag="fp16", built="fp16")
    elif requested == "int8":
        if backend != "trtexec":
            plan["skip"] = ("int8 from an fp32 graph needs calibration images, which the device does not have: "
                            "export --trt --precision int8 on the device, or use trtexec (latency only)")
            return plan
        plan.update(flag="int8", built="int8",
                    note="trtexec has no calibration: int8 timed with placeholder scales (latency only)")
    return plan


def batch_problem(dims, batch, profile_max=None):
    """Why ``batch`` cannot run on a graph/engine whose input dims are ``dims`` (None or -1 = dynamic)."""
    lead = dims[0] if dims else None
    if lead not in (None, -1) and lead != batch:
        return f"the model has a fixed batch of {lead}"
    if profile_max is not None and batch > profile_max:
        return f"batch {batch} is above the engine's optimisation profile (max {profile_max})"
    return None


def is_dynamic(dims):
    return dims is None or any(d in (None, -1) for d in dims)


def trtexec_build_cmd(exe, *, onnx, engine, batch, input_name, dims, chw, plan, trt_version, workspace_mb=None):
    """trtexec argv that compiles ``onnx`` into ``engine`` without timing it. Shapes only for a dynamic input
    (trtexec refuses explicit shapes for a static model); the profile's opt shape is the benchmarked batch."""
    mm = trt_major_minor(trt_version) or (10, 0)
    cmd = [exe, f"--onnx={onnx}", f"--saveEngine={engine}", "--skipInference" if mm >= (8, 6) else "--buildOnly"]
    if is_dynamic(dims):
        spec = f"{input_name}:" + "x".join(str(d) for d in (batch, *chw))
        cmd += [f"--minShapes={spec}", f"--optShapes={spec}", f"--maxShapes={spec}"]
    if plan["flag"] and mm[0] < 11:
        cmd.append(f"--{plan['flag']}")
    if plan["built"] == "fp32":
        cmd.append("--noTF32")  # TF32 is on by default on Ampere+ (Orin): fp32 means fp32
    if workspace_mb:
        cmd.append(f"--memPoolSize=workspace:{workspace_mb}")
    return cmd


def trtexec_time_cmd(exe, *, engine, batch, input_name, dims, chw, times_file, warmup_ms, runs, duration,
                     cuda_graph):
    cmd = [exe, f"--loadEngine={engine}", f"--warmUp={warmup_ms}", "--noDataTransfers",
           f"--exportTimes={times_file}"]
    if is_dynamic(dims):
        cmd.append(f"--shapes={input_name}:" + "x".join(str(d) for d in (batch, *chw)))
    cmd += ([f"--iterations={runs}", "--duration=0"] if runs
            else [f"--duration={max(1, math.ceil(duration))}"])  # trtexec takes whole seconds
    if cuda_graph:
        cmd.append("--useCudaGraph")
    return cmd


def trtexec_errors(output, returncode):
    """trtexec's error lines ("[E] ..."), all of them in one line; else its last line."""
    lines = [ln.strip() for ln in (output or "").splitlines() if ln.strip()]
    errors = [ln[ln.index("[E]") + 3:].strip() for ln in lines if "[E]" in ln]
    errors = list(dict.fromkeys(e for e in errors if e))
    if errors:
        return " | ".join(errors)[:1000]
    return lines[-1][:300] if lines else f"exit {returncode}"


# ----------------------------------------------------------------------------------- CUDA through ctypes
def cudart_candidates(search_paths=None, cuda_roots="/usr/local/cuda*"):
    """libcudart to try, in order: the loader's (``libcudart.so``, also ``.so.13``/``.so.12``, which the runtime
    packages install without the bare link), the pip wheels' (``nvidia-cuda-runtime-cu12`` puts it in
    ``site-packages/nvidia/cuda_runtime/lib``, the CUDA 13 wheels in ``nvidia/cu13/lib``), then CUDA toolkits."""
    names = ["libcudart.so", "libcudart.so.13", "libcudart.so.12", "libcudart.so.11.0"]
    for base in (sys.path if search_paths is None else search_paths):
        for sub in ("nvidia/cuda_runtime/lib", "nvidia/cu13/lib"):
            names += sorted(glob.glob(os.path.join(base, sub, "libcudart.so*")), reverse=True)
    names += sorted(glob.glob(f"{cuda_roots}/lib64/libcudart.so*"), reverse=True)
    names += sorted(glob.glob(f"{cuda_roots}/targets/*/lib/libcudart.so*"), reverse=True)
    return list(dict.fromkeys(names))


class Cuda:
    """The few CUDA runtime calls a TensorRT timing needs, from libcudart (no pycuda / cuda-python needed)."""

    def __init__(self):
        names = cudart_candidates()
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


def _build_engine(trt, args, batch, plan):
    """An engine for one benchmarked batch: static graphs need no profile; a dynamic one gets min=opt=max=batch
    (as trtexec's path). Builder flags follow ``precision_plan`` (none on TensorRT 11)."""
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = 0
    if hasattr(trt.NetworkDefinitionCreationFlag, "EXPLICIT_BATCH"):  # needed by 8.x, ignored by 10, gone in 11
        flags = 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    with open(args.artifact, "rb") as fh:
        if not parser.parse(fh.read()):
            errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
            raise RunnerError("TensorRT cannot parse the ONNX file: " + " | ".join(errors or ["no error reported"]))
    config = builder.create_builder_config()
    if args.workspace_mb:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, args.workspace_mb << 20)
    if plan["built"] == "fp32" and hasattr(trt.BuilderFlag, "TF32"):
        config.clear_flag(trt.BuilderFlag.TF32)
    if plan["flag"]:
        flag = getattr(trt.BuilderFlag, plan["flag"].upper(), None)
        if flag is None:  # TensorRT 11 has no FP16/INT8 flags; precision_plan never asks it for one
            raise RunnerError(f"TensorRT {trt.__version__} has no BuilderFlag.{plan['flag'].upper()}")
        config.set_flag(flag)
    inp = network.get_input(0)
    dims = tuple(inp.shape)
    if is_dynamic(dims):
        shape = (batch, *(args.shape if is_dynamic(dims[1:]) else dims[1:]))
        profile = builder.create_optimization_profile()
        profile.set_shape(inp.name, shape, shape, shape)
        config.add_optimization_profile(profile)
    blob = builder.build_serialized_network(network, config)
    if blob is None:
        raise RunnerError("TensorRT failed to build an engine from the ONNX file")
    return bytes(blob)


def run_tensorrt(args, batches):
    import tensorrt as trt

    cuda = Cuda()
    onnx = args.artifact.endswith(".onnx")
    plan = (precision_plan(args.precision, args.graph_precision, trt.__version__, "tensorrt", args.opset)
            if onnx else None)
    info = {"backend": "tensorrt", "tensorrt": trt.__version__}
    if plan:
        info.update(built_precision=plan["built"], precision_note=plan["note"])
        if plan["skip"]:
            return info, [], {str(b): plan["skip"] for b in batches}
    runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
    stream = cuda.handle("cudaStreamCreate")
    start, end = cuda.handle("cudaEventCreate"), cuda.handle("cudaEventCreate")
    results, errors = [], {}
    engine = None if onnx else _load_engine(trt, runtime, open(args.artifact, "rb").read())
    for b in batches:
        problem = batch_problem(args.dims, b) if onnx else None
        if problem:
            errors[str(b)] = problem
            continue
        if onnx:  # one engine per batch: the profile's opt shape is the batch that is timed
            try:
                engine = _load_engine(trt, runtime, _build_engine(trt, args, b, plan))
            except RunnerError as exc:
                errors[str(b)] = str(exc)
                continue
        try:
            results.append(_time_engine(trt, cuda, engine, b, args, stream, start, end))
        except _Skip as exc:
            errors[str(b)] = str(exc)
    return info, results, errors


class _Skip(Exception):
    """This batch cannot run on this engine; the other batches still can."""


def _load_engine(trt, runtime, blob):
    engine = runtime.deserialize_cuda_engine(blob)
    if engine is None:
        raise RunnerError(f"TensorRT {trt.__version__} cannot deserialise the engine (another version or GPU?)")
    return engine


def _time_engine(trt, cuda, engine, b, args, stream, start, end):
    context = engine.create_execution_context()
    names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
    inp = next(n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT)
    out = next(n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT)
    in_dtype, out_dtype = trt.nptype(engine.get_tensor_dtype(inp)), trt.nptype(engine.get_tensor_dtype(out))
    shape = tuple(engine.get_tensor_shape(inp))
    profile_max = int(engine.get_tensor_profile_shape(inp, 0)[2][0]) if shape[0] == -1 else None
    problem = batch_problem(shape, b, profile_max)
    if problem:
        raise _Skip(problem)
    x = np.random.default_rng(0).random((b, *shape[1:]), dtype=np.float32).astype(in_dtype)
    if not context.set_input_shape(inp, x.shape):
        raise _Skip(f"TensorRT refused input shape {x.shape} (outside the engine's profile)")
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

        times, power = timing_loop(run, args.warmup, args.runs, args.duration, timed=timed)
        cuda.check(cuda.lib.cudaStreamSynchronize(stream), "cudaStreamSynchronize")
        return {**summarize(times, b, "cuda_event"), "cuda_graph": bool(args.cuda_graph), "power": power}
    finally:
        cuda.lib.cudaFree(d_x)
        cuda.lib.cudaFree(d_y)


# -------------------------------------------------------------------------------------------------- trtexec
def find_trtexec(explicit=None):
    """``explicit`` (``--trtexec PATH``: a tar install of TensorRT), else PATH, else JetPack's and the deb's places."""
    if explicit:
        return explicit if os.path.isfile(explicit) and os.access(explicit, os.X_OK) else None
    return shutil.which("trtexec") or next((p for p in TRTEXEC_PATHS if os.access(p, os.X_OK)), None)


def run_trtexec(args, batches, exe, trt_version):
    """Per batch: compile (for an ONNX file) with one trtexec call, then time the saved engine with another, so
    that tegrastats samples the timing run and not the build."""
    onnx = args.artifact.endswith(".onnx")
    plan = precision_plan(args.precision, args.graph_precision, trt_version, "trtexec", args.opset) if onnx else None
    info = {"backend": "trtexec", "trtexec": exe, "tensorrt": trt_version}
    if plan:
        info.update(built_precision=plan["built"], precision_note=plan["note"])
        if plan["skip"]:
            return info, [], {str(b): plan["skip"] for b in batches}
    results, errors = [], {}
    warmup_ms = max(200, args.warmup * 20)
    for b in batches:
        problem = batch_problem(args.dims, b, args.profile_max)
        if problem:
            errors[str(b)] = problem
            continue
        with tempfile.TemporaryDirectory() as tmp:
            engine = args.artifact
            if onnx:
                engine = os.path.join(tmp, "model.engine")
                cmd = trtexec_build_cmd(exe, onnx=args.artifact, engine=engine, batch=b, input_name=args.input_name,
                                        dims=args.dims, chw=args.shape, plan=plan, trt_version=trt_version,
                                        workspace_mb=args.workspace_mb)
                proc = subprocess.run(cmd, capture_output=True, text=True)
                if proc.returncode != 0:
                    errors[str(b)] = "trtexec build failed: " + trtexec_errors(proc.stdout + proc.stderr,
                                                                               proc.returncode)
                    continue
            times_file = os.path.join(tmp, "times.json")
            cmd = trtexec_time_cmd(exe, engine=engine, batch=b, input_name=args.input_name,
                                   dims=args.dims if onnx else (args.dims or [-1]), chw=args.shape,
                                   times_file=times_file, warmup_ms=warmup_ms, runs=args.runs, duration=args.duration,
                                   cuda_graph=args.cuda_graph)
            with PowerSampler() as power:  # includes trtexec's engine load and its warm-up
                proc = subprocess.run(cmd, capture_output=True, text=True)
            if proc.returncode != 0:
                errors[str(b)] = "trtexec failed: " + trtexec_errors(proc.stdout + proc.stderr, proc.returncode)
                continue
            with open(times_file) as fh:
                records = json.load(fh)
        times = [r.get("computeMs", r.get("latencyMs")) for r in records if isinstance(r, dict)
                 and ("computeMs" in r or "latencyMs" in r)]
        results.append({**summarize(times, b, "trtexec computeMs"), "cuda_graph": bool(args.cuda_graph),
                        "power": power.result(), "power_window": "trtexec run (engine load, warm-up, timing)"})
    return info, results, errors


# ---------------------------------------------------------------------------------------------------- main
def choose_backend(args):
    if args.backend != "auto":
        return args.backend
    if find_trtexec(args.trtexec):
        return "trtexec"
    try:
        import tensorrt  # noqa: F401

        return "tensorrt"
    except Exception:
        pass
    if args.artifact.endswith(".onnx"):  # ONNX Runtime only where it has the providers asked for
        ort = _import_ort()
        problem = ort_provider_problem([p for p in args.providers.split(",") if p], ort.get_available_providers())
        if problem:
            raise RunnerError(f"neither trtexec nor the TensorRT Python package is on this device, and {problem}")
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
    ap.add_argument("--input-dims", default=None,
                    help="the artifact's input dims as the host read them, -1 for a dynamic axis (e.g. -1x3x32x32)")
    ap.add_argument("--graph-precision", default="fp32", choices=("fp32", "fp16", "int8"),
                    help="the precision the ONNX graph carries (int8: symmetric Q/DQ)")
    ap.add_argument("--profile-max", type=int, default=None, help="an engine's largest profile batch")
    ap.add_argument("--opset", type=int, default=None, help="the ONNX file's opset (TensorRT 8.x parses <= 17)")
    ap.add_argument("--trtexec", default=None, help="trtexec to use (a TensorRT tar install outside PATH)")
    args = ap.parse_args(argv)
    try:
        args.shape = tuple(int(v) for v in args.input_shape.split("x"))
        args.dims = [int(v) for v in args.input_dims.split("x")] if args.input_dims else None
        batches = [int(b) for b in args.batch.split(",") if b]
        if args.runs is None and args.duration is None:
            args.runs = 100
        if not os.path.isfile(args.artifact):
            raise RunnerError(f"artifact not found on the device: {args.artifact}")
        if args.trtexec and find_trtexec(args.trtexec) is None:
            raise RunnerError(f"--trtexec {args.trtexec} is not an executable file on the device")
        facts = device_facts(args.trtexec)
        backend = choose_backend(args)
        if backend == "trtexec":
            exe = find_trtexec(args.trtexec)
            if exe is None:
                raise RunnerError("trtexec not found on the device (pass --trtexec PATH for a tar install)")
            # flags follow the TensorRT of the binary that runs, not of a Python package from another install
            version = trtexec_version(exe) or facts.get("tensorrt")
            facts["trtexec_tensorrt"] = version
            info, results, errors = run_trtexec(args, batches, exe, version)
        else:
            run = {"onnxruntime": run_onnxruntime, "tensorrt": run_tensorrt}[backend]
            info, results, errors = run(args, batches)
        print(json.dumps({"ok": True, **info, "results": results, "errors": errors, "device": facts,
                          "artifact": {"path": args.artifact, "bytes": os.path.getsize(args.artifact),
                                       "sha256": sha256(args.artifact)}}))
        return 0
    except Exception as exc:
        print(json.dumps({"ok": False, "error": f"{type(exc).__name__}: {exc}".splitlines()[0]}))
        return 1


if __name__ == "__main__":
    sys.exit(main())
