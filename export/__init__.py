"""Export to ONNX (ONNX Runtime, fp32 and int8) and TensorRT, each artifact validated against torch.

Importing this package is cheap and never needs torch, onnx, onnxscript or tensorrt: the public names below
are loaded from their modules on first use.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from e2rnas.export._registry import EXPORTERS, ExportConfig, ExportResult, artifact_name
    from e2rnas.export.onnx_export import read_metadata
    from e2rnas.export.pipeline import export_model, load_source
    from e2rnas.export.tensorrt import TensorRTPredictor, TensorRTUnavailable

_LAZY = {
    "EXPORTERS": "_registry", "ExportConfig": "_registry", "ExportResult": "_registry", "artifact_name": "_registry",
    "read_metadata": "onnx_export", "export_model": "pipeline", "load_source": "pipeline",
    "TensorRTPredictor": "tensorrt", "TensorRTUnavailable": "tensorrt",
}
__all__ = ["EXPORTERS", "ExportConfig", "ExportResult", "TensorRTPredictor", "TensorRTUnavailable", "artifact_name",
           "export_model", "load_source", "read_metadata"]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f"e2rnas.export.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'e2rnas.export' has no attribute {name!r}")
