"""The edge-batched search cell against the per-edge loop it replaces: same outputs, gradients and BN buffers."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from e2rnas.space.edge_batch import depthwise, edge_groups, edge_index
from e2rnas.space.supernet import NUM_EDGES, SearchNetwork


def _set_batched(model: SearchNetwork, on: bool) -> None:
    for cell in model.cells:
        cell.batched = on


def _pass(model: SearchNetwork, x: torch.Tensor, y: torch.Tensor, batched: bool):
    _set_batched(model, batched)
    model.zero_grad(set_to_none=True)
    logits = model(x)
    F.cross_entropy(logits, y).backward()
    grads = {n: p.grad for n, p in model.named_parameters()}
    return logits.detach(), grads, {n: b.clone() for n, b in model.named_buffers()}


def _pruned(model: SearchNetwork, name: str) -> bool:
    """A buffer of an op pruned from its edge: the batched cell runs it for the edge's group, with weight 0."""
    parts = name.split(".")
    if parts[0] != "cells" or parts[2] != "edges":
        return False
    cell, edge, op = model.cells[int(parts[1])], int(parts[3]), int(parts[5])
    mask = model.mask_reduce if cell.reduction else model.mask_normal
    return not bool(mask[edge, op])


def _compare(model: SearchNetwork, x: torch.Tensor, y: torch.Tensor, *, rtol: float = 1e-10) -> None:
    twin = copy.deepcopy(model)
    ref = _pass(model, x, y, batched=False)
    new = _pass(twin, x, y, batched=True)
    torch.testing.assert_close(new[0], ref[0], rtol=rtol, atol=rtol)
    assert ref[1].keys() == new[1].keys()
    for name, g in ref[1].items():
        if g is None:
            assert new[1][name] is None or not new[1][name].any(), name
            continue
        torch.testing.assert_close(new[1][name], g, rtol=rtol, atol=rtol, msg=name)
    for name, b in ref[2].items():  # running statistics of every edge's BN, pooling BNs included
        if _pruned(model, name):
            continue
        torch.testing.assert_close(new[2][name], b, rtol=rtol, atol=rtol, msg=name)
    # eval mode: the running statistics in use
    model.eval(), twin.eval()
    _set_batched(model, False), _set_batched(twin, True)
    with torch.no_grad():
        torch.testing.assert_close(twin(x), model(x), rtol=rtol, atol=rtol)


def _model(*, partial: int = 1, size: int = 16, seed: int = 0) -> tuple[SearchNetwork, torch.Tensor, torch.Tensor]:
    torch.manual_seed(seed)
    model = SearchNetwork(8, 3, 5, partial_channels=partial).double()
    with torch.no_grad():  # distinct op weights, so that a mixed-up edge or op shows
        for a in model.arch_parameters():
            a.normal_()
    x = torch.rand(4, 3, size, size, dtype=torch.float64)
    return model, x, torch.randint(0, 5, (4,))


def test_groups_cover_every_edge_once_in_dependency_order():
    groups = edge_groups(4)
    flat = [edge_index(i, j) for g in groups for i, j in g]
    assert sorted(flat) == list(range(NUM_EDGES))
    for g, group in enumerate(groups):
        for i, j in group:
            assert j <= i + 1  # node i reads states 0..i+1
            assert j < 2 + g  # its input exists when the group runs (group g follows node g - 1)
    assert [len(g) for g in groups] == [8, 3, 2, 1]


@pytest.mark.parametrize("size", [16, 14])  # 14: odd widths (7) after the first reduction
def test_darts_cell_matches_per_edge_loop(size):
    model, x, y = _model(size=size)
    _compare(model, x, y)


@pytest.mark.parametrize("partial,size", [(4, 16), (2, 14)])  # 14: odd maps for the passing channels' max-pool
def test_pc_darts_cell_matches_per_edge_loop(partial, size):
    model, x, y = _model(partial=partial, size=size)
    _compare(model, x, y)


def test_channel_shuffle_interleaves_the_groups():
    from e2rnas.space.edge_batch import channel_shuffle

    x = torch.arange(6.0).view(1, 6, 1, 1).expand(2, 6, 3, 3)
    assert channel_shuffle(x, 2)[0, :, 0, 0].tolist() == [0, 3, 1, 4, 2, 5]
    assert channel_shuffle(x, 3)[1, :, 2, 2].tolist() == [0, 2, 4, 1, 3, 5]


