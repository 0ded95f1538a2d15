"""The evaluation network built from a ``Genotype`` (DARTS ``NetworkCIFAR`` / ``NetworkImageNet``).

Every model takes pixels in [0, 1]: input normalisation is the first layer, so attacks, exported models and
deployed models share one convention. ``forward`` returns logits only; ``forward_train`` adds the auxiliary
head's logits while training.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from e2rnas.space.genotypes import Genotype
from e2rnas.space.ops import OPS, FactorizedReduce, Identity, ReLUConvBN

VARIANTS = ("cifar", "imagenet")


class Normalize(nn.Module):
    def __init__(self, mean: Sequence[float], std: Sequence[float]):
        super().__init__()
        self.register_buffer("mean", torch.tensor(list(mean), dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(list(std), dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


def drop_path(x: torch.Tensor, drop_prob: float) -> torch.Tensor:
    if drop_prob <= 0.0:
        return x
    keep = 1.0 - drop_prob
    mask = torch.empty(x.shape[0], 1, 1, 1, device=x.device, dtype=x.dtype).bernoulli_(keep)
    return x / keep * mask


class Cell(nn.Module):
    def __init__(self, genotype: Genotype, C_pp: int, C_p: int, C: int, reduction: bool, reduction_prev: bool):
        super().__init__()
        self.reduction = reduction
        self.preprocess0 = FactorizedReduce(C_pp, C) if reduction_prev else ReLUConvBN(C_pp, C, 1, 1, 0)
        self.preprocess1 = ReLUConvBN(C_p, C, 1, 1, 0)
        edges = genotype.reduce if reduction else genotype.normal
        self.concat = genotype.reduce_concat if reduction else genotype.normal_concat
        self.multiplier = len(self.concat)
        self.indices = [i for _, i in edges]
        self.ops = nn.ModuleList(OPS[name](C, 2 if reduction and i < 2 else 1, True) for name, i in edges)

    def forward(self, s0: torch.Tensor, s1: torch.Tensor, drop_prob: float) -> torch.Tensor:
        states = [self.preprocess0(s0), self.preprocess1(s1)]
        for k in range(len(self.ops) // 2):
            total = 0
            for e in (2 * k, 2 * k + 1):
                h = self.ops[e](states[self.indices[e]])
                if self.training and drop_prob > 0 and not isinstance(self.ops[e], Identity):
                    h = drop_path(h, drop_prob)
                total = total + h
            states.append(total)
        return torch.cat([states[i] for i in self.concat], dim=1)


class AuxiliaryHead(nn.Module):
    """DARTS auxiliary tower; pooling adapts to feature maps other than 8x8 (CIFAR) / 14x14 (ImageNet)."""

    def __init__(self, C: int, num_classes: int, feature_size: int, imagenet: bool):
        super().__init__()
        stride = 2 if imagenet else 3
        pool: nn.Module = (nn.AvgPool2d(5, stride=stride, padding=0, count_include_pad=False)
                           if feature_size in (8, 14) else nn.AdaptiveAvgPool2d(2))
        self.features = nn.Sequential(
            nn.ReLU(inplace=True), pool,
            nn.Conv2d(C, 128, 1, bias=False), nn.BatchNorm2d(128), nn.ReLU(inplace=True),
            nn.Conv2d(128, 768, 2, bias=False), *([] if imagenet else [nn.BatchNorm2d(768)]),
            nn.ReLU(inplace=True), nn.AdaptiveAvgPool2d(1),
        )
        self.classifier = nn.Linear(768, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x).flatten(1))


class Network(nn.Module):
    """Stacked cells; reduction cells at 1/3 and 2/3 of the depth; auxiliary head after the 2/3 reduction."""

    def __init__(self, genotype: Genotype, C: int, layers: int, num_classes: int, auxiliary: bool = False,
                 drop_path: float = 0.0, variant: str = "cifar", input_size: int = 32,
                 mean: Sequence[float] = (0.5, 0.5, 0.5), std: Sequence[float] = (0.5, 0.5, 0.5)):
        super().__init__()
        if variant not in VARIANTS:
            raise ValueError(f"unknown network variant {variant!r}; choose from {', '.join(VARIANTS)}")
        if layers < 3:
            raise ValueError(f"a network needs at least 3 cells, got {layers}")
        self.genotype = genotype
        self.variant = variant
        self.layers = layers
        self.auxiliary = auxiliary
        self.drop_path_prob = float(drop_path)
        self.normalize = Normalize(mean, std)
        self._aux_pos = 2 * layers // 3
        if variant == "cifar":
            C_curr = 3 * C
            self.stem = nn.Sequential(nn.Conv2d(3, C_curr, 3, padding=1, bias=False), nn.BatchNorm2d(C_curr))
            self.stem1 = None
            C_pp, C_p, C_curr = C_curr, C_curr, C
            reduction_prev = False
            size = input_size
        else:
            self.stem = nn.Sequential(
                nn.Conv2d(3, C // 2, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(C // 2),
                nn.ReLU(inplace=True),
                nn.Conv2d(C // 2, C, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(C),
            )
            self.stem1 = nn.Sequential(nn.ReLU(inplace=True), nn.Conv2d(C, C, 3, stride=2, padding=1, bias=False),
                                       nn.BatchNorm2d(C))
            C_pp, C_p, C_curr = C, C, C
            reduction_prev = True
            size = -(-input_size // 8)
        self.cells = nn.ModuleList()
        self.aux_head: AuxiliaryHead | None = None
        for i in range(layers):
            reduction = i in (layers // 3, 2 * layers // 3)
            if reduction:
                C_curr *= 2
                size = -(-size // 2)
            cell = Cell(genotype, C_pp, C_p, C_curr, reduction, reduction_prev)
            self.cells.append(cell)
            reduction_prev = reduction
            C_pp, C_p = C_p, cell.multiplier * C_curr
            if auxiliary and i == self._aux_pos:
                self.aux_head = AuxiliaryHead(C_p, num_classes, size, imagenet=variant == "imagenet")
        self.global_pooling = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(C_p, num_classes)

    def forward_train(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Logits and, in training mode with an auxiliary head, the auxiliary logits."""
        x = self.normalize(x)
        if self.stem1 is None:
            s0 = s1 = self.stem(x)
        else:
            s0 = self.stem(x)
            s1 = self.stem1(s0)
        aux = None
        for i, cell in enumerate(self.cells):
            s0, s1 = s1, cell(s0, s1, self.drop_path_prob)
            if i == self._aux_pos and self.aux_head is not None and self.training:
                aux = self.aux_head(s1)
        return self.classifier(self.global_pooling(s1).flatten(1)), aux

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_train(x)[0]


def count_params(model: nn.Module, *, exclude_aux: bool = True) -> int:
    """Parameter count; the auxiliary head is excluded by default (the DARTS convention)."""
    return sum(p.numel() for n, p in model.named_parameters() if not (exclude_aux and n.startswith("aux_head.")))


def count_macs(model: nn.Module, *, input_size: int, batch: int = 1) -> int:
    """Multiply-adds of one eval-mode forward, by ``FlopCounterMode`` (convolutions and matmuls only)."""
    from torch.utils.flop_counter import FlopCounterMode

    was_training = model.training
    model.eval()
    param = next(model.parameters())
    x = torch.rand(batch, 3, input_size, input_size, device=param.device, dtype=param.dtype)
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        model(x)
    model.train(was_training)
    return counter.get_total_flops() // 2
