"""``e2rnas sweep``: one pipeline run per budget point on Ray Tune, then the Pareto front of the results.

Each trial is :func:`e2rnas.run.pipeline.run_pipeline` (search, short retrain, eval, export, bench on the target, check)
in ``<out>/trials/<kind>-<bound>/`` with one bound changed: the search's ``params_bound`` (L, M params), its
``macs_bound`` (F, M MACs) or the pipeline's ``latency_bound`` (T, ms on the target's latency table). Ray Tune
schedules the trials (one grid point each, resources declared per trial) and keeps its experiment state in
``<out>/tune/``; a second ``e2rnas sweep`` on the same ``--out`` restores that experiment (``Tuner.restore``):
finished trials are not run again, and an interrupted one continues from the stages its pipeline already completed.
The numbers of a point are its check's (``check/check.json``: what the budget check measured on the exported
model), so the plot and the budget report agree.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from e2rnas._io import atomic_write_json, atomic_write_text
from e2rnas.errors import E2RNASError

SWEEP_FORMAT = "e2rnas.run.sweep/1"
EXPERIMENT = "tune"  # Ray Tune's experiment folder under --out
#: cost axes (smaller is better) and quality axes (larger is better) of the front: key -> axis label
COSTS = {"params_m": "params (M)", "macs_m": "MACs (M)", "latency_ms": "measured latency (ms)"}
GAINS = {"accuracy": "accuracy", "pgd_accuracy": "PGD accuracy", "aupr": "OoD AUPR"}
#: check.json line key -> point metric
_CHECK_KEYS = {"max_params_m": "params_m", "max_macs_m": "macs_m", "max_latency_ms": "latency_ms",
               "min_accuracy": "accuracy", "min_pgd_accuracy": "pgd_accuracy", "min_aupr": "aupr"}


@dataclass(frozen=True)
class SweepPoint:
    """One budget point: which bound (params | macs | latency) and its value (M params, M MACs or ms)."""

    kind: str
    bound: float

    def __post_init__(self) -> None:
        if self.kind not in ("params", "macs", "latency"):
            raise E2RNASError(f"sweep point kind must be params, macs or latency, got {self.kind!r}")
        if not self.bound > 0:
            raise E2RNASError(f"--{self.kind}-bounds: each bound must be > 0, got {self.bound}")

    @property
    def label(self) -> str:
        return f"{self.kind}-{self.bound:g}"

    def pipeline_values(self, base: dict[str, Any]) -> dict[str, Any]:
        """The base pipeline settings with this point's bound set (the other bounds stay as the base says)."""
        values = copy.deepcopy(base)
        search = dict(values.get("search") or {})
        if self.kind == "params":
            search["params_bound"] = self.bound
        elif self.kind == "macs":
            search.pop("flops_bound", None)
            search["macs_bound"] = self.bound
        else:
            values["latency_bound"] = f"{self.bound:g}"
        values["search"] = search
        return values


def sweep_points(*, params: Sequence[float] = (), macs: Sequence[float] = (),
                 latency: Sequence[float] = ()) -> list[SweepPoint]:
    points = [SweepPoint(k, float(b)) for k, bounds in (("params", params), ("macs", macs), ("latency", latency))
              for b in bounds]
    if not points:
        raise E2RNASError("nothing to sweep: give --params-bounds, --macs-bounds or --latency-bounds")
    labels = [p.label for p in points]
    if len(set(labels)) != len(labels):
        raise E2RNASError(f"a budget point is given twice: {', '.join(labels)}")
    return points


