"""``e2rnas lut``: a latency lookup table measured on a deploy target, for the search's latency bound T."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from e2rnas.cli import _options as opt
from e2rnas.cli._output import Activity, console, err_console, print_json, print_table
from e2rnas.cli.bench_cmd import TargetFile, TargetName, Threads
from e2rnas.cli.info_cmd import Variant

if TYPE_CHECKING:
    from e2rnas.space.latency_table import LatencyTable

DeployLayers = Annotated[int | None, typer.Option("--deploy-layers", help="Cells of the deployed network.")]
DeployChannels = Annotated[int | None, typer.Option("--deploy-channels", help="C of the deployed network.")]
DeployImageSize = Annotated[int | None, typer.Option("--deploy-image-size", help="Deployed input size.")]


def lut(
    out: Annotated[Path, typer.Option("--out", help="Table file to write (JSON).")],
    target: TargetName = None, target_file: TargetFile = None, preset: opt.Preset = "embedded-default",
    deploy_layers: DeployLayers = None, deploy_channels: DeployChannels = None,
    deploy_image_size: DeployImageSize = None, classes: opt.Classes = None, variant: Variant = "cifar",
    batch: Annotated[int, typer.Option("--batch", help="Batch size the table is measured at.")] = 1,
    threads: Threads = None,
    runs: Annotated[int, typer.Option("--runs", help="Timed calls per graph and round.")] = 200,
    rounds: Annotated[int, typer.Option("--rounds", help="Round-robin passes over all graphs (median).")] = 5,
    warmup: Annotated[int, typer.Option("--warmup", help="Untimed calls per graph and round.")] = 20,
    seed: opt.Seed = None, json: opt.Json = False,
) -> None:
    """Measure per-op latencies of the deploy network on a target (default: the preset's deploy shape)."""
    from e2rnas.deploy_targets.lut import measure_latency_table
    from e2rnas.deploy_targets.profiles import get_target
    from e2rnas.presets import preset_section
    from e2rnas.space.cost import DeployShape

    p = preset_section(preset, "search")
    shape = DeployShape(layers=_given(deploy_layers, p["deploy_layers"]), C=_given(deploy_channels, p["deploy_C"]),
                        num_classes=_given(classes, p["deploy_num_classes"]),
                        input_size=_given(deploy_image_size, p["deploy_input_size"]), variant=variant)
    from e2rnas._outdir import json_with, owned_file

    t = get_target(target, target_file=target_file)
    # a new file or a table lut wrote (never a run's other files), its folder found writable before measuring
    with owned_file(out, command="lut", made_by_us=json_with("format", "key", "ops")), \
            Activity("lut: measuring op latencies", out=err_console if json else console) as activity:
        table = measure_latency_table(shape=shape, target=t, batch=batch, threads=threads, runs=runs, warmup=warmup,
                                      rounds=rounds, seed=seed or 0,
                                      on_progress=lambda stage, done, total: activity.update(stage, done, total))
        table.save(out)
    if json:
        print_json(table.to_dict())
        return
    show(table)
    console.print(f"wrote {out}")


def _given(value: int | None, default: int) -> int:
    return default if value is None else value


def show(table: LatencyTable) -> None:
    from e2rnas.space.latency_table import describe_shape

    geos = sorted({k[1:] for k in table.ops}, key=lambda g: (g[0], -g[2], g[1]))
    rows = [[op, *(f"{table.op_ms(op, *g):.4f}" for g in geos), f"{table.op_scale.get(op, 1.0):.2f}"]
            for op in table.primitives if op != "none"]
    fit, env = table.measurement.get("fit", {}), table.environment
    print_table(f"Latency table, {table.target}, batch {table.batch}: {describe_shape(table.shape)} (ms per op)",
                ["op", *(f"{C}/{s}/{z}" for C, s, z in geos), "factor"], rows,
                caption=f"columns: C/stride/input px of the edge, then the op's in-network factor (included); "
                        f"fixed part {table.fixed_ms:.4g} ms; reference fit rms "
                        f"{fit.get('rms_residual_ms', float('nan')):.2g} ms, worst "
                        f"{fit.get('max_abs_residual_pct', float('nan')):.1f} % ({fit.get('worst_reference')}); "
                        f"{env.get('cpu')}, "
                        f"threads {table.key['threads']}; {table.measurement.get('seconds')} s")
