"""``Genotype``: the one contract between search, retrain, export and deploy."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from e2rnas.errors import E2RNASError
from e2rnas.space.ops import PRIMITIVES

STEPS = 4  # intermediate nodes per cell
EDGES_PER_NODE = 2


class GenotypeError(E2RNASError):
    """A genotype file or value is malformed."""


Edge = tuple[str, int]


@dataclass(frozen=True)
class Genotype:
    """Two kept (op, input) edges per intermediate node, for normal and reduction cells.

    Inputs 0 and 1 are the cell inputs (outputs of the two previous cells); input k >= 2 is node k.
    """

    normal: tuple[Edge, ...]
    normal_concat: tuple[int, ...]
    reduce: tuple[Edge, ...]
    reduce_concat: tuple[int, ...]

    def __post_init__(self) -> None:
        for kind in ("normal", "reduce"):
            edges = tuple((str(op), int(i)) for op, i in getattr(self, kind))
            object.__setattr__(self, kind, edges)
            concat = tuple(int(c) for c in getattr(self, f"{kind}_concat"))
            object.__setattr__(self, f"{kind}_concat", concat)
            _validate_cell(kind, edges, concat)

    def to_dict(self) -> dict[str, Any]:
        return {
            "normal": [[op, i] for op, i in self.normal],
            "normal_concat": list(self.normal_concat),
            "reduce": [[op, i] for op, i in self.reduce],
            "reduce_concat": list(self.reduce_concat),
        }

    @classmethod
    def from_dict(cls, data: Any) -> Genotype:
        if not isinstance(data, dict):
            raise GenotypeError("a genotype must be a JSON object with keys normal, reduce (and *_concat)")
        if "genotype" in data and isinstance(data["genotype"], dict):
            data = data["genotype"]
        missing = {"normal", "reduce"} - set(data)
        if missing:
            raise GenotypeError(f"genotype is missing {sorted(missing)}; expected keys normal, reduce (+ *_concat)")
        try:
            return cls(
                normal=tuple((op, i) for op, i in data["normal"]),
                normal_concat=tuple(data.get("normal_concat", range(2, 2 + STEPS))),
                reduce=tuple((op, i) for op, i in data["reduce"]),
                reduce_concat=tuple(data.get("reduce_concat", range(2, 2 + STEPS))),
            )
        except (TypeError, ValueError) as exc:
            raise GenotypeError(f"genotype edges must be [op, input] pairs: {exc}") from exc

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    def describe(self) -> str:
        """One line for people: per cell, node k's two (op from input) pairs, nodes separated by ``;``."""
        def cell(edges: tuple[Edge, ...]) -> str:
            return "; ".join(", ".join(f"{op} from {i}" for op, i in edges[k:k + EDGES_PER_NODE])
                             for k in range(0, len(edges), EDGES_PER_NODE))

        return f"normal [{cell(self.normal)}], reduce [{cell(self.reduce)}]"

    @classmethod
    def from_json(cls, text: str) -> Genotype:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise GenotypeError(f"genotype is not valid JSON ({exc.msg} at line {exc.lineno})") from exc
        return cls.from_dict(data)

    def save(self, path: str | Path) -> None:
        from e2rnas._io import atomic_write_text

        atomic_write_text(Path(path), self.to_json() + "\n")

    @classmethod
    def load(cls, path: str | Path) -> Genotype:
        path = Path(path)
        if not path.is_file():
            raise GenotypeError(f"genotype file not found: {path}")
        return cls.from_json(path.read_text())


def _validate_cell(kind: str, edges: tuple[Edge, ...], concat: tuple[int, ...]) -> None:
    if len(edges) != STEPS * EDGES_PER_NODE:
        raise GenotypeError(f"{kind} cell needs {STEPS * EDGES_PER_NODE} (op, input) edges, got {len(edges)}")
    for k, (op, inp) in enumerate(edges):
        if op not in PRIMITIVES or op == "none":
            raise GenotypeError(f"{kind} edge {k}: unknown op {op!r}; choose from {', '.join(PRIMITIVES[1:])}")
        node = 2 + k // EDGES_PER_NODE
        if not 0 <= inp < node:
            raise GenotypeError(f"{kind} edge {k}: input {inp} is invalid for node {node} (must be 0..{node - 1})")
    if not concat or any(not 0 <= c < 2 + STEPS for c in concat):
        raise GenotypeError(f"{kind}_concat {list(concat)} must list nodes in 0..{1 + STEPS}")


def _g(normal: str, reduce: str) -> Genotype:
    def pairs(text: str) -> tuple[Edge, ...]:
        items = [p.strip().split() for p in text.split(",")]
        return tuple((op, int(i)) for op, i in items)

    concat = tuple(range(2, 2 + STEPS))
    return Genotype(pairs(normal), concat, pairs(reduce), concat)


