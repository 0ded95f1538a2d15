"""Which GPU (and TensorRT) an artifact was built or measured for, and whether the device at hand is that one.

A TensorRT engine is specific to the TensorRT version and the GPU model it was built on (NVIDIA, "TensorRT
Developer Guide", section "Engine Compatibility": engines are not portable across TensorRT versions or device
models unless built hardware/version compatible). The compute capability alone does not decide it: A100 and A30
are both sm80, H100 and H200 both sm90, Jetson AGX Orin and Orin Nano both sm87, and an engine tuned on one is
either refused or silently slower on the other. So every engine records its identity here and every runner compares.

Everything reads torch, /proc and /sys; nothing here needs TensorRT or a GPU to import.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

# Form factor and memory suffixes that do not change the chip ("A100-SXM4-80GB" and "A100 PCIe 40GB" are one model).
_SUFFIXES = re.compile(r"\b(sxm\d?|pcie|nvl|hbm\d?e?|\d+\s?gb|developer kit|module)\b")


@dataclass(frozen=True)
class GpuIdentity:
    """A GPU as an engine depends on it: model name, compute capability ("9.0"), UUID and TensorRT version."""

    name: str
    sm: str
    uuid: str | None = None
    tensorrt: str | None = None

    @property
    def model(self) -> str:
        return gpu_model(self.name)

    def tag(self) -> str:
        """File-name tag, e.g. ``sm90.h200``: the compute capability and the model slug."""
        return f"sm{self.sm.replace('.', '')}.{re.sub(r'[^a-z0-9]+', '-', self.model).strip('-')}"

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "model": self.model}


def gpu_model(name: str) -> str:
    """The chip model in a GPU's name, lower case: "NVIDIA H100 80GB HBM3" -> "h100"; "Tesla V100-SXM2-16GB" ->
    "v100"; "NVIDIA Jetson AGX Orin Developer Kit" -> "jetson agx orin"."""
    text = name.lower().replace("nvidia", " ").replace("tesla", " ").replace("-", " ").replace("_", " ")
    text = _SUFFIXES.sub(" ", text)
    return " ".join(text.split())


def _jetson_model() -> str | None:
    """The board name from the device tree (torch names every Orin "Orin"); None off Jetson."""
    for path in ("/proc/device-tree/model", "/sys/firmware/devicetree/base/model"):
        try:
            text = Path(path).read_bytes().decode(errors="replace").strip("\x00 \n")
        except OSError:
            continue
        if "jetson" in text.lower() or "orin" in text.lower() or "xavier" in text.lower():
            return text
    return None


def current_identity(device: int | None = None) -> GpuIdentity | None:
    """This machine's GPU as torch sees it (None without a CUDA GPU), with the installed TensorRT's version."""
    from e2rnas.deploy_targets.env import package_version

    if package_version("torch") is None:
        return None
    import torch

    if not torch.cuda.is_available():
        return None
    index = torch.cuda.current_device() if device is None else device
    props = torch.cuda.get_device_properties(index)
    uuid = getattr(props, "uuid", None)
    from e2rnas.deploy_targets.env import tensorrt_version

    return GpuIdentity(name=_jetson_model() or props.name, sm=f"{props.major}.{props.minor}",
                       uuid=f"GPU-{uuid}" if uuid is not None and not str(uuid).startswith("GPU-") else uuid,
                       tensorrt=tensorrt_version())


def identity_problem(recorded: Mapping[str, Any], current: GpuIdentity | None, *,
                     what: str = "this engine") -> str | None:
    """Why an artifact recorded for ``recorded`` (a ``GpuIdentity.as_dict()``) must not run on ``current``, or None.

    The TensorRT version must match in full (an engine's plan format changes with patch releases), and the GPU
    model and compute capability must match. A different card of the same model (another UUID) is fine."""
    if current is None:
        return f"{what} needs a CUDA GPU and torch sees none here"
    want_sm, want_name = recorded.get("sm"), recorded.get("name")
    if want_sm and str(want_sm) != current.sm:
        return (f"{what} was built for {want_name or 'a GPU'} (sm{str(want_sm).replace('.', '')}); this is "
                f"{current.name} (sm{current.sm.replace('.', '')}): rebuild it here with `e2rnas export --trt`")
    if want_name and gpu_model(str(want_name)) != current.model:
        return (f"{what} was built for {want_name}; this is {current.name} (same sm{current.sm.replace('.', '')}, "
                f"another model: TensorRT tunes kernels per model): rebuild it here with `e2rnas export --trt`")
    want_trt = recorded.get("tensorrt")
    if want_trt and current.tensorrt and str(want_trt) != current.tensorrt:
        return (f"{what} was built with TensorRT {want_trt}; this machine has TensorRT {current.tensorrt}: engines "
                f"load only in the version that built them; rebuild it here or install tensorrt=={want_trt}")
    return None


def identity_notes(recorded: Mapping[str, Any], current: GpuIdentity | None) -> list[str]:
    """What ``identity_problem`` could not compare, or compared and let pass, in one line each (for the record).

    A TensorRT installed from NVIDIA's apt repository or tar file has no pip metadata: when neither that nor the
    imported module tells the version here, the version check is skipped and this says so. The UUID never refuses
    (another card of the same model runs the engine), but the record says whether it is the card that built it."""
    if current is None or not recorded:
        return []
    notes = []
    want_trt = recorded.get("tensorrt")
    if not want_trt:
        notes.append("the engine records no TensorRT version: the version check was skipped")
    elif not current.tensorrt:
        notes.append(f"TensorRT version here unknown (no package metadata: apt or tar install?): the engine's "
                     f"TensorRT {want_trt} was not compared")
    want_uuid = recorded.get("uuid")
    if want_uuid and current.uuid:
        notes.append(f"same GPU that built it ({current.uuid})" if str(want_uuid) == current.uuid else
                     f"built on another {current.name} ({want_uuid}); this card is {current.uuid}")
    elif not want_uuid:
        notes.append("the engine records no GPU UUID: whether this is the card that built it is unknown")
    return notes


_NAME_TAG = re.compile(r"\.trt(\d+(?:\.\d+)*)\.sm(\d+)(\d)(?:\.([a-z0-9-]+))?"
                       r"\.(?:fp32|fp16|int8|best)\.(?:engine|plan)$")


def recorded_identity(engine: Path) -> dict[str, Any]:
    """What an engine was built for: its sidecar's ``identity`` (export writes it), else what older sidecars
    recorded (``environment``), else what its file name says (``model.trt10.8.0.43.sm90.h200.fp16.engine``)."""
    import json

    sidecar = Path(engine).with_suffix(".json")
    if sidecar.is_file():
        try:
            data = json.loads(sidecar.read_text())
        except (OSError, ValueError):
            data = {}
        if isinstance(data.get("identity"), dict):
            return data["identity"]
        env = data.get("environment") or {}
        if env.get("compute_capability"):
            cc = env["compute_capability"]
            return {"name": env.get("gpu"), "sm": f"{cc[0]}.{cc[1]}", "tensorrt": env.get("version")}
    m = _NAME_TAG.search(Path(engine).name)
    if m:
        out: dict[str, Any] = {"sm": f"{m.group(2)}.{m.group(3)}"}
        if m.group(4):
            out["name"] = m.group(4).replace("-", " ")
        if m.group(1).count(".") >= 2:  # a full version; "10.8" alone (older names) cannot be compared in full
            out["tensorrt"] = m.group(1)
        return out
    return {}


def engine_identity_problem(engine: Path, current: GpuIdentity | None) -> str | None:
    """``identity_problem`` for an engine file, from its sidecar or name (None when neither says anything)."""
    recorded = recorded_identity(engine)
    if not recorded:
        return None
    return identity_problem(recorded, current, what=f"{Path(engine).name}")


def engine_identity_notes(engine: Path, current: GpuIdentity | None) -> list[str]:
    """``identity_notes`` for an engine file, from its sidecar or name."""
    return identity_notes(recorded_identity(engine), current)


def target_problem(*, target_name: str, compute_capability: str | None, current: GpuIdentity | None) -> str | None:
    """Why a named GPU target (``v100``, ``a100``, ``h100``...) must not be measured on ``current``, or None.

    ``bench --target v100`` on an H200 would print H200 numbers under a V100 label: refuse instead. Generic
    targets (``cuda``, no compute capability) accept any GPU."""
    if compute_capability is None:
        return None
    if current is None:
        return f"target {target_name} needs its GPU; torch sees no CUDA GPU here (use --host for a remote device)"
    if current.sm != compute_capability:
        return (f"target {target_name} is sm{compute_capability.replace('.', '')}, this GPU is {current.name} "
                f"(sm{current.sm.replace('.', '')}): measure on the target itself, or use --target cuda for this GPU")
    model = target_name.lower().replace("jetson-", "jetson ").replace("-", " ")
    if model not in current.model and current.model not in model:
        return (f"target {target_name} and this GPU ({current.name}) share sm{current.sm.replace('.', '')} but are "
                f"different models: use --target cuda to measure this GPU under its own name")
    return None


def torch_arch_problem(*, sm: str, arch_list: list[str], torch_version: str, gpu_name: str = "this GPU") -> str | None:
    """Why torch cannot run kernels on a GPU of compute capability ``sm``, or None.

    A wheel runs on a GPU when its arch list has that sm's machine code (``sm_70``), or PTX (``compute_XY``) for
    an equal or older architecture of the same major that the driver can compile. Current CUDA 13 wheels start at
    sm_75, so a V100 (sm_70) fails with "no kernel image is available" at the first kernel."""
    major, minor = (int(p) for p in sm.split("."))
    have_sass = {a for a in arch_list if a.startswith("sm_")}
    if f"sm_{major}{minor}" in have_sass:
        return None
    # SASS of the same major and lower minor also runs (binary compatibility within a major version).
    for a in have_sass:
        digits = a[3:].rstrip("a").rstrip("f")
        if digits.isdigit() and len(digits) >= 2 and int(digits[:-1]) == major and int(digits[-1]) <= minor:
            return None
    for a in arch_list:
        if a.startswith("compute_"):
            digits = a[8:].rstrip("a").rstrip("f")
            if digits.isdigit() and (int(digits[:-1]), int(digits[-1])) <= (major, minor):
                return None
    shown = ", ".join(sorted(have_sass)) or "none"
    return (f"torch {torch_version} has no kernels for {gpu_name} (sm_{major}{minor}; this build has {shown}): "
            f"torch on this GPU fails; use the onnxruntime (CUDA provider) or TensorRT runners, or a torch build "
            f"that lists sm_{major}{minor}")


def check_torch_on_device(device: Any) -> str | None:
    """``torch_arch_problem`` for a torch device (None for CPU or MPS)."""
    import torch

    device = torch.device(device)
    if device.type != "cuda" or not torch.cuda.is_available():
        return None
    index = device.index if device.index is not None else torch.cuda.current_device()
    props = torch.cuda.get_device_properties(index)
    return torch_arch_problem(sm=f"{props.major}.{props.minor}", arch_list=list(torch.cuda.get_arch_list()),
                              torch_version=torch.__version__, gpu_name=props.name)
