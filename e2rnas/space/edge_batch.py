"""A search cell's edges run batched: every edge leaving the same states goes through one call per op.

The 14 edges of a cell leave 5 states; those from the two cell inputs (8 edges) can run at once, then the 3, 2
and 1 edges of each new node. For one group of E edges an op runs once on E copies of its input side by side
along channels: the depthwise convolutions with E x C groups, the pointwise ones as E-group convolutions, the
batch norms over E x C channels (per-channel statistics, so each edge keeps its own). Pooling and its
(affine-free) batch norm are the same for every edge of a state and run once per state. The mixture is one
multiply-add per op over the whole group. Same numbers as the per-edge loop, up to float summation order; the
parameters and batch-norm buffers stay in the per-edge modules (checkpoints are unchanged), and the running
statistics are written back to them. Several times fewer kernel launches: the supernet at small widths is
launch-bound (``docs/bilevel-step.md``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from e2rnas.space._device import index_tensor
from e2rnas.space.ops import DilConv, Identity, SepConv, Zero


def edge_groups(steps: int) -> list[list[tuple[int, int]]]:
    """Groups of (node, input state) pairs in run order: both cell inputs' edges (node-major), then each node's."""
    first = [(i, j) for i in range(steps) for j in (0, 1)]
    return [first] + [[(i, j) for i in range(j - 1, steps)] for j in range(2, steps + 1)]


def edge_index(node: int, state: int) -> int:
    return sum(2 + m for m in range(node)) + state


def _batch_norm(x: torch.Tensor, bns: list[nn.BatchNorm2d]) -> torch.Tensor:
    """Batch norm over the channels of several affine-free BN modules side by side; their buffers are updated."""
    if len(bns) == 1:
        return bns[0](x)
    bn = bns[0]  # the search cell's BNs all track running statistics (nn.BatchNorm2d's default)
    mean = torch.cat([b.running_mean for b in bns])
    var = torch.cat([b.running_var for b in bns])
    out = F.batch_norm(x, mean, var, None, None, bn.training, bn.momentum, bn.eps)
    if bn.training:
        with torch.no_grad():
            c = bn.num_features
            torch._foreach_copy_([b.running_mean for b in bns], list(mean.split(c)))
            torch._foreach_copy_([b.running_var for b in bns], list(var.split(c)))
            torch._foreach_add_([b.num_batches_tracked for b in bns], 1)
    return out


@torch.no_grad()
def _copy_bn_buffers(pairs: list[tuple[nn.BatchNorm2d, nn.BatchNorm2d]]) -> None:
    """Each (src, dst): dst's running statistics become src's."""
    if pairs:
        names = ("running_mean", "running_var", "num_batches_tracked")
        torch._foreach_copy_([getattr(d, n) for _, d in pairs for n in names],
                             [getattr(s, n) for s, _ in pairs for n in names])


def _same_buffers(a: nn.Module, b: nn.Module) -> bool:
    """Whether two batch norms hold the same running statistics (then one pass serves both, eval or train)."""
    if a is b or not getattr(a, "track_running_stats", False):
        return True
    names = ("running_mean", "running_var", "num_batches_tracked")
    return all(torch.equal(getattr(a, n), getattr(b, n)) for n in names)


def _blocks(op: nn.Module) -> list[DilConv]:
    return list(op) if isinstance(op, SepConv) else [op]


def depthwise(x: torch.Tensor, w: torch.Tensor, *, stride: int, padding: int, dilation: int) -> torch.Tensor:
    """A depthwise convolution; a dilation-2 one as an undilated convolution of the input's 2x2 polyphase parts.

    oneDNN's dilated depthwise kernels are several times slower than its undilated ones, most of all at stride 2
    and in the backward pass (``benchmarks/search_step.py``). With dilation 2 and "same" padding, output pixel
    (2m + a, 2n + b) only reads input pixels of the same parity (a, b): at stride 2 that is the even/even part
    alone, at stride 1 the four parts, stacked along the batch and put back afterwards. Same numbers exactly.
    """
    k = w.shape[-1]
    same = dilation == 2 and padding == k - 1
    if not same or x.device.type != "cpu" or (stride == 1 and (x.shape[2] % 2 or x.shape[3] % 2)):
        return F.conv2d(x, w, None, stride, padding, dilation, x.shape[1])
    p = (k - 1) // 2
    if stride == 2:
        return F.conv2d(x[:, :, ::2, ::2], w, None, 1, p, 1, x.shape[1])
    n, c, h, wd = x.shape
    parts = x.permute(0, 2, 3, 1).reshape(n, h // 2, 2, wd // 2, 2, c).permute(2, 4, 0, 1, 3, 5)
    y = F.conv2d(parts.reshape(4 * n, h // 2, wd // 2, c).permute(0, 3, 1, 2), w, None, 1, p, 1, c)
    y = y.permute(0, 2, 3, 1).reshape(2, 2, n, h // 2, wd // 2, c).permute(2, 3, 0, 4, 1, 5)
    return y.reshape(n, h, wd, c).permute(0, 3, 1, 2)


def _conv(r: torch.Tensor, ops: list[nn.Module]) -> torch.Tensor:
    """ReLU-dwconv-pwconv-BN blocks of E edges on E inputs side by side (``r``: the inputs, already ReLU'd)."""
    n = len(ops)
    y = r
    for b, first in enumerate(_blocks(ops[0])):
        blocks = [_blocks(op)[b] for op in ops]
        if b:
            y = F.relu(y)
        dw = first[1]
        y = depthwise(y, torch.cat([bl[1].weight for bl in blocks]), stride=dw.stride[0], padding=dw.padding[0],
                      dilation=dw.dilation[0])
        y = F.conv2d(y, torch.cat([bl[2].weight for bl in blocks]), None, groups=n)
        y = _batch_norm(y, [bl[3] for bl in blocks])
    return y


def run_group(edges: list, group: list[tuple[int, int]], states: list[torch.Tensor], weights: torch.Tensor,
              mask: torch.Tensor | None) -> list[torch.Tensor]:
    """The weighted mixture of every edge in ``group`` (one tensor per edge, in group order).

    Every state feeds exactly one group, so what its edges share (its ReLU, its pooled maps) is computed here once.
    """
    idx = [edge_index(i, j) for i, j in group]
    mixed = [edges[e] for e in idx]
    m0 = mixed[0]
    C = states[group[0][1]].shape[1]
    w = weights.index_select(0, index_tensor(tuple(idx), weights.device))  # E x n_ops (weights[list]: a copy)
    scale = w.repeat_interleave(C, dim=0)  # E*C x n_ops: op k's weight for every channel of every edge
    inputs = [states[j] for _, j in group]
    relu: dict[int, torch.Tensor] = {}  # state -> its ReLU, shared by the conv ops (made at the first one)
    out = None
    syncs: list[tuple[nn.BatchNorm2d, nn.BatchNorm2d]] = []
    kept = None if mask is None else mask[idx].any(dim=0)
    for k in m0.active:
        if kept is not None and not bool(kept[k]):
            continue  # pruned on every edge of the group (P-DARTS): never run
        ops = [mo.ops[k] for mo in mixed]
        op = ops[0]
        if isinstance(op, (SepConv, DilConv)):
            relu = relu or {j: F.relu(states[j]) for _, j in group}
            y = _conv(torch.cat([relu[j] for _, j in group], dim=1), ops)
        elif k in m0.pooling:  # pooling + its affine-free BN: the same for every edge of a state with equal buffers
            pooled: dict[int, list[tuple[nn.Module, torch.Tensor]]] = {}  # state -> (edge op that ran, its map)
            maps = []
            # Buffers differ only in state written by the per-edge loop (batched training keeps them equal): check
            # them in eval mode and on the CPU; training on any other device skips the check, a host sync per edge
            check = not m0.training or inputs[0].device.type == "cpu"
            for o, (_, j) in zip(ops, group, strict=True):
                ran = next(((src, m) for src, m in pooled.get(j, [])
                            if not check or _same_buffers(src[1], o[1])), None)
                if ran is None:  # the first edge of this state, or one whose running statistics differ
                    ran = (o, o(states[j]))
                    pooled.setdefault(j, []).append(ran)
                elif o.training:  # the same update of the same statistics as the edge that ran it
                    syncs.append((ran[0][1], o[1]))
                maps.append(ran[1])
            y = torch.cat(maps, dim=1)
        elif k == m0.skip and isinstance(op, Identity):
            y = torch.cat(inputs, dim=1)
            if m0.stride == 1 and m0.skip_dropout > 0:  # P-DARTS: an independent mask per edge
                y = F.dropout(y, m0.skip_dropout, m0.training)
        else:  # FactorizedReduce, or an op registered by the user: edge by edge
            y = torch.cat([o(x) for o, x in zip(ops, inputs, strict=True)], dim=1)
        term = y * scale[:, k].view(1, -1, 1, 1).to(y.dtype)
        out = term if out is None else out + term
    _copy_bn_buffers(syncs)
    if out is None:  # every op pruned or none: the zero op
        return [Zero(m0.stride)(inputs[0]) for _ in group]
    return list(out.split(C, dim=1))


def cell_forward(edges: list, steps: int, s0: torch.Tensor, s1: torch.Tensor, weights: torch.Tensor,
                 mask: torch.Tensor | None, *, partial: int = 1,
                 edge_weights: torch.Tensor | None = None) -> list[torch.Tensor]:
    """The cell's states after its two preprocessed inputs ``s0``, ``s1``.

    PC-DARTS (``partial`` K > 1): the ops see each state's first C/K channels; the rest passes by (max-pooled on
    stride-2 edges) and node i is shuffle(cat(sum_e beta_e op_e, sum_e beta_e rest_e)), which is the sum over its
    edges of beta_e shuffle(cat(op_e, rest_e)) since the shuffle and the concatenation are linear.
    """
    def head(t: torch.Tensor) -> torch.Tensor:  # what the ops see
        return t if partial == 1 else t[:, :t.shape[1] // partial]

    states = [s0, s1]
    seen = [head(s0), head(s1)]
    acc: list[torch.Tensor | None] = [None] * steps
    rest: list[torch.Tensor | None] = [None] * steps

    def add(total, term):
        return term if total is None else total + term

    def node(i: int) -> torch.Tensor:
        if partial == 1:
            return acc[i]
        return channel_shuffle(torch.cat([acc[i], rest[i]], dim=1), partial)

    for g, group in enumerate(edge_groups(steps)):
        if g:
            states.append(node(g - 1))
            seen.append(head(states[-1]))
        outs = run_group(edges, group, seen, weights, mask)
        passing: dict[int, torch.Tensor] = {}
        for (i, j), t in zip(group, outs, strict=True):
            e = edge_index(i, j)
            if edge_weights is not None:
                t = edge_weights[e] * t
            acc[i] = add(acc[i], t)
            if partial > 1:
                if j not in passing:
                    xb = states[j][:, states[j].shape[1] // partial:]
                    passing[j] = F.max_pool2d(xb, 2, 2, ceil_mode=True) if edges[e].stride == 2 else xb
                rest[i] = add(rest[i], passing[j] if edge_weights is None else edge_weights[e] * passing[j])
    states.append(node(steps - 1))
    return states


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    n, c, h, w = x.shape
    return x.view(n, groups, c // groups, h, w).transpose(1, 2).reshape(n, c, h, w)