def _check_base(points: Sequence[SweepPoint], base: dict[str, Any]) -> None:
    """Fail before Ray starts: every point's pipeline settings must be valid."""
    from e2rnas.run.pipeline import PipelineConfig

    for p in points:
        try:
            cfg = PipelineConfig(**p.pipeline_values(base))
        except (TypeError, ValueError) as exc:
            raise E2RNASError(f"bad pipeline settings for the sweep: {exc}") from exc
        if p.kind == "latency" and ("lut" in cfg.skip or cfg.genotype):
            raise E2RNASError("--latency-bounds needs the pipeline's lut stage (the target's latency table): do "
                              "not skip it, and give no fixed genotype")
        if cfg.genotype:
            raise E2RNASError("a sweep searches at each budget: remove `genotype` from the pipeline settings")


def run_sweep(points: Sequence[SweepPoint], *, out_dir: Path, base: dict[str, Any] | None = None,
              address: str | None = None, num_cpus: int | None = None, cpus_per_trial: float = 1.0,
              gpus_per_trial: float | None = None, max_concurrent: int | None = None,
              on_event: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Run (or restore and finish) the sweep; write ``sweep.json``, ``sweep.csv`` and ``pareto.png``.

    ``address``: an existing Ray cluster (every node needs e2rnas installed and ``out_dir`` on shared storage);
    otherwise a local Ray with ``num_cpus`` CPUs (default: all). ``gpus_per_trial`` defaults to 1 when the cluster
    has GPUs, else 0.
    """
    from e2rnas._optional import require

    require("ray.tune", extra="sweep", what="e2rnas sweep")
    import ray
    from ray import tune

    base = dict(base or {})
    _check_base(points, base)
    out_dir = Path(out_dir).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    request = {"points": [asdict(p) for p in points], "base": base}
    _same_request(out_dir / "sweep_request.json", request)
    say = on_event or (lambda _msg: None)

    started = not ray.is_initialized()
    if started:
        # Without --address: address="local" starts a new local instance even when another one (a previous sweep's,
        # still shutting down, or a user's `ray start`) is running; None would attach to it (ray.init's docs, rule 4)
        ray.init(address=address or "local",
                 **({} if address else {"num_cpus": num_cpus, "include_dashboard": False}),
                 log_to_driver=False, configure_logging=False)
    try:
        if gpus_per_trial is None:
            gpus_per_trial = 1.0 if ray.cluster_resources().get("GPU", 0) >= 1 else 0.0
        resources = {"cpu": cpus_per_trial, "gpu": gpus_per_trial}
        trainable = tune.with_resources(_trial, resources=resources)
        param_space = {"point": tune.grid_search([asdict(p) for p in points]), "base": base,
                       "trials_dir": str(out_dir / "trials"), "cwd": str(Path.cwd())}
        exp_dir = out_dir / EXPERIMENT
        if tune.Tuner.can_restore(str(exp_dir)):
            say(f"restoring the sweep in {exp_dir} (finished trials are kept)")
            # an errored trial restarts; its pipeline then skips the stages it had completed
            tuner = tune.Tuner.restore(str(exp_dir), trainable=trainable, param_space=param_space,
                                       restart_errored=True)
        else:
            say(f"{len(points)} trial(s), each {resources}, on "
                f"{'the Ray cluster at ' + address if address else 'a local Ray'}")
            tuner = tune.Tuner(trainable, param_space=param_space,
                               tune_config=tune.TuneConfig(max_concurrent_trials=max_concurrent),
                               run_config=tune.RunConfig(name=EXPERIMENT, storage_path=str(out_dir), verbose=0))
        grid = tuner.fit()
        errors = {SweepPoint(**r.config["point"]).label: str(r.error) for r in grid if r.error is not None}
    finally:
        if started:
            ray.shutdown()
    record = collect_sweep(points, out_dir=out_dir, errors=errors, resources=resources, address=address)
    say(f"wrote {out_dir / 'sweep.json'}, {out_dir / 'sweep.csv'} and {out_dir / 'pareto.png'}")
    return record


def _same_request(path: Path, request: dict[str, Any]) -> None:
    import json

    if path.is_file():
        old = json.loads(path.read_text())
        if old != json.loads(json.dumps(request)):
            raise E2RNASError(f"{path.parent} holds a sweep of other points or settings ({path.name}); resume it "
                              "with the same flags and --config, or choose another --out")
        return
    atomic_write_json(path, request)


def _trial(config: dict[str, Any]) -> None:
    """One Ray Tune trial (in a Ray worker): the pipeline at this point, then its numbers reported to Tune."""
    from e2rnas.run.pipeline import PipelineConfig, run_pipeline

    os.chdir(config["cwd"])  # Tune starts trials in its own folder; relative paths in the settings mean the caller's
    point = SweepPoint(**config["point"])
    run_dir = Path(config["trials_dir"]) / point.label
    record = run_pipeline(PipelineConfig(**point.pipeline_values(config["base"])), run_dir=run_dir)
    metrics = point_metrics(run_dir)
    _report({k: v for k, v in metrics.items() if isinstance(v, int | float)}
            | {"check_passed": bool(record.get("check_passed"))})


def _report(metrics: dict[str, Any]) -> None:
    from ray import tune

    if hasattr(tune, "report"):  # Ray >= 2.41
        tune.report(metrics)
    else:  # Ray 2.9 - 2.40
        from ray import train

        train.report(metrics)


def point_metrics(run_dir: Path) -> dict[str, Any]:
    """A finished trial's numbers: the check's measured values, else eval/train/bench's (a skipped check)."""
    import json

    run_dir = Path(run_dir)

    def load(rel: str) -> dict[str, Any]:
        path = run_dir / rel
        return json.loads(path.read_text()) if path.is_file() else {}

    out: dict[str, Any] = {}
    check = load("check/check.json")
    for line in check.get("lines", []):
        if line.get("key") in _CHECK_KEYS and line.get("measured") is not None:
            out[_CHECK_KEYS[line["key"]]] = float(line["measured"])
    if check:
        out["check_passed"] = bool(check.get("passed"))
    train, evaluation = load("train/summary.json"), load("eval/eval.json")
    fallback = {"params_m": train.get("params", 0) / 1e6 or None, "macs_m": train.get("macs", 0) / 1e6 or None,
                "accuracy": evaluation.get("clean_acc"), "pgd_accuracy": evaluation.get("pgd_acc"),
                "aupr": (evaluation.get("ood") or {}).get("aupr_out"), "latency_ms": _bench_latency(load(
                    "bench/bench.json"))}
    for key, value in fallback.items():
        if out.get(key) is None and value is not None:
            out[key] = float(value)
    genotype = load("search/genotype.json")
    if genotype:
        out["genotype"] = genotype
    return out


def _bench_latency(bench: dict[str, Any]) -> float | None:
    """Batch-1 median of the fp32 ONNX row (the deployed artifact), else of the first row that ran."""
    rows = [r for r in bench.get("rows", []) if r.get("status") == "ok" and "1" in (r.get("latency") or {})]
    rows.sort(key=lambda r: r.get("format") != "onnx")
    return float(rows[0]["latency"]["1"]["p50_ms"]) if rows else None


def pareto_mask(rows: Sequence[dict[str, Any]], costs: Sequence[str], gains: Sequence[str]) -> list[bool]:
    """Non-dominated rows: no other row is as good on every axis and better on one (costs low, gains high).
    A row missing one of the axes is never on the front."""
    def vec(r: dict[str, Any]) -> tuple[float, ...] | None:
        values = [r.get(k) for k in (*costs, *gains)]
        if any(v is None for v in values):
            return None
        return tuple([float(v) for v in values[:len(costs)]] + [-float(v) for v in values[len(costs):]])

    vecs = [vec(r) for r in rows]
    mask = []
    for i, a in enumerate(vecs):
        dominated = a is None or any(
            b is not None and j != i and all(x <= y for x, y in zip(b, a, strict=True)) and b != a
            for j, b in enumerate(vecs))
        mask.append(not dominated)
    return mask


def collect_sweep(points: Sequence[SweepPoint], *, out_dir: Path, errors: dict[str, str] | None = None,
                  **meta: Any) -> dict[str, Any]:
    """``sweep.json`` (every point, each pair's front, the front over all six axes), ``sweep.csv``, ``pareto.png``."""
    import time

    out_dir = Path(out_dir)
    errors = errors or {}
    rows: list[dict[str, Any]] = []
    for p in points:
        run_dir = out_dir / "trials" / p.label
        row = {"label": p.label, "kind": p.kind, "bound": p.bound, "run_dir": str(run_dir)} | point_metrics(run_dir)
        row["status"] = "error" if p.label in errors else ("ok" if "accuracy" in row else "incomplete")
        if p.label in errors:
            row["error"] = errors[p.label].strip().splitlines()[-1][:500] if errors[p.label].strip() else "error"
        rows.append(row)
    fronts = {f"{c}/{g}": pareto_mask(rows, [c], [g]) for c in COSTS for g in GAINS}
    overall = pareto_mask(rows, list(COSTS), list(GAINS))
    for i, row in enumerate(rows):
        row["pareto"] = sorted(pair for pair, mask in fronts.items() if mask[i])
        row["non_dominated"] = overall[i]
    record = {"format": SWEEP_FORMAT, "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
              "out_dir": str(out_dir), "experiment": str(out_dir / EXPERIMENT), "points": rows} | meta
    atomic_write_json(out_dir / "sweep.json", record)
    atomic_write_text(out_dir / "sweep.csv", _csv(rows))
    plot_pareto(rows, out_dir / "pareto.png")
    return record


TABLE_COLUMNS = ("label", "status", *COSTS, *GAINS, "check_passed", "non_dominated")


def _csv(rows: Sequence[dict[str, Any]]) -> str:
    import csv
    import io

    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(TABLE_COLUMNS)
    for r in rows:
        writer.writerow(["" if r.get(c) is None else r.get(c) for c in TABLE_COLUMNS])
    return buf.getvalue()


def plot_pareto(rows: Sequence[dict[str, Any]], path: Path) -> None:
    """A 3 x 3 grid: params / MACs / latency (x) against accuracy / PGD accuracy / OoD AUPR (y); the front of
    each panel joined and ringed, every point labelled with its bound."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from e2rnas._io import atomic_write

    markers = {"params": "o", "macs": "s", "latency": "^"}
    fig, axes = plt.subplots(len(GAINS), len(COSTS), figsize=(4 * len(COSTS), 3.2 * len(GAINS)), squeeze=False)
    for i, (g, g_label) in enumerate(GAINS.items()):
        for j, (c, c_label) in enumerate(COSTS.items()):
            ax = axes[i][j]
            mask = pareto_mask(rows, [c], [g])
            shown = [(r, m) for r, m in zip(rows, mask, strict=True) if r.get(c) is not None and r.get(g) is not None]
            for r, on_front in shown:
                ax.scatter(r[c], r[g], marker=markers[r["kind"]], s=40, color="tab:blue" if on_front else "0.6",
                           edgecolors="black" if on_front else "none", zorder=3)
                ax.annotate(r["label"], (r[c], r[g]), fontsize=7, xytext=(3, 3), textcoords="offset points")
            front = sorted((r[c], r[g]) for r, on_front in shown if on_front)
            if len(front) > 1:
                ax.plot(*zip(*front, strict=True), color="tab:blue", lw=1, zorder=2)
            if not shown:
                ax.text(0.5, 0.5, "not measured", ha="center", va="center", transform=ax.transAxes, color="0.5")
            ax.set_xlabel(c_label)
            ax.set_ylabel(g_label)
            ax.grid(alpha=0.3)
    fig.suptitle("Sweep: non-dominated points in blue, ringed (cost low, quality high)")
    fig.tight_layout()
    atomic_write(Path(path), lambda tmp: fig.savefig(tmp, format="png", dpi=110))
    plt.close(fig)
