"""``e2rnas run`` and ``e2rnas report``: the whole pipeline, and its report rebuilt from the files."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import typer

from e2rnas.cli import _options as opt
from e2rnas.cli._output import Activity, console, print_json, print_table

DEFAULT_RUN_DIR = Path("runs/default")


def _preset_names() -> str:
    from e2rnas.presets import PRESETS

    return ", ".join(PRESETS)


def run(
    config: opt.ConfigFile = None,
    preset: Annotated[str | None, typer.Option("--preset", help=f"Named settings: {_preset_names()} "
                                               "(docs/presets.md). \\[default: embedded-default]")] = None,
    genotype: Annotated[str | None, typer.Option("--genotype", help="Skip the search; retrain this genotype.")] = None,
    params_bound: Annotated[float | None, typer.Option("--params-bound", help="L for the search: params of the "
                                                       "deployed network, in M (default: the preset's).")] = None,
    macs_bound: Annotated[float | None, typer.Option("--macs-bound", help="F for the search: MACs of the deployed "
                                                     "network, in M (default: the preset's).")] = None,
    latency_bound: Annotated[str | None, typer.Option("--latency-bound", help="T for the search: ms, or NN% of the "
                                                      "way from the target table's fastest genotype to its slowest. "
                                                      "\\[default: 50%]")] = None,
    budget: Annotated[Path | None, typer.Option("--budget", help="Budget YAML (default: the shipped one).")] = None,
    target: Annotated[str | None, typer.Option("--target", help="Deploy target for bench and check.")] = None,
    out: Annotated[Path, typer.Option("--out", help="Run folder; running again with the same folder resumes it "
                                      "(finished stages are skipped).")] = DEFAULT_RUN_DIR,
    force: Annotated[bool, typer.Option("--force", help="Run every stage again, even when complete.")] = False,
    from_stage: Annotated[str | None, typer.Option("--from", help="Run this stage and the ones after it again.")]
    = None,
    skip: Annotated[list[str] | None, typer.Option(
        "--skip", metavar="STAGE", help="Leave out a stage (repeatable): lut, search, train, eval, export, bench, "
                                        "check, baseline, report.")] = None,
    baseline: Annotated[int | None, typer.Option("--baseline", help="Also retrain and evaluate N random genotypes "
                                                 "of the same budget; the report ranks the searched network "
                                                 "among them.")] = None,
    json: opt.Json = False,
) -> None:
    """Search -> train -> eval -> export -> bench -> check (-> baseline) -> report, skipping stages already
    complete."""
    from e2rnas.run.pipeline import run_pipeline

    cfg = pipeline_config(config, preset=preset, genotype=genotype, target=target, baseline=baseline, budget=budget,
                          skip=skip, params_bound=params_bound, macs_bound=macs_bound, latency_bound=latency_bound)
    run_dir = out

    with stages_to_stderr(json), SearchBar() as bar, StageLines() as lines:
        record = run_pipeline(cfg, run_dir=run_dir, on_stage=lines.start, on_result=lines.result,
                              force=force, from_stage=from_stage, progress=not json, on_search_step=bar.update,
                              on_progress=lines.progress)
    if json:
        print_json(record)  # run_dir absolute, as in pipeline.json
    else:
        console.print(f"report: {run_dir / 'report.md'} and {run_dir / 'report.html'}")
        if record.get("verdict"):  # also when the check stage was skipped as complete
            console.print(record["verdict"], highlight=False, soft_wrap=True)
    if record.get("check_passed") is False:
        raise typer.Exit(1)


def pipeline_config(config: Path | None, *, preset: str | None = None, genotype: str | None = None,
                    target: str | None = None, baseline: int | None = None, budget: Path | None = None,
                    skip: list[str] | None = None, params_bound: float | None = None, macs_bound: float | None = None,
                    latency_bound: str | None = None):  # noqa: ANN201 (PipelineConfig is imported lazily)
    """The pipeline's settings: the YAML file, then the flags (a bound flag overrides the file's search section)."""
    from e2rnas.cli._config import load_yaml
    from e2rnas.errors import E2RNASError
    from e2rnas.run.pipeline import PipelineConfig

    values = load_yaml(config) if config else {}
    values.update({k: v for k, v in dict(preset=preset, genotype=genotype, target=target, baseline=baseline,
                                          latency_bound=latency_bound,
                                          budget=str(budget) if budget else None).items() if v is not None})
    bounds = {k: v for k, v in dict(params_bound=params_bound, macs_bound=macs_bound).items() if v is not None}
    if bounds:
        search = values.get("search") or {}
        if not isinstance(search, dict):
            raise E2RNASError("pipeline setting 'search' must be a mapping of flags, e.g. search: {epochs: 3}")
        values["search"] = {**search, **bounds}
    if skip:
        values["skip"] = (*values.get("skip", ()), *skip)
    try:
        return PipelineConfig(**values)
    except (TypeError, ValueError) as exc:
        raise E2RNASError(f"bad pipeline settings: {exc}") from exc


class StageLines:
    """Each stage's header and result table; stages without their own progress view (lut, eval, export, bench,
    check) get a spinner in a terminal, and plain lines without one (progress by tenths, then the time taken)."""

    QUIET = ("search", "train", "baseline", "report")  # their own progress (or none worth a line)

    def __enter__(self) -> StageLines:
        self.activity: Activity | None = None
        return self

    def start(self, stage: str, what: str) -> None:
        self._end()
        console.rule(f"[bold]{stage}[/]")
        console.print(what, highlight=False, soft_wrap=True)
        if not what.startswith("skipped") and stage.split("-")[0] not in self.QUIET:
            self.activity = Activity(stage, announce=False).__enter__()

    def progress(self, what: str, done: int, total: int) -> None:
        if self.activity is not None:
            self.activity.update(what, done, total)

    def result(self, stage: str, result: dict | None) -> None:
        self._end()
        show_result(stage, result)

    def _end(self, *exc: object) -> None:
        if self.activity is not None:
            self.activity.__exit__(*(exc or (None, None, None)))
            self.activity = None

    def __exit__(self, *exc: object) -> None:
        self._end(*exc)


class SearchBar:
    """The search stage's progress: epoch, step, the MGDA weights and the exact genotype cost (transient)."""

    def __enter__(self) -> SearchBar:
        self.progress, self.task, self.plain = None, None, None
        return self

    def update(self, rec: dict) -> None:
        if not console.is_terminal:  # a pipe or a CI log: the search command's plain lines (epoch, ETA, gamma)
            if self.plain is None:
                from e2rnas.cli.search_cmd import SearchProgress

                self.plain = SearchProgress(0.0, 0.0, plain=True)
            self.plain.on_step(rec)
            return
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        if self.progress is None:
            self.progress = Progress(TextColumn("[bold]search[/] {task.description}"), BarColumn(),
                                     MofNCompleteColumn(), TimeRemainingColumn(), console=console, transient=True)
            self.progress.start()
        total = rec["steps_per_epoch"] * rec["epochs"]
        done = rec["epoch"] * rec["steps_per_epoch"] + rec["step"]
        gammas = " ".join(f"{k} {v:.2f}" for k, v in rec.get("gammas", {}).items())
        text = (f"epoch {rec['epoch'] + 1}/{rec['epochs']}  genotype {rec['exact_params_m']:.3f} M params, "
                f"{rec['exact_macs_m']:.2f} M MACs" + (f"  gamma {gammas}" if gammas else ""))
        if self.task is None:
            self.task = self.progress.add_task(text, total=total, completed=done)
        self.progress.update(self.task, completed=done, description=text)
        if done >= total:  # the search is over: the next stages print below, without a finished bar
            self.__exit__()
            self.progress, self.task = None, None

    def __exit__(self, *exc: object) -> None:
        if self.progress is not None:
            self.progress.stop()


