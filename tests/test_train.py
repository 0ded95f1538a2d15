"""Retraining: accuracy on digits, exact resume, model.pt contents, model selection, errors, the CLI."""

import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from _cli_process import run_cli
from typer.testing import CliRunner

from e2rnas.cli.app import app
from e2rnas.errors import E2RNASError
from e2rnas.model_io import load_model
from e2rnas.space.genotypes import GENOTYPES
from e2rnas.space.network import Network
from e2rnas.train.trainer import TrainConfig, load_split, load_test_set, load_train_set, train

G = GENOTYPES["DARTS_V2"]
TINY = TrainConfig(dataset="digits", layers=3, C=4, epochs=3, batch_size=32, lr=0.05, cutout=4, crop_pad=2,
                   flip=False, drop_path=0.2, auxiliary=True, val_fraction=0.1, max_train_batches=3,
                   ood_dataset="digits-ood", ood_weight=0.5)


@pytest.mark.slow
def test_a_few_epochs_on_digits_beat_chance_by_far(tmp_path):
    cfg = TrainConfig(dataset="digits", layers=3, C=8, epochs=6, batch_size=32, lr=0.1, cutout=0, crop_pad=2,
                      flip=False, drop_path=0.0, auxiliary=False, val_fraction=0.1)
    summary = train(cfg, genotype=G, out_dir=tmp_path, progress=False)
    assert summary["test_acc"] > 0.8  # 5 classes: chance is 0.2
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == list(range(1, 7))  # counted from 1, as the console and best_epoch
    assert {"train_loss", "train_acc", "val_acc", "lr", "drop_path", "time_s"} <= set(records[0])
    vals = [r["val_acc"] for r in records]
    assert summary["best_epoch"] == records[int(np.argmax(vals))]["epoch"]  # first epoch with the best val accuracy
    assert summary["best_val_acc"] == max(vals)
    assert records[0]["lr"] == pytest.approx(0.1) and records[-1]["lr"] < 0.01  # cosine
    # model.pt holds the best-validation epoch: its validation accuracy is the recorded best
    from e2rnas.data import split_indices
    from e2rnas.train.trainer import VAL_SPLIT_SEED, accuracy

    full = load_split("digits", "train")
    val = full.subset(split_indices(full.y.numpy(), 0.1, VAL_SPLIT_SEED)[1])
    assert accuracy(load_model(tmp_path / "model.pt").model, val) == pytest.approx(summary["best_val_acc"])


def test_resume_continues_exactly(tmp_path):
    summaries, weights = _full_and_resumed(TINY, tmp_path, stop_after_epoch=1)
    a, b = weights["full"], weights["cut"]
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert summaries["cut"]["test_acc"] == summaries["full"]["test_acc"]
    def records(run):
        return [{k: v for k, v in json.loads(x).items() if k != "time_s"}
                for x in (tmp_path / run / "metrics.jsonl").read_text().splitlines()]

    assert [r["epoch"] for r in records("cut")] == [1, 2, 3]
    assert records("cut") == records("full")

def test_model_file_loads_with_weights_only(tmp_path):
    train(replace(TINY, epochs=1), genotype=G, out_dir=tmp_path, progress=False, search_meta={"src": "test"})
    blob = torch.load(tmp_path / "model.pt", map_location="cpu", weights_only=True)
    assert blob["format"] == "e2rnas.space.network/1"
    assert blob["data"]["dataset"] == "digits" and blob["data"]["ood_dataset"] == "digits-ood"
    assert blob["data"]["num_classes"] == 5 and blob["data"]["image_size"] == 16
    assert blob["search"] == {"src": "test"}
    assert blob["network"]["C"] == 4 and blob["network"]["auxiliary"] is True
    loaded = load_model(tmp_path / "model.pt")
    assert loaded.genotype == G
    assert loaded.model(torch.rand(2, 3, 16, 16)).shape == (2, 5)
    for name in ("config.yaml", "genotype.json", "metrics.jsonl", "checkpoint.pt", "summary.json"):
        assert (tmp_path / name).is_file(), name


