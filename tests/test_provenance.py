"""Provenance: date, version, source commit, command, directory, machine; recorded by search and train."""

import json
import os
import subprocess

import torch

import e2rnas
from e2rnas import _provenance as P
from e2rnas.search.runner import SearchConfig, run_search
from e2rnas.space.genotypes import GENOTYPES
from e2rnas.train.trainer import TrainConfig, train


def test_record_holds_the_command_directory_versions_and_machine():
    prov = P.provenance(["e2rnas", "search", "--out", "my run"], gpu=False)
    assert prov["command"] == "e2rnas search --out 'my run'" and prov["argv"][-1] == "my run"
    assert prov["cwd"] == os.getcwd() and prov["e2rnas"] == e2rnas.__version__
    assert prov["date"].endswith("Z") and prov["date"][:2] == "20"
    assert prov["torch"] and torch.__version__.startswith(prov["torch"].split("+")[0])
    assert prov["python"] and prov["environment"]["cpu"] is not None and prov["environment"]["gpu"] is None
    json.dumps(prov)  # JSON-ready


def test_git_sha_of_this_checkout_and_none_elsewhere(tmp_path, monkeypatch):
    root = P.source_root()
    if (root / ".git").exists():
        head = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True).stdout
        assert P.git_sha()["sha"] == head.strip()
    assert P.git_sha(tmp_path) is None  # not a checkout
    # a package directory inside some other repository: not that repository's commit
    subprocess.run(["git", "init", "-q", str(tmp_path / "outer")], check=True)
    (tmp_path / "outer" / "site" / ".git").mkdir(parents=True)
    assert P.git_sha(tmp_path / "outer" / "site") is None
    calls = []
    real = subprocess.run

    def spy(args, **kw):
        calls.append((args, kw))
        return real(args, **kw)

    monkeypatch.setattr(P.subprocess, "run", spy)
    P.git_sha(tmp_path / "outer")
    assert calls and all(isinstance(a, list) and not kw.get("shell") and kw["timeout"] <= 10 for a, kw in calls)


def test_search_and_train_record_provenance(tmp_path, monkeypatch):
    monkeypatch.setattr("sys.argv", ["e2rnas", "search", "--epochs", "1"])
    cfg = SearchConfig(dataset="digits", ood_dataset="digits-ood", layers=3, C=4, epochs=1, batch_size=8,
                       max_steps_per_epoch=1, deploy_layers=5, deploy_C=8, params_bound=0.05, flops_bound=2.0,
                       val_batches=1)
    summary = run_search(cfg, out_dir=tmp_path / "s")
    on_disk = json.loads((tmp_path / "s" / "summary.json").read_text())
    assert summary["provenance"]["command"] == on_disk["provenance"]["command"] == "e2rnas search --epochs 1"

    monkeypatch.setattr("sys.argv", ["e2rnas", "train", "DARTS_V2"])
    tiny = TrainConfig(dataset="digits", layers=3, C=4, epochs=1, batch_size=32, cutout=0, auxiliary=False,
                       val_fraction=0.1, max_train_batches=1)
    out = train(tiny, genotype=GENOTYPES["DARTS_V2"], out_dir=tmp_path / "t", progress=False)
    assert out["provenance"]["command"] == "e2rnas train DARTS_V2"
    blob = torch.load(tmp_path / "t" / "model.pt", weights_only=True)
    assert blob["provenance"]["argv"] == ["e2rnas", "train", "DARTS_V2"] and blob["provenance"]["cwd"] == os.getcwd()
