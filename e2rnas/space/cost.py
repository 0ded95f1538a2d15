"""Exact deploy-cost model: per-op params and MACs measured at each cell's real width, stride and resolution.

Units: params in M (1e6 parameters), MACs in M (1e6 multiply-adds, counted on convolutions and matmuls with
``FlopCounterMode``); FLOPs = 2 x MACs. All numbers describe the *deployed* evaluation network (by default
20 cells, C=36, 32x32, 10 classes), not the search supernet.

A genotype's exact cost is the fixed part (normalisation, stem, cell pre-processing, classifier) plus its 8 kept
edges per cell. The differentiable estimate N(alpha), F(alpha) comes in two forms (``COST_ESTIMATES``):
``deployed`` replaces each edge's op by its softmax expectation over the non-``none`` ops, weights each edge by its
chance of being kept, 2 / (in-degree of its node), and adds the fixed part, so that it estimates the network the
search hands over (``docs/cost-model.md``); ``paper`` is eqs. (5), (6) as written: every edge of every cell, the
softmax over all ops, ``none`` included, and the op costs of Section IV-B (``PAPER_OP_MACS``), nothing else
(``docs/fidelity.md`` row 19).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property, lru_cache

import torch
from torch import nn

from e2rnas.space._device import constant_like, index_tensor
from e2rnas.space.genotypes import EDGES_PER_NODE, STEPS, Genotype
from e2rnas.space.ops import OPS, PRIMITIVES

NUM_EDGES = sum(2 + i for i in range(STEPS))
MULTIPLIER = STEPS  # every cell concatenates its 4 intermediate nodes
#: the form of the differentiable estimate: ``deployed`` (the default) or ``paper`` (eqs. 5, 6 as written)
COST_ESTIMATES = ("deployed", "paper")


def _sep_conv(w: int) -> Callable[[int, int, int], int]:
    return lambda C, hw, stride: 2 * (C * hw + C * C * hw + w * w * C * hw + 2 * C * hw)


def _dil_conv(w: int) -> Callable[[int, int, int], int]:
    return lambda C, hw, stride: C * hw + C * C * hw + w * w * C * hw + 2 * C * hw


#: f_o of Section IV-B, (C, H x W, stride) -> multiply-adds: ReLU CHW, depthwise w^2 CHW, pointwise C^2 HW, BN
#: 2 CHW (a separable convolution twice), avg-pool CHW, max-pool, identity and ``none`` 0, a stride-2 skip (the
#: FactorizedReduce) C^2 HW + 2 CHW. The paper writes them for stride 1 ("skip ... 0 if stride = 0"); H x W is
#: the op's output map, so a stride-2 op is charged at the size it produces.
PAPER_OP_MACS: dict[str, Callable[[int, int, int], int]] = {
    "none": lambda C, hw, stride: 0,
    "max_pool_3x3": lambda C, hw, stride: 0,
    "avg_pool_3x3": lambda C, hw, stride: C * hw,
    "skip_connect": lambda C, hw, stride: 0 if stride == 1 else C * C * hw + 2 * C * hw,
    "sep_conv_3x3": _sep_conv(3),
    "sep_conv_5x5": _sep_conv(5),
    "dil_conv_3x3": _dil_conv(3),
    "dil_conv_5x5": _dil_conv(5),
}


@dataclass(frozen=True)
class DeployShape:
    """The network a user deploys: cells, initial channels, classes, input resolution, stem variant."""

    layers: int = 20
    C: int = 36
    num_classes: int = 10
    input_size: int = 32
    variant: str = "cifar"


@dataclass(frozen=True)
class Cost:
    params: int
    macs: int

    @property
    def params_m(self) -> float:
        return self.params / 1e6

    @property
    def macs_m(self) -> float:
        return self.macs / 1e6

    @property
    def flops_m(self) -> float:
        return 2 * self.macs / 1e6

    def __add__(self, other: Cost) -> Cost:
        return Cost(self.params + other.params, self.macs + other.macs)

    def as_dict(self) -> dict[str, float]:
        return {"params_m": self.params_m, "macs_m": self.macs_m, "flops_m": self.flops_m}


def measure(module: nn.Module, input_shape: tuple[int, ...]) -> Cost:
    """Params of ``module`` and MACs of one eval-mode forward on a tensor of ``input_shape`` (batch 1)."""
    from torch.utils.flop_counter import FlopCounterMode

    module.eval()
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        module(torch.zeros(input_shape))
    return Cost(sum(p.numel() for p in module.parameters()), counter.get_total_flops() // 2)


@lru_cache(maxsize=1)
def _edge_keep_weights() -> torch.Tensor:
    """Probability that an edge survives the top-2 rule under a uniform choice: 2 / in-degree of its node."""
    return torch.tensor([EDGES_PER_NODE / (2 + i) for i in range(STEPS) for _ in range(2 + i)], dtype=torch.float64)


def _edge_source(edge: int) -> int:
    """Input index (0 = s0, 1 = s1, k = node k) of edge ``edge`` in the DARTS edge order."""
    start = 0
    for i in range(STEPS):
        if edge < start + 2 + i:
            return edge - start
        start += 2 + i
    raise IndexError(edge)


@dataclass(frozen=True)
class CellSlot:
    index: int
    reduction: bool
    reduction_prev: bool
    C_pp: int
    C_p: int
    C: int
    size_in: int  # resolution of the cell's inputs after pre-processing

    def edge_geometry(self, source: int) -> tuple[int, int]:
        """(stride, input resolution) of an edge from input ``source``: reduction edges from the cell inputs
        have stride 2; edges from intermediate nodes of a reduction cell run at the halved resolution."""
        if not self.reduction:
            return 1, self.size_in
        return (2, self.size_in) if source < 2 else (1, -(-self.size_in // 2))


class CostModel:
    """Per-(cell, edge, op) costs of a deploy network, and its fixed cost."""

    def __init__(self, shape: DeployShape = DeployShape(), primitives: tuple[str, ...] = PRIMITIVES,
                 estimate: str = "deployed"):
        from e2rnas.space.network import Network  # the stem/classifier modules, built exactly as deployed

        if estimate not in COST_ESTIMATES:
            raise ValueError(f"unknown cost estimate {estimate!r}; choose from {', '.join(COST_ESTIMATES)}")
        unknown = [op for op in primitives if op not in PAPER_OP_MACS]
        if estimate == "paper" and unknown:
            raise ValueError(f"the paper's op costs (Section IV-B) cover the DARTS ops, not {', '.join(unknown)}: "
                             "use the deployed cost estimate")
        self.shape = shape
        self.estimate = estimate
        self.primitives = tuple(primitives)
        self._net_cls = Network
        self.slots = self._slots()
        self._op_cache: dict[tuple[str, int, int, int], Cost] = {}

    def _slots(self) -> list[CellSlot]:
        s = self.shape
        if s.variant == "cifar":
            C_pp = C_p = 3 * s.C
            size, reduction_prev = s.input_size, False
        else:
            C_pp = C_p = s.C
            size, reduction_prev = -(-s.input_size // 8), True
        C, slots = s.C, []
        for i in range(s.layers):
            reduction = i in (s.layers // 3, 2 * s.layers // 3)
            if reduction:
                C *= 2
            slots.append(CellSlot(i, reduction, reduction_prev, C_pp, C_p, C, size))
            if reduction:
                size = -(-size // 2)
            reduction_prev = reduction
            C_pp, C_p = C_p, MULTIPLIER * C
        return slots

    def op_cost(self, op: str, C: int, stride: int, size: int) -> Cost:
        key = (op, C, stride, size)
        if key not in self._op_cache:
            with _no_rng():
                self._op_cache[key] = measure(OPS[op](C, stride, True), (1, C, size, size))
        return self._op_cache[key]

    def edge_costs(self, slot: CellSlot) -> torch.Tensor:
        """[14, n_ops, 2] params and MACs of every op on every edge of one cell."""
        out = torch.zeros(NUM_EDGES, len(self.primitives), 2, dtype=torch.float64)
        for e in range(NUM_EDGES):
            stride, size = slot.edge_geometry(_edge_source(e))
            for k, op in enumerate(self.primitives):
                c = self.op_cost(op, slot.C, stride, size)
                out[e, k] = torch.tensor([c.params, c.macs], dtype=torch.float64)
        return out

    @cached_property
    def fixed(self) -> Cost:
        """Everything but the 8 edge ops per cell: normalisation, stem, pre-processing convs, classifier."""
        # A network whose every edge is a parameter- and MAC-free op: what it costs is the fixed part.
        s = self.shape
        with _no_rng():
            net = self._net_cls(_pooling_genotype(), s.C, s.layers, s.num_classes, variant=s.variant,
                                input_size=s.input_size)
            return measure(net, (1, 3, s.input_size, s.input_size))

    @cached_property
    def tables(self) -> dict[str, torch.Tensor]:
        """Per cell type, [14, n_ops, 2] costs summed over the cells of that type (they share alpha)."""
        normal = torch.zeros(NUM_EDGES, len(self.primitives), 2, dtype=torch.float64)
        reduce = torch.zeros_like(normal)
        for slot in self.slots:
            target = reduce if slot.reduction else normal
            target += self.edge_costs(slot)
        return {"normal": normal, "reduce": reduce}

    @cached_property
    def _fixed_tensor(self) -> torch.Tensor:
        return torch.tensor([self.fixed.params, self.fixed.macs], dtype=torch.float64)

    @cached_property
    def paper_tables(self) -> dict[str, torch.Tensor]:
        """Per cell type, [14, n_ops, 2] n_o (the op's parameters) and f_o (``PAPER_OP_MACS``) summed over the
        cells of that type, each at its width and output resolution: the op costs of eqs. (5), (6)."""
        out = {kind: torch.zeros(NUM_EDGES, len(self.primitives), 2, dtype=torch.float64)
               for kind in ("normal", "reduce")}
        for slot in self.slots:
            for e in range(NUM_EDGES):
                stride, size = slot.edge_geometry(_edge_source(e))
                hw = (-(-size // stride)) ** 2
                for k, op in enumerate(self.primitives):
                    n_o = self.op_cost(op, slot.C, stride, size).params
                    f_o = PAPER_OP_MACS[op](slot.C, hw, stride)
                    out["reduce" if slot.reduction else "normal"][e, k] += torch.tensor([n_o, f_o])
        return out

    def cell_costs(self, genotype: Genotype) -> list[tuple[CellSlot, Cost]]:
        """Exact cost of each cell's 8 kept edge ops, in network order (the rest is ``fixed``)."""
        out = []
        for slot in self.slots:
            total = Cost(0, 0)
            for op, inp in genotype.reduce if slot.reduction else genotype.normal:
                stride, size = slot.edge_geometry(inp)
                total = total + self.op_cost(op, slot.C, stride, size)
            out.append((slot, total))
        return out

    def genotype_cost(self, genotype: Genotype) -> Cost:
        """Exact cost of the deploy network built from ``genotype`` (its 8 kept edges per cell)."""
        total = self.fixed
        for _, cell in self.cell_costs(genotype):
            total = total + cell
        return total

    def expected_cost(self, alpha_normal: torch.Tensor, alpha_reduce: torch.Tensor,
                      keep: tuple[torch.Tensor, torch.Tensor] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Differentiable (params_M, MACs_M) estimate under softmax weights, in ``self.estimate``'s form: eqs. 5, 6
        as written (``paper``: ``keep`` plays no part), or the deployed network's (kept-edge weights, fixed part)."""
        if self.estimate == "paper":
            total = sum((torch.softmax(alpha, dim=-1)[..., None] * constant_like(self.paper_tables[kind], alpha))
                        .sum(dim=(0, 1))
                        for alpha, kind in ((alpha_normal, "normal"), (alpha_reduce, "reduce")))
            return total[0] / 1e6, total[1] / 1e6
        total = expected_from_tables(self.tables, self._fixed_tensor, alpha_normal, alpha_reduce, self.primitives,
                                     keep=keep)
        return total[0] / 1e6, total[1] / 1e6


def expected_from_tables(tables: dict[str, torch.Tensor], fixed: torch.Tensor, alpha_normal: torch.Tensor,
                         alpha_reduce: torch.Tensor, primitives: tuple[str, ...],
                         keep: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
    """fixed + sum over edges and non-``none`` ops of keep weight x softmax weight x table entry, per cell type.

    ``tables[kind]`` is ``[14, n_ops, *rest]`` (params/MACs: rest = (2,); latency: rest = ()); the result has shape
    ``rest``, in alpha's dtype and device. Shared by every additive cost (``CostModel``, ``LatencyTable``) so that
    the search estimates each of them the same way.

    ``keep`` (normal, reduce), 14 each: the edges' keep weights; default 2 / in-degree (a uniform choice of two
    inputs per node). PC-DARTS passes 2 x its edge-normalisation softmax, so that beta moves the estimate as it
    moves the derived cell.
    """
    uniform = constant_like(_edge_keep_weights(), alpha_normal)
    allowed = [k for k, name in enumerate(primitives) if name != "none"]
    total = constant_like(fixed, alpha_normal)
    for i, (alpha, kind) in enumerate(((alpha_normal, "normal"), (alpha_reduce, "reduce"))):
        table = constant_like(tables[kind], alpha, columns=tuple(allowed))
        extra = (1,) * (table.dim() - 2)
        picked = alpha.index_select(1, index_tensor(tuple(allowed), alpha.device))  # not alpha[:, list]: a copy
        p = torch.softmax(picked, dim=-1).reshape(*picked.shape, *extra)
        k = uniform if keep is None else keep[i].to(alpha)
        total = total + (k.reshape(-1, 1, *extra) * p * table).sum(dim=(0, 1))
    return total


def _no_rng():
    """Building modules to measure them draws initial weights: keep the caller's RNG stream untouched (a resumed
    search with a cold cost cache must draw the same random numbers as an uninterrupted one)."""
    return torch.random.fork_rng(devices=[])


def _pooling_genotype() -> Genotype:
    concat = tuple(range(2, 2 + STEPS))
    edges = tuple(("max_pool_3x3", j) for _ in range(STEPS) for j in (0, 1))
    return Genotype(edges, concat, edges, concat)
