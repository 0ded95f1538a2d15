"""``--tracker``: records flattened into TensorBoard scalars, metrics.jsonl unchanged, a missing package in one line."""

import json
import sys

import pytest
from typer.testing import CliRunner

from e2rnas.cli.app import app
from e2rnas.errors import E2RNASError
from e2rnas.run.tracking import flatten, open_tracker

TRAIN = ["train", "DARTS_V2", "--device", "cpu", "--dataset", "digits", "--layers", "3", "--channels", "4",
         "--epochs", "2", "--batch-size", "32", "--max-train-batches", "2", "--json"]
SEARCH = ["search", "--device", "cpu", "--epochs", "1", "--warmup-epochs", "0", "--max-steps-per-epoch", "2",
          "--layers", "3", "--channels", "4", "--batch-size", "16", "--json"]


def test_flatten_keeps_numbers_only():
    rec = {"epoch": 1, "loss": 0.5, "best": True, "gammas": {"val": 0.25, "ood": 0.75}, "genotype": {"normal": []},
           "note": "x", "val_acc": None}
    assert flatten(rec) == {"epoch": 1.0, "loss": 0.5, "gammas/val": 0.25, "gammas/ood": 0.75}


def test_unknown_and_missing_trackers_are_one_line(tmp_path, monkeypatch):
    with pytest.raises(E2RNASError, match="choose tensorboard, mlflow or none"):
        with open_tracker("wandb", run_dir=tmp_path, config={}):
            pass
    monkeypatch.setitem(sys.modules, "mlflow", None)
    with pytest.raises(E2RNASError, match=r"pip install 'e2rnas\[track\]'"):
        with open_tracker("mlflow", run_dir=tmp_path, config={}):
            pass
    monkeypatch.setitem(sys.modules, "tensorboard", None)
    result = CliRunner().invoke(app, [*TRAIN, "--tracker", "tensorboard", "--out", str(tmp_path / "t")])
    assert "pip install 'e2rnas[track]'" in str(result.exception)
    assert not (tmp_path / "t").exists()  # refused before the run starts


def _scalars(log_dir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(log_dir))
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def test_train_and_search_to_tensorboard(tmp_path):
    pytest.importorskip("tensorboard", reason="needs the track extra: pip install 'e2rnas[track]'")
    out = tmp_path / "train"
    result = CliRunner().invoke(app, [*TRAIN, "--tracker", "tensorboard", "--out", str(out)])
    assert result.exit_code == 0, result.output
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    scalars = _scalars(out / "tensorboard")
    assert [v for _, v in scalars["train/train_loss"]] == pytest.approx([r["train_loss"] for r in records])
    assert [s for s, _ in scalars["train/train_loss"]] == [1, 2] and "train/epoch" not in scalars

    out = tmp_path / "search"
    result = CliRunner().invoke(app, [*SEARCH, "--tracker", "tensorboard", "--out", str(out)])
    assert result.exit_code == 0, result.output
    scalars = _scalars(out / "tensorboard")
    steps = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()
             if json.loads(line).get("type") != "epoch"]
    gamma = next(k for k in scalars if k.startswith("step/gammas/"))
    assert [v for _, v in scalars[gamma]] == pytest.approx([r["gammas"][gamma.split("/")[-1]] for r in steps])
    assert [s for s, _ in scalars[gamma]] == [1, 2]
    assert "epoch/val_accuracy" in scalars