def show_result(stage: str, result: dict | None) -> None:
    """Each stage's own table, as its command prints it."""
    if not result:
        return
    base = stage.split("-")[0]
    if base == "search":
        from e2rnas.cli.search_cmd import print_search_summary

        for note in result.get("notes", []):
            console.print(f"note: {note}", highlight=False)
        print_search_summary(result)
    elif base == "eval":
        from e2rnas.cli.eval_cmd import show

        show(result)
    elif base == "export":
        for r in result["results"]:
            state = "ok" if r["status"] == "ok" else f"refused: {r['details'].get('reason')}"
            console.print(f"{r['format']} {r['precision']}: {r['path'] or '(not written)'} {state}", highlight=False)
    elif base == "bench":
        from e2rnas.cli.bench_cmd import show

        show(result)
    elif base == "check":
        from e2rnas.cli.check_cmd import show

        show(result)


@contextmanager
def stages_to_stderr(enabled: bool) -> Iterator[None]:
    """With ``--json`` stdout carries one JSON document: the stages' own tables and progress go to stderr."""
    if not enabled:
        yield
        return
    previous = console._file  # None (follow sys.stdout), not the stream of this call: it may be closed after it
    console.file = sys.stderr
    try:
        yield
    finally:
        console.file = previous


def baseline(run_dir: Annotated[Path, typer.Argument(help="A run directory made by `e2rnas run`.")],
             n: Annotated[int, typer.Option("--n", help="Random genotypes of the search's budget to retrain.")] = 4,
             seed: Annotated[int, typer.Option("--seed", help="Seed of the random draws.")] = 0,
             json: opt.Json = False) -> None:
    """Retrain N random genotypes of the run's budget like the searched network and rank it among them."""
    from e2rnas.run.baseline import RANKED, run_baseline

    result = run_baseline(run_dir, n=n, seed=seed, progress=not json)
    if json:
        print_json(result)
        return
    rows = [[r["name"], *(_pct(r[k]) for k in RANKED), f"{r['params_m']:.4f}", f"{r['macs_m']:.2f}"]
            for r in (result["searched"], *result["random"])]
    print_table("Searched network against random networks of the same budget",
                ["network", *RANKED.values(), "params (M)", "MACs (M)"], rows, caption=result["line"])


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.2f} %"


def report(run_dir: Annotated[Path, typer.Argument(help="A run directory made by `e2rnas run`.")]) -> None:
    """Rebuild report.md and report.html (with PNG plots) from a run directory's files."""
    from e2rnas._outdir import check_dir
    from e2rnas.run.report import build_report

    # the report writes into the run: refuse (creating nothing) a folder that `e2rnas run` did not make; build_report
    # refuses one without results before it creates anything
    check_dir(run_dir, command="run", flag="RUN_DIR")
    paths = build_report(run_dir)
    console.print(f"wrote {paths['md']} and {paths['html']}")
