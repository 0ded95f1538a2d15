"""The DARTS primitives as a registry: ``OPS[name](C, stride, affine) -> nn.Module``.

ReLU-Conv-BN order; separable convolutions are applied twice; the stride-2 skip is a FactorizedReduce.
Pooling ops get a BatchNorm in the search network only (``SearchNetwork`` adds it), as in DARTS.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

OpFactory = Callable[[int, int, bool], nn.Module]
OPS: dict[str, OpFactory] = {}


def register_op(name: str) -> Callable[[OpFactory], OpFactory]:
    """Add an op constructor ``(C, stride, affine) -> nn.Module`` to ``OPS``."""

    def wrap(factory: OpFactory) -> OpFactory:
        if name in OPS:
            raise ValueError(f"op {name!r} is already registered")
        OPS[name] = factory
        return factory

    return wrap


class ReLUConvBN(nn.Sequential):
    def __init__(self, C_in: int, C_out: int, kernel_size: int, stride: int, padding: int, affine: bool = True):
        super().__init__(
            nn.ReLU(inplace=False),
            nn.Conv2d(C_in, C_out, kernel_size, stride=stride, padding=padding, bias=False),
            nn.BatchNorm2d(C_out, affine=affine),
        )


class DilConv(nn.Sequential):
    """ReLU, depthwise dilated conv, pointwise conv, BN."""

    def __init__(self, C_in: int, C_out: int, kernel_size: int, stride: int, padding: int, dilation: int,
                 affine: bool = True):
        super().__init__(
            nn.ReLU(inplace=False),
            nn.Conv2d(C_in, C_in, kernel_size, stride, padding, dilation=dilation, groups=C_in, bias=False),
            nn.Conv2d(C_in, C_out, 1, bias=False),
            nn.BatchNorm2d(C_out, affine=affine),
        )


class SepConv(nn.Sequential):
    """Two stacked DilConv blocks with dilation 1; only the first has the stride."""

    def __init__(self, C_in: int, C_out: int, kernel_size: int, stride: int, padding: int, affine: bool = True):
        super().__init__(
            DilConv(C_in, C_in, kernel_size, stride, padding, 1, affine),
            DilConv(C_in, C_out, kernel_size, 1, padding, 1, affine),
        )


class Identity(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


class Zero(nn.Module):
    def __init__(self, stride: int):
        super().__init__()
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride == 1:
            return x.mul(0.0)
        return x[:, :, :: self.stride, :: self.stride].mul(0.0)


class FactorizedReduce(nn.Module):
    """Halve the resolution with two offset stride-2 1x1 convs, concatenated along channels."""

    def __init__(self, C_in: int, C_out: int, affine: bool = True):
        super().__init__()
        if C_out % 2:
            raise ValueError(f"FactorizedReduce needs an even channel count, got {C_out}")
        self.relu = nn.ReLU(inplace=False)
        self.conv_1 = nn.Conv2d(C_in, C_out // 2, 1, stride=2, padding=0, bias=False)
        self.conv_2 = nn.Conv2d(C_in, C_out // 2, 1, stride=2, padding=0, bias=False)
        self.bn = nn.BatchNorm2d(C_out, affine=affine)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(x)
        shifted = x[:, :, 1:, 1:]
        if x.shape[2] % 2 or x.shape[3] % 2:  # odd sizes: pad so both branches give ceil(H/2)
            shifted = nn.functional.pad(shifted, (0, x.shape[3] % 2, 0, x.shape[2] % 2))
        if _avoid_strided_1x1(x):
            # Same numbers: a stride-2 1x1 conv is a 1x1 conv of the stride-2 subsample (docs/onednn-avx2-crash.md).
            a = F.conv2d(x[:, :, ::2, ::2], self.conv_1.weight)
            b = F.conv2d(shifted[:, :, ::2, ::2], self.conv_2.weight)
            return self.bn(torch.cat([a, b], dim=1))
        return self.bn(torch.cat([self.conv_1(x), self.conv_2(shifted)], dim=1))


#: oneDNN 3.x's AVX2 ``brgconv_strided`` backward-data kernel corrupts the heap for NHWC 1x1 stride-2 convolutions
#: with fewer input channels than one AVX2 register holds (8 floats): docs/onednn-avx2-crash.md.
_ONEDNN_MIN_SAFE_CHANNELS = 8


def _avoid_strided_1x1(x: torch.Tensor) -> bool:
    """NHWC storage on a CPU (dense, or a channel slice of it: channel stride 1) with too few channels."""
    return x.device.type == "cpu" and 1 < x.shape[1] < _ONEDNN_MIN_SAFE_CHANNELS and x.stride(1) == 1


register_op("none")(lambda C, stride, affine: Zero(stride))
register_op("max_pool_3x3")(lambda C, stride, affine: nn.MaxPool2d(3, stride=stride, padding=1))
register_op("avg_pool_3x3")(
    lambda C, stride, affine: nn.AvgPool2d(3, stride=stride, padding=1, count_include_pad=False)
)
register_op("skip_connect")(
    lambda C, stride, affine: Identity() if stride == 1 else FactorizedReduce(C, C, affine=affine)
)
register_op("sep_conv_3x3")(lambda C, stride, affine: SepConv(C, C, 3, stride, 1, affine=affine))
register_op("sep_conv_5x5")(lambda C, stride, affine: SepConv(C, C, 5, stride, 2, affine=affine))
register_op("dil_conv_3x3")(lambda C, stride, affine: DilConv(C, C, 3, stride, 2, 2, affine=affine))
register_op("dil_conv_5x5")(lambda C, stride, affine: DilConv(C, C, 5, stride, 4, 2, affine=affine))

#: The search space's op order; the columns of alpha follow it.
PRIMITIVES: tuple[str, ...] = tuple(OPS)
POOLING_OPS = frozenset({"max_pool_3x3", "avg_pool_3x3"})
#: ops without weights in a normal cell (a stride-2 skip is a FactorizedReduce, which has weights)
PARAMETER_FREE_OPS = POOLING_OPS | {"skip_connect"}
