"""``e2rnas run``: lut -> search -> train -> eval -> export -> bench -> check (-> baseline) -> report, in one run
directory.

Each stage calls one library function (``e2rnas.run.stages``: ``run_search``, ``train``, ``evaluate_file``,
``export_model``, ``bench``, ``check``, ``build_report``) with the run's settings; the same stage as the
``e2rnas <stage> ...`` command a user could type is recorded in ``pipeline.json`` and the report. A stage whose
outputs are complete is skipped; a stage with a checkpoint but no final output resumes, so a re-run after an
interruption continues where it stopped.
"""

from __future__ import annotations

import dataclasses
import logging
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from e2rnas._io import atomic_write_json
from e2rnas.errors import E2RNASError
from e2rnas.presets import preset_section
from e2rnas.run import stages as S

log = logging.getLogger(__name__)

STAGES = ("lut", "search", "train", "eval", "export", "bench", "check", "baseline", "report")
BENCH_DEFAULTS = {"batch": "1,64", "metrics": "latency,accuracy,robustness,ood", "runs": 50}


@dataclass(frozen=True)
class PipelineConfig:
    """Stage options are extra flags for that stage's command (``{"epochs": 3}`` -> ``--epochs 3``)."""

    preset: str = "embedded-default"
    genotype: str | None = None  # skip the search and retrain this genotype (name or file) instead
    budget: str | None = None  # None: the budget shipped with the package
    target: str = "cpu"
    # T for the search: ms, or "NN%" of the way from the target table's fastest to its slowest genotype (the table
    # is measured on the target in the run's `lut` stage; skip that stage to search without a latency bound)
    latency_bound: str | None = "50%"
    lut: dict[str, Any] = field(default_factory=dict)
    search: dict[str, Any] = field(default_factory=dict)
    train: dict[str, Any] = field(default_factory=dict)
    eval: dict[str, Any] = field(default_factory=dict)
    export: dict[str, Any] = field(default_factory=dict)
    bench: dict[str, Any] = field(default_factory=dict)
    check: dict[str, Any] = field(default_factory=dict)
    skip: tuple[str, ...] = ()
    # random genotypes of the same budget retrained and evaluated beside the searched one (0: no baseline stage)
    baseline: int = 0
    baseline_seed: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "skip", tuple(self.skip))
        if isinstance(self.baseline, bool) or not isinstance(self.baseline, int) or self.baseline < 0:
            raise ValueError(f"baseline is a number of random networks (>= 0), got {self.baseline!r}")
        unknown = [s for s in self.skip if s not in STAGES]
        if unknown:
            raise ValueError(f"unknown stage(s) to skip {unknown}; stages are {', '.join(STAGES)}")
        for name in ("lut", "search", "train", "eval", "export", "bench", "check"):
            if not isinstance(getattr(self, name), dict):
                raise ValueError(f"pipeline setting {name!r} must be a mapping of flags, e.g. {name}: {{epochs: 3}}")


def flags(options: dict[str, Any]) -> list[str]:
    """``{"batch_size": 32, "first_order": True, "ll_ood": False}`` -> ``--batch-size 32 --first-order --no-ll-ood``."""
    out: list[str] = []
    for key, value in options.items():
        name = "--" + str(key).replace("_", "-")
        if value is None:
            continue
        if isinstance(value, bool):
            out.append(name if value else "--no-" + name[2:])
        elif isinstance(value, list | tuple):
            out += [name, ",".join(str(v) for v in value)]
        else:
            out += [name, str(value)]
    return out


def stage_options(cfg: PipelineConfig) -> dict[str, dict[str, Any]]:
    """Each stage's options as its runner takes them (``deploy``: the search's ``deploy_*`` keys, for the lut)."""
    # stage flags a preset adds (the paper preset: SVHN as the evaluation OoD set); the run's own flags win
    preset_flags = preset_section(cfg.preset, "pipeline")
    return {"deploy": {k: v for k, v in cfg.search.items() if k.startswith("deploy_")}, "lut": cfg.lut,
            "search": cfg.search, "train": cfg.train, "eval": preset_flags.get("eval", {}) | cfg.eval,
            "export": cfg.export, "bench": BENCH_DEFAULTS | cfg.bench, "check": cfg.check}