def test_skip_dropout_off_in_eval_mode_and_bf16_autocast_as_per_edge():
    model, x, _ = _model()
    model = model.float()
    model.set_skip_dropout(0.5)
    model.eval()
    outs = {}
    cell_dtypes = []
    model.cells[0].register_forward_hook(lambda m, i, o: cell_dtypes.append(o.dtype))
    for batched in (False, True):
        _set_batched(model, batched)
        with torch.no_grad():
            outs[batched] = model(x.float())
            with torch.autocast("cpu", dtype=torch.bfloat16):
                outs[(batched, "bf16")] = model(x.float())
    assert cell_dtypes == [torch.float32, torch.bfloat16] * 2  # the mixture stays in the autocast dtype
    torch.testing.assert_close(outs[True], outs[False], rtol=1e-5, atol=1e-5)  # no dropout in eval
    assert outs[(True, "bf16")].dtype == outs[(False, "bf16")].dtype == torch.bfloat16
    torch.testing.assert_close(outs[(True, "bf16")].float(), outs[(False, "bf16")].float(), rtol=0.1, atol=0.1)


def test_a_group_with_every_op_pruned_gives_zeros_at_its_stride():
    from e2rnas.space.edge_batch import edge_groups, run_group

    model, _, _ = _model()
    cell = next(c for c in model.cells if c.reduction)
    s = [torch.rand(2, 8, 8, 8, dtype=torch.float64) for _ in range(2)]
    w = torch.softmax(torch.randn(NUM_EDGES, len(model.primitives), dtype=torch.float64), -1)
    mask = torch.zeros(NUM_EDGES, len(model.primitives), dtype=torch.bool)
    outs = run_group(cell.edges, edge_groups(4)[0], s, w, mask)
    assert len(outs) == 8
    assert all(o.shape == (2, 8, 4, 4) and not o.any() for o in outs)


def test_pruned_ops_match_per_edge_loop():
    model, x, y = _model(seed=1)
    g = torch.Generator().manual_seed(3)
    normal = torch.rand(NUM_EDGES, len(model.primitives), generator=g) > 0.5
    reduce = torch.rand(NUM_EDGES, len(model.primitives), generator=g) > 0.5
    normal[:, 4] = False  # sep_conv_3x3 gone from every normal edge: never run
    reduce[13] = False  # an edge with no op left: the zero op
    model.set_masks(normal, reduce)
    _compare(model, x, y)


def test_an_op_registered_by_the_user_runs_edge_by_edge():
    """A registered op with weights (here an nn.Sequential, as the pooling ops are in the supernet) is not taken
    for pooling (computed once per state) but runs on every edge with its own weights."""
    from torch import nn

    from e2rnas.space.ops import OPS, register_op

    register_op("test_conv_3x3")(lambda C, stride, affine: nn.Sequential(
        nn.ReLU(), nn.Conv2d(C, C, 3, stride, 1, bias=False), nn.BatchNorm2d(C, affine=affine)))
    try:
        torch.manual_seed(0)
        prims = ("none", "max_pool_3x3", "skip_connect", "test_conv_3x3", "dil_conv_3x3")
        model = SearchNetwork(8, 3, 5, primitives=prims).double()
        with torch.no_grad():
            for a in model.arch_parameters():
                a.normal_()
        x = torch.rand(4, 3, 16, 16, dtype=torch.float64)
        _compare(model, x, torch.randint(0, 5, (4,)))
    finally:
        OPS.pop("test_conv_3x3")


def test_skip_dropout_draws_one_mask_per_edge():
    model, x, _ = _model()
    model.set_skip_dropout(0.5)
    skip = model.primitives.index("skip_connect")
    w = torch.zeros(NUM_EDGES, len(model.primitives), dtype=torch.float64)
    w[:, skip] = 1.0
    cell = model.cells[0]
    s = torch.rand(4, 8, 8, 8, dtype=torch.float64)
    from e2rnas.space.edge_batch import cell_forward

    torch.manual_seed(0)
    states = cell_forward(cell.edges, 4, s, s + 1, w, None)
    # node 0 = drop(s0) + drop(s0 + 1) with independent masks: kept entries are 2 s, 2 (s + 1), or their sum
    n0 = states[2]
    dropped_a = torch.isclose(n0, 2 * (s + 1)) | (n0 == 0)
    assert dropped_a.any() and not dropped_a.all()
    # masks differ between the 4 edges that read s0 (else node 1's first term would repeat node 0's pattern)
    assert not torch.equal(states[2] == 0, states[3] == 0)


