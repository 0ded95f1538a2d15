"""Typed settings: a preset, then a YAML file, then the flags (or a pipeline's stage options), validated by
pydantic v2 into a frozen config. The CLI builds every command's config here, and ``e2rnas run`` its stages'.

The library's config dataclasses (``SearchConfig``, ``TrainConfig``, ...) are the schema; pydantic validates a
merged mapping against them (``TypeAdapter``), so ``3e-4`` in YAML is a number, ``"5"`` an int, a wrong type one
line naming the key and where it came from. A YAML key is the flag's name (``channels``, ``deploy_channels``,
``macs_bound``, ``arch_lr``); the field names the library uses (``C``, ``deploy_C``, ``flops_bound``, ``a_lr``)
are accepted as aliases, so old files and a run's own ``config.yaml`` keep working.
"""

from __future__ import annotations

import dataclasses
import typing
from pathlib import Path
from typing import Any, TypeVar

from e2rnas._io import read_yaml
from e2rnas.errors import E2RNASError
from e2rnas.presets import preset_section

T = TypeVar("T")

#: section -> {library field: flag name (without --, with _)} where they differ
FLAG_NAMES: dict[str, dict[str, str]] = {
    "search": {"C": "channels", "deploy_C": "deploy_channels", "deploy_input_size": "deploy_image_size",
               "flops_bound": "macs_bound", "a_lr": "arch_lr", "normalization": "grad_norm"},
    "train": {"C": "channels"},
}


def flag_name(section: str, field: str) -> str:
    return FLAG_NAMES.get(section, {}).get(field, field)


def field_name(section: str, key: str) -> str | None:
    """The library field for a YAML key or flag name (either spelling, ``-`` or ``_``), or None."""
    key = key.replace("-", "_")
    for field, flag in FLAG_NAMES.get(section, {}).items():
        if key in (field, flag):
            return field
    return key


def load_yaml(path: Path) -> dict[str, Any]:
    data = read_yaml(path, kind="config file", error=E2RNASError) or {}
    if not isinstance(data, dict):
        raise E2RNASError(f"{path} must hold a mapping of settings, got {type(data).__name__}")
    return data


def _file_section(path: Path, section: str) -> dict[str, Any]:
    data = load_yaml(path)
    return data[section] if isinstance(data.get(section), dict) else data


def _fields(cls: type) -> dict[str, dataclasses.Field]:
    return {f.name: f for f in dataclasses.fields(cls)}


def _normalise(cls: type, section: str, raw: dict[str, Any], origin: str) -> dict[str, Any]:
    """Map flag names to fields; reject unknown keys in one line naming them and the valid ones."""
    fields = _fields(cls)
    out: dict[str, Any] = {}
    unknown = []
    for key, value in raw.items():
        if key in ("preset", "world_size"):  # the run's preset name / process count: records, not settings
            continue
        field = field_name(section, str(key))
        if field not in fields:
            unknown.append(str(key))
            continue
        out[field] = value
    if unknown:
        import difflib

        names = sorted(flag_name(section, f) for f in fields)
        hints = [f"{k} (did you mean {m[0]}?)" if (m := difflib.get_close_matches(k, names, n=1)) else k
                 for k in sorted(unknown)]
        raise E2RNASError(f"{origin}: unknown setting(s) {', '.join(hints)} in {section}; valid: {', '.join(names)}")
    return out


def _split_lists(cls: type, values: dict[str, Any]) -> dict[str, Any]:
    """``"val,ood"`` for a tuple field (as a flag gives it) becomes a list before validation."""
    hints = typing.get_type_hints(cls)
    out = dict(values)
    for key, value in values.items():
        if isinstance(value, str) and typing.get_origin(hints.get(key)) is tuple:
            out[key] = [v.strip() for v in value.split(",") if v.strip()]
    return out


