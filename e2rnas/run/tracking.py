"""Experiment trackers (``--tracker tensorboard|mlflow``): a copy of the records that search and train already write.

``metrics.jsonl`` stays the record; a tracker only mirrors the ``on_step``/``on_epoch`` records of
:func:`e2rnas.search.runner.run_search` and the per-epoch records of :func:`e2rnas.train.trainer.train` into a
dashboard. Numbers are flattened (``{"gammas": {"val": 0.3}}`` -> ``gammas/val``); strings, lists and genotypes are
left out. The packages are the ``track`` extra and are imported only when a tracker is asked for.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from e2rnas._optional import require
from e2rnas.errors import E2RNASError


def flatten(record: dict[str, Any], prefix: str = "") -> dict[str, float]:
    """The numeric leaves of a record, keyed by their path (booleans and ``None`` are left out)."""
    out: dict[str, float] = {}
    for key, value in record.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out |= flatten(value, prefix=name + "/")
        elif isinstance(value, int | float) and not isinstance(value, bool):
            out[name] = float(value)
    return out


class TensorBoardTracker:
    """Event files in ``<run>/tensorboard/`` (``tensorboard --logdir <run>/tensorboard``)."""

    name = "tensorboard"

    def __init__(self, run_dir: Path, config: dict[str, Any]):
        require("tensorboard", extra="track", what="--tracker tensorboard")
        self.log_dir, self.config, self.writer = Path(run_dir) / "tensorboard", config, None

    def log(self, metrics: dict[str, float], step: int) -> None:
        if self.writer is None:  # made at the first record: the run has checked its directory by then
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(log_dir=str(self.log_dir))
            self.writer.add_text("config", "\n".join(f"    {k}: {v}" for k, v in self.config.items()))
        for key, value in metrics.items():
            self.writer.add_scalar(key, value, global_step=step)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


class MLflowTracker:
    """One MLflow run per invocation (the tracking URI is MLflow's own: ``MLFLOW_TRACKING_URI``, else ./mlruns)."""

    name = "mlflow"

    def __init__(self, run_dir: Path, config: dict[str, Any]):
        self.mlflow = require("mlflow", extra="track", what="--tracker mlflow")
        self.mlflow.start_run(run_name=Path(run_dir).name)
        self.mlflow.log_params({k: str(v)[:500] for k, v in config.items()})  # MLflow caps a value at 500 chars
        self.mlflow.set_tag("e2rnas.run_dir", str(Path(run_dir).resolve()))

    def log(self, metrics: dict[str, float], step: int) -> None:
        self.mlflow.log_metrics(metrics, step=step)

    def close(self) -> None:
        self.mlflow.end_run()


TRACKERS: dict[str, Callable[[Path, dict[str, Any]], Any]] = {
    "tensorboard": TensorBoardTracker,
    "mlflow": MLflowTracker,
}


#: counters of the records: the step axis of the dashboard, not metrics
_COUNTERS = ("epoch", "step", "epochs", "steps_per_epoch")


@contextmanager
def open_tracker(name: str | None, *, run_dir: Path, config: dict[str, Any]) -> Iterator[Any]:
    """The tracker called ``name`` for the length of a run (None or "none": no tracker); an unknown name or a
    missing package is a one-line error before the run starts."""
    if name is None or name == "none":
        yield None
        return
    if name not in TRACKERS:
        raise E2RNASError(f"--tracker {name!r}: choose {', '.join(TRACKERS)} or none")
    tracker = TRACKERS[name](Path(run_dir), config)
    try:
        yield tracker
    finally:
        tracker.close()


def log_record(tracker: Any, record: dict[str, Any], *, step: int, prefix: str = "") -> None:
    """Mirror one metrics.jsonl record into ``tracker`` (a no-op without one)."""
    if tracker is not None:
        tracker.log({prefix + k: v for k, v in flatten(record).items() if k not in _COUNTERS}, step)
