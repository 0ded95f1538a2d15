"""Named settings. ``embedded-default`` runs in minutes on a laptop CPU; ``paper`` is the paper's protocol.

Each preset maps a section (``search``, ``train``, ``eval``) to field values of that section's config dataclass;
a YAML ``--config`` file and command-line flags override them, in that order.
"""

from __future__ import annotations

from typing import Any

from e2rnas.errors import E2RNASError

DEFAULT_PRESET = "embedded-default"

PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    "embedded-default": {
        "search": dict(dataset="digits", ood_dataset="digits-ood", image_size=16, layers=5, C=8, epochs=8,
                       batch_size=32, train_portion=0.5, deploy_layers=8, deploy_C=16, deploy_num_classes=5,
                       deploy_input_size=16, params_bound=0.10, flops_bound=5.0),
        "train": dict(dataset="digits", ood_dataset="digits-ood", image_size=16, layers=8, C=16, epochs=12,
                      batch_size=64, lr=0.05, auxiliary=True, auxiliary_weight=0.4, drop_path=0.1, cutout=4,
                      crop_pad=2, val_fraction=0.1),
        "eval": dict(dataset="digits", ood_dataset="digits-ood", eps=2 / 255, steps=10),
    },
    "paper": {
        "search": dict(dataset="cifar10", ood_dataset="svhn", image_size=32, layers=8, C=16, epochs=50,
                       batch_size=64, train_portion=0.5, deploy_layers=20, deploy_C=36, deploy_num_classes=10,
                       deploy_input_size=32, params_bound=2.5, flops_bound=425.0),
        "train": dict(dataset="cifar10", ood_dataset=None, image_size=32, layers=20, C=36, epochs=600,
                      batch_size=96, lr=0.025, auxiliary=True, auxiliary_weight=0.4, drop_path=0.2, cutout=16,
                      crop_pad=4, val_fraction=0.1),
        "eval": dict(dataset="cifar10", ood_dataset="svhn", eps=2 / 255, steps=10),
    },
}


def preset_section(name: str, section: str) -> dict[str, Any]:
    if name not in PRESETS:
        raise E2RNASError(f"unknown preset {name!r}; choose from {', '.join(PRESETS)}")
    return dict(PRESETS[name].get(section, {}))