def validate(cls: type[T], values: dict[str, Any], *, section: str, origins: dict[str, str]) -> T:
    """The frozen config, or one ``E2RNASError`` line naming the key, its source and what is wrong."""
    import pydantic

    _refuse_coercions(cls, values, section=section, origins=origins)
    try:
        return pydantic.TypeAdapter(cls).validate_python(_split_lists(cls, values))
    except pydantic.ValidationError as exc:
        err = exc.errors(include_url=False)[0]
        msg = str(err.get("msg", "invalid")).removeprefix("Value error, ")
        loc = [p for p in err.get("loc", ()) if isinstance(p, str)]
        if not loc:  # a check across fields (the dataclass's __post_init__)
            sources = ", ".join(dict.fromkeys(v for v in origins.values() if not v.startswith("--")))
            raise E2RNASError(f"bad {section} settings ({sources or 'defaults'} and flags): {msg}") from None
        key = loc[0]
        where = origins.get(key, "default")
        got = err.get("input")
        what = where if where.startswith("--") else f"{where}: {flag_name(section, key)}"
        raise E2RNASError(f"{what}: {msg} (got {got!r})") from None
    except (TypeError, ValueError) as exc:
        raise E2RNASError(f"bad {section} settings: {exc}") from None


_NON_FINITE = {"inf", "infinity", "nan"}


def _refuse_coercions(cls: type, values: dict[str, Any], *, section: str, origins: dict[str, str]) -> None:
    """What pydantic's lax mode would coerce without a word: a boolean for a number (YAML reads ``true``, ``yes``
    and ``on`` as booleans; ``epochs: true`` would become 1) and an infinite or NaN number (a bound that bounds
    nothing)."""
    hints = typing.get_type_hints(cls)
    for key, value in values.items():
        hint = hints.get(key)
        kinds = set(typing.get_args(hint)) | {hint}
        where = origins.get(key, "default")
        what = where if where.startswith("--") else f"{where}: {flag_name(section, key)}"
        if isinstance(value, bool) and bool not in kinds and (kinds & {int, float}):
            raise E2RNASError(f"{what}: a number is expected, got the boolean {value!r} (YAML reads true/false, "
                              f"yes/no and on/off as booleans); write the number")
        text = str(value).strip().lower().lstrip("+-") if isinstance(value, str | float) else ""
        if float in kinds and text in _NON_FINITE:
            raise E2RNASError(f"{what}: a finite number is expected, got {value!r}; give a real bound or value")


def build_config(cls: type[T], *, preset: str, section: str, config_file: Path | None = None,
                 overrides: dict[str, Any] | None = None, run_config: Path | None = None,
                 drop_ood: bool = False) -> T:
    """Preset < the file's ``section:`` block (or its top level) < flags that were given (not None).

    ``run_config`` (a resumed run's own ``config.yaml``) replaces preset and file: the run continues with the
    settings it started with, and a file or flag that says otherwise is an error naming the key."""
    origins: dict[str, str] = {}
    values: dict[str, Any] = {}
    fields = _fields(cls)
    if run_config is not None:
        values = _normalise(cls, section, _file_section(run_config, section), str(run_config))
        origins = dict.fromkeys(values, str(run_config))
    else:
        values = {k: v for k, v in preset_section(preset, section).items() if k in fields}
        origins = dict.fromkeys(values, f"preset {preset}")
    layers: list[tuple[str, dict[str, Any]]] = []
    if config_file is not None:
        layers.append((str(config_file), _normalise(cls, section, _file_section(config_file, section),
                                                    str(config_file))))
    given = {k: v for k, v in (overrides or {}).items() if v is not None}
    layers.append(("flag", _normalise(cls, section, given, "flags or stage options")))
    for origin, layer in layers:
        for key, value in layer.items():
            where = f"--{flag_name(section, key).replace('_', '-')}" if origin == "flag" else origin
            if run_config is not None and key in values and not _same(values[key], value):
                raise E2RNASError(f"{where} {value!r} conflicts with the run's {run_config.name} "
                                  f"({flag_name(section, key)}: {values[key]!r}): a resumed run keeps its settings; "
                                  f"drop the flag, or start a new run in another --out")
            values[key] = value
            origins[key] = where
    if "device" in fields and values.get("device", "auto") == "auto":
        values["device"] = resolve_device("auto")
        origins.setdefault("device", "--device auto")
    if str(values.get("ood_dataset")).strip().lower() == "none" and "ood_dataset" in fields:
        drop_ood = True  # ``ood_dataset: none`` from a flag, a file or a stage option: no OoD set
    if drop_ood:  # ``--ood-dataset none``: no OoD set, whatever the preset or file says
        values["ood_dataset"] = None
        origins["ood_dataset"] = "--ood-dataset none"
    return validate(cls, values, section=section, origins=origins)


