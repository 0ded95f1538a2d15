"""The pipeline's stages as library calls: each turns the run's stage options (the flag names a user would type,
``{"epochs": 3}``) into explicit keywords of one library function, runs it, and writes what the command would.

A runner returns ``(code, result)``: 0 when the stage passed, 1 when it ran but refused or failed a check (an
INT8 export refused by its parity gate, a bench row in error, a budget line missed); bad settings raise
``E2RNASError`` naming the stage and the option. ``e2rnas.run.pipeline`` orders and fingerprints them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from e2rnas.config import fraction, int_list, latency_bound_fields, without_ood
from e2rnas.errors import E2RNASError

Result = tuple[int, dict[str, Any] | None]


@dataclass(frozen=True)
class StageContext:
    """Where a run's stages read and write, and what they share."""

    run_dir: Path
    preset: str
    target: str
    progress: bool = True
    on_search_step: Callable[[dict[str, Any]], None] | None = None  # the search's step records, for a live view
    on_progress: Callable[[str, int, int], None] | None = None  # (what, done, total) of a stage without records

    def path(self, *parts: str) -> Path:
        return self.run_dir.joinpath(*parts)


def take(stage: str, options: dict[str, Any], spec: dict[str, str | tuple[str, Callable[[Any, str], Any]]]
         ) -> dict[str, Any]:
    """Stage options (flag names, ``-`` or ``_``) -> keywords; an option the stage does not know is an error."""
    out: dict[str, Any] = {}
    for key, value in options.items():
        name = str(key).replace("-", "_")
        if name not in spec:
            raise E2RNASError(f"{stage}: unknown option {key!r} in the run's {stage} settings; known: "
                              f"{', '.join(sorted(spec))}")
        if value is None:
            continue
        target = spec[name]
        if isinstance(target, tuple):
            target, convert = target
            value = convert(value, f"{stage}.{key}")
        out[target] = value
    return out


def check_options(ctx: StageContext, stages: set[str], options: dict[str, dict[str, Any]], *,
                  lut_file: Path | None, latency_bound: str | None) -> None:
    """Every stage's settings, validated before the first stage runs: an unknown key or a bad value in a later
    stage's section is one line now, not after minutes of the stages before it."""
    try:
        if "lut" in stages:
            take("lut", options["deploy"], DEPLOY_OPTIONS)
            take("lut", options["lut"], LUT_OPTIONS)
        if "search" in stages:
            search_config(ctx, options["search"], lut_file=lut_file, latency_bound=latency_bound)
        if "train" in stages:
            train_config(ctx, options["train"])
    except E2RNASError as exc:
        raise E2RNASError(f"bad pipeline settings (nothing ran): {exc}") from None
    for name, spec in (("eval", EVAL_OPTIONS), ("export", EXPORT_OPTIONS), ("bench", BENCH_OPTIONS),
                       ("check", CHECK_OPTIONS)):
        if name in stages:
            take(name, options[name], spec)


# -------------------------------------------------------------------------------------------------- stages
DEPLOY_OPTIONS: dict[str, Any] = {
    "deploy_layers": "layers", "deploy_channels": "C", "deploy_c": "C", "deploy_image_size": "input_size",
    "deploy_input_size": "input_size", "deploy_num_classes": "num_classes", "deploy_classes": "num_classes"}
LUT_OPTIONS: dict[str, Any] = {"batch": "batch", "threads": "threads", "runs": "runs", "rounds": "rounds",
                               "warmup": "warmup", "seed": "seed"}


def lut(ctx: StageContext, options: dict[str, Any], deploy: dict[str, Any]) -> Result:
    from e2rnas.deploy_targets.lut import measure_latency_table
    from e2rnas.deploy_targets.profiles import get_target
    from e2rnas.presets import preset_section
    from e2rnas.space.cost import DeployShape

    p = preset_section(ctx.preset, "search")
    d = take("lut", deploy, DEPLOY_OPTIONS)
    shape = DeployShape(layers=d.get("layers", p["deploy_layers"]), C=d.get("C", p["deploy_C"]),
                        num_classes=d.get("num_classes", p["deploy_num_classes"]),
                        input_size=d.get("input_size", p["deploy_input_size"]))
    kw = take("lut", options, LUT_OPTIONS)
    table = measure_latency_table(shape=shape, target=get_target(ctx.target), on_progress=ctx.on_progress, **kw)
    table.save(ctx.path("lut", "lut.json"))
    return 0, table.to_dict()


def search_config(ctx: StageContext, options: dict[str, Any], *, lut_file: Path | None,
                  latency_bound: str | None) -> tuple[Any, list[str]]:
    """The search stage's config and its notes (``ood_dataset: none``)."""
    from e2rnas.config import build_config
    from e2rnas.search.runner import SearchConfig

    opts, notes, no_ood = without_ood(dict(options))
    if lut_file is not None:
        opts = {"lut": str(lut_file), **latency_bound_fields(latency_bound), **opts}
    if "latency_bound" in opts and isinstance(opts["latency_bound"], str):
        opts |= latency_bound_fields(opts.pop("latency_bound"))
    return build_config(SearchConfig, preset=ctx.preset, section="search", overrides=opts, drop_ood=no_ood), notes


def search(ctx: StageContext, options: dict[str, Any], *, resume: bool, lut_file: Path | None,
           latency_bound: str | None) -> Result:
    from e2rnas.search.runner import run_search

    cfg, notes = search_config(ctx, options, lut_file=lut_file, latency_bound=latency_bound)
    summary = run_search(cfg, out_dir=ctx.path("search"), resume=resume, on_step=ctx.on_search_step)
    return 0, summary | {"notes": [*notes, *summary.get("notes", [])]}


