"""Deployment budgets: a YAML file of limits, checked against what a model measures on a target.

Keys (any subset, at least one): ``max_params_m`` (M parameters, auxiliary head excluded), ``max_macs_m`` (M
multiply-adds of one image, convolutions and matmuls as FlopCounterMode counts them), ``max_latency_ms`` at
``latency_batch`` (default 1) and ``latency_percentile`` (50, 90, 95 or 99; default 50), ``min_accuracy``,
``min_pgd_accuracy``, ``min_aupr`` (fractions in [0, 1]; AUPR with OoD as the positive class), ``artifact``
(which artifact latency and accuracy are measured on: torch, onnx, onnx-int8, tensorrt-fp16, ...; default ONNX
when the run has one, else torch). Each line is reported beside the search-time numbers when the run has them:
the bound (L or F), the softmax estimate at the final alphas and the exact cost of the genotype.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from e2rnas._io import read_yaml
from e2rnas.errors import E2RNASError

FORMAT = "e2rnas.check/1"
PERCENTILES = (50, 90, 95, 99)


class BudgetError(E2RNASError):
    """A budget file is malformed."""


@dataclass(frozen=True)
class Budget:
    max_params_m: float | None = None
    max_macs_m: float | None = None
    max_latency_ms: float | None = None
    latency_batch: int = 1
    latency_percentile: int = 50
    min_accuracy: float | None = None
    min_pgd_accuracy: float | None = None
    min_aupr: float | None = None
    artifact: str | None = None

    @property
    def limits(self) -> dict[str, float]:
        return {k: v for k, v in dataclasses.asdict(self).items() if k.startswith(("max_", "min_")) and v is not None}

    @property
    def needs_eval(self) -> bool:
        return any(getattr(self, k) is not None for k in ("min_accuracy", "min_pgd_accuracy", "min_aupr"))


_NUMBER_KEYS = ("max_params_m", "max_macs_m", "max_latency_ms", "min_accuracy", "min_pgd_accuracy", "min_aupr")
_FRACTION_KEYS = ("min_accuracy", "min_pgd_accuracy", "min_aupr")


def parse_budget(data: Any, *, where: str) -> Budget:
    if not isinstance(data, dict):
        raise BudgetError(f"{where}: a budget is a mapping such as 'max_params_m: 0.5', got {type(data).__name__}")
    fields = [f.name for f in dataclasses.fields(Budget)]
    unknown = sorted(map(str, set(data) - set(fields)))
    if unknown:
        raise BudgetError(f"{where}: unknown key(s) {', '.join(unknown)}; valid: {', '.join(fields)}")
    for key in _NUMBER_KEYS:
        v = data.get(key)
        if v is None:
            continue
        if isinstance(v, bool) or not isinstance(v, int | float):
            raise BudgetError(f"{where}: {key} must be a number, got {v!r}")
        if not math.isfinite(v):  # .inf / .nan in YAML: a limit nothing can fail, or one nothing can pass
            raise BudgetError(f"{where}: {key} must be a finite number, got {v}; leave the key out for no limit")
        if v < 0:
            raise BudgetError(f"{where}: {key} must be >= 0, got {v}")
        if key in _FRACTION_KEYS and v > 1:
            raise BudgetError(f"{where}: {key} is a fraction in [0, 1], got {v}; write {v / 100:g} for {v:g}%")
    for key in ("latency_batch", "latency_percentile"):
        v = data.get(key)
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
            raise BudgetError(f"{where}: {key} must be a positive integer, got {v!r}")
    if data.get("latency_percentile") is not None and data["latency_percentile"] not in PERCENTILES:
        raise BudgetError(f"{where}: latency_percentile must be one of {', '.join(map(str, PERCENTILES))}")
    if data.get("artifact") is not None and not isinstance(data["artifact"], str):
        raise BudgetError(f"{where}: artifact must be a format name such as onnx or torch, got {data['artifact']!r}")
    budget = Budget(**{k: v for k, v in data.items() if v is not None})
    if not budget.limits:
        raise BudgetError(f"{where}: the budget sets no limit; add e.g. max_params_m or max_latency_ms")
    return budget


def load_budget(path: str | Path) -> Budget:
    path = Path(path)
    return parse_budget(read_yaml(path, kind="budget file", error=BudgetError), where=str(path))


def default_budget_path() -> Path:
    """The budget shipped for the embedded-default model (8 cells, C=16, 16x16 digits, 5 classes)."""
    import e2rnas

    return Path(e2rnas.__file__).parent / "budgets" / "default.yaml"


# ------------------------------------------------------------------------------------------------- run files
@dataclass(frozen=True)
class RunFiles:
    """What a model.pt, a train run or a pipeline run (RUN/search, RUN/train, RUN/export) holds."""

    root: Path
    model: Path
    eval_json: Path | None
    search: dict[str, Any]
    search_from: str | None
    artifacts: dict[str, Path] = field(default_factory=dict)  # format label -> file
    candidates: dict[str, list[Path]] = field(default_factory=dict)  # format label -> every such file


def find_run(path: str | Path) -> RunFiles:
    from e2rnas.deploy_targets.runners import artifact_format
    from e2rnas.model_io import read_model_file

    path = Path(path)
    if path.is_file():
        model, root = path, path.parent
    elif (path / "model.pt").is_file():
        model, root = path / "model.pt", path
    elif (path / "train" / "model.pt").is_file():
        model, root = path / "train" / "model.pt", path
    else:
        raise E2RNASError(f"no model found at {path}: give a model.pt, a train run directory or a pipeline run "
                          "directory holding train/model.pt")
    mdir = model.parent
    pipeline = root if (root / "train").is_dir() else (mdir.parent if mdir.name == "train" else None)
    meta = dict(read_model_file(model).get("search") or {})
    search, search_from = _search_record(meta), f"{model} (meta)"
    candidates = [Path(meta["genotype_source"]) / "summary.json"] if meta.get("genotype_source") else []
    candidates += [pipeline / "search" / "summary.json"] if pipeline is not None else []
    for summary in candidates:
        if search:
            break
        if summary.is_file():
            try:
                search, search_from = _search_record(json.loads(summary.read_text())), str(summary)
            except json.JSONDecodeError as exc:
                raise E2RNASError(f"{summary} is not valid JSON ({exc})") from exc
    search_from = search_from if search else None
    evals = [mdir / "eval.json"] + ([pipeline / "eval" / "eval.json"] if pipeline is not None else [])
    eval_json = next((e for e in evals if e.is_file()), None)  # a train run's, or a pipeline's eval stage
    artifacts: dict[str, Path] = {"torch": model}
    candidates: dict[str, list[Path]] = {}
    for d in dict.fromkeys(x for x in (mdir / "export", pipeline / "export" if pipeline else None) if x):
        if d.is_dir():
            # dynamic-batch files first (model.onnx before model.bs8.onnx)
            for f in sorted(d.iterdir(), key=lambda f: (".bs" in f.name, f.name)):
                if f.suffix in (".onnx", ".engine", ".plan"):
                    artifacts.setdefault(artifact_format(f), f)
                    candidates.setdefault(artifact_format(f), []).append(f)
    return RunFiles(root=root, model=model, eval_json=eval_json, search=search, search_from=search_from,
                    artifacts=artifacts, candidates=candidates)


def _search_record(d: dict[str, Any]) -> dict[str, Any]:
    """The search's bounds and estimates, stored flat or under ``summary`` (as training copies them)."""
    if "params_bound_m" in d or "exact_params_m" in d:
        return d
    inner = d.get("summary")
    return dict(inner) if isinstance(inner, dict) and ("params_bound_m" in inner or "exact_params_m" in inner) else {}


