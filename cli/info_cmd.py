"""``e2rnas genotypes`` and ``e2rnas cost``: exact deploy costs of genotypes."""

from __future__ import annotations

from typing import Annotated

import typer

from e2rnas.cli import _options as opt
from e2rnas.cli._output import console, print_json, print_table


def _shape(layers: int | None, channels: int | None, image_size: int | None, classes: int | None, variant: str,
           recorded=None):
    """Flags over the recorded deploy shape (of a run or model), over the DARTS evaluation network's."""
    from e2rnas.space.cost import DeployShape

    d = recorded or DeployShape()
    return DeployShape(layers=layers or d.layers, C=channels or d.C, num_classes=classes or d.num_classes,
                       input_size=image_size or d.input_size, variant=variant if variant != "cifar" else d.variant)


def recorded_shape(ref: str):
    """The deploy shape a search run recorded, or a model file's network; None for names and genotype files."""
    import json
    from pathlib import Path

    from e2rnas.space.cost import DeployShape

    path = Path(ref)
    if path.is_file() and path.suffix == ".pt":
        from e2rnas.model_io import read_model_file

        net = read_model_file(path)["network"]
        return DeployShape(layers=net["layers"], C=net["C"], num_classes=net["num_classes"],
                           input_size=net["input_size"], variant=net.get("variant", "cifar"))
    for summary in (path / "summary.json", path / "search" / "summary.json"):
        if path.is_dir() and summary.is_file():
            shape = json.loads(summary.read_text()).get("deploy_shape")
            if isinstance(shape, dict):
                return DeployShape(**shape)
    return None


Variant = Annotated[str, typer.Option("--variant", help="Network stem: cifar or imagenet.")]


def genotypes(layers: opt.Layers = None, channels: opt.Channels = None, image_size: opt.ImageSize = None,
              classes: opt.Classes = None, variant: Variant = "cifar", json: opt.Json = False) -> None:
    """The built-in genotypes with exact params, MACs and FLOPs at a deploy shape (default 20 cells, C=36, 32x32)."""
    from e2rnas.space.cost import CostModel
    from e2rnas.space.genotypes import GENOTYPES

    shape = _shape(layers, channels, image_size, classes, variant)
    model = CostModel(shape)
    rows = {name: model.genotype_cost(g).as_dict() for name, g in GENOTYPES.items()}
    if json:
        print_json({"deploy_shape": vars(shape), "genotypes": rows})
        return
    print_table(
        f"Built-in genotypes at {shape.layers} cells, C={shape.C}, {shape.input_size}x{shape.input_size}, "
        f"{shape.num_classes} classes",
        ["genotype", "params (M)", "MACs (M)", "FLOPs (M)"],
        [[n, f"{r['params_m']:.4f}", f"{r['macs_m']:.1f}", f"{r['flops_m']:.1f}"] for n, r in rows.items()],
        caption="params exclude the auxiliary head; MACs count convolutions and matmuls (FlopCounterMode); "
                "FLOPs = 2 x MACs",
    )


def cost(
    genotype: Annotated[str, typer.Argument(help="Built-in genotype name, genotype.json, run directory or model.pt.")],
    layers: opt.Layers = None, channels: opt.Channels = None, image_size: opt.ImageSize = None,
    classes: opt.Classes = None, variant: Variant = "cifar", json: opt.Json = False,
) -> None:
    """Exact deploy cost of one genotype, split into the fixed part and the cells (a run or model.pt: at its
    recorded deploy shape unless flags say otherwise)."""
    from e2rnas.space.cost import CostModel
    from e2rnas.space.genotypes import resolve_genotype

    g = resolve_genotype(genotype)
    shape = _shape(layers, channels, image_size, classes, variant, recorded=recorded_shape(genotype))
    model = CostModel(shape)
    total, fixed = model.genotype_cost(g), model.fixed
    result = {"genotype": g.to_dict(), "deploy_shape": vars(shape), "total": total.as_dict(),
              "fixed": fixed.as_dict()}
    if json:
        print_json(result)
        return
    print_table(f"Deploy cost of {genotype}", ["part", "params (M)", "MACs (M)", "FLOPs (M)"], [
        ["fixed (stem, pre-processing, classifier)", f"{fixed.params_m:.4f}", f"{fixed.macs_m:.1f}",
         f"{fixed.flops_m:.1f}"],
        ["total", f"{total.params_m:.4f}", f"{total.macs_m:.1f}", f"{total.flops_m:.1f}"],
    ])
    console.print(f"deploy shape: {shape.layers} cells, C={shape.C}, {shape.input_size}x{shape.input_size}, "
                  f"{shape.num_classes} classes, {shape.variant} stem")
