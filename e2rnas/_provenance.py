"""Where a result came from: date, e2rnas version and source commit, command line, directory and machine.

Search, train, bench and check record this beside their numbers, so that a summary found later says which code and
which command produced it; the report prints it as its header.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import e2rnas

GIT_TIMEOUT_S = 5.0


def source_root() -> Path:
    """The directory holding the ``e2rnas`` package: a git checkout's root for a development install."""
    return Path(e2rnas.__file__).resolve().parent.parent


def git_sha(root: Path | None = None) -> dict[str, Any] | None:
    """HEAD of the e2rnas source checkout and whether tracked files differ from it; None for an installed wheel.

    ``git`` runs with a fixed argument list (no shell) and a short timeout. A checkout counts only when its
    top level is ``root`` itself: a wheel installed in a virtual environment inside some other repository must not
    report that repository's commit."""
    root = (root or source_root()).resolve()
    exe = shutil.which("git")
    if exe is None or not (root / ".git").exists():
        return None
    try:
        out = subprocess.run([exe, "-C", str(root), "rev-parse", "--show-toplevel", "HEAD"], capture_output=True,
                             text=True, timeout=GIT_TIMEOUT_S, check=True).stdout.split()
        if len(out) != 2 or Path(out[0]).resolve() != root:
            return None
        dirty = subprocess.run([exe, "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=GIT_TIMEOUT_S, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return {"sha": out[1], "dirty": bool(dirty)}


def provenance(argv: list[str] | None = None, *, gpu: bool = True) -> dict[str, Any]:
    """One JSON-ready record: UTC date, version, git commit, command, working directory and ``environment()``."""
    from e2rnas.deploy_targets.env import environment

    argv = list(sys.argv if argv is None else argv)
    env = environment(gpu=gpu)
    git = git_sha()
    versions = env.get("versions") or {}
    return {
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "e2rnas": e2rnas.__version__,
        "git_sha": git["sha"] if git else None,
        "git_dirty": git["dirty"] if git else None,
        "argv": argv,
        "command": shlex.join(argv),
        "cwd": os.getcwd(),
        "python": versions.get("python"),
        "torch": versions.get("torch"),
        "onnxruntime": versions.get("onnxruntime"),
        "environment": env,
    }


def describe(prov: dict[str, Any]) -> list[tuple[str, str]]:
    """(label, value) pairs a person reads first: for the report's header."""
    env = prov.get("environment") or {}
    gpu = (env.get("gpu") or {}).get("name")
    sha = prov.get("git_sha")
    sha_text = "not a git checkout" if sha is None else sha + (" (with uncommitted changes)"
                                                                 if prov.get("git_dirty") else "")
    machine = ", ".join(str(x) for x in (env.get("hostname"), env.get("cpu"), gpu) if x) or "-"
    return [("date (UTC)", str(prov.get("date", "-"))), ("e2rnas", str(prov.get("e2rnas", "-"))),
            ("git SHA", sha_text), ("command", str(prov.get("command", "-"))),
            ("working directory", str(prov.get("cwd", "-"))),
            ("versions", f"python {prov.get('python')}, torch {prov.get('torch')}, "
                         f"onnxruntime {prov.get('onnxruntime')}"),
            ("machine", machine)]
