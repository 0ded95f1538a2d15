"""``model.pt``: a trained network as plain data, loadable with ``torch.load(weights_only=True)``.

Keys: ``format``, ``state_dict``, ``genotype`` (dict), ``network`` (C, layers, num_classes, auxiliary, variant,
input_size), ``normalization`` (mean, std), ``data`` (dataset spec and class count), ``search`` (bounds and
estimates when the genotype came from a search; may be empty), ``e2rnas_version``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from e2rnas import __version__
from e2rnas._io import atomic_torch_save, torch_load
from e2rnas.errors import E2RNASError
from e2rnas.space.genotypes import Genotype
from e2rnas.space.network import Network

FORMAT = "e2rnas.space.network/1"


class ModelFileError(E2RNASError):
    """A model file is missing or is not an e2rnas model."""


@dataclass(frozen=True)
class NetworkSpec:
    """Everything needed to rebuild an evaluation network besides the genotype."""

    C: int
    layers: int
    num_classes: int
    input_size: int
    auxiliary: bool = False
    variant: str = "cifar"
    mean: tuple[float, ...] = (0.5, 0.5, 0.5)
    std: tuple[float, ...] = (0.5, 0.5, 0.5)

    def build(self, genotype: Genotype, *, drop_path: float = 0.0, auxiliary: bool | None = None) -> Network:
        return Network(genotype, self.C, self.layers, self.num_classes,
                       auxiliary=self.auxiliary if auxiliary is None else auxiliary, drop_path=drop_path,
                       variant=self.variant, input_size=self.input_size, mean=self.mean, std=self.std)


@dataclass(frozen=True)
class LoadedModel:
    model: Network
    genotype: Genotype
    spec: NetworkSpec
    meta: dict[str, Any] = field(default_factory=dict)


def save_model(path: str | Path, *, model: Network, genotype: Genotype, spec: NetworkSpec,
               data: dict[str, Any] | None = None, search: dict[str, Any] | None = None,
               provenance: dict[str, Any] | None = None) -> None:
    """Write ``model.pt`` atomically (auxiliary head weights kept, so training can resume from it)."""
    net = asdict(spec)
    net["mean"], net["std"] = list(spec.mean), list(spec.std)
    atomic_torch_save(Path(path), {
        "format": FORMAT,
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "genotype": genotype.to_dict(),
        "network": net,
        "normalization": {"mean": list(spec.mean), "std": list(spec.std)},
        "data": dict(data or {}),
        "search": dict(search or {}),
        "e2rnas_version": __version__,
        "provenance": provenance,
    })


def read_model_file(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"model file not found: {path}")
    blob = torch_load(path, what="model file", error=ModelFileError, map_location="cpu",
                      fix="e2rnas loads weights only, never code: use a model.pt made by `e2rnas train`")
    if not isinstance(blob, dict) or blob.get("format") != FORMAT:
        raise ModelFileError(f"{path} is not an e2rnas model (expected format {FORMAT}); make one with `e2rnas train`")
    return blob


def load_model(path: str | Path, *, device: str | torch.device = "cpu") -> LoadedModel:
    """Rebuild the network from ``model.pt`` in eval mode."""
    blob = read_model_file(path)
    genotype = Genotype.from_dict(blob["genotype"])
    net = dict(blob["network"])
    net["mean"], net["std"] = tuple(net["mean"]), tuple(net["std"])
    spec = NetworkSpec(**net)
    model = spec.build(genotype)
    model.load_state_dict(blob["state_dict"])
    model.to(device).eval()
    meta = {k: blob.get(k, {}) for k in ("data", "search", "e2rnas_version")}
    return LoadedModel(model=model, genotype=genotype, spec=spec, meta=meta)
