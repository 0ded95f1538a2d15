"""``e2rnas bench``: artifacts measured on a deploy target (latency, and accuracy/PGD/AUPR re-measured on each)."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated, Any

import typer

from e2rnas.cli import _options as opt
from e2rnas.cli._output import Activity, console, err_console, print_json, print_table
from e2rnas.config import int_list
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
class OutputFormat(str, Enum):
    table = "table"
    json = "json"
    csv = "csv"
    md = "md"


Format = Annotated[OutputFormat, typer.Option(
    "--format", help="Output on stdout: table, json, csv or md (sizes in MB = 10^6 bytes); --json is --format json.")]


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
    format: Format = OutputFormat.table,
) -> None:
    """Measure artifacts on a target: size, accuracy, PGD accuracy, OoD AUPR, latency percentiles, throughput."""
    import time

    from e2rnas._io import atomic_write_json
    from e2rnas._outdir import json_with, owned_file
    from e2rnas.deploy_targets.bench import bench as run_bench

    format = "json" if json else OutputFormat(format).value
    t, ssh = resolve_target(target, target_file, host, port, identity, known_hosts, remote_python)
    sizes = int_list(batch, "--batch")
    wanted = [m.strip() for m in metrics.split(",") if m.strip()]
    # its own folder, never beside the artifact inside a run; made (and found writable) before measuring
    path = (out or Path("runs") / f"bench-{time.strftime('%Y%m%d-%H%M%S')}") / "bench.json"
    with owned_file(path, command="bench", made_by_us=json_with("rows", "target")), \
            Activity(f"bench: measuring {len(artifacts)} artifact(s) on {t.name}",
                     out=console if format == "table" else err_console) as activity:
        rows: list[str] = []

        def on_row(row: dict) -> None:
            rows.append(Path(row.get("artifact") or "?").name)
            activity.update(f"{rows[-1]} {row.get('status', '')}".strip(), len(rows), len(artifacts))

        result = run_bench(artifacts, target=t, batch_sizes=sizes, metrics=wanted, warmup=warmup, runs=runs,
                           duration=duration, threads=threads, dataset=dataset, ood_dataset=ood_dataset,
                           data_dir=data_dir, max_samples=max_samples, source_model=source_model, ssh=ssh,
                           seed=seed or 0, on_row=on_row)
        atomic_write_json(path, result)
    if format == "table":
        show(result)
        console.print(f"wrote {path}")
    else:  # stdout holds the document alone; notes and warnings go to stderr
        print_json(result) if format == "json" else print(to_text(result, format), end="")
        print_notes(result, err_console)
        err_console.print(f"wrote {path}", highlight=False)
    if any(r["status"] != "ok" for r in result["rows"]):
        raise typer.Exit(1)


def _pct(x: float | None) -> str | None:
    return None if x is None else f"{100 * x:.1f}"


def _ms(x: float | None) -> str | None:
    return None if x is None else f"{x:.3g}" if x < 100 else f"{x:.0f}"


COLUMNS = ("artifact", "format", "status", "size_mb", "accuracy", "pgd_accuracy", "aupr_out", "batch", "p50_ms",
           "p95_ms", "cv", "throughput", "warning")


def flat_rows(result: dict[str, Any]) -> list[dict[str, Any]]:
    """One record per artifact and batch size, in ``COLUMNS`` (size in MB = 10^6 bytes; cv = std / mean)."""
    from e2rnas.deploy_targets.bench import latency_warnings

    out = []
    for r in result["rows"]:
        m = r.get("metrics") or {}
        for b, s in (r.get("latency") or {"": {}}).items():
            mean = s.get("mean_ms")
            status = "ok" if r["status"] == "ok" else f"error: {r['error']}"
            out.append({"artifact": r["artifact"], "format": r["format"],
                        "status": f"skipped: {s['skipped']}" if "skipped" in s else status,
                        "size_mb": round(r["size_mb"], 3) if r.get("size_mb") is not None else None,
                        "accuracy": m.get("accuracy"), "pgd_accuracy": m.get("pgd_accuracy"),
                        "aupr_out": m.get("aupr_out"), "batch": b or None, "p50_ms": s.get("p50_ms"),
                        "p95_ms": s.get("p95_ms"), "cv": s.get("std_ms") / mean if mean and "std_ms" in s else None,
                        "throughput": s.get("throughput"), "warning": "; ".join(latency_warnings({b: s})) or None})
    return out


def to_text(result: dict[str, Any], kind: str) -> str:
    """``bench.json`` as CSV (every column, for a spreadsheet) or a Markdown table (for a README or a PR)."""
    rows = flat_rows(result)
    if kind == "csv":
        import csv
        import io

        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=COLUMNS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        return buf.getvalue()
    cells = [[Path(r["artifact"]).name, r["format"], r["status"], _num(r["size_mb"], ".3f"), _pct(r["accuracy"]),
              _pct(r["pgd_accuracy"]), _pct(r["aupr_out"]), r["batch"], _ms(r["p50_ms"]), _ms(r["p95_ms"]),
              _num(r["cv"], ".2f"), _num(r["throughput"], ".0f")] for r in rows]
    header = ["artifact", "format", "status", "MB", "acc %", "PGD %", "AUPR %", "batch", "p50 ms", "p95 ms", "cv",
              "img/s"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join("-" if c is None else str(c).replace("|", "\\|") for c in row) + " |"
              for row in cells]
    warnings = [f"- warning: {r['format']} ({Path(r['artifact']).name}): {r['warning']}" for r in rows
                if r["warning"]]
    return "\n".join(lines + ([""] + warnings if warnings else [])) + "\n"


def _num(x: float | None, spec: str) -> str | None:
    return None if x is None else format(x, spec)


def print_notes(result: dict[str, Any], out: Any) -> None:
    """The row warnings (noisy timing, precision, power mode), metric notes and the bench's notes."""
    for r in result["rows"]:
        for note in (r.get("metrics") or {}).get("notes", []):
            out.print(f"[yellow]note[/] {r['format']}: {note}", highlight=False)
        for warning in r.get("warnings", []):
            out.print(f"[yellow]warning[/] {r['format']}: {warning}", highlight=False)
    for note in result.get("notes", []):
        out.print(f"[yellow]note[/] {note}", highlight=False)


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
            rows.append([r["format"] if first else "", status, f"{r['size_mb']:.3f}" if first else None,
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
    print_notes(result, console)
