"""ONNX export in small steps: trace a logits-only eval copy, check, infer shapes, stamp metadata, simplify.

The graph takes ``images`` (float32 NCHW pixels in [0, 1]; normalisation is inside the graph) and returns
``logits``. The batch axis is dynamic unless a static batch is asked for. The dynamo exporter is the default
(``docs/export-exporter.md``); the TorchScript exporter is selectable and is the automatic fallback.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import logging
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from e2rnas.errors import E2RNASError
from e2rnas.export._registry import INPUT_NAME, ONNX_EXPORTERS, OPSETS, OUTPUT_NAME
from e2rnas.space.network import Network


class ExportError(E2RNASError):
    """The exporter or the ONNX checker rejected the model."""


class LogitsOnly(nn.Module):
    """The deployed function: pixels in, logits out; no auxiliary head, no drop-path, eval mode."""

    def __init__(self, net: Network):
        super().__init__()
        net = copy.deepcopy(net).cpu().float().eval()
        net.aux_head = None  # its weights are training-only; dropping them keeps them out of the file
        net.drop_path_prob = 0.0
        self.net = net

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(images)


def check_opset(opset: int, exporter: str) -> None:
    if exporter not in ONNX_EXPORTERS:
        raise E2RNASError(f"unknown exporter {exporter!r}; choose from {', '.join(ONNX_EXPORTERS)}")
    lo, hi = OPSETS[exporter]
    if not lo <= opset <= hi:
        hint = " (or --exporter dynamo for 18-23)" if exporter == "torchscript" and opset > hi else ""
        hint = " (or --exporter torchscript for 13-17)" if exporter == "dynamo" and opset < lo else hint
        raise E2RNASError(f"opset {opset} is not supported by the {exporter} exporter; use {lo}-{hi}{hint}")


def export_onnx(net: Network, path: Path, *, input_size: int, opset: int = 18, exporter: str = "dynamo",
                dynamic_batch: bool = True, batch: int = 1) -> dict[str, Any]:
    """Write the raw exported graph to ``path``; return which exporter wrote it and how long it took.

    With ``exporter="dynamo"`` a failure falls back to TorchScript (reason kept in the result) when the opset
    allows it; an explicitly chosen TorchScript export has no fallback.
    """
    check_opset(opset, exporter)
    module = LogitsOnly(net)
    trace_batch = 2 if dynamic_batch else batch  # batch 1 would let the tracer specialise the batch axis
    example = torch.rand(trace_batch, 3, input_size, input_size, generator=torch.Generator().manual_seed(0))
    info: dict[str, Any] = {"exporter": exporter, "opset": opset, "dynamic_batch": dynamic_batch}
    t0 = time.perf_counter()
    if exporter == "dynamo":
        try:
            _dynamo(module, example, path, opset, dynamic_batch)
        except Exception as exc:  # the dynamo exporter raises many types; TorchScript is the documented fallback
            lo, hi = OPSETS["torchscript"]
            if not lo <= opset <= hi:
                raise ExportError(f"dynamo export failed and opset {opset} rules out the TorchScript fallback: "
                                  f"{_one_line(exc)}") from exc
            info.update(exporter="torchscript", fallback_reason=f"dynamo: {_one_line(exc)}")
            _torchscript(module, example, path, opset, dynamic_batch)
    else:
        _torchscript(module, example, path, opset, dynamic_batch)
    info["export_s"] = round(time.perf_counter() - t0, 3)
    return info


def _dynamo(module: nn.Module, example: torch.Tensor, path: Path, opset: int, dynamic: bool) -> None:
    shapes = {INPUT_NAME: {0: torch.export.Dim("batch", min=1, max=65536)}} if dynamic else None
    # verbose=False silences the progress lines; stdout is redirected too because some versions print anyway.
    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(module, (example,), None, dynamo=True, opset_version=opset, verbose=False,
                                    input_names=[INPUT_NAME], output_names=[OUTPUT_NAME], dynamic_shapes=shapes,
                                    external_data=False)
        program.save(str(path), external_data=False)  # one self-contained file (models here are < 2 GB)


def _torchscript(module: nn.Module, example: torch.Tensor, path: Path, opset: int, dynamic: bool) -> None:
    axes = {INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}} if dynamic else None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # deprecation and tracer warnings: the spatial size is static here
        try:
            torch.onnx.export(module, (example,), str(path), dynamo=False, opset_version=opset,
                              input_names=[INPUT_NAME], output_names=[OUTPUT_NAME], dynamic_axes=axes,
                              do_constant_folding=True)
        except Exception as exc:
            raise ExportError(f"TorchScript export failed: {_one_line(exc)}") from exc


def finalize_onnx(path: Path, *, metadata: dict[str, Any], opset: int, simplify: bool = False) -> dict[str, Any]:
    """Check (full), infer shapes, verify the opset and the I/O contract, stamp metadata, optionally simplify."""
    import onnx

    model = onnx.load(str(path))
    written = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
    if written != opset:  # never hand back silently a different opset than the one asked for
        raise ExportError(f"the exporter wrote opset {written} instead of {opset}")
    info: dict[str, Any] = {}
    if simplify:
        model, info["simplify"] = _slim(model)
    try:
        onnx.checker.check_model(model, full_check=True)
        model = onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        raise ExportError(f"the exported graph fails the ONNX checker: {_one_line(exc)}") from exc
    _check_io(model)
    set_metadata(model, metadata)
    onnx.save(model, str(path))
    info["nodes"] = len(model.graph.node)
    return info


def _slim(model: Any) -> tuple[Any, dict[str, int]]:
    try:
        import onnxslim
    except ImportError as exc:
        raise E2RNASError("--simplify needs onnxslim: pip install 'e2rnas[simplify]'") from exc
    before = len(model.graph.node)
    with contextlib.redirect_stdout(io.StringIO()):
        slimmed = onnxslim.slim(model)
    return slimmed, {"nodes_before": before, "nodes_after": len(slimmed.graph.node)}


def _check_io(model: Any) -> None:
    ins = [i.name for i in model.graph.input]
    outs = [o.name for o in model.graph.output]
    if ins != [INPUT_NAME] or outs != [OUTPUT_NAME]:
        raise ExportError(f"exported graph has inputs {ins} and outputs {outs}; expected [{INPUT_NAME}] -> "
                          f"[{OUTPUT_NAME}]")


def set_metadata(model: Any, metadata: dict[str, Any]) -> None:
    """``metadata_props`` as strings; structured values are JSON (``read_metadata`` decodes them)."""
    props = {p.key: p.value for p in model.metadata_props}
    props.update({k: v if isinstance(v, str) else json.dumps(v) for k, v in metadata.items() if v is not None})
    del model.metadata_props[:]
    for key, value in props.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value


def read_metadata(path: str | Path) -> dict[str, Any]:
    """The ``metadata_props`` of an ONNX file, JSON values decoded (weights are not loaded)."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    out: dict[str, Any] = {}
    for p in model.metadata_props:
        try:
            out[p.key] = json.loads(p.value)
        except json.JSONDecodeError:
            out[p.key] = p.value
    return out


