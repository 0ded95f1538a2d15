"""``e2rnas export``: ONNX and TensorRT artifacts of a model, each validated against torch."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from e2rnas.cli import _options as opt
from e2rnas.cli._output import console, print_json, print_table

Source = Annotated[str, typer.Argument(
    help="model.pt (trained), or a genotype (built-in name, genotype.json, search run) built with random weights.")]
Onnx = Annotated[bool, typer.Option("--onnx", help="Keep ONNX artifacts: model.onnx (+ model.int8.onnx for int8).")]
Trt = Annotated[bool, typer.Option("--trt", help="Build a TensorRT engine (needs tensorrt and a CUDA GPU).")]
Precision = Annotated[str, typer.Option(
    "--precision", help="fp32 | fp16 (model.fp16.onnx: fp16 weights and I/O for GPU runtimes; TensorRT) | int8.")]
Batch = Annotated[int, typer.Option("--batch", help="Batch TensorRT optimises for; the batch of --static-batch.")]
Dynamic = Annotated[bool, typer.Option("--dynamic/--static-batch", help="Dynamic batch axis, or fixed to --batch.")]
MaxBatch = Annotated[int, typer.Option("--max-batch", help="Largest batch of the TensorRT optimisation profile.")]
Opset = Annotated[int, typer.Option("--opset", help="ONNX opset (dynamo 18-23, torchscript 13-20).")]
Exporter = Annotated[str, typer.Option("--exporter", help="dynamo (default; falls back to torchscript) | torchscript.")]
Simplify = Annotated[bool, typer.Option("--simplify", help="Simplify the ONNX graph with onnxslim.")]
Atol = Annotated[float | None, typer.Option("--atol", help="Max |logit diff| vs torch (default 1e-4 for ONNX fp32).")]
Workspace = Annotated[int, typer.Option("--workspace", help="TensorRT builder workspace limit in MiB.")]
CalibData = Annotated[str | None, typer.Option(
    "--calib-data", help="int8 calibration images (data set spec; default: the model's data set, train split).")]
CalibSamples = Annotated[int, typer.Option("--calib-samples", help="Number of int8 calibration images.")]
Int8Scheme = Annotated[str, typer.Option(
    "--int8-scheme", help="ONNX Runtime int8 types: auto (from this CPU's flags) | s8s8 | u8s8-reduce-range | u8u8; "
                          "see docs/int8-cpu.md.")]
Samples = Annotated[int, typer.Option("--samples", help="Validation images compared with torch.")]


def export(
    source: Source, onnx: Onnx = False, trt: Trt = False, precision: Precision = "fp32", batch: Batch = 1,
    dynamic: Dynamic = True, max_batch: MaxBatch = 64, opset: Opset = 18, exporter: Exporter = "dynamo",
    simplify: Simplify = False, atol: Atol = None, workspace: Workspace = 1024, calib_data: CalibData = None,
    calib_samples: CalibSamples = 256, int8_scheme: Int8Scheme = "auto", samples: Samples = 64,
    dataset: opt.Dataset = None, data_dir: opt.DataDir = None, layers: opt.Layers = None, channels: opt.Channels = None,
    image_size: opt.ImageSize = None, classes: opt.Classes = None, seed: opt.Seed = None, out: opt.Out = None,
    json: opt.Json = False,
) -> None:
    """Export to ONNX and/or TensorRT and compare every artifact with torch on real images.

    Without --onnx or --trt, exports ONNX. Exit 0: every artifact passed; 1: an artifact failed validation
    (nothing written for it, earlier files kept); 2: bad input or TensorRT/GPU missing (nothing written).
    """
    from e2rnas.export import export_model

    shape = None
    if any(v is not None for v in (layers, channels, image_size, classes)):
        from e2rnas.space.cost import DeployShape

        d = DeployShape()
        shape = DeployShape(layers=layers or d.layers, C=channels or d.C, num_classes=classes or d.num_classes,
                            input_size=image_size or d.input_size)
    from e2rnas._outdir import owned_dir

    out_dir = out or _default_out(source)
    with owned_dir(out_dir, command="export"):  # a new folder or an export's; never beside other files
        results = export_model(
            source, out_dir=out_dir, onnx=onnx or not trt, trt=trt, precision=precision, opset=opset,
            exporter=exporter, dynamic_batch=dynamic, batch=batch, max_batch=max_batch, simplify=simplify, atol=atol,
            workspace_mb=workspace, dataset=dataset, data_dir=data_dir, validation_samples=samples,
            calib_data=calib_data, calib_samples=calib_samples, int8_scheme=int8_scheme, shape=shape,
            seed=seed or 0)
    if json:
        print_json({"out_dir": str(out_dir), "results": [r.as_dict() for r in results]})
    else:
        print_table(f"Export of {source}", ["format", "path", "size MB", "max |diff| vs torch", "top-1 agreement",
                                            "status"],
                    [[f"{r.format} {r.precision}", Path(r.path).name if r.path else "(not written)", r.size_mb,
                      r.max_abs_diff, r.top1_agreement, r.status] for r in results],
                    caption=f"in {out_dir}/ (summary: export.json)")
        for r in results:
            if not r.ok:
                console.print(f"[red]{r.format} {r.precision} failed:[/] {r.details.get('reason')}", highlight=False)
    if not all(r.ok for r in results):
        raise typer.Exit(1)


def _default_out(source: str) -> Path:
    """Beside a model.pt (``<run>/export``); ``runs/export-<genotype>`` for a genotype."""
    path = Path(source)
    if path.suffix == ".pt":
        return path.parent / "export"
    return Path("runs") / f"export-{path.stem if path.suffix else path.name}"