def engine_profile_batch(engine: Path) -> int | None:
    """The batch an engine is optimised for: its profile's opt batch, or its static batch (from the sidecar)."""
    try:
        record = json.loads(Path(engine).with_suffix(".json").read_text())
    except (OSError, json.JSONDecodeError):
        return None
    if isinstance(record.get("profile"), dict) and record["profile"].get("opt"):
        return int(record["profile"]["opt"])
    return int(record["static_batch"]) if record.get("static_batch") else None


def pick_engine(candidates: list[Path], *, problem_of: Any, batch: int) -> tuple[Path, str | None]:
    """The engine built for this device (``problem_of(path) -> reason | None``, e.g. the GPU identity check),
    preferring one optimised for ``batch``; (path, note) where the note says when no engine is tuned for
    ``batch``. Raises with the first engine's reason when none matches the device."""
    fits = [c for c in candidates if problem_of(c) is None]
    if not fits:
        raise E2RNASError(f"none of the {len(candidates)} engine(s) was built for this device: "
                          f"{problem_of(candidates[0])}")
    tuned = [c for c in fits if engine_profile_batch(c) == batch]
    if tuned:
        return tuned[0], None
    opt = engine_profile_batch(fits[0])
    return fits[0], (f"{fits[0].name} is optimised for batch {opt if opt else 'unknown'}, not latency_batch {batch}: "
                     f"re-export with --trt --batch {batch} for a profile whose opt shape is the measured batch")


