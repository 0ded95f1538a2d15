"""``e2rnas check``: a model against a deployment budget, measured on the target. Exit 0 pass, 1 fail, 2 bad input."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from e2rnas.cli import _options as opt
from e2rnas.cli._output import Activity, console, err_console, print_json, print_table
from e2rnas.cli.bench_cmd import (
    Duration,
    Host,
    Identity,
    KnownHosts,
    MaxSamples,
    Port,
    RemotePython,
    Runs,
    TargetFile,
    TargetName,
    Threads,
    Warmup,
    resolve_target,
)


def check(
    run: Annotated[Path, typer.Argument(
        help="model.pt, a train run directory, or a pipeline run directory (search/, train/, export/).")],
    budget: Annotated[Path | None, typer.Option(
        "--budget", help="Budget YAML (default: the shipped budget for the embedded-default model).")] = None,
    target: TargetName = None, target_file: TargetFile = None,
    reuse_eval: Annotated[bool, typer.Option(
        "--reuse-eval", help="Take accuracy/PGD/AUPR from the run's eval.json instead of evaluating now.")] = False,
    dataset: opt.Dataset = None, ood_dataset: opt.OodDataset = None, data_dir: opt.DataDir = None,
    max_samples: MaxSamples = None, runs: Runs = None, duration: Duration = None, warmup: Warmup = 10,
    threads: Threads = None, host: Host = None, port: Port = 22, identity: Identity = None,
    known_hosts: KnownHosts = None, remote_python: RemotePython = "python3", seed: opt.Seed = None,
    out: opt.Out = None, json: opt.Json = False,
) -> None:
    """Check params, MACs, latency, accuracy, PGD accuracy and OoD AUPR against a budget on a target."""
    from e2rnas.deploy_targets.budget import default_budget_path, load_budget

    b = load_budget(budget or default_budget_path())  # bad input fails here, before anything heavy loads
    t, ssh = resolve_target(target, target_file, host, port, identity, known_hosts, remote_python)
    from e2rnas._io import atomic_write_json
    from e2rnas._outdir import json_with, owned_file
    from e2rnas.deploy_targets.budget import check as run_check
    from e2rnas.deploy_targets.budget import find_run

    # a new check.json or one that check wrote, in a folder found writable before anything is measured
    path = (out or find_run(run).root) / "check.json"
    with owned_file(path, command="check", made_by_us=json_with("lines", "passed")), \
            Activity(f"check: measuring against {Path(budget or default_budget_path()).name} on {t.name}",
                     out=err_console if json else console):
        result = run_check(run, budget=b, target=t, reuse_eval=reuse_eval, dataset=dataset, ood_dataset=ood_dataset,
                           data_dir=data_dir, max_samples=max_samples, warmup=warmup, runs=runs, duration=duration,
                           threads=threads, ssh=ssh, seed=seed or 0)
        result["budget_file"] = str(budget or default_budget_path())
        atomic_write_json(path, result)
    if json:
        print_json(result)
    else:
        show(result)
        console.print(f"wrote {path}")
    if not result["passed"]:
        raise typer.Exit(1)


def _result(ln: dict[str, Any]) -> str:
    if ln.get("decides", True):
        return "[green]pass[/]" if ln["passed"] else "[red]FAIL[/]"
    return "info" if ln["passed"] else "[yellow]over T[/]"


def show(result: dict[str, Any]) -> None:
    rows = [[ln["what"], f"{ln['op']} {ln['limit']:g}", ln["bound"], ln["estimate"], ln["exact"], ln["measured"],
             _result(ln),
             None if ln["margin"] is None else f"{ln['margin']:+.4g} ({ln['margin_pct']:+.0f}%)"
             if ln["margin_pct"] is not None else f"{ln['margin']:+.4g}"] for ln in result["lines"]]
    t = result["target"]["name"]
    budget_file = Path(result.get("budget_file") or "the budget file").name
    print_table(f"e2rnas check {result['model']} on {t}",
                ["budget", f"limit ({budget_file})", "search bound", "search estimate", "genotype exact",
                 f"measured ({t})", "result", "margin"], rows,
                caption=f"pass/fail: the measured value against the limit of {result.get('budget_file')}; search "
                        "bound: L (params) / F (MACs) / T (latency p50), shown for comparison and never deciding; "
                        "estimate: softmax expectation at the final alphas; exact: the genotype's cost at the "
                        "search's deploy shape")
    for ln in result["lines"]:
        console.print(f"  {ln['what']}: {ln['source']}", highlight=False)
    for note in result.get("notes", []):
        console.print(f"[yellow]note[/] {note}")
    console.print("[green]all budget lines pass[/]" if result["passed"] else "[red]budget check failed[/]")
