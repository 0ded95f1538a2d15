import random

import pytest
import torch

from e2rnas.space.cost import Cost, CostModel, DeployShape, _edge_source
from e2rnas.space.genotypes import GENOTYPES, Genotype
from e2rnas.space.network import Network, count_macs, count_params
from e2rnas.space.ops import PRIMITIVES

# ../shared/REFERENCE.md: params (M) and conv/linear MACs (M) at 20 cells, C=36, 32x32, 10 classes
REFERENCE = {
    "DARTS_V1": (3.1694, 501.0), "DARTS_V2": (3.3493, 528.4), "PDARTS": (3.4338, 532.2),
    "PC_DARTS": (3.6347, 556.7), "E2RNAS": (1.5743, 260.8), "E2RNAS_PC_DARTS": (1.6985, 270.0),
    "E2RNAS_PDARTS": (3.2178, 499.2),
}


@pytest.fixture(scope="module")
def paper_model():
    return CostModel(DeployShape())


@pytest.mark.parametrize("name", list(GENOTYPES))
def test_builtin_costs_match_reference(paper_model, name):
    cost = paper_model.genotype_cost(GENOTYPES[name])
    params, macs = REFERENCE[name]
    assert cost.params_m == pytest.approx(params, rel=0.01)
    assert cost.macs_m == pytest.approx(macs, rel=0.01)
    assert cost.flops_m == pytest.approx(2 * cost.macs_m)


def test_darts_v2_exact_params(paper_model):
    assert abs(paper_model.genotype_cost(GENOTYPES["DARTS_V2"]).params_m - 3.349) <= 0.001
    assert paper_model.fixed.params_m == pytest.approx(1.370, abs=0.001)


