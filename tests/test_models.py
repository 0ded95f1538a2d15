import pytest
import torch

from e2rnas.space.genotypes import GENOTYPES
from e2rnas.space.network import Network, count_params
from e2rnas.space.ops import PRIMITIVES, FactorizedReduce
from e2rnas.space.supernet import SearchNetwork, derive_genotype


def test_search_network_forward_backward_and_parameter_sets():
    torch.manual_seed(0)
    net = SearchNetwork(C=4, layers=5, num_classes=10)
    out = net(torch.rand(2, 3, 32, 32))
    assert out.shape == (2, 10)
    out.sum().backward()
    arch = net.arch_parameters()
    weights = net.weight_parameters()
    assert [tuple(a.shape) for a in arch] == [(14, 8), (14, 8)]
    assert not {id(p) for p in arch} & {id(p) for p in weights}
    assert all(a.grad is not None and a.grad.abs().sum() > 0 for a in arch)
    assert sum(p.numel() for p in arch) + sum(p.numel() for p in weights) == sum(p.numel() for p in net.parameters())


def test_pc_darts_variant_has_edge_weights():
    net = SearchNetwork(C=8, layers=3, num_classes=5, partial_channels=4)
    net(torch.rand(2, 3, 16, 16)).sum().backward()
    assert len(net.arch_parameters()) == 4
    net.genotype()


def test_genotype_rule_picks_strongest_edges_and_ops():
    w = torch.full((14, 8), 0.01)
    idx = {name: k for k, name in enumerate(PRIMITIVES)}
    w[:, idx["none"]] = 5.0  # none never wins
    w[0, idx["sep_conv_3x3"]] = 0.9  # node 2: edges 0, 1
    w[1, idx["skip_connect"]] = 0.8
    w[2, idx["max_pool_3x3"]] = 0.1  # node 3: edges 2, 3, 4 -> keep 4 and 3
    w[3, idx["dil_conv_5x5"]] = 0.5
    w[4, idx["avg_pool_3x3"]] = 0.7
    g = derive_genotype(w, w, PRIMITIVES)
    assert g.normal[:4] == (("sep_conv_3x3", 0), ("skip_connect", 1), ("dil_conv_5x5", 1), ("avg_pool_3x3", 2))


def test_network_takes_pixels_and_returns_logits_with_aux_in_training():
    net = Network(GENOTYPES["DARTS_V2"], C=8, layers=5, num_classes=10, auxiliary=True, drop_path=0.2)
    net.train()
    logits, aux = net.forward_train(torch.rand(2, 3, 32, 32))
    assert logits.shape == aux.shape == (2, 10)
    net.eval()
    assert net(torch.rand(2, 3, 32, 32)).shape == (2, 10)
    assert count_params(net) < count_params(net, exclude_aux=False)


def test_imagenet_variant_at_224():
    net = Network(GENOTYPES["DARTS_V2"], C=8, layers=5, num_classes=7, auxiliary=True, variant="imagenet",
                  input_size=224).eval()
    assert net(torch.rand(1, 3, 224, 224)).shape == (1, 7)


def test_darts_v2_param_count():
    net = Network(GENOTYPES["DARTS_V2"], C=36, layers=20, num_classes=10, auxiliary=True)
    assert abs(count_params(net) / 1e6 - 3.349) < 0.001


@pytest.mark.parametrize("channels,size", [(2, 8), (4, 9), (6, 16), (16, 8)])
def test_factorized_reduce_same_numbers_in_nhwc_and_nchw(channels, size):
    """The NHWC path with few channels sidesteps oneDNN's AVX2 strided 1x1 backward (docs/onednn-avx2-crash.md)."""
    torch.manual_seed(0)
    fr = FactorizedReduce(channels, 2 * channels)
    x = torch.randn(2, channels, size, size, requires_grad=True)
    x_cl = x.detach().contiguous(memory_format=torch.channels_last).requires_grad_(True)
    a, b = fr(x), fr(x_cl)
    assert torch.allclose(a, b, atol=1e-5)
    (ga,) = torch.autograd.grad(a.square().sum(), x)
    (gb,) = torch.autograd.grad(b.square().sum(), x_cl)
    assert torch.allclose(ga, gb, atol=1e-4)
    # a channel slice of an NHWC tensor (PC-DARTS' partial channels) gives the same numbers too
    wide = torch.cat([x_cl.detach(), x_cl.detach()], dim=1).contiguous(memory_format=torch.channels_last)
    assert torch.allclose(fr(wide[:, :channels]), a, atol=1e-5)