@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("k", [3, 5])
@pytest.mark.parametrize("size", [8, 7])
def test_polyphase_depthwise_is_the_dilated_convolution(stride, k, size):
    x = torch.randn(2, 6, size, size, dtype=torch.float64).contiguous(memory_format=torch.channels_last)
    x.requires_grad_(True)
    w = torch.randn(6, 1, k, k, dtype=torch.float64, requires_grad=True)
    ref = F.conv2d(x, w, None, stride, k - 1, 2, 6)
    out = depthwise(x, w, stride=stride, padding=k - 1, dilation=2)
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-12)
    g = torch.randn_like(ref)
    torch.testing.assert_close(torch.autograd.grad(out, (x, w), g), torch.autograd.grad(ref, (x, w), g))


def test_polyphase_path_is_taken_where_it_applies(monkeypatch):
    """The undilated kernels run for dilation-2 same-padding convolutions on the CPU (the speed-up); a stride-1 input
    with an odd side keeps the dilated kernel (its parts would differ in size)."""
    import e2rnas.space.edge_batch as eb

    seen = []
    real = F.conv2d

    def spy(x, w, b=None, stride=1, padding=0, dilation=1, groups=1):
        seen.append(dilation)
        return real(x, w, b, stride, padding, dilation, groups)

    monkeypatch.setattr(eb.F, "conv2d", spy)
    w = torch.randn(4, 1, 3, 3)
    for shape, stride, dilated in [((1, 4, 8, 8), 1, False), ((1, 4, 8, 8), 2, False), ((1, 4, 8, 7), 1, True),
                                   ((1, 4, 7, 8), 1, True), ((1, 4, 7, 7), 2, False)]:
        seen.clear()
        x = torch.randn(*shape).contiguous(memory_format=torch.channels_last)
        out = eb.depthwise(x, w, stride=stride, padding=2, dilation=2)
        assert seen == [2 if dilated else 1], (shape, stride)
        torch.testing.assert_close(out, real(x, w, None, stride, 2, 2, 4), rtol=1e-5, atol=1e-5)
    seen.clear()
    eb.depthwise(torch.randn(1, 4, 8, 8), w, stride=1, padding=1, dilation=1)  # not dilated: the plain kernel
    assert seen == [1]


def test_float32_search_step_inputs_unchanged():
    """float32 under the step's functional_call (theta' swapped in): the batched cell reads the swapped weights."""
    from torch.func import functional_call

    model, x, y = _model()
    model = model.float()
    x = x.float()
    params = {n: p.detach() * 1.5 for n, p in model.named_parameters()}
    outs = []
    for batched in (False, True):
        _set_batched(model, batched)
        outs.append(functional_call(copy.deepcopy(model), params, (x,)))
    torch.testing.assert_close(outs[1], outs[0], rtol=1e-5, atol=1e-5)
    assert not torch.allclose(outs[1], model(x))


@pytest.mark.parametrize("train", [False, True])
def test_pooling_runs_per_edge_when_its_bn_buffers_differ(train):
    """State written by the per-edge loop can hold different pooling-BN statistics on the edges of one state: the
    batched cell must then run those edges' pooling on their own (eval outputs, and train-mode buffer updates)."""
    torch.manual_seed(0)
    model = SearchNetwork(C=4, layers=3, num_classes=5).double()
    g = torch.Generator().manual_seed(5)
    for name, buf in model.named_buffers():  # every pooling BN its own running statistics
        if name.endswith(("running_mean", "running_var")) and (".ops.1." in name or ".ops.2." in name):
            if buf.is_floating_point():
                buf.copy_(torch.rand(buf.shape, generator=g, dtype=buf.dtype) + 0.5)
    x = torch.rand(4, 3, 16, 16, generator=g, dtype=torch.float64)
    y = torch.arange(4) % 5
    if train:
        _compare(model, x, y)
    else:
        twin = copy.deepcopy(model)
        model.eval(), twin.eval()
        _set_batched(model, False), _set_batched(twin, True)
        with torch.no_grad():
            torch.testing.assert_close(twin(x), model(x), rtol=1e-10, atol=1e-10)
