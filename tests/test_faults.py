"""Bad input and faults, as a hostile user tries them (issue 28): every case ends in one line on stderr and a
known exit code, within a timeout (no hang), and leaves the folders it was pointed at byte for byte as they were.

Classes: 1 empty or too-small splits, 2 output folders a command does not own, 3 file-system faults (read-only,
full disk: a real tmpfs where this machine allows mounting one), 4 damaged run state on --resume, 5 latency tables
with impossible values, 6 silently coerced values, 7 a pipeline's later stage settings, 8 usage errors, 9 the rest.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from _cli_process import run_cli
from test_latency_table_unit import _data as table_data

from e2rnas._io import append_jsonl, read_jsonl
from e2rnas.errors import E2RNASError
from e2rnas.space.latency_table import LatencyTable, LatencyTableError

TINY_SEARCH = ["--epochs", "1", "--warmup-epochs", "0", "--max-steps-per-epoch", "1", "--layers", "3",
               "--channels", "4", "--batch-size", "8"]
TINY_TRAIN = ["--epochs", "1", "--layers", "3", "--channels", "4", "--batch-size", "16", "--max-train-batches",
              "1"]


def e2rnas(*args: str, cwd: Path | None = None, timeout: int = 120) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1", COLUMNS="200")
    return run_cli(args, timeout=timeout, cwd=cwd, env=env)


def last_line(proc: subprocess.CompletedProcess) -> str:
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    return lines[-1] if lines else ""


def refused(proc: subprocess.CompletedProcess, match: str, code: int = 2) -> None:
    """Exit ``code``, one error line on stderr that holds ``match``, no traceback."""
    assert proc.returncode == code, proc.stderr + proc.stdout
    assert "Traceback" not in proc.stderr, proc.stderr
    assert proc.stderr.count("error:") == 1 and len([ln for ln in proc.stderr.splitlines() if ln.strip()]) == 1, \
        proc.stderr
    assert match in last_line(proc), last_line(proc)


def digest(folder: Path) -> dict[str, str]:
    """Every entry under ``folder`` (hidden ones too) with the SHA-256 of its bytes; {} when it does not exist."""
    if not folder.exists():
        return {}
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
            for p in sorted(folder.rglob("*"))}


def npz(path: Path, y, n: int | None = None, size: int = 16) -> Path:
    y = np.asarray(y)
    x = np.random.default_rng(0).integers(0, 256, (len(y) if n is None else n, size, size, 3), dtype=np.uint8)
    np.savez(path, x=x, y=y)
    return path


@pytest.fixture(scope="module")
def search_run(tmp_path_factory) -> Path:
    """A finished one-epoch search (one step)."""
    out = tmp_path_factory.mktemp("search") / "run"
    proc = e2rnas("search", *TINY_SEARCH, "--out", out, "--json", timeout=300)
    assert proc.returncode == 0, proc.stderr
    return out


@pytest.fixture(scope="module")
def train_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("train") / "run"
    proc = e2rnas("train", "DARTS_V2", *TINY_TRAIN, "--out", out, "--json", timeout=300)
    assert proc.returncode == 0, proc.stderr
    return out


def copy_run(src: Path, dst: Path, *, skip: tuple[str, ...] = ()) -> Path:
    import shutil

    shutil.copytree(src, dst, ignore=shutil.ignore_patterns(*skip))
    return dst


# -- 1. splits and loaders that would be empty or too small ---------------------------------------------------
@pytest.mark.parametrize("labels, extra, match", [
    ([0], [], "needs at least 2"),  # one image (of one class)
    ([0, 1], [], "leave 0 for the architecture part"),  # the architecture half would be empty and cycle forever
    ([0, 1, 1], [], "at least 2 needed"),  # three images: a one-image half
    ([0, 1] * 8, ["--config", "portion"], "architecture part"),  # --train-portion 0.99: an empty second half
])
def test_a_search_on_too_few_images_refuses_before_the_first_step(tmp_path, labels, extra, match) -> None:
    data = npz(tmp_path / "few.npz", labels)
    if extra:
        (tmp_path / "c.yaml").write_text("search:\n  train_portion: 0.99\n")
        extra = ["--config", tmp_path / "c.yaml"]
    out = tmp_path / "out"
    proc = e2rnas("search", "--dataset", f"npz:{data}", "--ood-dataset", "none", *TINY_SEARCH, *extra, "--out", out,
                  timeout=60)  # before the fix: no output, 100 % CPU, forever
    refused(proc, match)
    assert not out.exists()


@pytest.mark.parametrize("labels, extra, match", [
    ([0, 1, 0, 1, 0, 1], [], "at least 16 needed"),  # fewer training images than one batch
    ([0] * 3 + [1] * 3, ["--val-fraction", "0.01", "--batch-size", "2"], "0 for the validation part"),
])
def test_a_training_on_too_few_images_refuses(tmp_path, labels, extra, match) -> None:
    data = npz(tmp_path / "few.npz", labels)
    out = tmp_path / "out"
    proc = e2rnas("train", "DARTS_V2", "--dataset", f"npz:{data}", *TINY_TRAIN, *extra, "--out", out, timeout=60)
    refused(proc, match)
    assert not out.exists()


def test_endless_loaders_refuse_an_empty_part() -> None:
    import torch

    from e2rnas.data import ImageSet, cycle
    from e2rnas.search.runner import cycle_labeled

    empty = ImageSet(torch.zeros((0, 3, 8, 8), dtype=torch.uint8), torch.zeros(0, dtype=torch.long), 2, "empty")
    for loader in (cycle(empty, 4, generator=torch.Generator()), cycle_labeled(empty, 4, torch.Generator())):
        with pytest.raises(E2RNASError, match="no images"):
            next(loader)


# -- 2. output folders a command does not own ------------------------------------------------------------------
def _foreign(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "notes.txt").write_text("mine")
    return folder


def _search_folder(folder: Path) -> Path:
    folder.mkdir(parents=True)
    for name in ("config.yaml", "metrics.jsonl", "alphas.jsonl", "genotype.json", "summary.json"):
        (folder / name).write_text("{}\n")
    return folder


@pytest.mark.parametrize("case", ["train-foreign", "train-into-search", "search-into-train", "run-foreign",
                                  "export-foreign", "lut-onto-summary", "lut-onto-folder", "bench-onto-foreign",
                                  "report-empty", "report-foreign"])
def test_a_command_refuses_a_folder_it_does_not_own_and_changes_nothing(tmp_path, case) -> None:
    root = tmp_path / "area"
    if case == "train-foreign":
        args, match = ["train", "DARTS_V2", *TINY_TRAIN, "--out", _foreign(root)], "did not write (notes.txt)"
    elif case == "train-into-search":
        args, match = ["train", "DARTS_V2", *TINY_TRAIN, "--out", _search_folder(root)], "alphas.jsonl"
    elif case == "search-into-train":
        (_foreign(root) / "notes.txt").rename(root / "model.pt")
        args, match = ["search", *TINY_SEARCH, "--out", root], "model.pt"
    elif case == "run-foreign":
        args, match = ["run", "--out", _foreign(root)], "notes.txt"
    elif case == "export-foreign":
        args, match = ["export", "DARTS_V2", "--out", _foreign(root)], "notes.txt"
    elif case == "lut-onto-summary":
        _search_folder(root)
        args, match = ["lut", "--target", "cpu", "--out", root / "summary.json"], "not written by `e2rnas lut`"
    elif case == "lut-onto-folder":
        args, match = ["lut", "--target", "cpu", "--out", _foreign(root)], "is a folder"
    elif case == "bench-onto-foreign":
        (_foreign(root) / "bench.json").write_text('{"mine": 1}')
        model = tmp_path / "model.onnx"
        model.write_text("x")
        args, match = ["bench", model, "--out", root], "not written by `e2rnas bench`"
    elif case == "report-empty":
        root.mkdir()
        args, match = ["report", root], "is not a run made by `e2rnas run`"
    else:
        args, match = ["report", _foreign(root)], "notes.txt"
    before = digest(tmp_path)
    refused(e2rnas(*args, cwd=tmp_path, timeout=60), match)
    assert digest(tmp_path) == before  # nothing written, nothing created (no empty report/ or runs/ folder)


def test_bench_does_not_write_into_the_run_it_measures_by_default(tmp_path) -> None:
    from e2rnas._outdir import foreign_entries

    # the default is a fresh runs/bench-<time> folder under the working directory, made only when measuring starts
    src = (Path(__file__).parents[1] / "cli" / "bench_cmd.py").read_text()
    assert 'Path("runs") / f"bench-' in src and "resolve().parent" not in src
    run = _search_folder(tmp_path / "run")
    assert foreign_entries(run, "search") == [] and foreign_entries(run, "train") == ["alphas.jsonl"]


# -- 3. file-system faults: read-only and full ----------------------------------------------------------------
@pytest.fixture
def small_fs(tmp_path):
    """A real 96 KiB tmpfs (root and mount(8) needed; skipped elsewhere); ``ro()`` remounts it read-only."""
    mnt = tmp_path / "fs"
    mnt.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=96k", "tmpfs", str(mnt)],
                                           capture_output=True).returncode:
        pytest.skip("needs root and a tmpfs mount")

    class Fs:
        path = mnt

        @staticmethod
        def ro() -> None:
            subprocess.run(["mount", "-o", "remount,ro", str(mnt)], check=True)

    yield Fs
    subprocess.run(["umount", "-l", str(mnt)], check=False)


@pytest.mark.parametrize("command", ["search", "train", "lut", "export", "run"])
def test_a_read_only_out_is_one_line_before_any_work(small_fs, command) -> None:
    small_fs.ro()
    out = small_fs.path / "out"
    args = {"search": ["search", *TINY_SEARCH], "train": ["train", "DARTS_V2", *TINY_TRAIN],
            "lut": ["lut", "--target", "cpu"], "export": ["export", "DARTS_V2"], "run": ["run"]}[command]
    t0 = time.monotonic()
    proc = e2rnas(*args, "--out", out / "lut.json" if command == "lut" else out, timeout=90)
    refused(proc, "Read-only file system")
    assert str(small_fs.path) in last_line(proc) and time.monotonic() - t0 < 60  # lut: before minutes of timing


def test_a_full_disk_is_one_line_and_leaves_whole_files_and_no_temporary_ones(small_fs) -> None:
    out = small_fs.path / "run"
    proc = e2rnas("search", *TINY_SEARCH, "--out", out, timeout=300)  # the checkpoint does not fit in 96 KiB
    refused(proc, "No space left on device")
    assert "free space" in last_line(proc) and "enforce fail" not in proc.stderr
    assert not [p.name for p in out.iterdir() if p.name.endswith(".tmp")]
    assert (out / "config.yaml").is_file() and not (out / "checkpoint.pt").exists()
    read_jsonl(out / "metrics.jsonl")  # whole records only


def test_resume_and_report_on_a_read_only_run(small_fs, search_run) -> None:
    run = copy_run(search_run, small_fs.path / "run", skip=("checkpoint.pt",))  # the resume refuses before it
    pipe = small_fs.path / "pipe"
    copy_run(search_run, pipe / "search", skip=("checkpoint.pt", "alphas.jsonl", "metrics.jsonl"))
    (pipe / "pipeline.json").write_text("{}")
    small_fs.ro()
    before = digest(small_fs.path)
    refused(e2rnas("search", *TINY_SEARCH, "--out", run, "--resume"), "Read-only file system")
    refused(e2rnas("report", pipe), "Read-only file system")
    assert digest(small_fs.path) == before


# -- 4. damaged run state on --resume ----------------------------------------------------------------------------
@pytest.mark.parametrize("command", ["search", "train"])
def test_a_truncated_checkpoint_is_one_line_naming_it(tmp_path, command, search_run, train_run) -> None:
    run = copy_run(search_run if command == "search" else train_run, tmp_path / "run")
    data = (run / "checkpoint.pt").read_bytes()
    (run / "checkpoint.pt").write_bytes(data[: len(data) // 2])
    before = digest(run)
    args = ["search", *TINY_SEARCH] if command == "search" else ["train", "DARTS_V2", *TINY_TRAIN]
    proc = e2rnas(*args, "--out", run, "--resume")
    refused(proc, "checkpoint.pt is not a readable")
    assert "new --out" in last_line(proc) and digest(run) == before


@pytest.mark.parametrize("command", ["search", "train"])
def test_a_torn_last_metrics_line_is_dropped_on_resume(tmp_path, command, search_run, train_run) -> None:
    run = copy_run(search_run if command == "search" else train_run, tmp_path / "run")
    with open(run / "metrics.jsonl", "a") as fh:
        fh.write('{"type": "step", "epoch": 0, "st')  # killed mid-append
    (run / "summary.json").unlink()  # the run then finalises again
    args = ["search", *TINY_SEARCH] if command == "search" else ["train", "DARTS_V2", *TINY_TRAIN]
    proc = e2rnas(*args, "--out", run, "--resume", "--json", timeout=300)
    assert proc.returncode == 0, proc.stderr
    lines = (run / "metrics.jsonl").read_text().splitlines()
    assert lines and all(json.loads(line) for line in lines)  # every line whole again, the torn one gone


def test_a_damaged_middle_line_is_one_line_naming_file_and_line(tmp_path, search_run) -> None:
    run = copy_run(search_run, tmp_path / "run")
    lines = (run / "metrics.jsonl").read_text().splitlines()
    (run / "metrics.jsonl").write_text("\n".join(["{broken", *lines]) + "\n")
    (run / "summary.json").unlink()  # unfinished: the resume reads its records
    before = digest(run)
    refused(e2rnas("search", *TINY_SEARCH, "--out", run, "--resume"), "metrics.jsonl: line 1 is not JSON")
    assert digest(run) == before


# -- 5. latency tables with impossible values ---------------------------------------------------------------------
def _bad_table(kind: str) -> dict:
    data = table_data()
    if kind in ("nan", "negative", "inf"):
        data["ops"][3]["ms"] = {"nan": float("nan"), "negative": -0.5, "inf": float("inf")}[kind]
    elif kind == "fixed-inf":
        data["fixed_ms"] = float("inf")
    elif kind == "scale-nan":
        data["op_scale"] = {"sep_conv_3x3": float("nan")}
    elif kind == "ops-differ":
        data["key"]["primitives"] = data["key"]["primitives"][:-1]
    elif kind == "entry-missing":
        data["ops"] = data["ops"][1:]
    return data


@pytest.mark.parametrize("kind, match", [
    ("nan", "finite number >= 0"), ("negative", "finite number >= 0"), ("inf", "finite number >= 0"),
    ("fixed-inf", "fixed_ms"), ("scale-nan", "op_scale"), ("ops-differ", "search space has"),
    ("entry-missing", "has no entry"),
])
def test_a_latency_table_with_impossible_values_is_refused_on_load(tmp_path, kind, match) -> None:
    path = tmp_path / "lut.json"
    path.write_text(json.dumps(_bad_table(kind)))  # json writes NaN / Infinity tokens, as a hand edit might
    with pytest.raises(LatencyTableError, match=match):
        LatencyTable.load(path)


@pytest.mark.parametrize("bound", ["inf", "nan", "-inf"])
def test_an_infinite_bound_is_refused(tmp_path, bound) -> None:
    path = tmp_path / "lut.json"
    path.write_text(json.dumps(table_data()))
    out = tmp_path / "out"
    proc = e2rnas("search", *TINY_SEARCH, "--lut", path, "--latency-bound", bound, "--out", out, timeout=60)
    refused(proc, "finite number")
    assert not out.exists()
    refused(e2rnas("search", "--params-bound", bound, "--out", out), "--params-bound: a finite number")


def test_a_search_with_a_nan_table_is_one_line(tmp_path) -> None:
    path = tmp_path / "lut.json"
    path.write_text(json.dumps(_bad_table("nan")))
    proc = e2rnas("search", *TINY_SEARCH, "--lut", path, "--latency-bound", "1", "--deploy-layers", "5",
                  "--deploy-channels", "8", "--out", tmp_path / "out", timeout=60)
    refused(proc, "finite number >= 0")
    assert not (tmp_path / "out").exists()


# -- 6. values that would be coerced silently ------------------------------------------------------------------
@pytest.mark.parametrize("section, yaml_text, match", [
    ("search", "search:\n  epochs: true\n", "epochs: a number is expected, got the boolean True"),
    ("search", "search:\n  batch_size: yes\n", "batch_size: a number is expected"),
    ("search", "search:\n  arch_lr: on\n", "arch_lr: a number is expected"),
    ("train", "train:\n  epochs: false\n", "epochs: a number is expected"),
    ("train", "train:\n  lr: .nan\n", "lr: a finite number"),
])
def test_a_yaml_boolean_or_nan_for_a_number_is_refused(tmp_path, section, yaml_text, match) -> None:
    (tmp_path / "c.yaml").write_text(yaml_text)
    args = ["search"] if section == "search" else ["train", "DARTS_V2"]
    refused(e2rnas(*args, "--config", tmp_path / "c.yaml", "--print-config"), match)


@pytest.mark.parametrize("labels, match", [
    (np.array([0.5, 1.0, 0.0, 1.0] * 8), "labels must be integers"),  # would have become 0
    (np.array([0.0, np.nan] * 16), "labels must be integers"),
    (np.array(["a", "b"] * 16), "labels must be integers"),
    (np.zeros(32, dtype=np.int64), "a classifier needs at least 2"),  # one class: "accuracy 1.000"
])
def test_labels_that_would_be_coerced_and_one_class_data_are_refused(tmp_path, labels, match) -> None:
    data = npz(tmp_path / "d.npz", labels)
    out = tmp_path / "out"
    proc = e2rnas("search", "--dataset", f"npz:{data}", "--ood-dataset", "none", *TINY_SEARCH, "--out", out,
                  timeout=60)
    refused(proc, match)
    assert not out.exists()


def test_integral_float_labels_still_load(tmp_path) -> None:
    from e2rnas.data import load_dataset

    data = load_dataset(f"npz:{npz(tmp_path / 'd.npz', np.array([0.0, 1.0, 2.0] * 4))}", split="all")
    assert data.y.tolist() == [0, 1, 2] * 4 and data.num_classes == 3


# -- 7. a pipeline validates every stage before the first --------------------------------------------------------
@pytest.mark.parametrize("section, match", [
    ("eval:\n  bogus: 1\n", "eval: unknown option 'bogus'"),
    ("check:\n  nope: 2\n", "check: unknown option 'nope'"),
    ("bench:\n  batch: 1,x\n", "comma-separated"),
    ("train:\n  epochs: 0\n", "epochs must be >= 1"),
    ("train:\n  epochs: true\n", "a number is expected"),
    ("search:\n  epochz: 3\n", "did you mean epochs?"),
    ("lut:\n  runz: 3\n", "lut: unknown option 'runz'"),
    ("export:\n  opsett: 17\n", "export: unknown option 'opsett'"),
])
def test_a_later_stage_setting_fails_before_any_stage_runs(tmp_path, section, match) -> None:
    (tmp_path / "p.yaml").write_text(section)
    out = tmp_path / "run"
    t0 = time.monotonic()
    proc = e2rnas("run", "--config", tmp_path / "p.yaml", "--out", out, timeout=60)
    refused(proc, match)
    assert not out.exists() and time.monotonic() - t0 < 30  # no lut table measured first


# -- 8. usage errors are one line, exit 2 ---------------------------------------------------------------------------
@pytest.mark.parametrize("args, match", [
    (["bench", "m.onnx", "--format", "xml"], "'xml' is not one of"),
    (["search", "--epochs", "abc"], "Invalid value for '--epochs'"),
    (["search", "--no-such-option"], "No such option: --no-such-option"),
    (["train"], "Missing argument"),
    (["nosuchcommand"], "No such command"),
    (["eval", "m.pt", "--steps", "1.5"], "Invalid value for '--steps'"),
])
def test_usage_errors_are_one_line(args, match) -> None:
    proc = e2rnas(*args, timeout=60)
    refused(proc, match)
    assert "--help" in last_line(proc) and "╭" not in proc.stderr


# -- 9. the smaller points ---------------------------------------------------------------------------------------------
def test_non_finite_numbers_are_written_as_null(tmp_path) -> None:
    import torch

    from e2rnas._io import atomic_write_json

    append_jsonl(tmp_path / "m.jsonl", {"loss": float("nan"), "g": [1.0, float("inf")], "t": torch.tensor([np.nan])})
    atomic_write_json(tmp_path / "s.json", {"x": float("-inf")})
    assert "NaN" not in (tmp_path / "m.jsonl").read_text() and "Infinity" not in (tmp_path / "s.json").read_text()
    assert read_jsonl(tmp_path / "m.jsonl") == [{"loss": None, "g": [1.0, None], "t": [None]}]


def test_train_accepts_ood_dataset_none(tmp_path) -> None:
    proc = e2rnas("train", "DARTS_V2", "--ood-dataset", "none", *TINY_TRAIN, "--out", tmp_path / "t", "--json",
                  timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert json.loads((tmp_path / "t" / "summary.json").read_text())["ood_dataset"] is None


def test_eval_of_a_pickle_with_code_names_the_reason(tmp_path) -> None:
    import torch

    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    torch.save({"format": "x", "payload": Evil()}, tmp_path / "evil.pt")
    proc = e2rnas("eval", tmp_path / "evil.pt", timeout=60)
    refused(proc, "unsupported GLOBAL")
    assert "pwned" not in proc.stdout + proc.stderr and "weights only" in last_line(proc)


def test_sigterm_stops_a_search_with_a_message_and_exit_143(tmp_path) -> None:
    out = tmp_path / "run"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.Popen([sys.executable, "-m", "e2rnas.cli.app", "search", "--epochs", "50", "--layers", "3",
                             "--channels", "4", "--batch-size", "8", "--out", str(out)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)
    deadline = time.monotonic() + 120
    while not (out / "metrics.jsonl").is_file() and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 143, stderr
    assert "stopped by SIGTERM" in stderr.strip().splitlines()[-1] and "--resume" in stderr


def test_resume_of_a_finished_run_changes_nothing(tmp_path, search_run, train_run) -> None:
    for src, args in ((search_run, ["search", *TINY_SEARCH]), (train_run, ["train", "DARTS_V2", *TINY_TRAIN])):
        run = copy_run(src, tmp_path / src.parent.name)
        before = digest(run)
        proc = e2rnas(*args, "--out", run, "--resume", "--json", timeout=120)
        assert proc.returncode == 0, proc.stderr
        assert digest(run) == before  # summary.json's provenance and timing included