def test_run_dir_is_protected_and_resume_checks_settings(tmp_path):
    train(replace(TINY, epochs=1), genotype=G, out_dir=tmp_path, progress=False)
    with pytest.raises(E2RNASError, match="--resume"):
        train(replace(TINY, epochs=1), genotype=G, out_dir=tmp_path, progress=False)
    with pytest.raises(E2RNASError, match="changed settings.*lr"):
        train(replace(TINY, epochs=1, lr=0.1), genotype=G, out_dir=tmp_path, resume=True, progress=False)
    with pytest.raises(E2RNASError, match="another genotype"):
        train(replace(TINY, epochs=1), genotype=GENOTYPES["DARTS_V1"], out_dir=tmp_path, resume=True,
              progress=False)
    with pytest.raises(E2RNASError, match="nothing to resume"):
        train(TINY, genotype=G, out_dir=tmp_path / "empty", resume=True, progress=False)


def test_nan_loss_stops_with_the_last_good_checkpoint(tmp_path):
    cfg = replace(TINY, epochs=3, lr=1e38, max_train_batches=1, ood_dataset=None)
    with pytest.raises(E2RNASError, match="loss became"):
        train(cfg, genotype=G, out_dir=tmp_path, progress=False)
    assert torch.load(tmp_path / "checkpoint.pt", weights_only=True)["epoch"] >= 1


def test_bad_settings_are_one_line_errors():
    with pytest.raises(E2RNASError, match="layers"):
        TrainConfig(layers=2)
    with pytest.raises(E2RNASError, match="val_fraction"):
        TrainConfig(val_fraction=1.0)


def test_npz_sets_are_split_80_20_without_overlap(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (50, 8, 8, 3), dtype=np.uint8)
    x[:, 0, 0, 0] = np.arange(50)  # a unique id per image
    np.savez(tmp_path / "d.npz", x=x, y=np.repeat(np.arange(5), 10))
    tr, te = load_split(f"npz:{tmp_path / 'd.npz'}", "train"), load_split(f"npz:{tmp_path / 'd.npz'}", "test")
    ids_tr, ids_te = set(tr.x[:, 0, 0, 0].tolist()), set(te.x[:, 0, 0, 0].tolist())
    assert len(te) == 10 and len(tr) == 40 and not ids_tr & ids_te
    assert torch.bincount(te.y).tolist() == [2] * 5
    assert len(load_test_set("digits", f"npz:{tmp_path / 'd.npz'}")) == 50  # a named test file is used whole
    assert len(load_train_set(f"npz:{tmp_path / 'd.npz'}", "digits")) == 50  # ... and then no carve for training
    assert len(load_train_set(f"npz:{tmp_path / 'd.npz'}", None)) == 40


def test_imagenet_variant_runs_at_224():
    net = Network(G, 8, 3, 10, auxiliary=True, variant="imagenet", input_size=224).eval()
    with torch.no_grad():
        assert net(torch.rand(1, 3, 224, 224)).shape == (1, 10)
    net.train()
    logits, aux = net.forward_train(torch.rand(2, 3, 224, 224))
    assert logits.shape == (2, 10) and aux is not None and aux.shape == (2, 10)