def choose_artifact(run: RunFiles, budget: Budget, *, remote: bool, notes: list[str] | None = None) -> Path:
    if budget.artifact is not None:
        if budget.artifact not in run.artifacts:
            raise E2RNASError(f"the budget asks for artifact {budget.artifact!r} but {run.root} has "
                              f"{', '.join(run.artifacts)}; export it first or change 'artifact'")
        found = run.candidates.get(budget.artifact) or [run.artifacts[budget.artifact]]
        if budget.artifact.startswith("tensorrt") and not remote:  # a remote device checks its own engine
            from e2rnas.deploy_targets.gpu_identity import current_identity, engine_identity_problem

            current = current_identity()
            path, note = pick_engine(found, problem_of=lambda p: engine_identity_problem(p, current),
                                     batch=budget.latency_batch)
            if note and notes is not None:
                notes.append(note)
            return path
        return found[0]
    if "onnx" in run.artifacts:
        return run.artifacts["onnx"]
    if remote:
        raise E2RNASError(f"a remote target needs an ONNX or engine file and {run.root} has none: run "
                          "e2rnas export --onnx first")
    return run.artifacts["torch"]


def read_eval_json(path: Path) -> dict[str, float | None]:
    """accuracy / pgd_accuracy / aupr_out from ``e2rnas eval``'s eval.json (clean_acc, pgd_acc, ood.aupr_out)."""
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise E2RNASError(f"{path} is not valid JSON ({exc})") from exc
    if not isinstance(data, dict):
        raise E2RNASError(f"{path} does not hold an evaluation result")
    return {"accuracy": data.get("clean_acc"), "pgd_accuracy": data.get("pgd_acc"),
            "aupr_out": (data.get("ood") or {}).get("aupr_out")}


# ----------------------------------------------------------------------------------------------------- check
@dataclass(frozen=True)
class CheckLine:
    key: str  # budget key
    what: str  # human name with unit
    limit: float
    measured: float | None
    source: str  # where the measured value came from
    bound: float | None = None  # search-time bound (L or F)
    estimate: float | None = None  # softmax estimate at the final alphas
    exact: float | None = None  # exact cost of the genotype at the search's deploy shape
    decides: bool = True  # False: a row shown for information (the search bound T), not part of pass/fail

    @property
    def is_max(self) -> bool:
        return self.key.startswith(("max_", "search_"))  # search bounds (L, F, T) are upper bounds

    @property
    def margin(self) -> float | None:
        if self.measured is None:
            return None
        return self.limit - self.measured if self.is_max else self.measured - self.limit

    @property
    def passed(self) -> bool:
        return self.margin is not None and self.margin >= 0

    def as_dict(self) -> dict[str, Any]:
        pct = 100 * self.margin / self.limit if self.margin is not None and self.limit else None
        return {**dataclasses.asdict(self), "op": "<=" if self.is_max else ">=", "margin": self.margin,
                "margin_pct": pct, "passed": self.passed}


