"""Data-parallel search with real gloo processes under torchrun: one set of artifacts, the one-process result
within a stated tolerance, resume after a killed rank, and one writer per run directory."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from _cli_process import run_cli

TINY = ["search", "--epochs", "2", "--warmup-epochs", "0", "--max-steps-per-epoch", "3", "--layers", "3",
        "--channels", "4", "--batch-size", "16", "--device", "cpu", "--second-order", "--json"]


def _env() -> dict[str, str]:
    """This process's environment when the command starts (not a copy from collection: a variable set since would
    send the forked CLI runner to a fresh interpreter), with one OpenMP thread per process."""
    return os.environ | {"OMP_NUM_THREADS": "1"}


def _torchrun(out: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
                             "--master-port", str(29500 + os.getpid() % 500), "-m", "e2rnas.cli", *TINY,
                             "--out", str(out), *extra], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=_env())


def _records(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def two_process_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ddp") / "run"
    proc = _torchrun(out)
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-3000:]
    return out


@pytest.mark.slow
def test_two_processes_write_one_run_that_matches_one_process(two_process_run, tmp_path):
    out = two_process_run
    assert sorted(p.name for p in out.iterdir()) == ["alphas.jsonl", "checkpoint.pt", "config.yaml",
                                                      "genotype.json", "metrics.jsonl", "summary.json"]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["world_size"] == 2 and "world_size: 2" in (out / "config.yaml").read_text()
    steps = [r for r in _records(out) if r["type"] == "step"]
    assert len(steps) == 6  # rank 0 alone logs: 2 epochs x 3 steps, each once

    one = tmp_path / "one"
    proc = run_cli([*TINY, "--out", one], module="e2rnas.cli", timeout=600, env=_env())
    assert proc.returncode == 0, proc.stderr
    first_two, first_one = steps[0], [r for r in _records(one) if r["type"] == "step"][0]
    # Same global batch, split 8 + 8: the lower-level loss at theta_t differs only by BatchNorm's per-slice
    # statistics (within 0.1 %); the cost objectives see the same alphas exactly; data objectives at theta'
    # and the MGDA weights within 5 % / 0.05.
    assert first_two["lower_loss"] == pytest.approx(first_one["lower_loss"], rel=1e-3)
    for name in ("params", "flops"):
        assert first_two["objectives"][name] == pytest.approx(first_one["objectives"][name], rel=1e-9)
    for name in ("val", "adv"):
        assert first_two["objectives"][name] == pytest.approx(first_one["objectives"][name], rel=0.05)
    for name, gamma in first_one["gammas"].items():
        assert abs(first_two["gammas"][name] - gamma) < 0.05, (name, first_two["gammas"], first_one["gammas"])


@pytest.mark.slow
def test_a_killed_rank_resumes_to_the_same_genotype(two_process_run, tmp_path):
    out = tmp_path / "killed"
    proc = _torchrun(out)
    deadline = time.time() + 300
    while not (out / "checkpoint.pt").is_file():  # the end of epoch 1
        assert proc.poll() is None and time.time() < deadline, proc.stderr.read() if proc.stderr else ""
        time.sleep(0.1)
    workers = [int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit() and _parent(int(p.name)) == proc.pid]
    assert len(workers) == 2
    os.kill(workers[-1], signal.SIGKILL)  # one rank dies in epoch 2; torchrun stops the other
    proc.communicate(timeout=120)
    assert proc.returncode != 0 and not (out / "summary.json").exists()

    resumed = _torchrun(out, "--resume")
    _, err = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, err[-3000:]
    assert json.loads((out / "genotype.json").read_text()) == \
        json.loads((two_process_run / "genotype.json").read_text())
    final = [json.loads(x) for x in (out / "alphas.jsonl").read_text().splitlines()][-1]
    reference = [json.loads(x) for x in (two_process_run / "alphas.jsonl").read_text().splitlines()][-1]
    assert final == reference  # bit for bit: the same batches, the same sums, the same steps


def _parent(pid: int) -> int | None:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return None


def test_resume_with_another_process_count_is_refused(two_process_run, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(two_process_run, copy)
    (copy / "summary.json").unlink()
    proc = run_cli([*TINY, "--out", copy, "--resume"], module="e2rnas.cli", timeout=300, env=_env())
    assert proc.returncode == 2 and "written by 2 process(es), this run has 1" in proc.stderr


def test_two_searches_on_one_directory_without_torchrun_are_refused(tmp_path):
    from e2rnas.distributed import RunLock
    from e2rnas.errors import E2RNASError

    with RunLock(tmp_path):
        assert (tmp_path / RunLock.NAME).read_text().split()[1] == str(os.getpid())
        proc = run_cli([*TINY, "--out", tmp_path], module="e2rnas.cli", timeout=300, env=_env())
        assert proc.returncode == 2 and "in use by another e2rnas process" in proc.stderr
        with pytest.raises(E2RNASError, match="in use"):
            RunLock(tmp_path).__enter__()
    assert not (tmp_path / RunLock.NAME).exists()
    # a lock left by a dead process is taken over
    (tmp_path / RunLock.NAME).write_text(f"{socket.gethostname()} 999999999\n")
    with RunLock(tmp_path) as lock:
        assert lock.held


@pytest.mark.slow
def test_two_process_training_writes_one_run(tmp_path):
    args = ["train", "DARTS_V2", "--epochs", "2", "--max-train-batches", "3", "--layers", "3", "--channels", "8",
            "--device", "cpu", "--json"]
    two, one = tmp_path / "two", tmp_path / "one"
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port",
                           str(29000 + os.getpid() % 400), "-m", "e2rnas.cli", *args, "--out", str(two)],
                          capture_output=True, text=True, timeout=600, env=_env())
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count('"run_dir"') == 1  # rank 0 alone prints
    assert sorted(p.name for p in two.iterdir()) == ["checkpoint.pt", "config.yaml", "genotype.json",
                                                      "metrics.jsonl", "model.pt", "summary.json"]
    assert json.loads((two / "summary.json").read_text())["world_size"] == 2
    single = run_cli([*args, "--out", one], module="e2rnas.cli", timeout=600, env=_env())
    assert single.returncode == 0, single.stderr
    # the same global batches (split 2 x 16 of 32): the first epoch's loss over every slice agrees within 5 %
    # (BatchNorm normalises each slice with its own statistics)
    first = [json.loads(x)["train_loss"] for x in ((two / "metrics.jsonl").read_text().splitlines()[:1] +
                                                   (one / "metrics.jsonl").read_text().splitlines()[:1])]
    assert first[0] == pytest.approx(first[1], rel=0.05)
