"""Shared by the bi-level step tests: a synthetic latency table whose every op time is a distinct function of the op
and its place, so that the latency objective has a real alpha-gradient."""

from __future__ import annotations

from e2rnas.space.cost import CostModel, DeployShape
from e2rnas.space.latency_table import LatencyTable


def synthetic_table(shape: DeployShape, prims: tuple[str, ...]) -> LatencyTable:
    """A table for ``shape``: op k at width C, stride s, size z takes 0.01 (k+1) + 1e-3 C + 0.1 s + 1e-4 z ms."""
    cost = CostModel(shape, prims)
    ops = {}
    for slot in cost.slots:
        for source in range(5):
            stride, size = slot.edge_geometry(source)
            for k, op in enumerate(prims):
                ops[(op, slot.C, stride, size)] = 0.01 * (k + 1) + 1e-3 * slot.C + 0.1 * stride + 1e-4 * size
    key = {"target": "cpu", "runtime": "synthetic", "precision": "fp32", "batch": 1, "threads": 1,
           "deploy_shape": {"layers": shape.layers, "C": shape.C, "num_classes": shape.num_classes,
                            "input_size": shape.input_size, "variant": shape.variant},
           "primitives": list(prims)}
    return LatencyTable(key=key, fixed_ms=0.5, ops=ops)