def check(run_or_model: str | Path, *, budget: Budget, target: Any, reuse_eval: bool = False,
          dataset: str | None = None, ood_dataset: str | None = None, data_dir: str | Path | None = None,
          max_samples: int | None = None, warmup: int = 10, runs: int | None = None, duration: float | None = None,
          threads: int | None = None, ssh: Any = None, seed: int = 0) -> dict[str, Any]:
    """Every budget line measured now on ``target`` (or read from eval.json with ``reuse_eval``)."""
    from e2rnas.deploy_targets import bench as B
    from e2rnas.deploy_targets.cpu_features import cpu_features
    from e2rnas.deploy_targets.env import environment
    from e2rnas.deploy_targets.runners import artifact_format, open_runner
    from e2rnas.model_io import load_model
    from e2rnas.space.network import count_macs, count_params

    run = find_run(run_or_model)
    loaded = load_model(run.model)
    s = run.search
    lines: list[CheckLine] = []
    notes: list[str] = []
    if s.get("deploy_shape"):
        ds, spec = s["deploy_shape"], loaded.spec
        mine = {"layers": spec.layers, "C": spec.C, "num_classes": spec.num_classes, "input_size": spec.input_size}
        diff = {k: (ds.get(k), v) for k, v in mine.items() if ds.get(k) is not None and ds.get(k) != v}
        if diff:
            notes.append(f"the search costed another deploy shape than this model: {diff} (search, model)")
    notes += [f"search: {w}" for w in s.get("warnings") or []]
    if budget.max_params_m is not None:
        lines.append(CheckLine("max_params_m", "params (M)", budget.max_params_m, count_params(loaded.model) / 1e6,
                               "counted on model.pt", s.get("params_bound_m"), s.get("expected_params_m"),
                               s.get("exact_params_m")))
    if budget.max_macs_m is not None:
        macs = count_macs(loaded.model, input_size=loaded.spec.input_size) / 1e6
        lines.append(CheckLine("max_macs_m", "MACs (M)", budget.max_macs_m, macs, "FlopCounterMode on model.pt",
                               s.get("flops_bound_m"), s.get("expected_macs_m"), s.get("exact_macs_m")))

    artifact = choose_artifact(run, budget, remote=target.remote, notes=notes) if (
        budget.max_latency_ms is not None or budget.needs_eval) else None
    threads = B.resolve_threads(target, threads)
    measured: dict[str, float | None] = {}
    eval_source = None
    want_eval = budget.needs_eval and not (reuse_eval and run.eval_json is not None)
    if budget.needs_eval and not want_eval:
        measured.update(read_eval_json(run.eval_json))
        eval_source = f"{run.eval_json} (reused)"
    metrics = [m for m, key in (("accuracy", "min_accuracy"), ("robustness", "min_pgd_accuracy"),
                                ("ood", "min_aupr")) if want_eval and getattr(budget, key) is not None]
    if "robustness" in metrics and "accuracy" not in metrics:
        metrics.insert(0, "accuracy")
    data = B.load_eval_data(metrics=metrics, data_meta=dict(loaded.meta.get("data") or {}),
                            image_size=loaded.spec.input_size, dataset=dataset, ood_dataset=ood_dataset,
                            data_dir=data_dir, max_samples=max_samples, seed=seed)
    latency = None
    if artifact is not None and target.remote:
        if budget.max_latency_ms is not None:
            row = B.measure_artifact(artifact, target=target, batch_sizes=[budget.latency_batch], metrics=["latency"],
                                     warmup=warmup, runs=runs, duration=duration, threads=threads, data=data,
                                     source_model=None, ssh=ssh)
            if row["status"] != "ok":
                raise E2RNASError(row["error"])
            latency = row["latency"].get(str(budget.latency_batch), {})
        if metrics:  # the device cannot hold the data: accuracy comes from the torch model here
            from e2rnas.predict import TorchPredictor

            measured.update(_eval_values(B.evaluate_artifact(TorchPredictor(loaded.model, "cpu"), data=data,
                                                             metrics=metrics, attack_model=loaded.model)))
            eval_source = "evaluate() on model.pt here (remote target)"
    elif artifact is not None:
        attack_model = loaded.model if "robustness" in metrics else None
        with open_runner(artifact, target=target, threads=threads) as runner, B.torch_threads(threads):
            # a TensorRT engine: whether its build GPU (UUID) and TensorRT version were compared with this one's
            notes += [f"engine: {n}" for n in (runner.info().get("identity_notes") or [])]
            if budget.max_latency_ms is not None:
                if not runner.accepts_batch(budget.latency_batch):
                    raise E2RNASError(f"{artifact.name} cannot run latency_batch {budget.latency_batch} "
                                      f"(fixed batch {runner.fixed_batch}); set latency_batch or artifact")
                latency = runner.measure(budget.latency_batch, warmup=warmup, runs=runs, duration=duration).as_dict()
            if metrics:
                measured.update(_eval_values(B.evaluate_artifact(B.as_predictor(runner), data=data, metrics=metrics,
                                                                 attack_model=attack_model)))
                eval_source = f"evaluate() on {artifact.name} ({target.name})"
    exported = [p for p in run.artifacts.values() if p.suffix != ".pt"]
    notes += B.int8_notes(_int8_rows(artifact, run, target=target, latency=latency, batch=budget.latency_batch,
                                     threads=threads, warmup=warmup, runs=runs, duration=duration),
                          B.export_summaries(exported), where=target.name,
                          cpu=cpu_features() if target.device == "cpu" and not target.remote else None)
    if budget.max_latency_ms is not None:
        lines += latency_lines(budget, latency=latency, search=s, target=target.name,
                               source=f"{artifact_format(artifact)} on {target.name}", notes=notes)
    for key, name, what in (("min_accuracy", "accuracy", "accuracy"), ("min_pgd_accuracy", "pgd_accuracy",
                                                                      "PGD accuracy"),
                            ("min_aupr", "aupr_out", "OoD AUPR")):
        limit = getattr(budget, key)
        if limit is not None:
            lines.append(CheckLine(key, what, limit, measured.get(name), eval_source or "-"))
    return {"format": FORMAT, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "run": str(run.root),
            "model": str(run.model), "artifact": str(artifact) if artifact else None,
            "target": target.as_dict(), "budget": dataclasses.asdict(budget), "search": s,
            "search_from": run.search_from, "eval_source": eval_source, "latency": latency, "data": data.info,
            "lines": [ln.as_dict() for ln in lines], "passed": all(ln.passed for ln in lines if ln.decides),
            "notes": notes,
            "environment": environment(threads=threads)}