def test_cli_train_json_and_resume(tmp_path):
    runner = CliRunner()
    args = ["train", "DARTS_V2", "--layers", "3", "--channels", "4", "--epochs", "2", "--batch-size", "32",
            "--max-train-batches", "2", "--out", str(tmp_path / "run"), "--json"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["epochs"] == 2 and 0 <= summary["test_acc"] <= 1 and summary["params"] > 0
    blob = torch.load(tmp_path / "run" / "model.pt", weights_only=True)
    assert blob["search"]["genotype_source"] == "DARTS_V2"
    # a finished run resumes as a no-op from its own config.yaml (no flags needed)
    again = runner.invoke(app, ["train", "DARTS_V2", "--out", str(tmp_path / "run"), "--resume", "--json"])
    assert again.exit_code == 0, again.output
    assert json.loads(again.stdout)["test_acc"] == summary["test_acc"]


def test_cli_bad_genotype_is_a_one_line_error(tmp_path):
    result = CliRunner().invoke(app, ["train", "NO_SUCH_GENOTYPE", "--out", str(tmp_path)])
    assert isinstance(result.exception, E2RNASError)
    proc = subprocess.run([str(Path(sys.executable).parent / "e2rnas"), "train", "NO_SUCH_GENOTYPE", "--out",
                           str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert len(proc.stderr.strip().splitlines()) == 1 and "NO_SUCH_GENOTYPE" in proc.stderr


def _full_and_resumed(cfg: TrainConfig, tmp_path, *, stop_after_epoch: int) -> tuple[dict, dict]:
    """(summary, weights) of an uninterrupted run and of one stopped after an epoch and resumed."""
    full = train(cfg, genotype=G, out_dir=tmp_path / "full", progress=False)

    def stop(rec):
        if rec["epoch"] == stop_after_epoch + 1:  # records count epochs from 1
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(cfg, genotype=G, out_dir=tmp_path / "cut", progress=False, callback=stop)
    assert torch.load(tmp_path / "cut" / "checkpoint.pt", weights_only=True)["epoch"] == stop_after_epoch + 1
    resumed = train(cfg, genotype=G, out_dir=tmp_path / "cut", resume=True, progress=False)
    weights = {run: torch.load(tmp_path / run / "checkpoint.pt", weights_only=True)["model"] for run in ("full", "cut")}
    return {"full": full, "cut": resumed}, weights


def test_dataloader_path_resumes_exactly_with_workers(tmp_path):
    """``loader=dataloader``: transforms.v2 in 2 worker processes, the epoch's generator seeded by (seed, epoch)."""
    cfg = replace(TINY, loader="dataloader", workers=2, max_train_batches=4)
    summaries, weights = _full_and_resumed(cfg, tmp_path, stop_after_epoch=0)
    a, b = weights["full"], weights["cut"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert summaries["cut"]["test_acc"] == summaries["full"]["test_acc"]
    full = summaries["full"]
    # a different path: the same data, other random draws, so other weights
    mem = train(replace(cfg, loader="memory", workers=0), genotype=G, out_dir=tmp_path / "mem", progress=False)
    c = torch.load(tmp_path / "mem" / "checkpoint.pt", weights_only=True)["model"]
    assert any(not torch.equal(a[k], c[k]) for k in a) and mem["samples"] == full["samples"]


def test_cutout_transform_fills_a_clipped_square_with_the_mean():
    from e2rnas.train.loader import Cutout, train_transform

    torch.manual_seed(0)
    img = torch.ones(3, 8, 8)
    holes = [(Cutout(4, (0.1, 0.2, 0.3))(img) != 1).all(0).sum().item() for _ in range(50)]
    assert max(holes) == 16 and min(holes) >= 4  # a full 4x4 square, or one clipped at the border
    out = Cutout(4, (0.1, 0.2, 0.3))(img)
    hole = (out != 1).all(0)
    assert torch.allclose(out[:, hole], torch.tensor([[0.1], [0.2], [0.3]]).expand(3, int(hole.sum())))
    x = train_transform(pad=2, flip=True, cutout=0, fill=(0.5, 0.5, 0.5))(torch.full((3, 8, 8), 255, dtype=torch.uint8))
    assert x.dtype == torch.float32 and x.shape == (3, 8, 8) and x.max() == 1.0 and x.min() >= 0.0


def test_console_and_metrics_count_epochs_alike(tmp_path):
    """The console's 'epoch k/N' lines and metrics.jsonl's records both count from 1 (it once printed 11/10)."""
    proc = run_cli(["train", "DARTS_V2", "--epochs", "2", "--layers", "3", "--channels", "4", "--batch-size", "32",
                    "--out", tmp_path / "t"], module="e2rnas.cli", timeout=600)
    assert proc.returncode == 0, proc.stderr
    printed = [line.split()[1] for line in proc.stderr.splitlines() if line.startswith("epoch ")]  # progress: stderr
    recorded = [json.loads(x)["epoch"] for x in (tmp_path / "t" / "metrics.jsonl").read_text().splitlines()]
    assert printed == ["1/2", "2/2"] and recorded == [1, 2], proc.stderr
