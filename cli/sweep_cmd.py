"""``e2rnas sweep``: the pipeline at several budgets on Ray Tune, and the Pareto front of the results."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from e2rnas.cli import _options as opt
from e2rnas.cli._output import console, print_json, print_table


def _bounds(text: str | None, flag: str) -> list[float]:
    from e2rnas.errors import E2RNASError

    if not text:
        return []
    try:
        return [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise E2RNASError(f"{flag} {text!r}: give numbers separated by commas, e.g. 0.1,0.15,0.2") from None


def _bounds_option(kind: str, unit: str) -> object:
    return typer.Option(f"--{kind}-bounds", help=f"Comma list of {kind} bounds, in {unit}: one trial each.")


def sweep(
    params_bounds: Annotated[str | None, _bounds_option("params", "M params (the search's L)")] = None,
    macs_bounds: Annotated[str | None, _bounds_option("macs", "M MACs (the search's F)")] = None,
    latency_bounds: Annotated[str | None, _bounds_option("latency", "ms on the target's latency table (T)")] = None,
    out: opt.Out = None,
    config: Annotated[Path | None, typer.Option("--config", help="Pipeline YAML, as for `e2rnas run`; each trial "
                                                "is it with one bound changed.")] = None,
    preset: Annotated[str | None, typer.Option("--preset", help="embedded-default or paper.")] = None,
    target: Annotated[str | None, typer.Option("--target", help="Deploy target for bench and check.")] = None,
    address: Annotated[str | None, typer.Option("--address", help="An existing Ray cluster (auto or HOST:PORT); "
                                                "default: a local Ray on this machine.")] = None,
    num_cpus: Annotated[int | None, typer.Option("--num-cpus", help="CPUs of the local Ray (default: all).")]
    = None,
    cpus_per_trial: Annotated[float, typer.Option("--cpus-per-trial", help="CPUs Ray reserves per trial.")] = 1.0,
    gpus_per_trial: Annotated[float | None, typer.Option("--gpus-per-trial", help="GPUs Ray reserves per trial "
                                                         "(default: 1 when the cluster has GPUs, else 0).")] = None,
    max_concurrent: Annotated[int | None, typer.Option("--max-concurrent", help="At most this many trials at "
                                                       "once (1: latencies measured on an idle machine).")] = None,
    json: opt.Json = False,
) -> None:
    """Run the pipeline (search, short retrain, eval, export, bench, check) once per budget point on Ray Tune;
    write sweep.json, sweep.csv and pareto.png. Rerun with the same --out to resume."""
    from e2rnas.cli._config import load_yaml
    from e2rnas.run.sweep import COSTS, GAINS, run_sweep, sweep_points

    points = sweep_points(params=_bounds(params_bounds, "--params-bounds"),
                          macs=_bounds(macs_bounds, "--macs-bounds"),
                          latency=_bounds(latency_bounds, "--latency-bounds"))
    base = load_yaml(config) if config else {}
    base.update({k: v for k, v in dict(preset=preset, target=target).items() if v is not None})
    out_dir = out or Path("runs") / "sweep"

    def say(message: str) -> None:
        if not json:
            console.print(message, highlight=False)

    record = run_sweep(points, out_dir=out_dir, base=base, address=address, num_cpus=num_cpus,
                       cpus_per_trial=cpus_per_trial, gpus_per_trial=gpus_per_trial, max_concurrent=max_concurrent,
                       on_event=say)
    failed = any(r["status"] != "ok" for r in record["points"])
    if json:
        print_json(record)
        raise typer.Exit(1 if failed else 0)
    rows = [[r["label"], r["status"], *(r.get(k) for k in (*COSTS, *GAINS)), r.get("check_passed"),
             "*" if r["non_dominated"] else ""] for r in record["points"]]
    print_table("Sweep", ["point", "status", *COSTS.values(), *GAINS.values(), "check", "front"], rows,
                caption="front: non-dominated over all six axes; pareto.png marks each pair's front")
    for r in record["points"]:
        if r.get("error"):
            console.print(f"[bold red]{r['label']}:[/] {r['error']}", highlight=False)
    if failed:
        raise typer.Exit(1)