def quantize_int8(src: Path, dst: Path, *, calibration: np.ndarray, batch_size: int = 16,
                  per_channel: bool = True, method: str = "minmax", scheme: str = "auto",
                  cpu: dict[str, Any] | None = None) -> dict[str, Any]:
    """ONNX Runtime static quantisation to QDQ int8, calibrated on real images, for CPU targets.

    The graph is pre-processed first (ORT's ``quant_pre_process``: BatchNorm folding, shape inference), as the
    ORT quantisation guide recommends. ``scheme`` names the integer types (``e2rnas.export.int8_schemes``):
    S8S8 (ORT's default) saturates on x86 CPUs without VNNI, so ``"auto"`` picks from ``cpu`` (default: this
    CPU's flags); the choice, the CPU facts and the reason are returned with the other settings.
    """
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from e2rnas.export.calibration import calibration_batch, calibration_batches, static_batch_of
    from e2rnas.export.int8_schemes import resolve_scheme

    methods = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
               "percentile": CalibrationMethod.Percentile}
    if method not in methods:
        raise E2RNASError(f"unknown calibration method {method!r}; choose from {', '.join(methods)}")
    if len(calibration) == 0:
        raise E2RNASError("int8 calibration needs at least one image")
    chosen = resolve_scheme(scheme, cpu)
    qtypes = {"int8": QuantType.QInt8, "uint8": QuantType.QUInt8}
    # a --static-batch N graph takes exactly N images per call: calibrate at its batch, the tail wrapped around
    calib_batch = calibration_batch(static_batch_of(src), batch_size, len(calibration))
    chunks, padded = calibration_batches(calibration, calib_batch)

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter(chunks)

        def get_next(self) -> dict[str, np.ndarray] | None:
            batch = next(self.batches, None)
            return None if batch is None else {INPUT_NAME: batch}

    t0 = time.perf_counter()
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # ORT logs one warning per BatchNorm it cannot quantise per channel; noise here
    try:
        with tempfile.TemporaryDirectory(prefix="e2rnas-quant-") as tmp:
            pre = Path(tmp) / "pre.onnx"
            try:
                quant_pre_process(str(src), str(pre))
            except Exception:  # symbolic shape inference can fail on some graphs; ONNX shape inference suffices
                quant_pre_process(str(src), str(pre), skip_symbolic_shape=True)
            quantize_static(str(pre), str(dst), Reader(), quant_format=QuantFormat.QDQ, per_channel=per_channel,
                            activation_type=qtypes[chosen["activation_type"]],
                            weight_type=qtypes[chosen["weight_type"]], reduce_range=chosen["reduce_range"],
                            calibrate_method=methods[method])
    finally:
        root.setLevel(level)
    return {"calibration_images": int(len(calibration)), "calibration_method": method,
            "calibration_batch": calib_batch, "calibration_padded": padded, "per_channel": per_channel,
            "quant_format": "QDQ", **chosen,
            "quantize_s": round(time.perf_counter() - t0, 3)}


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text[:300] + ("..." if len(text) > 300 else "")
