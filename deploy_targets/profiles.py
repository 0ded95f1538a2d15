"""Deploy targets as data: what a device is, how it runs each artifact, which TensorRT builds it accepts.

A ``Target`` is a frozen profile; ``TARGETS`` holds the built-in ones. Users add their own devices with a YAML
file (``--target-file``) holding the same fields, optionally starting from a built-in (``base: jetson-orin-nano``).
Version facts: NVIDIA removed Volta (sm70, V100) from TensorRT 10.5; JetPack 5.1 ships TensorRT 8.5, JetPack 6.0
TensorRT 8.6, JetPack 6.1/6.2 TensorRT 10.3; Xavier NX stops at JetPack 5.1.x.
"""

from __future__ import annotations

import dataclasses
import re
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from e2rnas._io import read_yaml
from e2rnas.errors import E2RNASError

BACKENDS = ("torch", "onnxruntime", "tensorrt")
DEVICES = ("cpu", "cuda")
PRECISIONS = ("fp32", "fp16", "int8")
_SPEC = re.compile(r"^\s*(<=|>=|==|<|>)\s*(\d+(?:\.\d+)*)\s*$")


class TargetError(E2RNASError):
    """A target name or target file is wrong."""


def _version_tuple(text: str) -> tuple[int, ...]:
    return tuple(int(p) for p in re.findall(r"\d+", text))


def version_allowed(version: str, spec: str | None) -> bool:
    """``version_allowed("10.4.0.26", ">=8.6,<=10.4")``: each clause compares as many version parts as it names."""
    if not spec:
        return True
    have = _version_tuple(version)
    for clause in spec.split(","):
        m = _SPEC.match(clause)
        if m is None:
            raise TargetError(f"bad version clause {clause!r}; write e.g. '>=8.6,<=10.4'")
        op, want = m.group(1), _version_tuple(m.group(2))
        got = have[:len(want)] + (0,) * max(0, len(want) - len(have))
        ok = {"<=": got <= want, ">=": got >= want, "==": got == want, "<": got < want, ">": got > want}[op]
        if not ok:
            return False
    return True


