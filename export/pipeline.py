"""``export_model``: one call from a ``model.pt`` (or a built-in genotype) to validated ONNX / TensorRT artifacts.

Order of work: every input is checked and loaded (source, validation images, calibration images, TensorRT and
GPU) before anything is written; each artifact is written to a temporary file, validated against torch and only
then renamed into place, so a failed export or a failed validation never replaces a good file. ``export.json``
in ``out_dir`` summarises every artifact there (written atomically, merged with earlier runs).
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from e2rnas import __version__
from e2rnas._io import atomic_write, atomic_write_json
from e2rnas.data import ImageSet, resize
from e2rnas.errors import E2RNASError
from e2rnas.export import validate as V
from e2rnas.export._registry import (
    DEFAULT_OPSET,
    INPUT_NAME,
    OUTPUT_NAME,
    ExportConfig,
    ExportResult,
    artifact_name,
    export_config,
)
from e2rnas.model_io import ModelFileError, NetworkSpec, load_model
from e2rnas.space.genotypes import Genotype, resolve_genotype
from e2rnas.space.network import Network

SUMMARY = "export.json"
SUMMARY_FORMAT = "e2rnas.export/1"


@dataclass(frozen=True)
class Source:
    """The network to export and where it came from."""

    model: Network
    genotype: Genotype
    spec: NetworkSpec
    origin: str  # "model.pt path" or "genotype NAME (random weights, seed S)"
    trained: bool
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def dataset(self) -> str | None:
        data = self.meta.get("data") or {}
        return data.get("dataset") or data.get("spec")


def load_source(source: str | Path, *, shape: Any | None = None, seed: int = 0) -> Source:
    """A ``model.pt`` file (trained weights), or a genotype reference (built-in name, genotype.json, search run
    directory) built at ``shape`` (an ``e2rnas.space.cost.DeployShape``; default 20 cells, C=36, 32x32, 10 classes)
    with seeded random weights."""
    text = str(source)
    if text.endswith(".pt"):
        if shape is not None:
            raise E2RNASError("--layers/--channels/--image-size/--classes apply to genotypes; a model.pt has its shape")
        try:
            loaded = load_model(text)
        except ModelFileError as exc:
            raise ModelFileError(_one_line(exc)) from exc
        return Source(loaded.model, loaded.genotype, loaded.spec, text, True, dict(loaded.meta))
    from e2rnas.space.cost import DeployShape

    genotype = resolve_genotype(text)
    shape = shape or DeployShape()
    spec = NetworkSpec(C=shape.C, layers=shape.layers, num_classes=shape.num_classes, input_size=shape.input_size,
                       variant=shape.variant)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        try:
            model = spec.build(genotype).eval()
        except ValueError as exc:
            raise E2RNASError(f"cannot build {text} at {shape}: {exc}") from exc
    return Source(model, genotype, spec, f"genotype {text} (random weights, seed {seed})", False, {})


def export_model(source: str | Path, *, out_dir: Path, onnx: bool = True, trt: bool = False, precision: str = "fp32",
                 opset: int = DEFAULT_OPSET, exporter: str = "dynamo", dynamic_batch: bool = True, batch: int = 1,
                 max_batch: int = 64, simplify: bool = False, atol: float | None = None, workspace_mb: int = 1024,
                 dataset: str | None = None, data_dir: str | Path | None = None,
                 validation_data: ImageSet | None = None, validation_samples: int = 64, check_batch: int = 16,
                 calib_data: str | None = None, calib_samples: int = 256, int8_scheme: str = "auto",
                 shape: Any | None = None, seed: int = 0) -> list[ExportResult]:
    """Export ``source`` and validate every artifact against torch; see ``docs/export.md`` for each keyword.

    ``onnx`` keeps the ONNX artifacts (``model.onnx``; with ``precision="int8"`` also ``model.int8.onnx``);
    ``trt`` builds a TensorRT engine at ``precision`` from the fp32 ONNX graph (kept only when ``onnx``).
    ``dynamic_batch=False`` fixes the batch to ``batch``; with a dynamic batch, ``batch`` is TensorRT's
    optimisation-profile batch and ``max_batch`` its largest. ``atol`` overrides the tolerance of every
    artifact judged by max |diff|. ``int8_scheme`` is the ONNX Runtime int8 scheme ("auto" picks it from this
    CPU's flags; ``docs/int8-cpu.md``). Returns one ``ExportResult`` per artifact; a result with status "failed"
    left no file behind.
    """
    t_start = time.perf_counter()
    plan = _plan(onnx=onnx, trt=trt, precision=precision, batch=batch, max_batch=max_batch, atol=atol,
                 check_batch=check_batch, validation_samples=validation_samples, calib_samples=calib_samples)
    from e2rnas.export.onnx_export import check_opset

    check_opset(opset, exporter)
    if "onnx-int8" in plan:
        from e2rnas.export.int8_schemes import check_scheme

        check_scheme(int8_scheme)
    env = None
    if trt:
        from e2rnas.export.tensorrt import require

        env = require(precision)
    src = load_source(source, shape=shape, seed=seed)
    size = src.spec.input_size
    spec_name = dataset or src.dataset or "digits"
    if validation_data is not None:
        val = validation_data if validation_data.image_size == size else resize(validation_data, size)
        val = val.head(validation_samples)
    else:
        val = V.images_for(spec_name, split="test", image_size=size, samples=validation_samples, data_dir=data_dir)
    x_val, y_val = V.as_numpy(val)
    labels = y_val if val.num_classes == src.spec.num_classes else None
    calib = None
    if precision == "int8":
        calib_set = V.images_for(calib_data or spec_name, split="train", image_size=size, samples=calib_samples,
                                 data_dir=data_dir)
        calib = V.as_numpy(calib_set)[0]
    static = None if dynamic_batch else batch
    reference = V.reference_logits(src.model, x_val)
    ctx = _Context(src=src, out_dir=Path(out_dir), x=x_val, labels=labels, reference=reference, static=static,
                   check_batch=check_batch, atol=atol, val_name=val.name)

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    results: list[ExportResult] = []
    metadata = _metadata(src, opset=opset, static=static, val_name=val.name)
    settings = {
        "precision": precision, "opset": opset, "exporter": exporter, "dynamic_batch": dynamic_batch, "batch": batch,
        "max_batch": max_batch, "simplify": simplify, "atol": atol, "workspace_mb": workspace_mb,
        "validation": {"dataset": val.name, "samples": len(x_val), "check_batch": check_batch},
        "calibration": {"dataset": calib_data or spec_name, "samples": int(len(calib))} if calib is not None else None,
        "int8_scheme": int8_scheme if "onnx-int8" in plan else None,
    }
    try:
        with tempfile.TemporaryDirectory(prefix="e2rnas-export-") as scratch:
            fp32_dir = out_dir if onnx else Path(scratch)
            fp32_path = fp32_dir / artifact_name("onnx", "fp32", static_batch=static)
            fp32 = _onnx_fp32(ctx, fp32_path, metadata, opset=opset, exporter=exporter,
                              dynamic_batch=dynamic_batch, batch=batch, simplify=simplify)
            if onnx or not fp32.ok:  # a failed intermediate ONNX is reported rather than nothing
                results.append(fp32)
            if fp32.ok and "onnx-fp16" in plan:
                results.append(_onnx_fp16(ctx, fp32_path, metadata))
            if fp32.ok and "onnx-int8" in plan:
                results.append(_onnx_int8(ctx, fp32_path, metadata, calib=calib,
                                          calib_name=calib_data or spec_name, scheme=int8_scheme))
            if fp32.ok and env is not None:
                results.append(_tensorrt(ctx, fp32_path, env=env, precision=precision, workspace_mb=workspace_mb,
                                         dynamic_batch=dynamic_batch, batch=batch, max_batch=max_batch,
                                         calib=calib, onnx_parity=fp32.details.get("parity")))
    finally:  # also when a later step raises: the artifacts already written are listed
        if results:
            _write_summary(out_dir, src, results, settings={**settings,
                                                            "total_s": round(time.perf_counter() - t_start, 3)})
    return results


def _plan(*, onnx: bool, trt: bool, precision: str, batch: int, max_batch: int, atol: float | None,
          check_batch: int, validation_samples: int, calib_samples: int) -> tuple[str, ...]:
    """The artifacts to make, after refusing settings that cannot work (nothing is written yet)."""
    if not onnx and not trt:
        raise E2RNASError("nothing to export: ask for --onnx and/or --trt")
    if batch < 1 or max_batch < batch:
        raise E2RNASError(f"--batch {batch} must be >= 1 and <= --max-batch {max_batch}")
    if atol is not None and not atol >= 0:
        raise E2RNASError(f"--atol must be >= 0, got {atol}")
    if check_batch < 1 or validation_samples < 1:
        raise E2RNASError("the validation batch and the number of validation images must be >= 1")
    if precision == "int8" and calib_samples < 1:
        raise E2RNASError("--calib-samples must be >= 1 for int8")
    plan = []
    if onnx:
        export_config("onnx", precision)  # refuses an unknown precision before anything runs
        plan.append("onnx")
        if precision in ("int8", "fp16"):
            plan.append(f"onnx-{precision}")
    if trt:
        export_config("tensorrt", precision)
        plan.append("tensorrt")
    return tuple(plan)


@dataclass
class _Context:
    src: Source
    out_dir: Path
    x: np.ndarray
    labels: np.ndarray | None
    reference: np.ndarray
    static: int | None
    check_batch: int
    atol: float | None
    val_name: str

    def tolerance(self, cfg: ExportConfig) -> tuple[float | None, float, float | None]:
        """(atol, min_top1, rtol); ``--atol`` replaces the bound of every artifact judged by max |diff|."""
        by_diff = cfg.atol is not None or cfg.rtol is not None
        return (self.atol if self.atol is not None and by_diff else cfg.atol), cfg.min_top1, cfg.rtol

    def parity(self, predictor: Any) -> V.Parity:
        return V.compare(predictor, self.x, self.reference, check_batch=self.check_batch, static_batch=self.static,
                         labels=self.labels)


class _Rejected(Exception):
    """Raised inside an atomic write so that a file failing validation is never renamed into place."""

    def __init__(self, parity: V.Parity, reason: str):
        super().__init__(reason)
        self.parity, self.reason = parity, reason


def _validated_write(ctx: _Context, path: Path, cfg: ExportConfig, make: Any, predictor_for: Any) -> ExportResult:
    """``make(tmp) -> details``; then parity of ``predictor_for(tmp)`` with torch; rename only if it passes."""
    details: dict[str, Any] = {}
    atol, min_top1, rtol = ctx.tolerance(cfg)
    details["tolerance"] = {"atol": atol, "min_top1": min_top1, "rtol": rtol if atol is None else None}

    def write(tmp: Path) -> None:
        details.update(make(tmp))
        t0 = time.perf_counter()
        parity = ctx.parity(predictor_for(tmp))
        details["validate_s"] = round(time.perf_counter() - t0, 3)
        details["parity"] = parity.as_dict()
        reason = V.check(parity, atol=atol, min_top1=min_top1, rtol=rtol)
        if reason:
            raise _Rejected(parity, reason)

    try:
        atomic_write(path, write)
    except _Rejected as rej:
        details["reason"] = f"{rej.reason}; nothing written (an earlier {path.name}, if any, is kept)"
        return ExportResult(cfg.format, cfg.precision, None, None, rej.parity.max_abs_diff,
                            rej.parity.top1_agreement, "failed", details)
    parity = details["parity"]
    return ExportResult(cfg.format, cfg.precision, str(path), round(path.stat().st_size / 1e6, 3),
                        parity["max_abs_diff"], parity["top1_agreement"], "ok", details)


def _ort(path: Path) -> Any:
    from e2rnas.predict import OnnxRuntimePredictor

    return OnnxRuntimePredictor(path)


def _onnx_fp32(ctx: _Context, path: Path, metadata: dict[str, Any], *, opset: int, exporter: str,
               dynamic_batch: bool, batch: int, simplify: bool) -> ExportResult:
    from e2rnas.export.onnx_export import export_onnx, finalize_onnx

    def make(tmp: Path) -> dict[str, Any]:
        info = export_onnx(ctx.src.model, tmp, input_size=ctx.src.spec.input_size, opset=opset, exporter=exporter,
                           dynamic_batch=dynamic_batch, batch=batch)
        info.update(finalize_onnx(tmp, metadata={**metadata, "exporter": info["exporter"]}, opset=opset,
                                  simplify=simplify))
        return info

    return _validated_write(ctx, path, export_config("onnx", "fp32"), make, _ort)


def _onnx_int8(ctx: _Context, fp32_path: Path, metadata: dict[str, Any], *, calib: np.ndarray,
               calib_name: str, scheme: str) -> ExportResult:
    import onnx

    from e2rnas.export.int8_schemes import other_schemes
    from e2rnas.export.onnx_export import quantize_int8, set_metadata

    def make(tmp: Path) -> dict[str, Any]:
        info = quantize_int8(fp32_path, tmp, calibration=calib, scheme=scheme)
        info["calibration_dataset"] = calib_name
        model = onnx.load(str(tmp))
        set_metadata(model, {**metadata, "precision": "int8", "int8_scheme": info["scheme"], "calibration": info})
        onnx.save(model, str(tmp))
        return info

    result = _validated_write(ctx, ctx.out_dir / artifact_name("onnx", "int8", static_batch=ctx.static),
                              export_config("onnx", "int8"), make, _ort)
    used = result.details.get("scheme")
    if not result.ok and used:  # say which scheme failed on this CPU and what else to try, in the same line
        tries = " or ".join(f"--int8-scheme {s}" for s in other_schemes(used))
        result.details["reason"] = f"int8 scheme {used} ({result.details['scheme_reason']}): " \
                                   f"{result.details['reason']}; try {tries}"
    return result


def _onnx_fp16(ctx: _Context, fp32_path: Path, metadata: dict[str, Any]) -> ExportResult:
    import onnx

    from e2rnas.export.fp16 import convert_to_fp16
    from e2rnas.export.onnx_export import set_metadata

    def make(tmp: Path) -> dict[str, Any]:
        info = convert_to_fp16(fp32_path, tmp)
        model = onnx.load(str(tmp))
        set_metadata(model, {**metadata, "precision": "fp16",
                             "input": {**metadata["input"], "dtype": "float16"}})
        onnx.save(model, str(tmp))
        return info

    return _validated_write(ctx, ctx.out_dir / artifact_name("onnx", "fp16", static_batch=ctx.static),
                            export_config("onnx", "fp16"), make, _ort)


def _tensorrt(ctx: _Context, onnx_path: Path, *, env: Any, precision: str, workspace_mb: int, dynamic_batch: bool,
              batch: int, max_batch: int, calib: np.ndarray | None, onnx_parity: Any) -> ExportResult:
    from e2rnas.export.tensorrt import TensorRTPredictor, build_engine

    name = artifact_name("tensorrt", precision, static_batch=ctx.static, trt_version=env.version,
                         compute_capability=env.compute_capability, gpu=env.identity().model)
    path = ctx.out_dir / name
    cache_tag = _digest(onnx_path.read_bytes(), calib.tobytes() if calib is not None else b"")
    ort_logits = V.run_batched(_ort(onnx_path), ctx.x, ctx.static or ctx.check_batch, static=bool(ctx.static))

    extra: dict[str, Any] = {}

    def make(tmp: Path) -> dict[str, Any]:
        return build_engine(onnx_path, tmp, env=env, precision=precision, workspace_mb=workspace_mb,
                            dynamic_batch=dynamic_batch, batch=batch, max_batch=max_batch, calibration=calib,
                            cache_dir=ctx.out_dir, cache_tag=cache_tag)

    def predictor(tmp: Path) -> Any:
        runner = TensorRTPredictor(tmp)
        trt_logits = V.run_batched(runner, ctx.x, ctx.static or ctx.check_batch, static=bool(ctx.static))
        extra["vs_onnxruntime"] = {"max_abs_diff": float(np.abs(trt_logits - ort_logits).max()),
                                   "top1_agreement": float((trt_logits.argmax(1) == ort_logits.argmax(1)).mean())}
        return runner

    result = _validated_write(ctx, path, export_config("tensorrt", precision), make, predictor)
    details = {**result.details, **extra, "onnx_vs_torch": onnx_parity, "environment": env.as_dict()}
    if result.ok:
        sidecar = path.with_suffix(".json")
        kept_onnx = str(onnx_path) if onnx_path.parent == ctx.out_dir else None
        atomic_write_json(sidecar, {"engine": path.name, "onnx": kept_onnx, "identity": env.identity().as_dict(),
                                    "e2rnas_version": __version__,
                                    "versions": _versions(), "built_at": _now(), **details})
        details["sidecar"] = str(sidecar)
    return ExportResult(**{**asdict(result), "details": details})


def _metadata(src: Source, *, opset: int, static: int | None, val_name: str) -> dict[str, Any]:
    spec = src.spec
    meta = {
        "e2rnas_version": __version__,
        "genotype": src.genotype.to_dict(),
        "network": {"C": spec.C, "layers": spec.layers, "num_classes": spec.num_classes,
                    "input_size": spec.input_size, "variant": spec.variant},
        "input": {"name": INPUT_NAME, "shape": ["batch" if static is None else static, 3, spec.input_size,
                                                spec.input_size],
                  "dtype": "float32", "layout": "NCHW", "range": [0.0, 1.0]},
        "output": {"name": OUTPUT_NAME, "shape": ["batch" if static is None else static, spec.num_classes]},
        "input_size": spec.input_size,
        "num_classes": spec.num_classes,
        "normalization": {"mean": list(spec.mean), "std": list(spec.std), "in_graph": True},
        "source": src.origin,
        "trained": src.trained,
        "dataset": src.dataset or val_name,
        "precision": "fp32",
        "opset": opset,
    }
    if src.meta.get("search"):
        meta["search"] = src.meta["search"]
    return meta


def _write_summary(out_dir: Path, src: Source, results: list[ExportResult], *, settings: dict[str, Any]) -> None:
    """``export.json``: this run's results plus earlier ones in the folder whose files still exist."""
    import json

    path = out_dir / SUMMARY
    new_paths = {r.path for r in results if r.path}
    kept: list[dict[str, Any]] = []
    if path.is_file():
        try:
            old = json.loads(path.read_text())
            kept = [r for r in old.get("results", [])
                    if r.get("path") and r["path"] not in new_paths and Path(r["path"]).is_file()]
        except (json.JSONDecodeError, AttributeError):
            kept = []
    atomic_write_json(path, {
        "format": SUMMARY_FORMAT, "source": src.origin, "trained": src.trained, "genotype": src.genotype.to_dict(),
        "network": asdict(src.spec), "e2rnas_version": __version__, "created": _now(), "settings": settings,
        "versions": _versions(), "results": kept + [r.as_dict() for r in results],
    })


def _versions() -> dict[str, str | None]:
    from importlib import metadata

    out: dict[str, str | None] = {}
    for pkg in ("torch", "onnx", "onnxruntime", "onnxscript", "onnxslim", "tensorrt", "nvidia-modelopt"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = None
    return out


def _digest(*blobs: bytes) -> str:
    h = hashlib.sha256()
    for b in blobs:
        h.update(b)
    return h.hexdigest()[:12]


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def _one_line(exc: BaseException) -> str:
    """Model-file errors can carry torch's multi-paragraph unpickler text; keep the first sentence of each part."""
    text = str(exc)
    head, _, rest = text.partition(" (")
    if rest and "\n" in rest:
        cause = exc.__cause__
        return f"{head} ({type(cause).__name__ if cause else 'unreadable'}); re-create it with `e2rnas train`"
    return " ".join(text.split())
