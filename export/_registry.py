"""Declarative export formats: what each artifact is, what it is called and how closely it must match torch.

An entry is data, not code: adding a format/precision pair is one ``ExportConfig``. The pipeline reads the
tolerance from here, the ``bench`` command reads the file names (``artifact_name``) to find the artifacts.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from typing import Any

PRECISIONS = ("fp32", "fp16", "int8")
ONNX_EXPORTERS = ("dynamo", "torchscript")
DEFAULT_OPSET = 18
#: opsets each torch exporter can write (inclusive). The dynamo exporter has no implementations below 18 and
#: would silently write 18; the TorchScript exporter stops at 20. Both ranges are checked before exporting.
OPSETS: dict[str, tuple[int, int]] = {"dynamo": (18, 23), "torchscript": (13, 20)}
INPUT_NAME = "images"
OUTPUT_NAME = "logits"


@dataclass(frozen=True)
class ExportConfig:
    """One artifact kind: its parity rule against the torch model and its file-name suffix."""

    format: str  # "onnx" (ONNX Runtime, CPU) or "tensorrt"
    precision: str
    atol: float | None  # max |logit difference| allowed; None: judged by top-1 agreement alone
    min_top1: float  # minimum top-1 agreement with torch on the validation images
    suffix: str  # appended to the stem: model.onnx, model.int8.onnx, model.trt10.8.0.43.sm90.h200.fp16.engine
    note: str = ""
    rtol: float | None = None  # max |logit difference| relative to max |torch logit| (fp16: the logits' scale)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


#: (format, precision) -> config. fp32 is judged by max |diff| (top-1 flips of near-tied logits are noise);
#: reduced precisions change logits by design, so fp16 gets a loose atol and int8 is judged by top-1 agreement.
#: fp16 parity: logits scale with the weights (random-weight networks give logits ~0.03, trained ones ~10), so
#: an absolute bound is either meaningless or too tight; fp16 keeps ~3 significant digits per operation.
FP16_RTOL = 1e-2
FP16_MIN_TOP1 = 0.97
EXPORTERS: dict[tuple[str, str], ExportConfig] = {
    ("onnx", "fp32"): ExportConfig("onnx", "fp32", atol=1e-4, min_top1=0.0, suffix=".onnx",
                                   note="ONNX Runtime CPU vs torch"),
    ("onnx", "int8"): ExportConfig("onnx", "int8", atol=None, min_top1=0.9, suffix=".int8.onnx",
                                   note="ONNX Runtime static QDQ quantisation, per-channel weights"),
    ("tensorrt", "fp32"): ExportConfig("tensorrt", "fp32", atol=1e-3, min_top1=0.0, suffix=".fp32.engine",
                                       note="TF32 disabled; GPU kernels reorder sums"),
    ("onnx", "fp16"): ExportConfig("onnx", "fp16", atol=None, min_top1=FP16_MIN_TOP1, suffix=".fp16.onnx",
                                   rtol=FP16_RTOL, note="fp16 weights and I/O for GPU runtimes (validated on ORT CPU)"),
    ("tensorrt", "fp16"): ExportConfig("tensorrt", "fp16", atol=None, min_top1=FP16_MIN_TOP1, suffix=".fp16.engine",
                                       rtol=FP16_RTOL),
    ("tensorrt", "int8"): ExportConfig("tensorrt", "int8", atol=None, min_top1=0.9, suffix=".int8.engine"),
}


def export_config(format: str, precision: str) -> ExportConfig:
    from e2rnas.errors import E2RNASError

    if precision not in PRECISIONS:
        raise E2RNASError(f"unknown precision {precision!r}; choose from {', '.join(PRECISIONS)}")
    try:
        return EXPORTERS[(format, precision)]
    except KeyError:
        offered = ", ".join(p for f, p in EXPORTERS if f == format)
        raise E2RNASError(f"{format} export offers precision {offered}, not {precision}"
                          ) from None


def artifact_name(format: str, precision: str, *, static_batch: int | None = None, trt_version: str | None = None,
                  compute_capability: tuple[int, int] | None = None, gpu: str | None = None,
                  stem: str = "model") -> str:
    """Predictable file names: ``model.onnx``, ``model.int8.onnx``, ``model.bs8.onnx``,
    ``model.trt10.8.0.43.sm90.h200.fp16.engine`` (the full TensorRT version, the GPU's compute capability and
    its model: an engine loads only in the TensorRT that built it and is tuned for one GPU model)."""
    base = stem + (f".bs{static_batch}" if static_batch else "")
    suffix = export_config(format, precision).suffix
    if format == "tensorrt":
        if trt_version is None or compute_capability is None:
            raise ValueError("a TensorRT artifact name needs the TensorRT version and the compute capability")
        slug = "." + re.sub(r"[^a-z0-9]+", "-", gpu.lower()).strip("-") if gpu else ""
        return f"{base}.trt{trt_version}.sm{compute_capability[0]}{compute_capability[1]}{slug}{suffix}"
    return base + suffix


@dataclass(frozen=True)
class ExportResult:
    """One written (or rejected) artifact and how it compared with the torch model."""

    format: str
    precision: str
    path: str | None  # None when nothing was written (the artifact failed validation)
    size_mb: float | None  # MB = 10^6 bytes, the unit of bench, check and the report
    max_abs_diff: float | None
    top1_agreement: float | None
    status: str  # "ok" or "failed"
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)
