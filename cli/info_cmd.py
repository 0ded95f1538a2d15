"""``e2rnas genotypes`` and ``e2rnas cost``: exact deploy costs of genotypes."""

from __future__ import annotations

from typing import Annotated

import typer

from e2rnas.cli import _options as opt
from e2rnas.cli._output import console, print_json, print_table


def _shape(layers: int | None, channels: int | None, image_size: int | None, classes: int | None, variant: str,
           recorded=None, recorded_as: str = ""):
    """(shape, where it came from): flags over the recorded deploy shape (of a run or model), over the DARTS
    evaluation network's."""
    from e2rnas.space.cost import DeployShape

    d = recorded or DeployShape()
    flags = any(v is not None for v in (layers, channels, image_size, classes)) or variant != "cifar"
    base = recorded_as if recorded else "the DARTS evaluation network's (20 cells, C=36, 32x32, 10 classes)"
    source = f"flags over {base}" if flags else base
    return DeployShape(layers=layers or d.layers, C=channels or d.C, num_classes=classes or d.num_classes,
                       input_size=image_size or d.input_size,
                       variant=variant if variant != "cifar" else d.variant), source


def describe_shape(shape) -> str:
    from e2rnas.space.latency_table import describe_shape as describe

    return describe(shape)


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


def genotypes(layers: opt.DeployLayers = None, channels: opt.DeployChannels = None,
              image_size: opt.DeployImageSize = None, classes: opt.DeployClasses = None, variant: Variant = "cifar",
              json: opt.Json = False) -> None:
    """The built-in genotypes with exact params, MACs and FLOPs at a deploy shape (default 20 cells, C=36, 32x32)."""
    from e2rnas.space.cost import CostModel
    from e2rnas.space.genotypes import GENOTYPES

    shape, source = _shape(layers, channels, image_size, classes, variant)
    model = CostModel(shape)
    rows = {name: model.genotype_cost(g).as_dict() for name, g in GENOTYPES.items()}
    if json:
        print_json({"deploy_shape": vars(shape), "deploy_shape_from": source, "genotypes": rows})
        return
    print_table(
        f"Built-in genotypes at {describe_shape(shape)}",
        ["genotype", "params (M)", "MACs (M)", "FLOPs (M)"],
        [[n, f"{r['params_m']:.4f}", f"{r['macs_m']:.1f}", f"{r['flops_m']:.1f}"] for n, r in rows.items()],
        caption="params exclude the auxiliary head; MACs count convolutions and matmuls (FlopCounterMode); "
                "FLOPs = 2 x MACs",
    )
    console.print(f"deploy shape: {describe_shape(shape)} ({source})", highlight=False)


def cost(
    genotype: Annotated[str, typer.Argument(help="Built-in genotype name, genotype.json, run directory or model.pt.")],
    layers: opt.DeployLayers = None, channels: opt.DeployChannels = None, image_size: opt.DeployImageSize = None,
    classes: opt.DeployClasses = None, variant: Variant = "cifar", json: opt.Json = False,
) -> None:
    """Exact deploy cost of one genotype, split into the fixed part and each cell (a run or model.pt: at its
    recorded deploy shape unless flags say otherwise)."""
    from e2rnas.space.cost import Cost, CostModel
    from e2rnas.space.genotypes import resolve_genotype

    g = resolve_genotype(genotype)
    recorded = recorded_shape(genotype)
    shape, source = _shape(layers, channels, image_size, classes, variant, recorded=recorded,
                           recorded_as=f"the shape recorded in {genotype}")
    model = CostModel(shape)
    cells = model.cell_costs(g)
    total, fixed = model.genotype_cost(g), model.fixed
    by_kind = {kind: sum((c for s, c in cells if s.reduction == (kind == "reduce")), Cost(0, 0))
               for kind in ("normal", "reduce")}
    result = {"genotype": g.to_dict(), "deploy_shape": vars(shape), "deploy_shape_from": source,
              "total": total.as_dict(), "fixed": fixed.as_dict(),
              "normal_cells": by_kind["normal"].as_dict(), "reduce_cells": by_kind["reduce"].as_dict(),
              "cells": [{"index": s.index, "type": "reduce" if s.reduction else "normal", "C": s.C,
                         "input_size": s.size_in, **c.as_dict()} for s, c in cells]}
    if json:
        print_json(result)
        return

    def row(name: str, c) -> list[str]:
        return [name, f"{c.params_m:.4f}", f"{c.macs_m:.2f}", f"{c.flops_m:.2f}"]

    rows = [row("fixed (stem, pre-processing, classifier)", fixed)]
    rows += [row(f"cell {s.index} ({'reduce' if s.reduction else 'normal'}, C={s.C}, {s.size_in}x{s.size_in} in)", c)
             for s, c in cells]
    n_normal = sum(not s.reduction for s, _ in cells)
    rows += [row(f"all {n_normal} normal cells", by_kind["normal"]),
             row(f"all {len(cells) - n_normal} reduce cells", by_kind["reduce"]), row("total", total)]
    print_table(f"Deploy cost of {genotype}", ["part", "params (M)", "MACs (M)", "FLOPs (M)"], rows,
                caption="fixed + normal cells + reduce cells = total; a cell's cost is its 8 kept edge ops")
    console.print(f"deploy shape: {describe_shape(shape)} ({source})", highlight=False)
