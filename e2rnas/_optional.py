"""Optional packages (Ray, TensorBoard, MLflow): imported when a command needs them, with a one-line install hint."""

from __future__ import annotations

import importlib
from types import ModuleType

from e2rnas.errors import E2RNASError


def require(module: str, *, extra: str, what: str) -> ModuleType:
    """``import module``, or an :class:`E2RNASError` naming the extra that installs it (the CLI: one line, exit 2)."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise E2RNASError(f"{what} needs the {module.split('.')[0]} package ({exc.name or module} is not "
                          f"installed): pip install 'e2rnas[{extra}]'") from None
