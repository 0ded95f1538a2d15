"""The CLI side of the typed settings (``e2rnas.config``): ``--print-config`` and nothing else of its own."""

from __future__ import annotations

import sys
from typing import Any

from e2rnas.config import FLAG_NAMES, build_config, config_yaml, field_name, flag_name, load_yaml

__all__ = ["FLAG_NAMES", "build_config", "config_yaml", "field_name", "flag_name", "load_yaml", "print_resolved"]


def print_resolved(cfg: Any, *, section: str) -> None:
    """``--print-config``: the resolved settings (preset + file + flags) on stdout as YAML, then stop."""
    sys.stdout.write(config_yaml(cfg, section=section))
