"""Facts about the machine a measurement ran on, so that a latency number can be read later.

Everything here reads /proc and /sys or asks a package for its version; nothing is imported that is not
installed, and every fact is optional (None when it cannot be known on this system).
"""

from __future__ import annotations

import os
import platform
from importlib import metadata
from pathlib import Path
from typing import Any


def _read(path: str) -> str | None:
    try:
        return Path(path).read_text(errors="replace")
    except OSError:
        return None


def cpu_model() -> str | None:
    text = _read("/proc/cpuinfo") or ""
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("model name", "Model", "Hardware"):
            return value.strip()
    return platform.processor() or None


def usable_cpus() -> int:
    """CPUs this process may run on (the affinity mask: a container's share, not the host's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def physical_cores() -> int:
    """Distinct (package, core) pairs among the usable CPUs: SMT siblings share one core's multiply-add units,
    so one intra-op thread per physical core is usually the fastest CPU setting."""
    try:
        cpus = sorted(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cpus = list(range(os.cpu_count() or 1))
    cores = set()
    for cpu in cpus:
        topo = f"/sys/devices/system/cpu/cpu{cpu}/topology"
        core, pkg = _read(f"{topo}/core_id"), _read(f"{topo}/physical_package_id")
        if core is None:
            return len(cpus)
        cores.add((pkg.strip() if pkg else "0", core.strip()))
    return max(1, len(cores))


def memory_total_gb() -> float | None:
    for line in (_read("/proc/meminfo") or "").splitlines():
        if line.startswith("MemTotal:"):
            return round(int(line.split()[1]) / 2**20, 2)
    return None


def package_version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def tensorrt_version() -> str | None:
    """The pip distribution's version, else the version of a ``tensorrt`` module already imported (NVIDIA's apt
    packages and tar files install the module without pip metadata), else None (unknown: callers say so)."""
    import sys

    for dist in ("tensorrt", "tensorrt-cu12", "tensorrt-cu13", "tensorrt_libs"):
        v = package_version(dist)
        if v:
            return v
    module = sys.modules.get("tensorrt")
    return getattr(module, "__version__", None) if module is not None else None


#: both wheels install the same ``onnxruntime`` package; whichever was installed last owns the shared files
ORT_DISTRIBUTIONS = ("onnxruntime", "onnxruntime-gpu")


def onnxruntime_install_problem(installed: dict[str, str | None] | None = None) -> str | None:
    """One line when ``onnxruntime`` and ``onnxruntime-gpu`` are installed side by side, else None.

    They overwrite each other's files, so the CUDA provider is present or missing depending on the install order
    (microsoft/onnxruntime#26996, #7748; ONNX Runtime's install guide: only one of them in an environment)."""
    have = installed if installed is not None else {d: package_version(d) for d in ORT_DISTRIBUTIONS}
    if have.get("onnxruntime") and have.get("onnxruntime-gpu"):
        return (f"onnxruntime {have['onnxruntime']} and onnxruntime-gpu {have['onnxruntime-gpu']} are both installed "
                "and overwrite each other's files (the CUDA provider goes missing): pip uninstall -y onnxruntime "
                "onnxruntime-gpu && pip install 'onnxruntime-gpu>=1.17'")
    return None


def _gpu() -> dict[str, Any] | None:
    if package_version("torch") is None:
        return None
    import torch

    if not torch.cuda.is_available():
        return None
    i = torch.cuda.current_device()
    props = torch.cuda.get_device_properties(i)
    uuid = getattr(props, "uuid", None)
    return {"name": props.name, "compute_capability": f"{props.major}.{props.minor}",
            "uuid": None if uuid is None else str(uuid), "memory_gb": round(props.total_memory / 2**30, 2),
            "count": torch.cuda.device_count(), "cuda": torch.version.cuda,
            "driver": _read("/proc/driver/nvidia/version"), "clocks": gpu_clocks(i)}


def gpu_clocks(index: int = 0) -> dict[str, Any] | None:
    """SM and memory clocks now and at most, and the performance state, from nvidia-smi (None where absent).

    A GPU that idles at a low clock and boosts under load gives noisy first timings; the record says which."""
    import shutil
    import subprocess

    exe = shutil.which("nvidia-smi")
    if exe is None:
        return None
    fields = ("clocks.sm", "clocks.mem", "clocks.max.sm", "clocks.max.mem", "pstate", "power.draw")
    try:
        out = subprocess.run([exe, f"--id={index}", f"--query-gpu={','.join(fields)}", "--format=csv,noheader,nounits"],
                             capture_output=True, text=True, timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    values = [v.strip() for v in out.splitlines()[0].split(",")] if out else []
    return dict(zip(fields, values, strict=True)) if len(values) == len(fields) else None


def cpu_governor() -> str | None:
    """cpufreq governor of CPU 0 ("performance", "powersave", "schedutil"...), None where not exposed."""
    text = _read("/sys/devices/system/cpu/cpu0/cpufreq/scaling_governor")
    return text.strip() if text else None


def environment(*, threads: int | None = None, gpu: bool = True) -> dict[str, Any]:
    """CPU, cores, threads used, GPU and versions of every runtime that can take part in a measurement."""
    ort_providers = None
    if package_version("onnxruntime") or package_version("onnxruntime-gpu"):
        import onnxruntime as ort

        ort_providers = ort.get_available_providers()
    driver = None
    info = _gpu() if gpu else None
    if info and info.get("driver"):
        driver = info.pop("driver").splitlines()[0].strip()
    return {
        "hostname": platform.node(),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpu": cpu_model(),
        "logical_cpus": os.cpu_count(),
        "usable_cpus": usable_cpus(),
        "physical_cores": physical_cores(),
        "threads": threads,
        "memory_gb": memory_total_gb(),
        "cpu_governor": cpu_governor(),
        "gpu": info,
        "nvidia_driver": driver,
        "versions": {
            "python": platform.python_version(),
            "numpy": package_version("numpy"),
            "torch": package_version("torch"),
            "onnx": package_version("onnx"),
            "onnxruntime": package_version("onnxruntime") or package_version("onnxruntime-gpu"),
            "tensorrt": tensorrt_version(),
            "e2rnas": package_version("e2rnas"),
        },
        "onnxruntime_providers": ort_providers,
    }