@dataclass(frozen=True)
class Stage:
    name: str
    argv: list[str] | Callable[[], list[str]]  # the equivalent command (a callable when it depends on earlier files)
    done: Callable[[], bool]
    run: Callable[[bool], S.Result]  # resume -> (code, result): the library call
    resumable: Callable[[], bool] = lambda: False
    ok_exit_codes: tuple[int, ...] = (0,)


def plan(cfg: PipelineConfig, run_dir: Path, *, progress: bool = True,
         on_search_step: Callable[[dict[str, Any]], None] | None = None,
         on_progress: Callable[[str, int, int], None] | None = None) -> list[Stage]:
    """The stages of one run directory, in order."""
    r = Path(run_dir)
    ctx = S.StageContext(run_dir=r, preset=cfg.preset, target=cfg.target, progress=progress,
                         on_search_step=on_search_step, on_progress=on_progress)
    s, t, e, x, b, c = (r / n for n in ("search", "train", "eval", "export", "bench", "check"))
    table = r / "lut" / "lut.json"
    preset = ["--preset", cfg.preset]
    genotype_ref = cfg.genotype or str(s)
    with_lut = "lut" not in cfg.skip and not cfg.genotype
    search_lut = ["--lut", str(table)] + (["--latency-bound", str(cfg.latency_bound)] if cfg.latency_bound else [])
    opts = stage_options(cfg)
    deploy_flags, eval_flags = opts["deploy"], opts["eval"]

    def bench_argv() -> list[str]:  # the int8 file exists only when its export passed the parity gate
        artifacts = [str(x / "model.onnx")] + ([str(x / "model.int8.onnx")] if (x / "model.int8.onnx").is_file()
                                               else [])
        return ["bench", str(t / "model.pt"), *artifacts, "--target", cfg.target, "--out", str(b),
                *flags(BENCH_DEFAULTS | cfg.bench)]

    stages = [
        Stage("lut", ["lut", *preset, "--target", cfg.target, "--out", str(table), *flags(deploy_flags | cfg.lut)],
              done=lambda: table.is_file(), run=lambda resume: S.lut(ctx, cfg.lut, deploy_flags)),
        Stage("search", ["search", *preset, "--out", str(s), *(search_lut if with_lut else []), *flags(cfg.search)],
              done=lambda: (s / "summary.json").is_file() and (s / "genotype.json").is_file(),
              run=lambda resume: S.search(ctx, cfg.search, resume=resume, lut_file=table if with_lut else None,
                                          latency_bound=cfg.latency_bound),
              resumable=lambda: (s / "checkpoint.pt").is_file()),
        Stage("train", ["train", genotype_ref, *preset, "--out", str(t), *flags(cfg.train)],
              done=lambda: (t / "summary.json").is_file() and (t / "model.pt").is_file(),
              run=lambda resume: S.train(ctx, cfg.train, genotype=genotype_ref, resume=resume),
              resumable=lambda: (t / "checkpoint.pt").is_file()),
        Stage("eval", ["eval", str(t / "model.pt"), "--out", str(e), *flags(eval_flags)],
              done=lambda: (e / "eval.json").is_file(), run=lambda resume: S.evaluate(ctx, eval_flags)),
        Stage("export", ["export", str(t / "model.pt"), "--onnx", "--out", str(x), *flags(cfg.export)],
              done=lambda: (x / "export.json").is_file() and (x / "model.onnx").is_file(),
              run=lambda resume: S.export(ctx, cfg.export, precision="fp32")),
        Stage("export-int8", ["export", str(t / "model.pt"), "--onnx", "--precision", "int8", "--out", str(x),
                              *flags(cfg.export)],
              done=lambda: (x / "model.int8.onnx").is_file(), ok_exit_codes=(0, 1),  # 1: refused by the gate
              run=lambda resume: S.export(ctx, cfg.export, precision="int8")),
        Stage("bench", bench_argv, done=lambda: (b / "bench.json").is_file(),
              run=lambda resume: S.bench(ctx, BENCH_DEFAULTS | cfg.bench)),
        Stage("check", ["check", str(r), "--target", cfg.target, "--out", str(c),
                        *(["--budget", cfg.budget] if cfg.budget else []), *flags(cfg.check)],
              done=lambda: (c / "check.json").is_file(), ok_exit_codes=(0, 1),
              run=lambda resume: S.check(ctx, cfg.check, budget=cfg.budget)),
        Stage("baseline", ["baseline", str(r), "--n", str(cfg.baseline), "--seed", str(cfg.baseline_seed)],
              done=lambda: (r / "baseline" / "baseline.json").is_file(),
              run=lambda resume: S.baseline(ctx, n=cfg.baseline, seed=cfg.baseline_seed)),
        Stage("report", ["report", str(r)], done=lambda: False, run=lambda resume: S.report(ctx)),
    ]
    if not cfg.baseline or cfg.genotype:  # no search budget to draw from with --genotype
        stages = [st for st in stages if st.name != "baseline"]
    if cfg.genotype:
        cfg = dataclasses.replace(cfg, skip=(*cfg.skip, "search", "lut"))
    return [st for st in stages if st.name.split("-")[0] not in cfg.skip]


