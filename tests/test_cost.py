import random

import pytest
import torch

from e2rnas.cost import CostModel, DeployShape
from e2rnas.genotypes import GENOTYPES, Genotype
from e2rnas.model import Network, count_macs, count_params
from e2rnas.ops import PRIMITIVES

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