@dataclass(frozen=True)
class Target:
    """One deployment device. Unset numbers mean "the runtime's default" (threads: physical cores)."""

    name: str
    description: str = ""
    device: str = "cpu"  # where the tensors live: cpu or cuda
    backends: tuple[str, ...] = ("torch", "onnxruntime")  # runners this device can use, in preference order
    ort_providers: tuple[str, ...] = ("CPUExecutionProvider",)  # requested; a silent CPU fall-back is an error
    threads: int | None = None  # CPU intra-op threads; None: physical cores
    precision: str = "fp32"  # precision artifacts are built at for this device (TensorRT engines)
    workspace_mb: int | None = None  # TensorRT builder workspace
    compute_capability: str | None = None  # e.g. "8.7"
    tensorrt: str | None = None  # TensorRT versions that support this device, e.g. "<=10.4"
    remote: bool = False  # reached over SSH (--host user@address)
    jetpack: str | None = None  # JetPack the profile was written for
    l4t: str | None = None  # its L4T (Linux for Tegra) release
    power_mode: str | None = None  # nvpmodel mode the numbers should be taken in (recorded, compared, not set)
    cuda_graph: bool = False  # replay torch CUDA / TensorRT calls through a CUDA graph
    trtexec: str | None = None  # trtexec on the device when it is not on PATH, /usr/src/tensorrt/bin or /usr/bin
    notes: str = ""

    def __post_init__(self) -> None:
        where = f"target {self.name!r}"
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", self.name or ""):
            raise TargetError(f"{where}: name must be letters, digits, '.', '_' or '-'")
        if self.device not in DEVICES:
            raise TargetError(f"{where}: device must be one of {', '.join(DEVICES)}, got {self.device!r}")
        bad = [b for b in self.backends if b not in BACKENDS]
        if bad or not self.backends:
            raise TargetError(f"{where}: backends must be a non-empty list of {', '.join(BACKENDS)}; got {bad}")
        if self.precision not in PRECISIONS:
            raise TargetError(f"{where}: precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        if self.threads is not None and self.threads < 1:
            raise TargetError(f"{where}: threads must be >= 1")
        if self.workspace_mb is not None and self.workspace_mb < 1:
            raise TargetError(f"{where}: workspace_mb must be >= 1")
        if self.compute_capability is not None and not re.fullmatch(r"\d+\.\d+", self.compute_capability):
            raise TargetError(f"{where}: compute_capability must look like '8.7', got {self.compute_capability!r}")
        if self.device == "cpu" and "tensorrt" in self.backends:
            raise TargetError(f"{where}: TensorRT needs device: cuda")
        if self.trtexec is not None and not re.fullmatch(r"/[A-Za-z0-9._/+-]+", self.trtexec):
            raise TargetError(f"{where}: trtexec must be an absolute path on the device, got {self.trtexec!r}")
        version_allowed("0", self.tensorrt)  # raises on a malformed spec

    def supports_tensorrt(self, version: str) -> bool:
        return version_allowed(version, self.tensorrt)

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


_SERVER = dict(device="cuda", backends=("torch", "onnxruntime", "tensorrt"),
               ort_providers=("CUDAExecutionProvider",), precision="fp16", cuda_graph=True)
_JETSON = dict(_SERVER, remote=True, backends=("onnxruntime", "tensorrt"), cuda_graph=False)

TARGETS: dict[str, Target] = {t.name: t for t in (
    Target("cpu", "This machine's CPU: torch eager and ONNX Runtime (CPU execution provider).",
           notes="threads default to the physical cores of the process's CPU set"),
    Target("cuda", "This machine's CUDA GPU: torch CUDA, ONNX Runtime CUDA provider, TensorRT.",
           device="cuda", backends=("torch", "onnxruntime", "tensorrt"), ort_providers=("CUDAExecutionProvider",),
           precision="fp16", workspace_mb=4096),
    Target("v100", "NVIDIA V100 (Volta, sm70).", compute_capability="7.0", tensorrt="<=10.4", workspace_mb=4096,
           notes="TensorRT 10.5 removed Volta: build engines with TensorRT 10.4 or older", **_SERVER),
    Target("a100", "NVIDIA A100 (Ampere, sm80).", compute_capability="8.0", tensorrt=">=7.1", workspace_mb=8192,
           **_SERVER),
    Target("h100", "NVIDIA H100 (Hopper, sm90).", compute_capability="9.0", tensorrt=">=8.6", workspace_mb=8192,
           notes="fp8 exists on Hopper but e2rnas exports fp32/fp16/int8", **_SERVER),
    Target("jetson-orin-nano", "Jetson Orin Nano (sm87) over SSH.", compute_capability="8.7", tensorrt=">=8.5",
           jetpack="6.2", l4t="36.4.3", power_mode="15W", workspace_mb=1024,
           notes="JetPack 6.2 adds MAXN_SUPER; 15W is the mode every JetPack has", **_JETSON),
    Target("jetson-agx-orin", "Jetson AGX Orin (sm87) over SSH.", compute_capability="8.7", tensorrt=">=8.5",
           jetpack="6.2", l4t="36.4.3", power_mode="MAXN", workspace_mb=4096, **_JETSON),
    Target("jetson-xavier-nx", "Jetson Xavier NX (sm72) over SSH.", compute_capability="7.2", tensorrt="<=8.5",
           jetpack="5.1.5", l4t="35.6.1", power_mode="MODE_20W_6CORE", workspace_mb=1024,
           notes="JetPack 5.1.x is the last for Xavier; it ships TensorRT 8.5", **_JETSON),
)}


def _check_type(name: str, value: Any, hint: Any, where: str) -> Any:
    """Check one YAML value against the field's annotation; lists become tuples."""
    args = typing.get_args(hint)
    optional = type(None) in args
    if value is None:
        if optional:
            return None
        raise TargetError(f"{where}: {name} must not be empty")
    base = next((a for a in args if a is not type(None)), hint) if args and optional else hint
    if typing.get_origin(base) is tuple:
        if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
            raise TargetError(f"{where}: {name} must be a list of strings, got {value!r}")
        return tuple(value)
    if base is str and isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)  # versions such as 6.2 parse as numbers
    ok = isinstance(value, base) and not (base is int and isinstance(value, bool))
    if not ok:
        raise TargetError(f"{where}: {name} must be {base.__name__}, got {type(value).__name__} {value!r}")
    return value


def target_from_dict(data: dict[str, Any], *, where: str) -> Target:
    """A target from a mapping of fields; ``base`` names a built-in to start from. Unknown keys are an error."""
    hints = typing.get_type_hints(Target)
    unknown = sorted(set(data) - set(hints) - {"base"})
    if unknown:
        raise TargetError(f"{where}: unknown key(s) {', '.join(map(str, unknown))}; valid: base, {', '.join(hints)}")
    values: dict[str, Any] = {}
    base = data.get("base")
    if base is not None:
        if base not in TARGETS:
            raise TargetError(f"{where}: base {base!r} is not a built-in target; choose from {', '.join(TARGETS)}")
        values = TARGETS[base].as_dict()
    if "name" not in data:
        raise TargetError(f"{where}: a target file needs a name")
    values.update({k: _check_type(k, v, hints[k], where) for k, v in data.items() if k != "base"})
    return Target(**values)


def load_target_file(path: str | Path) -> Target:
    path = Path(path)
    data = read_yaml(path, kind="target file", error=TargetError)
    if not isinstance(data, dict):
        raise TargetError(f"{path} must hold a mapping of target fields (name, device, backends, ...)")
    return target_from_dict(data, where=str(path))


def get_target(name: str | None = None, *, target_file: str | Path | None = None) -> Target:
    """The target a command runs on: the file's target when ``target_file`` is given, else a built-in."""
    if target_file is not None:
        target = load_target_file(target_file)
        if name is not None and name != target.name:
            raise TargetError(f"--target {name} but {target_file} defines {target.name!r}; drop one of them")
        return target
    name = name or "cpu"
    if name not in TARGETS:
        raise TargetError(f"unknown target {name!r}; choose from {', '.join(TARGETS)} or pass --target-file FILE")
    return TARGETS[name]