def run_pipeline(cfg: PipelineConfig, *, run_dir: Path, on_stage: Callable[[str, str], None] | None = None,
                 on_result: Callable[[str, dict[str, Any] | None], None] | None = None, force: bool = False,
                 from_stage: str | None = None, progress: bool = True,
                 on_search_step: Callable[[dict[str, Any]], None] | None = None,
                 on_progress: Callable[[str, int, int], None] | None = None) -> dict[str, Any]:
    """Run (or continue) the pipeline; returns and writes ``pipeline.json`` (commands, status, seconds).

    Each stage has a fingerprint: its arguments, the contents of the input files it names outside the run
    directory, the e2rnas version and the fingerprint of the stage before it. A stage whose recorded fingerprint
    differs runs again, and so does every stage after it (its old outputs move to ``<name>.previous``); a stage
    whose outputs are complete and whose fingerprint matches is skipped. ``force`` reruns everything,
    ``from_stage`` that stage and the rest."""

    from e2rnas._outdir import check_dir, owned_dir

    run_dir = Path(run_dir)
    record_path = run_dir / "pipeline.json"
    stages = plan(cfg, run_dir, progress=progress, on_search_step=on_search_step, on_progress=on_progress)
    names = [st.name.split("-")[0] for st in stages]
    if from_stage is not None and from_stage not in names:
        raise E2RNASError(f"--from {from_stage}: not a stage of this run; stages are {', '.join(dict.fromkeys(names))}")
    check_dir(run_dir, command="run")
    with_lut = "lut" in names
    S.check_options(S.StageContext(run_dir=run_dir, preset=cfg.preset, target=cfg.target), set(names),
                    stage_options(cfg), lut_file=run_dir / "lut" / "lut.json" if with_lut else None,
                    latency_bound=cfg.latency_bound)
    with owned_dir(run_dir, command="run"):
        return _run_stages(cfg, stages, names, run_dir=run_dir, record_path=record_path, on_stage=on_stage,
                           on_result=on_result, force=force, from_stage=from_stage)


