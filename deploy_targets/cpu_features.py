"""The CPU's int8 instruction set, because ONNX Runtime's int8 accuracy depends on it.

On x86-64 without VNNI, ORT runs QDQ int8 convolutions with U8S8 kernels built on VPMADDUBSW, whose 16-bit pair
sums can saturate; with VNNI (VPDPBUSD accumulates in 32 bits) and on ARM they cannot (``docs/int8-cpu.md``).
Everything here is best effort: a fact that cannot be read is None, never an exception.
"""

from __future__ import annotations

import platform
import subprocess
import sys
from pathlib import Path
from typing import Any

#: flags that give int8 dot products accumulated in 32 bits (AMX-INT8 CPUs have AVX512-VNNI too);
#: macOS's sysctl spells AVX512-VNNI without the underscore.
VNNI_FLAGS = frozenset({"avx512_vnni", "avx512vnni", "avx_vnni", "avxvnni", "amx_int8"})
_X86_MACHINES = {"x86_64", "amd64", "x64", "i386", "i686", "x86"}
_ARM_MACHINES = {"aarch64", "arm64", "armv8l", "armv7l"}


def parse_flags(text: str) -> set[str]:
    """The lower-case flags of ``/proc/cpuinfo`` ("flags" on x86, "Features" on ARM), or of a bare flag list."""
    flags: set[str] = set()
    lines = [ln for ln in text.splitlines() if ":" in ln]
    for line in lines:
        key, _, value = line.partition(":")
        if key.strip().lower() in ("flags", "features"):
            flags.update(value.lower().split())
    if not lines:  # "fpu sse2 avx2 ..." or macOS "AVX2 AVX512F ..."
        flags.update(text.lower().split())
    return flags


def _arch(machine: str | None, flags: set[str]) -> str:
    m = (machine or "").lower()
    if m in _X86_MACHINES:
        return "x86_64"
    if m in _ARM_MACHINES:
        return "arm64"
    if machine:
        return m
    if flags & {"sse2", "avx", "avx2", "avx512f"}:
        return "x86_64"
    if flags & {"asimd", "neon", "fp"}:
        return "arm64"
    return _arch(platform.machine() or "unknown", set())


def _read_flags_text() -> tuple[str | None, str]:
    """(flags text, where it came from): /proc/cpuinfo on Linux, sysctl on macOS, nothing elsewhere."""
    if sys.platform.startswith("linux"):
        try:
            return Path("/proc/cpuinfo").read_text(errors="replace"), "/proc/cpuinfo"
        except OSError:
            return None, "none"
    if sys.platform == "darwin":
        try:
            out = subprocess.run(["sysctl", "-n", "machdep.cpu.features", "machdep.cpu.leaf7_features"],
                                 capture_output=True, text=True, timeout=5)
            return (out.stdout, "sysctl") if out.returncode == 0 and out.stdout.strip() else (None, "none")
        except (OSError, subprocess.SubprocessError):
            return None, "none"
    return None, "none"


def _torch_isa() -> str | None:
    """torch's dispatch level ("AVX512", "AVX2", ...) when no flag list can be read (it says nothing of VNNI)."""
    try:
        import torch

        return str(torch.backends.cpu.get_cpu_capability()).lower()
    except Exception:  # no torch, or a build without the query
        return None


def cpu_features(flags_text: str | None = None, *, machine: str | None = None) -> dict[str, Any]:
    """``{"arch", "isa", "vnni", "source"}`` of this CPU, or of ``flags_text`` (a /proc/cpuinfo or a flag list,
    so the choices made from it can be tested with fake CPUs). ``isa`` is avx512 | avx2 | other; ``vnni`` is
    None when unknown (no flag list: Windows, or an unreadable /proc)."""
    source = "given"
    if flags_text is None:
        flags_text, source = _read_flags_text()
        machine = machine or platform.machine()
    if flags_text is None:
        level = _torch_isa() or ""
        isa = "avx512" if "avx512" in level else "avx2" if "avx2" in level else "other"
        return {"arch": _arch(machine, set()), "isa": isa, "vnni": None, "source": "torch" if level else "none"}
    flags = parse_flags(flags_text)
    arch = _arch(machine, flags)
    isa = "avx512" if "avx512f" in flags else "avx2" if "avx2" in flags else "other"
    return {"arch": arch, "isa": isa, "vnni": bool(flags & VNNI_FLAGS), "source": source}
