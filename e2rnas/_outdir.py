"""Who may write where: one rule for every command's output.

A command writes into a fresh folder, or into a folder that the same command made (every entry in it is a name
that command writes), or it refuses in one line; it never writes beside a user's files or into another command's
folder (``owned_dir``: search, train, export, run). A command whose output is one record file (lut, bench, check)
writes a new file or replaces one that the same command wrote (``owned_file``). The folder is created, and found
writable, only after the inputs are validated and before any long work (a read-only or full disk is one line
before minutes of measuring); a folder made here is removed again when the command fails before writing into it.
"""

from __future__ import annotations

import fnmatch
import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from e2rnas.errors import E2RNASError

_TRACKERS = ("tensorboard", "mlruns")  # the --tracker folders (e2rnas.run.tracking)
#: command -> the names (glob patterns) it writes into its output folder
OUTPUTS: dict[str, tuple[str, ...]] = {
    "search": ("config.yaml", "metrics.jsonl", "alphas.jsonl", "checkpoint.pt", "genotype.json", "summary.json",
               *_TRACKERS),
    # eval.json, check.json, bench.json, export/: what `e2rnas eval`, older `check`/`bench` defaults and `export`'s
    # default write beside a model.pt
    "train": ("config.yaml", "metrics.jsonl", "checkpoint.pt", "genotype.json", "model.pt", "summary.json",
              "eval.json", "check.json", "bench.json", "export", *_TRACKERS),
    "export": ("export.json", "model*.onnx", "model*.onnx.data", "model*.engine", "model*.json", "*.cache"),
    "bench": ("bench.json",),
    "check": ("check.json",),
    "lut": ("*.json",),
    "run": ("pipeline.json", "report.md", "report.html", "report", "lut", "search", "train", "eval", "export",
            "bench", "check", "baseline", "*.previous"),
}


def foreign_entries(path: Path, command: str) -> list[str]:
    """The entries of folder ``path`` that ``command`` does not write (hidden entries, its lock, are ignored)."""
    patterns = OUTPUTS[command]
    return sorted(p.name for p in Path(path).iterdir()
                  if not p.name.startswith(".") and not any(fnmatch.fnmatchcase(p.name, pat) for pat in patterns))


def check_dir(path: Path, *, command: str, flag: str = "--out") -> None:
    """Refuse (one line) a folder ``command`` may not write into; creates nothing."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise E2RNASError(f"{flag} {path} is a file; give a new folder for `e2rnas {command}`")
    if path.is_dir():
        foreign = foreign_entries(path, command)
        if foreign:
            more = f" and {len(foreign) - 3} more" if len(foreign) > 3 else ""
            raise E2RNASError(f"{flag} {path} holds files that `e2rnas {command}` did not write "
                              f"({', '.join(foreign[:3])}{more}); choose a new or empty folder")


def check_writable(folder: Path) -> None:
    """Write and sync a small probe file in ``folder``: a read-only or full file system raises ``OSError`` now."""
    fd, probe = tempfile.mkstemp(prefix=".e2rnas-probe.", dir=folder)
    try:
        os.write(fd, b"\0" * 4096)
        os.fsync(fd)
    finally:
        os.close(fd)
        os.unlink(probe)


@contextmanager
def owned_dir(path: Path, *, command: str, flag: str = "--out", enabled: bool = True) -> Iterator[Path]:
    """``check_dir``, then create the folder and probe it; on an exception a folder made here and still empty
    is removed, so a failed command leaves nothing behind. ``enabled=False`` (a non-main process): no-op."""
    path = Path(path)
    if not enabled:
        yield path
        return
    check_dir(path, command=command, flag=flag)
    created = not path.exists()
    try:
        path.mkdir(parents=True, exist_ok=True)
        check_writable(path)
        yield path
    except BaseException:
        if created:
            _remove_if_empty(path)
        raise


@contextmanager
def owned_file(path: Path, *, command: str, made_by_us: Callable[[Path], bool], flag: str = "--out",
               ) -> Iterator[Path]:
    """A single-file output: a new path, or a file that ``command`` made (``made_by_us``); its folder is created
    and probed as ``owned_dir``'s."""
    path = Path(path)
    if path.is_dir():
        raise E2RNASError(f"{flag} {path} is a folder; give a file name such as {path / 'lut.json'}")
    if path.exists() and not made_by_us(path):
        raise E2RNASError(f"{flag} {path} exists and was not written by `e2rnas {command}`; choose a new file name")
    created = not path.parent.exists()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        check_writable(path.parent)
        yield path
    except BaseException:
        if created:
            _remove_if_empty(path.parent)
        raise


def json_with(*keys: str) -> Callable[[Path], bool]:
    """A ``made_by_us`` test: the file is a JSON object holding ``keys`` (what that command writes)."""
    def test(path: Path) -> bool:
        import json

        try:
            data = json.loads(Path(path).read_text())
        except (OSError, ValueError):
            return False
        return isinstance(data, dict) and all(k in data for k in keys)

    return test


def _remove_if_empty(path: Path) -> None:
    try:
        path.rmdir()
    except OSError:
        pass