def _run_stages(cfg: PipelineConfig, stages: list[Stage], names: list[str], *, run_dir: Path, record_path: Path,
                on_stage: Callable[[str, str], None] | None, on_result: Callable[[str, dict[str, Any] | None], None]
                | None, force: bool, from_stage: str | None) -> dict[str, Any]:
    from e2rnas import __version__

    old = _old_fingerprints(record_path)
    from e2rnas._provenance import provenance

    # provenance: of the last invocation that ran a stage (the report rebuilt on a rerun that skips every stage
    # keeps the command that made the results); last_invocation: this one, and the stages it ran
    now = provenance()
    record: dict[str, Any] = {"config": dataclasses.asdict(cfg), "stages": [], "e2rnas_version": __version__,
                              "run_dir": str(run_dir.resolve()), "cwd": str(Path.cwd()), "argv": sys.argv,
                              "provenance": _old_record(record_path).get("provenance") or now,
                              "last_invocation": {"date": now["date"], "command": now["command"], "ran": []}}
    upstream, stale = "", force
    for stage, base in zip(stages, names, strict=True):
        stale = stale or base == from_stage
        argv = list(stage.argv() if callable(stage.argv) else stage.argv)
        fp = _fingerprint(argv, upstream=upstream, run_dir=run_dir, version=__version__)
        upstream = fp
        changed = stage.name in old and old[stage.name] != fp
        entry: dict[str, Any] = {"stage": stage.name, "command": "e2rnas " + " ".join(argv), "fingerprint": fp}
        if stage.done() and not (stale or changed):
            entry.update(status="skipped (complete)", seconds=0.0)
            record["stages"].append(entry)
            if on_stage:
                on_stage(stage.name, "skipped (outputs complete)")
            continue
        if stale or changed:
            _set_aside(stage, run_dir)
            if on_stage and changed and not stale:
                on_stage(stage.name, "settings changed since the last run: running it and the stages after it")
        stale = True  # every stage after one that ran sees new inputs
        if stage.name != "report":  # the report is rebuilt every time
            record["provenance"] = now
            record["last_invocation"]["ran"].append(stage.name)
        resume = stage.resumable()
        if resume:
            entry["command"] += " --resume"
        if on_stage:
            on_stage(stage.name, entry["command"])
        log.info("stage %s: %s", stage.name, entry["command"])
        atomic_write_json(record_path, _merge_times(record_path, record))  # what the stage (the report) reads
        t0 = time.time()
        try:
            code, result = stage.run(resume)
        except E2RNASError as exc:
            entry.update(seconds=round(time.time() - t0, 2), status="failed", error=str(exc))
            record["stages"].append(entry)
            atomic_write_json(record_path, _merge_times(record_path, record))
            raise E2RNASError(f"stage {stage.name} failed: {exc}; fix it, then rerun `e2rnas run` to continue") \
                from exc
        entry.update(seconds=round(time.time() - t0, 2), exit_code=code)
        if on_result:
            on_result(stage.name, result)
        if code not in stage.ok_exit_codes:
            entry["status"] = "failed"
            record["stages"].append(entry)
            atomic_write_json(record_path, _merge_times(record_path, record))
            raise E2RNASError(f"stage {stage.name} failed (exit {code}); fix it, then rerun `e2rnas run` to continue")
        entry["status"] = "ok" if code == 0 else f"ok (exit {code})"
        record["stages"].append(entry)
        atomic_write_json(record_path, _merge_times(record_path, record))
    check_json = run_dir / "check" / "check.json"
    if check_json.is_file():  # also when the check stage was skipped as complete: a failed budget stays failed
        import json

        from e2rnas.run.report import budget_verdict

        check = json.loads(check_json.read_text())
        record["check_passed"] = bool(check.get("passed"))
        record["verdict"] = budget_verdict(check) + f" ({check_json})"
    record["python"] = sys.version.split()[0]
    atomic_write_json(record_path, _merge_times(record_path, record))
    return record


#: what a stage writes; moved to ``<path>.previous`` before the stage runs again with other settings
_OUTPUTS = {"lut": ("lut",), "search": ("search",), "train": ("train",), "eval": ("eval",), "export": ("export",),
            "bench": ("bench",), "check": ("check",), "baseline": ("baseline",)}


def _set_aside(stage: Stage, run_dir: Path) -> None:
    import shutil

    for rel in _OUTPUTS.get(stage.name, ()):
        path = run_dir / rel
        if path.exists():
            previous = run_dir / f"{rel}.previous"
            shutil.rmtree(previous, ignore_errors=True)
            path.rename(previous)


def _fingerprint(argv: Sequence[str], *, upstream: str, run_dir: Path, version: str) -> str:
    """Arguments, version, upstream fingerprint, and the bytes of every input file named outside the run."""
    import hashlib
    import json

    h = hashlib.sha256(json.dumps({"argv": list(argv), "upstream": upstream, "version": version}).encode())
    root = run_dir.resolve()
    for arg in argv:
        path = Path(arg)
        if path.is_file() and root not in path.resolve().parents:
            h.update(path.read_bytes())
    return h.hexdigest()[:16]


def _old_record(path: Path) -> dict[str, Any]:
    import json

    try:
        record = json.loads(path.read_text()) if path.is_file() else {}
    except ValueError:
        return {}
    return record if isinstance(record, dict) else {}


def _old_fingerprints(path: Path) -> dict[str, str]:
    stages = _old_record(path).get("stages")
    stages = stages if isinstance(stages, list) else []
    return {s["stage"]: s["fingerprint"] for s in stages if isinstance(s, dict) and s.get("fingerprint")}


def _merge_times(path: Path, record: dict[str, Any]) -> dict[str, Any]:
    """Keep the wall time of stages that ran in an earlier invocation (a skipped stage reports its first run)."""
    import json

    if not path.is_file():
        return record
    try:
        old = {s["stage"]: s for s in json.loads(path.read_text()).get("stages", []) if s.get("seconds")}
    except (ValueError, KeyError):
        return record
    merged = dict(record)
    merged["stages"] = [old.get(s["stage"], s) | {"status": s["status"]} if s["status"].startswith("skipped")
                        else s for s in record["stages"]]
    return merged