def _random_genotype(rng: random.Random) -> Genotype:
    ops = [p for p in PRIMITIVES if p != "none"]
    cells = [tuple((rng.choice(ops), rng.randrange(2 + k // 2)) for k in range(8)) for _ in range(2)]
    return Genotype(cells[0], (2, 3, 4, 5), cells[1], (2, 3, 4, 5))


@pytest.mark.parametrize("shape", [
    DeployShape(layers=5, C=8, num_classes=10, input_size=32),
    DeployShape(layers=8, C=16, num_classes=5, input_size=16),
    DeployShape(layers=6, C=6, num_classes=3, input_size=15),
    DeployShape(layers=5, C=8, num_classes=4, input_size=64, variant="imagenet"),
])
def test_invariant_against_built_network(shape):
    """The cost model's genotype cost equals the built network's params exactly and its MACs within 0.5%."""
    model = CostModel(shape)
    rng = random.Random(shape.layers * 100 + shape.C)
    genotypes = [GENOTYPES["DARTS_V2"], GENOTYPES["PDARTS"]] + [_random_genotype(rng) for _ in range(3)]
    for g in genotypes:
        net = Network(g, shape.C, shape.layers, shape.num_classes, variant=shape.variant,
                      input_size=shape.input_size)
        cost = model.genotype_cost(g)
        assert cost.params == count_params(net)
        assert cost.macs == pytest.approx(count_macs(net, input_size=shape.input_size), rel=0.005)


def test_expected_cost_is_differentiable_and_tracks_a_peaked_alpha():
    model = CostModel(DeployShape(layers=5, C=8, num_classes=10, input_size=32))
    g = GENOTYPES["DARTS_V2"]
    # alpha peaked on the genotype's op for every edge (both edges of each node kept in a one-hot sense)
    a_n = torch.zeros(14, 8, requires_grad=True)
    params, macs = model.expected_cost(a_n, torch.zeros(14, 8))
    params.backward()
    assert a_n.grad is not None and a_n.grad.abs().sum() > 0
    cheap = torch.full((14, 8), -10.0)
    cheap[:, PRIMITIVES.index("max_pool_3x3")] = 10.0
    p_cheap, m_cheap = model.expected_cost(cheap, cheap)
    assert float(p_cheap) == pytest.approx(model.fixed.params_m, rel=1e-3)
    assert float(p_cheap) < model.genotype_cost(g).params_m < float(params.detach()) * 10


# --- independent checks of the differentiable estimate (docs/testing.md) --------------------------------------------

SMALL = DeployShape(layers=5, C=4, num_classes=3, input_size=8)


@pytest.fixture(scope="module")
def small_model():
    return CostModel(SMALL)


def _all_genotypes_with(op: str):
    """Every genotype with ``op`` on all kept edges: each node keeps one of its C(2+i, 2) input pairs."""
    import itertools

    pairs = [list(itertools.combinations(range(2 + i), 2)) for i in range(4)]
    for choice in itertools.product(*pairs):
        cell = tuple((op, j) for pair in choice for j in pair)
        yield Genotype(cell, (2, 3, 4, 5), cell, (2, 3, 4, 5))


def test_expected_cost_at_uniform_alpha_is_the_mean_exact_cost(small_model):
    """At alpha = 0 every non-``none`` op and every input pair of a node is equally likely, and the estimate is linear
    in both: it must equal the mean of the exact genotype costs over all ops and all input pairs."""
    costs = [small_model.genotype_cost(g) for op in PRIMITIVES if op != "none" for g in _all_genotypes_with(op)]
    mean_params = sum(c.params for c in costs) / len(costs) / 1e6
    mean_macs = sum(c.macs for c in costs) / len(costs) / 1e6
    zeros = torch.zeros(14, len(PRIMITIVES), dtype=torch.float64)
    params, macs = small_model.expected_cost(zeros, zeros)
    assert float(params) == pytest.approx(mean_params, rel=1e-12)
    assert float(macs) == pytest.approx(mean_macs, rel=1e-12)
    # ``none`` is not a deployable op: its logit does not move the estimate
    tilted = zeros.clone()
    tilted[:, PRIMITIVES.index("none")] = 5.0
    assert [float(v) for v in small_model.expected_cost(tilted, tilted)] == pytest.approx([float(params), float(macs)])


@pytest.mark.parametrize("name", ["DARTS_V2", "PDARTS"])
def test_expected_cost_with_one_hot_alpha_and_keep_is_the_genotype_cost(small_model, name):
    """alpha peaked on the genotype's op of each kept edge and keep = 1 on kept edges, 0 elsewhere: exact cost."""
    g = GENOTYPES[name]
    alphas, keeps = [], []
    for cell in (g.normal, g.reduce):
        alpha = torch.zeros(14, len(PRIMITIVES), dtype=torch.float64)
        keep = torch.zeros(14, dtype=torch.float64)
        for k, (op, inp) in enumerate(cell):
            e = sum(2 + i for i in range(k // 2)) + inp
            alpha[e, PRIMITIVES.index(op)] = 200.0
            keep[e] = 1.0
        alphas.append(alpha)
        keeps.append(keep)
    params, macs = small_model.expected_cost(*alphas, keep=tuple(keeps))
    exact = small_model.genotype_cost(g)
    assert params.dtype == torch.float64
    assert float(params) == pytest.approx(exact.params_m, rel=1e-12)
    assert float(macs) == pytest.approx(exact.macs_m, rel=1e-12)
    # the reduce cell's alpha is the reduce cell's: swapping the two changes the estimate for this genotype
    swapped = small_model.expected_cost(alphas[1], alphas[0], keep=(keeps[1], keeps[0]))
    assert float(swapped[0]) != pytest.approx(exact.params_m, rel=1e-6)


def test_cost_arithmetic_and_units():
    a, b = Cost(params=1_500_000, macs=2_000_000), Cost(params=500_000, macs=1_000_000)
    assert (a + b) == Cost(2_000_000, 3_000_000)
    assert a.params_m == 1.5 and a.macs_m == 2.0 and a.flops_m == 4.0
    assert a.as_dict() == {"params_m": 1.5, "macs_m": 2.0, "flops_m": 4.0}


def test_edge_sources_follow_the_darts_edge_order():
    assert [_edge_source(e) for e in range(14)] == [0, 1, 0, 1, 2, 0, 1, 2, 3, 0, 1, 2, 3, 4]
    with pytest.raises(IndexError, match="^14$"):
        _edge_source(14)


def test_reduction_cells_and_their_geometry(small_model):
    slots = small_model.slots
    assert [s.index for s in slots] == [0, 1, 2, 3, 4]
    assert [s.reduction for s in slots] == [False, True, False, True, False]  # layers // 3 and 2 layers // 3
    assert [s.C for s in slots] == [4, 8, 8, 16, 16]
    assert [s.size_in for s in slots] == [8, 8, 4, 4, 2]
    assert [s.reduction_prev for s in slots] == [False, False, True, False, True]
    assert [(s.C_pp, s.C_p) for s in slots] == [(12, 12), (12, 16), (16, 32), (32, 32), (32, 64)]
    odd = CostModel(DeployShape(layers=5, C=4, input_size=7)).slots
    assert [s.size_in for s in odd] == [7, 7, 4, 4, 2]  # ceil halving
    assert odd[1].edge_geometry(0) == (2, 7) and odd[1].edge_geometry(1) == (2, 7)
    assert odd[1].edge_geometry(2) == (1, 4) and odd[0].edge_geometry(3) == (1, 7)
    imagenet = CostModel(DeployShape(layers=5, C=4, input_size=224, variant="imagenet")).slots
    assert imagenet[0].size_in == 28 and imagenet[0].reduction_prev and imagenet[0].C_pp == 4  # stem: / 8


def test_tables_are_exact_integers_in_float64_and_the_estimate_follows_alphas_dtype():
    """float32 tables would round a 500 M-MAC network's counts; the estimate comes back in alpha's dtype."""
    small_model = CostModel(SMALL)  # not the shared fixture: its cached tables would hide how they are built
    assert isinstance(small_model.fixed.macs, int) and isinstance(small_model.fixed.params, int)
    assert isinstance(small_model.op_cost("sep_conv_3x3", 4, 1, 8).macs, int)
    assert all(t.dtype == torch.float64 for t in small_model.tables.values())
    a32 = torch.zeros(14, len(PRIMITIVES))
    params, macs = small_model.expected_cost(a32, a32, keep=(torch.ones(14, dtype=torch.float64),) * 2)
    assert params.dtype == torch.float32 and macs.dtype == torch.float32
    assert small_model.expected_cost(a32, a32)[0].dtype == torch.float32
    # keep = 1 everywhere is the uniform estimate with every edge kept: more than the 2-of-n default
    assert float(params) > float(small_model.expected_cost(a32, a32)[0])


def test_fixed_part_is_not_rounded_to_float32():
    model = CostModel(SMALL)
    model.__dict__["fixed"] = Cost(params=2**24 + 1, macs=2**25 + 1)  # float32 would round both
    a = torch.zeros(14, len(PRIMITIVES), dtype=torch.float64)
    none_kept = (torch.zeros(14, dtype=torch.float64),) * 2
    params, macs = model.expected_cost(a, a, keep=none_kept)
    assert float(params) * 1e6 == pytest.approx(2**24 + 1, abs=1e-3)
    assert float(macs) * 1e6 == pytest.approx(2**25 + 1, abs=1e-3)