#: Published genotypes (``../shared/REFERENCE.md``); names are case-sensitive registry keys.
GENOTYPES: dict[str, Genotype] = {
    "DARTS_V1": _g(
        "sep_conv_3x3 1, sep_conv_3x3 0, skip_connect 0, sep_conv_3x3 1, skip_connect 0, sep_conv_3x3 1, "
        "sep_conv_3x3 0, skip_connect 2",
        "max_pool_3x3 0, max_pool_3x3 1, skip_connect 2, max_pool_3x3 0, max_pool_3x3 0, skip_connect 2, "
        "skip_connect 2, avg_pool_3x3 0",
    ),
    "DARTS_V2": _g(
        "sep_conv_3x3 0, sep_conv_3x3 1, sep_conv_3x3 0, sep_conv_3x3 1, sep_conv_3x3 1, skip_connect 0, "
        "skip_connect 0, dil_conv_3x3 2",
        "max_pool_3x3 0, max_pool_3x3 1, skip_connect 2, max_pool_3x3 1, max_pool_3x3 0, skip_connect 2, "
        "skip_connect 2, max_pool_3x3 1",
    ),
    "PDARTS": _g(
        "skip_connect 0, dil_conv_3x3 1, skip_connect 0, sep_conv_3x3 1, sep_conv_3x3 1, sep_conv_3x3 3, "
        "sep_conv_3x3 0, dil_conv_5x5 4",
        "avg_pool_3x3 0, sep_conv_5x5 1, sep_conv_3x3 0, dil_conv_5x5 2, max_pool_3x3 0, dil_conv_3x3 1, "
        "dil_conv_3x3 1, dil_conv_5x5 3",
    ),
    "PC_DARTS": _g(
        "sep_conv_3x3 1, skip_connect 0, sep_conv_3x3 0, dil_conv_3x3 1, sep_conv_5x5 0, sep_conv_3x3 1, "
        "avg_pool_3x3 0, dil_conv_3x3 1",
        "sep_conv_5x5 1, max_pool_3x3 0, sep_conv_5x5 1, sep_conv_5x5 2, sep_conv_3x3 0, sep_conv_3x3 3, "
        "sep_conv_3x3 1, sep_conv_3x3 2",
    ),
    "E2RNAS": _g(
        "avg_pool_3x3 0, dil_conv_5x5 1, skip_connect 0, skip_connect 2, skip_connect 0, max_pool_3x3 2, "
        "avg_pool_3x3 0, avg_pool_3x3 2",
        "avg_pool_3x3 0, avg_pool_3x3 1, avg_pool_3x3 0, skip_connect 2, skip_connect 3, avg_pool_3x3 0, "
        "skip_connect 2, skip_connect 3",
    ),
    "E2RNAS_PC_DARTS": _g(
        "avg_pool_3x3 0, avg_pool_3x3 1, max_pool_3x3 0, max_pool_3x3 2, avg_pool_3x3 2, avg_pool_3x3 0, "
        "skip_connect 0, dil_conv_3x3 4",
        "avg_pool_3x3 0, max_pool_3x3 1, avg_pool_3x3 0, dil_conv_5x5 2, dil_conv_3x3 0, skip_connect 2, "
        "dil_conv_5x5 2, sep_conv_3x3 0",
    ),
    "E2RNAS_PDARTS": _g(
        "sep_conv_5x5 0, dil_conv_5x5 1, avg_pool_3x3 0, dil_conv_3x3 2, dil_conv_3x3 2, dil_conv_3x3 3, "
        "dil_conv_3x3 2, dil_conv_3x3 3",
        "skip_connect 0, skip_connect 1, sep_conv_3x3 1, sep_conv_3x3 2, avg_pool_3x3 0, sep_conv_3x3 1, "
        "sep_conv_3x3 1, sep_conv_3x3 3",
    ),
}


def resolve_genotype(ref: str | Path) -> Genotype:
    """A built-in name, a ``genotype.json`` file, or a run directory holding one (or a ``model.pt``)."""
    text = str(ref)
    if text in GENOTYPES:
        return GENOTYPES[text]
    path = Path(text)
    if path.is_dir():
        if (path / "genotype.json").is_file():
            return Genotype.load(path / "genotype.json")
        for sub in ("search", "train"):
            if (path / sub / "genotype.json").is_file():
                return Genotype.load(path / sub / "genotype.json")
        raise GenotypeError(f"no genotype.json in {path}; pass a search run directory, a JSON file or a built-in name")
    if path.is_file():
        if path.suffix == ".pt":
            from e2rnas.model_io import read_model_file

            return Genotype.from_dict(read_model_file(path)["genotype"])
        return Genotype.load(path)
    raise GenotypeError(
        f"{text!r} is neither a built-in genotype ({', '.join(GENOTYPES)}) nor an existing file or directory"
    )
