import pytest
import torch

from e2rnas.space.ops import OPS, PRIMITIVES


def test_registry_holds_the_eight_darts_primitives():
    assert PRIMITIVES == ("none", "max_pool_3x3", "avg_pool_3x3", "skip_connect", "sep_conv_3x3", "sep_conv_5x5",
                          "dil_conv_3x3", "dil_conv_5x5")


@pytest.mark.parametrize("name", PRIMITIVES)
@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("size", [8, 7])
def test_op_shape_forward_backward(name, stride, size):
    op = OPS[name](6, stride, True)
    x = torch.randn(2, 6, size, size, requires_grad=True)
    y = op(x)
    expected = size if stride == 1 else -(-size // 2)
    assert y.shape == (2, 6, expected, expected)
    y.square().sum().backward()
    if name != "none":
        assert x.grad is not None and torch.isfinite(x.grad).all()


def test_separable_conv_is_applied_twice():
    op = OPS["sep_conv_3x3"](4, 1, True)
    depthwise = [m for m in op.modules() if isinstance(m, torch.nn.Conv2d) and m.groups == 4]
    assert len(depthwise) == 2