def train_config(ctx: StageContext, options: dict[str, Any]) -> Any:
    from e2rnas.config import build_config
    from e2rnas.train.trainer import TrainConfig

    return build_config(TrainConfig, preset=ctx.preset, section="train", overrides=options)


def train(ctx: StageContext, options: dict[str, Any], *, genotype: str, resume: bool) -> Result:
    from e2rnas.space.genotypes import resolve_genotype
    from e2rnas.train.trainer import search_meta
    from e2rnas.train.trainer import train as run_train

    cfg = train_config(ctx, options)
    summary = run_train(cfg, genotype=resolve_genotype(genotype), out_dir=ctx.path("train"), resume=resume,
                        progress=ctx.progress, search_meta=search_meta(genotype))
    return 0, summary


EVAL_OPTIONS: dict[str, Any] = {
    "attack_preset": "attack_preset", "preset": "attack_preset", "eps": ("eps", fraction), "steps": "steps",
    "step_size": ("step_size", fraction), "random_start": "random_start", "max_samples": "max_samples",
    "ood_max_samples": "ood_max_samples", "batch_size": "batch_size", "seed": "seed", "dataset": "dataset",
    "test_dataset": "test_dataset", "ood_dataset": "ood_dataset", "data_dir": "data_dir", "download": "download",
    "device": "device", "source_model": "source_model"}


def evaluate(ctx: StageContext, options: dict[str, Any]) -> Result:
    from e2rnas.config import resolve_device
    from e2rnas.evaluation.evaluate import evaluate_file, protocol_from

    kw = take("eval", options, EVAL_OPTIONS)
    protocol = protocol_from(kw.pop("attack_preset", "paper"), **{k: kw.pop(k) for k in (
        "eps", "steps", "step_size", "random_start", "max_samples", "ood_max_samples", "batch_size", "seed")
        if k in kw})
    kw["device"] = resolve_device(kw.get("device"))
    result = evaluate_file(ctx.path("train", "model.pt"), out_dir=ctx.path("eval"), protocol=protocol,
                           progress=ctx.progress, **kw)
    return 0, result


EXPORT_OPTIONS: dict[str, Any] = {
    "opset": "opset", "exporter": "exporter", "simplify": "simplify", "atol": "atol", "workspace": "workspace_mb",
    "samples": "validation_samples", "calib_data": "calib_data", "calib_samples": "calib_samples",
    "int8_scheme": "int8_scheme", "dataset": "dataset", "data_dir": "data_dir", "seed": "seed", "batch": "batch",
    "max_batch": "max_batch", "dynamic": "dynamic_batch"}


def export(ctx: StageContext, options: dict[str, Any], *, precision: str) -> Result:
    from e2rnas.export import export_model

    kw = take("export", options, EXPORT_OPTIONS)
    results = export_model(str(ctx.path("train", "model.pt")), out_dir=ctx.path("export"), onnx=True,
                           precision=precision, **kw)
    return (0 if all(r.ok for r in results) else 1), {"results": [r.as_dict() for r in results]}


BENCH_OPTIONS: dict[str, Any] = {
    "batch": ("batch_sizes", int_list), "metrics": ("metrics", lambda v, k: [m.strip() for m in str(v).split(",")
                                                                             if m.strip()]),
    "runs": "runs", "duration": "duration", "warmup": "warmup", "threads": "threads", "dataset": "dataset",
    "ood_dataset": "ood_dataset", "data_dir": "data_dir", "max_samples": "max_samples", "seed": "seed",
    "source_model": "source_model"}


def bench(ctx: StageContext, options: dict[str, Any]) -> Result:
    from e2rnas._io import atomic_write_json
    from e2rnas.deploy_targets.bench import bench as run_bench
    from e2rnas.deploy_targets.profiles import get_target

    x = ctx.path("export")
    artifacts = [ctx.path("train", "model.pt"), x / "model.onnx"]
    if (x / "model.int8.onnx").is_file():  # it exists only when its export passed the parity gate
        artifacts.append(x / "model.int8.onnx")
    kw = take("bench", options, BENCH_OPTIONS)
    result = run_bench(artifacts, target=get_target(ctx.target), **kw)
    atomic_write_json(ctx.path("bench", "bench.json"), result)
    return (0 if all(r["status"] == "ok" for r in result["rows"]) else 1), result


CHECK_OPTIONS: dict[str, Any] = {
    "reuse_eval": "reuse_eval", "dataset": "dataset", "ood_dataset": "ood_dataset", "data_dir": "data_dir",
    "max_samples": "max_samples", "warmup": "warmup", "runs": "runs", "duration": "duration", "threads": "threads",
    "seed": "seed"}


def check(ctx: StageContext, options: dict[str, Any], *, budget: str | None) -> Result:
    from e2rnas._io import atomic_write_json
    from e2rnas.deploy_targets.budget import check as run_check
    from e2rnas.deploy_targets.budget import default_budget_path, load_budget
    from e2rnas.deploy_targets.profiles import get_target

    path = Path(budget) if budget else default_budget_path()
    kw = take("check", options, CHECK_OPTIONS)
    result = run_check(ctx.run_dir, budget=load_budget(path), target=get_target(ctx.target), **kw)
    result["budget_file"] = str(path)
    atomic_write_json(ctx.path("check", "check.json"), result)
    return (0 if result["passed"] else 1), result


def baseline(ctx: StageContext, *, n: int, seed: int) -> Result:
    from e2rnas.run.baseline import run_baseline

    return 0, run_baseline(ctx.run_dir, n=n, seed=seed, progress=ctx.progress)


def report(ctx: StageContext) -> Result:
    from e2rnas.run.report import build_report

    paths = build_report(ctx.run_dir)
    return 0, {k: str(v) for k, v in paths.items()}
