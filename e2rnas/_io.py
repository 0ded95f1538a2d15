"""Atomic file writes: a crash never leaves a half-written artifact."""

from __future__ import annotations

import errno
import json
import logging
import math
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Call ``write(tmp)`` on a temporary file beside ``path`` and rename it into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        try:
            write(Path(tmp))
        except RuntimeError as exc:  # torch.save on a full disk: "enforce fail ... unexpected pos", "file write failed"
            if not any(s in str(exc) for s in _TORCH_WRITE_FAILURES):
                raise
            full = shutil.disk_usage(path.parent).free < (1 << 20)
            raise OSError(errno.ENOSPC if full else errno.EIO, "No space left on device" if full else
                          "write failed", str(path)) from None
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; an artifact gets the mode a plain open() would give
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


_TORCH_WRITE_FAILURES = ("PytorchStreamWriter", "unexpected pos", "file write failed", "inline_container")


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda tmp: tmp.write_text(text))


def atomic_write_json(path: Path, data: Any) -> None:
    atomic_write_text(path, dumps(data, indent=2) + "\n")


def dumps(data: Any, **kw: Any) -> str:
    """JSON that every parser reads: a NaN or infinite float is written as null, never as the token ``NaN``."""
    return json.dumps(finite(data), default=_json_default, allow_nan=False, **kw)


def finite(data: Any) -> Any:
    """``data`` with every non-finite float replaced by None (dicts, lists and tuples walked)."""
    if isinstance(data, float):
        return data if math.isfinite(data) else None
    if isinstance(data, dict):
        return {k: finite(v) for k, v in data.items()}
    if isinstance(data, list | tuple):
        return [finite(v) for v in data]
    return data


def atomic_torch_save(path: Path, obj: Any) -> None:
    import torch

    atomic_write(path, lambda tmp: torch.save(obj, tmp))


def append_jsonl(path: Path, record: dict[str, Any]) -> None:
    with open(path, "a") as fh:
        fh.write(dumps(record) + "\n")


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """The records of a JSON-lines log. A torn last line (the process died mid-append) is dropped: the records
    before it are whole. A damaged line elsewhere is an ``E2RNASError`` naming the file and the line."""
    from e2rnas.errors import E2RNASError

    path = Path(path)
    if not path.is_file():
        return []
    try:
        lines = [(i, line) for i, line in enumerate(path.read_text().splitlines(), 1) if line.strip()]
    except UnicodeDecodeError:
        raise E2RNASError(f"{path} is not text (damaged); restore it or start a new run in another --out") from None
    records = []
    for k, (i, line) in enumerate(lines):
        try:
            records.append(json.loads(line))
        except ValueError:
            if k == len(lines) - 1:
                logging.getLogger(__name__).warning("%s: dropped a torn last line %d (an interrupted write)", path, i)
                break
            raise E2RNASError(f"{path}: line {i} is not JSON (damaged); restore the file, or start a new run in "
                              f"another --out") from None
    return records


def torch_load(path: Path, *, what: str, fix: str, error: type[Exception], **kw: Any) -> Any:
    """``torch.load(weights_only=True)``; a damaged, truncated or foreign file is ``error`` in one line that keeps
    torch's reason (``Unsupported global: GLOBAL os.system``, ``failed finding central directory``)."""
    import torch

    try:
        return torch.load(path, weights_only=True, **kw)
    except Exception as exc:  # torch raises several types for corrupt, truncated or foreign files
        lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()] or [type(exc).__name__]
        reason = next((ln for ln in lines if "unsupported global" in ln.lower() or "WeightsUnpickler" in ln),
                      lines[0])
        reason = reason.removeprefix("WeightsUnpickler error: ")[:300]
        raise error(f"{path} is not a readable {what} ({type(exc).__name__}: {reason}); {fix}") from exc


def read_yaml(path: Path, *, kind: str, error: type[Exception]) -> Any:
    """The parsed YAML file at ``path``; a missing file or a syntax error raises ``error`` with a one-line message."""
    import yaml

    if not path.is_file():
        raise error(f"{kind} not found: {path}")
    try:
        return yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise error(f"{path} is not valid YAML: {str(exc).splitlines()[0]}") from exc


def _json_default(obj: Any) -> Any:
    if hasattr(obj, "tolist"):
        return finite(obj.tolist())
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"cannot serialise {type(obj).__name__}")