TABLE_STATISTIC = 50  # the latency table's entries (and so T) are medians over rounds of per-round p50s


def latency_lines(budget: Budget, *, latency: dict[str, Any] | None, search: dict[str, Any], target: str,
                  source: str, notes: list[str]) -> list[CheckLine]:
    """One statistic per row. The budget's row is the budget's percentile against its limit (it decides pass/fail);
    the search bound T was built from p50s, so it is compared with the measured p50: on the budget's row when the
    budget asks for p50, else on a row of its own shown for information. A measured p50 over T is flagged in a note
    even when the budget's looser limit passes."""
    batch, pct = budget.latency_batch, budget.latency_percentile
    bound, estimate, predicted = _table_latency(search, target=target, batch=batch, notes=notes)
    value = (latency or {}).get(f"p{pct}_ms")
    same = pct == TABLE_STATISTIC
    rows = [CheckLine("max_latency_ms", f"latency p{pct} ms, batch {batch}", budget.max_latency_ms, value, source,
                      *((bound, estimate, predicted) if same else (None, None, None)))]
    if bound is None:
        return rows
    p50 = (latency or {}).get(f"p{TABLE_STATISTIC}_ms")
    if not same:
        rows.append(CheckLine("search_latency_bound_ms", f"latency p{TABLE_STATISTIC} ms, batch {batch} "
                              "(the search's statistic)", bound, p50, source, bound, estimate, predicted,
                              decides=False))
    if p50 is not None and p50 > bound:
        notes.append(f"measured p{TABLE_STATISTIC} {p50:.4g} ms is over the search bound T = {bound:.4g} ms "
                     f"({100 * (p50 / bound - 1):+.0f}%): the network is slower on {target} than the search's table "
                     f"predicted; the budget's limit ({budget.max_latency_ms:g} ms, p{pct}) decides pass/fail")
    return rows


def _table_latency(search: dict[str, Any], *, target: str, batch: int,
                   notes: list[str]) -> tuple[float | None, float | None, float | None]:
    """(T, softmax estimate, table prediction for the genotype) when the search used a latency table of this
    target and batch; otherwise Nones and a note saying why the prediction does not apply."""
    key = search.get("lut_key")
    if not key:
        return None, None, None
    if key.get("target") != target or int(key.get("batch", batch)) != batch:
        notes.append(f"the search's latency table was measured on {key.get('target')} at batch {key.get('batch')}; "
                     f"this check measures {target} at batch {batch}, so the table's prediction is not shown")
        return None, None, None
    return search.get("latency_bound_ms"), search.get("expected_latency_ms"), search.get("table_latency_ms")


def _int8_rows(artifact: Path | None, run: RunFiles, *, target: Any, latency: dict[str, Any] | None, batch: int,
               threads: int | None, warmup: int, runs: int | None, duration: float | None) -> list[dict[str, Any]]:
    """Bench-style rows for ``bench.int8_notes`` when the checked artifact is ONNX int8: it, and the fp32 ONNX
    file timed at the same batch (so that an int8 file slower than fp32 on this target is said)."""
    from e2rnas.deploy_targets import bench as B
    from e2rnas.deploy_targets.runners import artifact_format, open_runner

    if artifact is None or artifact_format(artifact) != "onnx-int8":
        return []
    rows = [{"artifact": str(artifact), "format": "onnx-int8", "status": "ok",
             "latency": {str(batch): latency} if latency else {},
             "int8_scheme": B.artifact_facts(artifact).get("int8_scheme")}]
    fp32 = run.artifacts.get("onnx")
    if latency and fp32 is not None and not target.remote:
        with open_runner(fp32, target=target, threads=threads) as runner:
            if runner.accepts_batch(batch):
                stats = runner.measure(batch, warmup=warmup, runs=runs, duration=duration).as_dict()
                rows.append({"artifact": str(fp32), "format": "onnx", "status": "ok", "latency": {str(batch): stats}})
    return rows


def _eval_values(result: dict[str, Any]) -> dict[str, float | None]:
    return {k: result.get(k) for k in ("accuracy", "pgd_accuracy", "aupr_out")}
