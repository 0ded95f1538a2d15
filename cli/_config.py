"""Build a frozen config dataclass from a preset, an optional YAML file and the flags, in that order."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, TypeVar

from e2rnas._io import read_yaml
from e2rnas.errors import E2RNASError
from e2rnas.presets import preset_section

T = TypeVar("T")


def load_yaml(path: Path) -> dict[str, Any]:
    data = read_yaml(path, kind="config file", error=E2RNASError) or {}
    if not isinstance(data, dict):
        raise E2RNASError(f"{path} must hold a mapping of settings, got {type(data).__name__}")
    return data


def build_config(cls: type[T], *, preset: str, section: str, config_file: Path | None = None,
                 overrides: dict[str, Any] | None = None) -> T:
    """Preset, then the file's ``section:`` block (or its top level), then flags that were given (not None)."""
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    values: dict[str, Any] = {k: v for k, v in preset_section(preset, section).items() if k in fields}
    if config_file is not None:
        data = load_yaml(config_file)
        data = data.get(section, data) if isinstance(data.get(section), dict) else data
        unknown = sorted(set(data) - set(fields) - {"preset"})
        if unknown:
            raise E2RNASError(f"{config_file}: unknown setting(s) {', '.join(unknown)}; valid: {', '.join(fields)}")
        values.update(data)
    values.update({k: v for k, v in (overrides or {}).items() if v is not None})
    try:
        return cls(**values)
    except (TypeError, ValueError) as exc:
        raise E2RNASError(f"bad {section} settings: {exc}") from exc