def _same(a: Any, b: Any) -> bool:
    """Equal as settings: ``[5, 11]`` and ``(5, 11)``, ``1`` and ``1.0``, ``"a,b"`` and ``("a", "b")``."""
    def norm(v: Any) -> Any:
        if isinstance(v, str) and "," in v:
            return tuple(s.strip() for s in v.split(","))
        if isinstance(v, list | tuple):
            return tuple(norm(x) for x in v)
        return v

    return norm(a) == norm(b)


def config_yaml(cfg: Any, *, section: str) -> str:
    """A resolved config as YAML under its section, with flag names as keys: a valid ``--config`` file."""
    import yaml

    body = {flag_name(section, k): (list(v) if isinstance(v, tuple) else v)
            for k, v in dataclasses.asdict(cfg).items()}
    return yaml.safe_dump({section: body}, sort_keys=False)


def resolve_device(text: str | None) -> str:
    """``auto`` (cuda when torch sees a GPU, else cpu), cpu, cuda, cuda:N or mps; a device this machine lacks is a
    one-line error (exit 2 at the CLI), never a traceback from deep inside torch."""
    import torch

    name = (text or "auto").strip().lower()
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise E2RNASError(f"--device {text!r} is not a device; use auto, cpu, cuda, cuda:N or mps") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise E2RNASError(f"--device {text}: torch sees no CUDA GPU on this machine; use --device cpu (or auto)")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise E2RNASError(f"--device {text}: this machine has {torch.cuda.device_count()} CUDA GPU(s)")
        from e2rnas.deploy_targets.gpu_identity import check_torch_on_device

        problem = check_torch_on_device(dev)
        if problem:
            raise E2RNASError(problem)
    elif dev.type == "mps" and not torch.backends.mps.is_available():
        raise E2RNASError(f"--device {text}: MPS is not available on this machine; use --device cpu (or auto)")
    elif dev.type not in ("cpu", "cuda", "mps"):
        raise E2RNASError(f"--device {text}: e2rnas runs on cpu, cuda or mps")
    return name


# -- values given as text (flags and stage options) --------------------------------------------------------
def fraction(value: Any, key: str) -> float | None:
    """``0.0078`` or ``"2/255"`` -> float."""
    if value is None or isinstance(value, int | float):
        return value
    try:
        num, _, den = str(value).partition("/")
        return float(num) / float(den) if den else float(num)
    except (ValueError, ZeroDivisionError):
        raise E2RNASError(f"{key} must be a number or a fraction such as 2/255, got {value!r}") from None


def int_list(value: Any, key: str) -> list[int]:
    """``"1,8,64"``, ``[1, 8]`` or ``8`` -> positive ints."""
    items = value if isinstance(value, list | tuple) else str(value).split(",")
    try:
        out = [int(v) for v in items if str(v).strip()]
    except ValueError:
        raise E2RNASError(f"{key} must be comma-separated integers such as 1,8,64, got {value!r}") from None
    if not out or min(out) < 1:
        raise E2RNASError(f"{key} must be positive integers, got {value!r}")
    return out


def latency_bound_fields(text: str | float | None, key: str = "latency bound") -> dict[str, float]:
    """``0.4`` (ms) or ``"50%"`` (of the table's fastest-to-slowest range) -> search config fields."""
    if text is None:
        return {}
    s = str(text).strip()
    try:
        if s.endswith("%"):
            return {"latency_bound_fraction": float(s[:-1]) / 100}
        return {"latency_bound": float(s)}
    except ValueError:
        raise E2RNASError(f"{key} {text!r}: give milliseconds (0.4) or a percentage of the table's range "
                          f"(50%)") from None


def without_ood(options: dict[str, Any]) -> tuple[dict[str, Any], list[str], bool]:
    """``ood_dataset: none`` for a search: no OoD objective and no lower-level OoD loss unless set otherwise.

    Returns the options, notes saying what changed, and whether the OoD set is dropped (``build_config``'s
    ``drop_ood``: an override of None would leave the preset's set in place)."""
    value = options.get("ood_dataset")
    if value is None or str(value).lower() != "none":
        return options, [], False
    out, notes = dict(options, ood_dataset=None), []
    if out.get("objectives") is None:
        out["objectives"] = "val,adv,params,flops"
        notes.append("no OoD set (--ood-dataset none): objectives val,adv,params,flops")
    if out.get("ll_ood") is None:
        out["ll_ood"] = False
        notes.append("no OoD set: the lower level trains without the OoD loss")
    return out, notes, True
