"""The DARTS supernet: a softmax-weighted mixed op on each of a cell's 14 edges.

Architecture parameters (``alpha_normal``, ``alpha_reduce``: 14 x 8) are registered on the module so that
``torch.func.functional_call`` can swap the weights, but ``weight_parameters()`` and ``arch_parameters()`` keep
the two sets apart for the two optimisers. ``partial_channels > 1`` gives the PC-DARTS variant (a 1/K channel
sample per edge, channel shuffle, and edge-normalisation weights ``beta_*``). Cells run their edges batched
(``edge_batch.cell_forward``: one call per op for all edges leaving the same states); ``cell.batched = False`` runs
the per-edge loop below, the reference it is tested against.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from e2rnas.space.edge_batch import cell_forward, channel_shuffle
from e2rnas.space.genotypes import EDGES_PER_NODE, STEPS, Genotype
from e2rnas.space.network import Normalize
from e2rnas.space.ops import OPS, POOLING_OPS, PRIMITIVES, FactorizedReduce, ReLUConvBN

NUM_EDGES = sum(2 + i for i in range(STEPS))  # 14
ARCH_PARAM_NAMES = ("alpha_normal", "alpha_reduce", "beta_normal", "beta_reduce")


class MixedOp(nn.Module):
    def __init__(self, C: int, stride: int, primitives: tuple[str, ...], partial_channels: int = 1):
        super().__init__()
        self.k = partial_channels
        self.stride = stride
        self.ops = nn.ModuleList()
        for name in primitives:
            op = OPS[name](C // self.k, stride, False)
            if name in POOLING_OPS:
                op = nn.Sequential(op, nn.BatchNorm2d(C // self.k, affine=False))
            self.ops.append(op)
        # The zero op adds nothing to the output and its alpha gets its gradient through the softmax alone,
        # so it is never run.
        self.active = [k for k, name in enumerate(primitives) if name != "none"]
        self.pooling = frozenset(k for k, name in enumerate(primitives) if name in POOLING_OPS)

        self.skip = primitives.index("skip_connect") if "skip_connect" in primitives else -1
        self.skip_dropout = 0.0  # P-DARTS: dropout on the parameter-free skip op during search

    def _mix(self, x: torch.Tensor, weights: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        out = 0
        for k in self.active:
            if mask is not None and not bool(mask[k]):
                continue  # pruned (P-DARTS): weight 0, never run
            h = self.ops[k](x)
            if k == self.skip and self.stride == 1 and self.skip_dropout > 0:  # the identity only (P-DARTS)
                h = F.dropout(h, self.skip_dropout, self.training)
            out = out + weights[k] * h
        return out

    def forward(self, x: torch.Tensor, weights: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        if self.k == 1:
            return self._mix(x, weights, mask)
        c = x.shape[1] // self.k
        xa, xb = x[:, :c], x[:, c:]
        out = self._mix(xa, weights, mask)
        if self.stride == 2:
            xb = F.max_pool2d(xb, 2, 2, ceil_mode=True)
        return channel_shuffle(torch.cat([out, xb], dim=1), self.k)


class SearchCell(nn.Module):
    def __init__(self, steps: int, multiplier: int, C_pp: int, C_p: int, C: int, reduction: bool,
                 reduction_prev: bool, primitives: tuple[str, ...], partial_channels: int):
        super().__init__()
        self.reduction = reduction
        self.steps = steps
        self.multiplier = multiplier
        self.preprocess0 = FactorizedReduce(C_pp, C, affine=False) if reduction_prev else ReLUConvBN(
            C_pp, C, 1, 1, 0, affine=False)
        self.preprocess1 = ReLUConvBN(C_p, C, 1, 1, 0, affine=False)
        self.batched = True  # edge_batch.cell_forward; False: the per-edge loop (the reference it is tested against)
        self.edges = nn.ModuleList()
        for i in range(steps):
            for j in range(2 + i):
                stride = 2 if reduction and j < 2 else 1
                self.edges.append(MixedOp(C, stride, primitives, partial_channels))

    def forward(self, s0: torch.Tensor, s1: torch.Tensor, weights: torch.Tensor,
                edge_weights: torch.Tensor | None, mask: torch.Tensor | None = None) -> torch.Tensor:
        states = [self.preprocess0(s0), self.preprocess1(s1)]
        if self.batched:
            states = cell_forward(self.edges, self.steps, *states, weights, mask,
                                  partial=self.edges[0].k, edge_weights=edge_weights)
            return torch.cat(states[-self.multiplier:], dim=1)
        offset = 0
        for _ in range(self.steps):
            s = 0
            for j, h in enumerate(states):
                out = self.edges[offset + j](h, weights[offset + j], None if mask is None else mask[offset + j])
                s = s + (out if edge_weights is None else edge_weights[offset + j] * out)
            offset += len(states)
            states.append(s)
        return torch.cat(states[-self.multiplier:], dim=1)


class SearchNetwork(nn.Module):
    """DARTS search network (CIFAR stem); reduction cells at 1/3 and 2/3 of the depth."""

    def __init__(self, C: int, layers: int, num_classes: int, steps: int = STEPS, multiplier: int = 4,
                 stem_multiplier: int = 3, primitives: tuple[str, ...] = PRIMITIVES, partial_channels: int = 1,
                 mean: tuple[float, ...] = (0.5, 0.5, 0.5), std: tuple[float, ...] = (0.5, 0.5, 0.5)):
        super().__init__()
        if layers < 3:
            raise ValueError(f"a search network needs at least 3 cells, got {layers}")
        self.primitives = tuple(primitives)
        self.steps = steps
        self.partial_channels = partial_channels
        self.normalize = Normalize(mean, std)
        C_curr = stem_multiplier * C
        self.stem = nn.Sequential(nn.Conv2d(3, C_curr, 3, padding=1, bias=False), nn.BatchNorm2d(C_curr))
        C_pp, C_p, C_curr = C_curr, C_curr, C
        self.cells = nn.ModuleList()
        reduction_prev = False
        for i in range(layers):
            reduction = i in (layers // 3, 2 * layers // 3)
            if reduction:
                C_curr *= 2
            cell = SearchCell(steps, multiplier, C_pp, C_p, C_curr, reduction, reduction_prev, self.primitives,
                              partial_channels)
            self.cells.append(cell)
            reduction_prev = reduction
            C_pp, C_p = C_p, multiplier * C_curr
        self.global_pooling = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(C_p, num_classes)
        n_ops = len(self.primitives)
        self.alpha_normal = nn.Parameter(1e-3 * torch.randn(NUM_EDGES, n_ops))
        self.alpha_reduce = nn.Parameter(1e-3 * torch.randn(NUM_EDGES, n_ops))
        if partial_channels > 1:
            self.beta_normal = nn.Parameter(1e-3 * torch.randn(NUM_EDGES))
            self.beta_reduce = nn.Parameter(1e-3 * torch.randn(NUM_EDGES))
        # P-DARTS op pruning: False marks an op removed from an edge's candidates.
        self.register_buffer("mask_normal", torch.ones(NUM_EDGES, n_ops, dtype=torch.bool))
        self.register_buffer("mask_reduce", torch.ones(NUM_EDGES, n_ops, dtype=torch.bool))
        # the masks as the forward reads them, kept on the host: reading device masks in every forward would be a
        # host synchronisation per edge group on a GPU (issue 26); set by set_masks and by loading a state dict
        self._pruned = False
        self._host_masks: tuple[torch.Tensor, torch.Tensor] | None = None
        self.register_load_state_dict_post_hook(lambda module, _keys: module._refresh_pruned())

    @property
    def pruned(self) -> bool:
        return self._pruned

    def _refresh_pruned(self) -> None:
        normal, reduce = self.mask_normal.cpu(), self.mask_reduce.cpu()
        self._pruned = not bool(normal.all() and reduce.all())
        self._host_masks = (normal, reduce) if self._pruned else None

    def set_masks(self, normal: torch.Tensor, reduce: torch.Tensor) -> None:
        self.mask_normal.copy_(normal)
        self.mask_reduce.copy_(reduce)
        self._refresh_pruned()

    def set_skip_dropout(self, p: float) -> None:
        for m in self.modules():
            if isinstance(m, MixedOp):
                m.skip_dropout = p

    def masked_alphas(self) -> tuple[torch.Tensor, torch.Tensor]:
        """alpha with pruned ops at -inf (softmax weight 0, no gradient)."""
        if not self.pruned:
            return self.alpha_normal, self.alpha_reduce
        return (self.alpha_normal.masked_fill(~self.mask_normal, float("-inf")),
                self.alpha_reduce.masked_fill(~self.mask_reduce, float("-inf")))

    def arch_parameters(self) -> list[nn.Parameter]:
        return [p for n, p in self.named_parameters() if n in ARCH_PARAM_NAMES]

    def weight_parameters(self) -> list[nn.Parameter]:
        return [p for n, p in self.named_parameters() if n not in ARCH_PARAM_NAMES]

    def named_weight_parameters(self) -> dict[str, nn.Parameter]:
        return {n: p for n, p in self.named_parameters() if n not in ARCH_PARAM_NAMES}

    def _edge_weights(self, reduction: bool) -> torch.Tensor | None:
        if self.partial_channels == 1:
            return None
        beta = self.beta_reduce if reduction else self.beta_normal
        out, start = [], 0
        for i in range(self.steps):
            out.append(F.softmax(beta[start:start + 2 + i], dim=-1))
            start += 2 + i
        return torch.cat(out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.normalize(x)
        if x.device.type == "cpu":
            # oneDNN's NHWC kernels run the supernet's small depthwise/pointwise convolutions several times faster.
            x = x.contiguous(memory_format=torch.channels_last)
        s0 = s1 = self.stem(x)
        a_normal, a_reduce = self.masked_alphas()
        w_normal, w_reduce = F.softmax(a_normal, dim=-1), F.softmax(a_reduce, dim=-1)
        e_normal, e_reduce = self._edge_weights(False), self._edge_weights(True)
        m_normal, m_reduce = self._host_masks or (None, None)
        for cell in self.cells:
            w, e, m = (w_reduce, e_reduce, m_reduce) if cell.reduction else (w_normal, e_normal, m_normal)
            s0, s1 = s1, cell(s0, s1, w, e, m)
        return self.classifier(self.global_pooling(s1).flatten(1))

    def cost_inputs(self) -> tuple[torch.Tensor, torch.Tensor, tuple[torch.Tensor, torch.Tensor] | None]:
        """(alpha_normal, alpha_reduce, keep) for the cost estimates: masked alphas and, for PC-DARTS, the edges'
        keep weights 2 x softmax(beta) per node (None: the uniform 2 / in-degree)."""
        a_normal, a_reduce = self.masked_alphas()
        if self.partial_channels == 1:
            return a_normal, a_reduce, None
        return a_normal, a_reduce, (2 * self._edge_weights(False), 2 * self._edge_weights(True))

    def edge_strengths(self, reduction: bool) -> torch.Tensor:
        """Op weights per edge (14 x n_ops), scaled by the PC-DARTS edge weights where present."""
        a_normal, a_reduce = self.masked_alphas()
        w = F.softmax(a_reduce if reduction else a_normal, dim=-1)
        e = self._edge_weights(reduction)
        return w if e is None else w * e[:, None]

    def genotype(self, max_skips_normal: int | None = None) -> Genotype:
        return derive_genotype(self.edge_strengths(False), self.edge_strengths(True), self.primitives,
                               steps=self.steps, max_skips_normal=max_skips_normal)


def derive_genotype(w_normal: torch.Tensor, w_reduce: torch.Tensor, primitives: tuple[str, ...],
                    steps: int = STEPS, max_skips_normal: int | None = None) -> Genotype:
    """The DARTS rule: per node, the two incoming edges whose strongest non-none op is strongest, then that op.

    ``max_skips_normal`` (P-DARTS): while the normal cell keeps more skip connections, the weakest skip weight is
    zeroed and the cell derived again.
    """
    if max_skips_normal is not None and "skip_connect" in primitives:
        skip = primitives.index("skip_connect")
        w_normal = w_normal.detach().clone()
        starts = [sum(2 + i for i in range(k)) for k in range(steps)]
        while True:
            g = derive_genotype(w_normal, w_reduce, primitives, steps)
            kept = [starts[k // EDGES_PER_NODE] + inp for k, (op, inp) in enumerate(g.normal) if op == "skip_connect"]
            if len(kept) <= max_skips_normal:
                return g
            weakest = min(kept, key=lambda e: float(w_normal[e, skip]))
            w_normal[weakest, skip] = 0.0

    def parse(weights: torch.Tensor) -> tuple[tuple[str, int], ...]:
        weights = weights.detach().cpu()
        allowed = [k for k, name in enumerate(primitives) if name != "none"]
        gene: list[tuple[str, int]] = []
        start = 0
        for i in range(steps):
            n_in = 2 + i
            w = weights[start:start + n_in][:, allowed]
            best = w.max(dim=1).values
            # stable: ties resolved by the lower input index
            order = sorted(range(n_in), key=lambda j: (-float(best[j]), j))[:EDGES_PER_NODE]
            for j in sorted(order):
                gene.append((primitives[allowed[int(w[j].argmax())]], j))
            start += n_in
        return tuple(gene)

    concat = tuple(range(2, 2 + steps))
    return Genotype(parse(w_normal), concat, parse(w_reduce), concat)
