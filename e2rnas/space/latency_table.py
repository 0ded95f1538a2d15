"""A latency lookup table measured on a deploy target: the deployed network's latency T (ms), predicted additively.

Like the params/MACs cost model (``e2rnas.space.cost``), a genotype's latency is a fixed part plus one entry per kept
(edge, op) of each cell, each op timed at its cell's real width, stride and resolution. The numbers come from the
target (``e2rnas lut``, ``e2rnas.deploy_targets.lut.measure_latency_table``), so a table is only valid for the
target, runtime, precision, batch and deploy shape it was measured at: ``check_matches`` refuses any other.

Prediction: ``genotype_ms = fixed_ms + sum over the 8 kept edges per cell of op_ms``. ``op_ms`` is the op's time
in the runtime's in-network layout without the per-call overhead, times ``op_scale[op]``, the op's in-network factor
fitted with ``fixed_ms`` on reference networks measured whole (``docs/latency-table.md``). Every correction lives in
``fixed_ms`` and the table entries, so ``tables`` gives the budget-aware derivation exactly the numbers of
``genotype_ms``, and ``expected_ms`` is their softmax expectation, computed as ``CostModel.expected_cost`` is.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import torch

from e2rnas.errors import E2RNASError
from e2rnas.space.cost import NUM_EDGES, CostModel, DeployShape, _edge_source, expected_from_tables
from e2rnas.space.genotypes import Genotype

FORMAT = "e2rnas-latency-table"
VERSION = 1
_KEY_FIELDS = ("target", "runtime", "precision", "batch", "threads", "deploy_shape", "primitives")
_REQUIRED = ("format", "version", "key", "unit", "fixed_ms", "ops")
_FREE_OPS = frozenset({"none"})  # ops that are no computation at all in the deployed graph


class LatencyTableError(E2RNASError):
    """A latency table file is missing, malformed, or was measured for another target or deploy shape."""


OpKey = tuple[str, int, int, int]  # (op, C, stride, input size)


def describe_shape(shape: DeployShape) -> str:
    stem = "" if shape.variant == "cifar" else f", {shape.variant} stem"
    return f"{shape.layers} cells C={shape.C} {shape.input_size}px {shape.num_classes} classes{stem}"


def lut_command(*, shape: DeployShape, target: str, batch: int = 1) -> str:
    """The command that measures a table for ``shape`` on ``target``: every error message ends with it."""
    cmd = (f"e2rnas lut --target {target} --deploy-layers {shape.layers} --deploy-channels {shape.C} "
           f"--deploy-image-size {shape.input_size} --classes {shape.num_classes}")
    if shape.variant != "cifar":
        cmd += f" --variant {shape.variant}"
    if batch != 1:
        cmd += f" --batch {batch}"
    return cmd + " --out lut.json"


@dataclass(frozen=True, eq=False)
class LatencyTable:
    """Per-op latencies of one deploy shape on one target, the fixed part, and how they were obtained."""

    key: dict[str, Any]
    fixed_ms: float
    ops: dict[OpKey, float]  # op time in context minus the empty wrapper's (call overhead), before op_scale
    op_scale: dict[str, float] = field(default_factory=dict)  # per op in-network factor; 1 where absent
    environment: dict[str, Any] = field(default_factory=dict)
    measurement: dict[str, Any] = field(default_factory=dict)  # raw timings, overheads, reference fit

    def __post_init__(self) -> None:
        """Every number a latency: finite, and not negative (a NaN would pass every bound and rank nothing)."""
        fix = "re-run `e2rnas lut` to measure a new table"
        values = [("fixed_ms", self.fixed_ms), *((f"{op} at C={C}, stride {s}, {z}px", ms)
                                                 for (op, C, s, z), ms in self.ops.items()),
                  *((f"op_scale of {op}", v) for op, v in self.op_scale.items())]
        bad = [(name, v) for name, v in values if not math.isfinite(v) or v < 0]
        if bad:
            name, v = bad[0]
            more = f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""
            raise LatencyTableError(f"latency table entry {name} is {v}{more}; every entry must be a finite "
                                    f"number >= 0: {fix}")

    # -- identity ----------------------------------------------------------------------------------------------
    @property
    def shape(self) -> DeployShape:
        return DeployShape(**self.key["deploy_shape"])

    @property
    def primitives(self) -> tuple[str, ...]:
        return tuple(self.key["primitives"])

    @property
    def target(self) -> str:
        return str(self.key["target"])

    @property
    def batch(self) -> int:
        return int(self.key["batch"])

    @property
    def precision(self) -> str:
        return str(self.key["precision"])

    def check_matches(self, *, shape: DeployShape, target: str | None = None, batch: int | None = None,
                      precision: str | None = None, primitives: tuple[str, ...] | None = None) -> None:
        """Refuse a table measured for anything other than what the caller deploys (one-line error)."""
        ours = describe_shape(self.shape)
        wrong = []
        if shape != self.shape:
            wrong.append(f"deploys {describe_shape(shape)}")
        if target is not None and target != self.target:
            wrong.append(f"targets {target}")
        if batch is not None and batch != self.batch:
            wrong.append(f"runs batch {batch}")
        if precision is not None and precision != self.precision:
            wrong.append(f"runs {precision}")
        if primitives is not None and tuple(primitives) != self.primitives:  # alpha's columns follow them
            wrong.append(f"searches ops {', '.join(primitives)} (the table has {', '.join(self.primitives)})")
        if wrong:
            raise LatencyTableError(
                f"latency table was measured for target {self.target}, deploy shape {ours}, batch {self.batch}, "
                f"{self.precision}; this search {' and '.join(wrong)}: run `"
                f"{lut_command(shape=shape, target=target or self.target, batch=batch or self.batch)}`")

    # -- prediction --------------------------------------------------------------------------------------------
    def op_ms(self, op: str, C: int, stride: int, size: int) -> float:
        """Predicted in-network ms of one op on one edge (measured in context, overhead removed, x op_scale[op])."""
        if op in _FREE_OPS:
            return 0.0
        try:
            return self.op_scale.get(op, 1.0) * self.ops[(op, int(C), int(stride), int(size))]
        except KeyError:
            raise LatencyTableError(
                f"latency table has no entry for {op} at C={C}, stride {stride}, {size}px (measured for "
                f"{describe_shape(self.shape)}): run `{lut_command(shape=self.shape, target=self.target)}`"
            ) from None

    @cached_property
    def _slots(self) -> list[Any]:
        return CostModel(self.shape, self.primitives).slots

    @cached_property
    def tables(self) -> dict[str, torch.Tensor]:
        """Per cell type, float64 [14, n_ops]: ms of each op on each edge summed over the cells of that type.

        Same layout as ``CostModel.tables[kind][..., 0]``; ``none`` is 0."""
        out = {kind: torch.zeros(NUM_EDGES, len(self.primitives), dtype=torch.float64) for kind in ("normal", "reduce")}
        for slot in self._slots:
            table = out["reduce" if slot.reduction else "normal"]
            for e in range(NUM_EDGES):
                stride, size = slot.edge_geometry(_edge_source(e))
                for k, op in enumerate(self.primitives):
                    table[e, k] += self.op_ms(op, slot.C, stride, size)
        return out

    def genotype_ms(self, genotype: Genotype) -> float:
        """Predicted latency of the deploy network built from ``genotype``: fixed + its 8 kept edges per cell."""
        total = self.fixed_ms
        for slot in self._slots:
            for op, inp in genotype.reduce if slot.reduction else genotype.normal:
                stride, size = slot.edge_geometry(inp)
                total += self.op_ms(op, slot.C, stride, size)
        return total

    def expected_ms(self, alpha_normal: torch.Tensor, alpha_reduce: torch.Tensor,
                    keep: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        """Differentiable latency estimate (ms) under softmax weights, exactly as ``CostModel.expected_cost``."""
        return expected_from_tables(self.tables, self._fixed_tensor, alpha_normal, alpha_reduce, self.primitives,
                                    keep=keep)

    @cached_property
    def _fixed_tensor(self) -> torch.Tensor:
        return torch.tensor(self.fixed_ms, dtype=torch.float64)

    # -- file I/O ----------------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT, "version": VERSION, "key": self.key, "environment": self.environment, "unit": "ms",
            "fixed_ms": self.fixed_ms, "op_scale": self.op_scale,
            "ops": [{"op": op, "C": C, "stride": s, "size": z, "ms": ms} for (op, C, s, z), ms in self.ops.items()],
            "measurement": self.measurement,
        }

    def save(self, path: str | Path) -> None:
        from e2rnas._io import atomic_write_json

        atomic_write_json(Path(path), self.to_dict())

    @classmethod
    def from_dict(cls, data: Any, *, where: str = "latency table") -> LatencyTable:
        fix = "re-run `e2rnas lut` to measure a new table"
        if not isinstance(data, dict):
            raise LatencyTableError(f"{where} is not a latency table (a JSON object is expected): {fix}")
        if data.get("format") != FORMAT:
            raise LatencyTableError(f"{where} is not an e2rnas latency table (format {data.get('format')!r}): {fix}")
        if data.get("version") != VERSION:
            raise LatencyTableError(f"{where} is latency-table version {data.get('version')!r}; this e2rnas reads "
                                    f"version {VERSION}: {fix}")
        missing = [k for k in _REQUIRED if k not in data]
        key = data.get("key")
        if isinstance(key, dict):
            missing += [f"key.{k}" for k in _KEY_FIELDS if k not in key]
        if missing:
            raise LatencyTableError(f"{where} misses {', '.join(missing)}: {fix}")
        if data.get("unit") != "ms":
            raise LatencyTableError(f"{where} is in unit {data.get('unit')!r}, expected ms: {fix}")
        try:
            shape = DeployShape(**key["deploy_shape"])
            ops = {(str(o["op"]), int(o["C"]), int(o["stride"]), int(o["size"])): float(o["ms"]) for o in data["ops"]}
            table = cls(key={**key, "deploy_shape": dataclasses.asdict(shape), "batch": int(key["batch"]),
                             "primitives": [str(p) for p in key["primitives"]]},
                        fixed_ms=float(data["fixed_ms"]), ops=ops,
                        op_scale={str(k): float(v) for k, v in (data.get("op_scale") or {}).items()},
                        environment=dict(data.get("environment") or {}),
                        measurement=dict(data.get("measurement") or {}))
        except (TypeError, KeyError, ValueError, AttributeError) as exc:
            raise LatencyTableError(f"{where} has a malformed entry ({type(exc).__name__}: {exc}): {fix}") from None
        from e2rnas.space.ops import PRIMITIVES

        if table.primitives != PRIMITIVES:  # alpha's columns follow the search space's op list
            raise LatencyTableError(f"{where} times ops {', '.join(table.primitives)}, but the search space has "
                                    f"{', '.join(PRIMITIVES)}: {fix}")
        table.tables  # noqa: B018 (every op at every edge geometry of the deploy shape: a missing entry is one line)
        return table

    @classmethod
    def load(cls, path: str | Path) -> LatencyTable:
        path = Path(path)
        if not path.is_file():
            raise LatencyTableError(f"latency table not found: {path}; measure one with `e2rnas lut --target cpu "
                                    f"--out {path}`")
        try:
            data = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            reason = f"{exc.msg} at line {exc.lineno}" if isinstance(exc, json.JSONDecodeError) else "not text"
            raise LatencyTableError(f"{path} is not valid JSON ({reason}; truncated?): re-run `e2rnas lut` to "
                                    "measure a new table") from None
        return cls.from_dict(data, where=str(path))
