"""``e2rnas bench``: artifacts measured on a deploy target (latency, and accuracy/PGD/AUPR re-measured on each)."""

from __future__ import annotations

from contextlib import nullcontext
from pathlib import Path
from typing import Annotated, Any

import typer

from e2rnas.cli import _options as opt
from e2rnas.cli._output import console, print_json, print_table
from e2rnas.errors import E2RNASError

# Target options, shared with ``e2rnas check``.
TargetName = Annotated[str | None, typer.Option(
    "--target", help="Deploy target: cpu, cuda, v100, a100, h100, jetson-orin-nano, jetson-agx-orin, "
                     "jetson-xavier-nx (default cpu).")]
TargetFile = Annotated[Path | None, typer.Option("--target-file", help="YAML file describing your own target.")]
Host = Annotated[str | None, typer.Option("--host", help="user@address of a remote (SSH) target.")]
Port = Annotated[int, typer.Option("--port", help="SSH port of --host.")]
Identity = Annotated[Path | None, typer.Option("--identity", help="SSH private key for --host.")]
KnownHosts = Annotated[Path | None, typer.Option(
    "--known-hosts", help="known_hosts file holding --host's key (host keys are always checked).")]
RemotePython = Annotated[str, typer.Option("--remote-python", help="Python on the remote device.")]
Runs = Annotated[int | None, typer.Option("--runs", help="Timed calls per batch size (default 100).")]
Duration = Annotated[float | None, typer.Option("--duration", help="Time each batch size for S seconds instead.")]
Warmup = Annotated[int, typer.Option("--warmup", help="Untimed calls before timing.")]
Threads = Annotated[int | None, typer.Option("--threads", help="CPU threads (default: physical cores).")]
MaxSamples = Annotated[int | None, typer.Option("--max-samples", help="Evaluate on at most N test/OoD images.")]


def resolve_target(target: str | None, target_file: Path | None, host: str | None, port: int,
                   identity: Path | None, known_hosts: Path | None, remote_python: str) -> tuple[Any, Any]:
    """The target profile and, for remote targets, the SSH settings."""
    from e2rnas.deploy_targets.profiles import get_target

    t = get_target(target, target_file=target_file)
    if host is None:
        if t.remote:
            raise E2RNASError(f"target {t.name} is reached over SSH: pass --host user@address")
        return t, None
    if not t.remote:
        raise E2RNASError(f"--host is for remote targets; {t.name} runs on this machine (use e.g. "
                          "--target jetson-orin-nano, or a --target-file with remote: true)")
    from e2rnas.deploy_targets.remote import SshConfig

    return t, SshConfig(host, port=port, identity=identity, known_hosts=known_hosts, remote_python=remote_python)


def _int_list(text: str, what: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise E2RNASError(f"{what} must be comma-separated integers such as 1,8,64, got {text!r}") from None
    if not values or min(values) < 1:
        raise E2RNASError(f"{what} must be positive integers, got {text!r}")
    return values


def bench(
    artifacts: Annotated[list[Path], typer.Argument(help="model.pt, .onnx and .engine files to measure.")],
    target: TargetName = None, target_file: TargetFile = None,
    batch: Annotated[str, typer.Option("--batch", help="Batch sizes, comma-separated.")] = "1",
    metrics: Annotated[str, typer.Option(
        "--metrics", help="latency,accuracy,robustness,ood (accuracy etc. re-measured on each artifact).")
    ] = "latency",
    runs: Runs = None, duration: Duration = None, warmup: Warmup = 10, threads: Threads = None,
    dataset: opt.Dataset = None, ood_dataset: opt.OodDataset = None, data_dir: opt.DataDir = None,
    max_samples: MaxSamples = None,
    source_model: Annotated[Path | None, typer.Option(
        "--source-model", help="torch model.pt whose gradients make the transfer attack on ONNX/TensorRT.")] = None,
    host: Host = None, port: Port = 22, identity: Identity = None, known_hosts: KnownHosts = None,
    remote_python: RemotePython = "python3", seed: opt.Seed = None, out: opt.Out = None, json: opt.Json = False,
) -> None:
    """Measure artifacts on a target: size, accuracy, PGD accuracy, OoD AUPR, latency percentiles, throughput."""
    from e2rnas._io import atomic_write_json
    from e2rnas.deploy_targets.bench import bench as run_bench

    t, ssh = resolve_target(target, target_file, host, port, identity, known_hosts, remote_python)
    sizes = _int_list(batch, "--batch")
    wanted = [m.strip() for m in metrics.split(",") if m.strip()]
    with console.status("measuring...", spinner="dots") if not json else nullcontext():
        result = run_bench(artifacts, target=t, batch_sizes=sizes, metrics=wanted, warmup=warmup, runs=runs,
                           duration=duration, threads=threads, dataset=dataset, ood_dataset=ood_dataset,
                           data_dir=data_dir, max_samples=max_samples, source_model=source_model, ssh=ssh,
                           seed=seed or 0)
    path = (out or Path(artifacts[0]).resolve().parent) / "bench.json"
    atomic_write_json(path, result)
    if json:
        print_json(result)
    else:
        show(result)
        console.print(f"wrote {path}")
    if any(r["status"] != "ok" for r in result["rows"]):
        raise typer.Exit(1)


def _pct(x: float | None) -> str | None:
    return None if x is None else f"{100 * x:.1f}"


def _ms(x: float | None) -> str | None:
    return None if x is None else f"{x:.3g}" if x < 100 else f"{x:.0f}"


def show(result: dict[str, Any]) -> None:
    rows = []
    for r in result["rows"]:
        m = r.get("metrics") or {}
        lat = r.get("latency") or {"-": {}}
        for i, (b, s) in enumerate(lat.items()):
            first = i == 0
            status = "ok" if r["status"] == "ok" else f"error: {r['error']}"
            if "skipped" in s:
                status = f"skipped: {s['skipped']}"
            rows.append([r["format"] if first else "", status, f"{r['size_mb']:.2f}" if first else None,
                         _pct(m.get("accuracy")) if first else None, _pct(m.get("pgd_accuracy")) if first else None,
                         _pct(m.get("aupr_out")) if first else None, b, _ms(s.get("p50_ms")), _ms(s.get("p95_ms")),
                         None if s.get("throughput") is None else f"{s['throughput']:.0f}"])
    env, t = result["environment"], result["target"]
    v = env["versions"]
    gpu = (env.get("gpu") or {}).get("name")
    providers = sorted({p for r in result["rows"] for p in ((r.get("runner") or {}).get("providers") or [])})
    print_table(f"e2rnas bench on {t['name']}", ["format", "status", "MB", "acc %", "PGD %", "AUPR %", "batch",
                                                 "p50 ms", "p95 ms", "img/s"], rows,
                caption=f"{env['cpu']}, {env['physical_cores']} cores, threads {env['threads']}"
                        + (f", {gpu}" if gpu else "") + f"; torch {v['torch']}, onnxruntime {v['onnxruntime']}"
                        + (f", tensorrt {v['tensorrt']}" if v.get("tensorrt") else "")
                        + (f"; providers {', '.join(providers)}" if providers else "")
                        + "; acc/PGD/AUPR re-measured on each artifact (OoD AUPR: OoD positive)")
    for r in result["rows"]:
        for note in (r.get("metrics") or {}).get("notes", []) + r.get("warnings", []):
            console.print(f"[yellow]note[/] {r['format']}: {note}", highlight=False)
    for note in result.get("notes", []):
        console.print(f"[yellow]note[/] {note}", highlight=False)
