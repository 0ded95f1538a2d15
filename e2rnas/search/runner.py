"""The E2RNAS search loop: data, supernet, optimisers, the bi-level step, checkpoints, resume and the run directory.

Run directory: ``config.yaml`` (resolved), ``metrics.jsonl`` (per step and per epoch), ``alphas.jsonl`` (alpha
history per epoch), ``genotype.json``, ``summary.json`` (bounds, estimates, exact cost) and ``checkpoint.pt``
(atomic, every epoch and on Ctrl-C). The final genotype comes from the final alphas.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from e2rnas._io import append_jsonl, atomic_torch_save, atomic_write_json, atomic_write_text, read_jsonl, torch_load
from e2rnas._outdir import check_dir, owned_dir
from e2rnas._provenance import provenance
from e2rnas.data import (
    ImageSet,
    augment,
    batches,
    cycle,
    load_dataset,
    normalization_for,
    require_nonempty,
    split_parts,
)
from e2rnas.distributed import DistInfo, RunLock, barrier, check_agree, local_device, mean_all_reduce, shard
from e2rnas.distributed import init as init_distributed
from e2rnas.errors import E2RNASError
from e2rnas.search.bilevel import FGSM_STARTS, HVP_SCHEMES, BilevelStep, StepBatch, StepResult
from e2rnas.search.derive import (
    DERIVE_RULES,
    Derivation,
    check_feasible,
    cost_range,
    deploy_costs,
    derive_budget,
    derive_darts,
)
from e2rnas.search.graphs import CUDA_GRAPHS, GraphedStep, capture_blockers
from e2rnas.search.guards import normalized_entropy, search_notes, search_warnings
from e2rnas.search.mgda import Weighting
from e2rnas.search.objectives import COST_FORMS, COST_UNITS, OBJECTIVES, make_objectives
from e2rnas.space.cost import COST_ESTIMATES, CostModel, DeployShape
from e2rnas.space.supernet import SearchNetwork
from e2rnas.train.amp import AMP_MODES, make_precision, resolve_amp

log = logging.getLogger(__name__)

METHODS = ("darts", "pc-darts", "p-darts")


@dataclass(frozen=True)
class SearchConfig:
    """Every setting of a search; defaults follow the paper (Section IV-B) except the data-scale ones."""

    dataset: str = "cifar10"
    ood_dataset: str | None = "svhn"
    data_dir: str | None = None
    download: bool = False
    image_size: int | None = None
    train_portion: float = 0.5
    method: str = "darts"
    partial_channels: int = 4  # PC-DARTS K
    layers: int = 8
    C: int = 16
    epochs: int = 50
    batch_size: int = 64
    w_lr: float = 0.025
    w_lr_min: float = 0.001
    w_momentum: float = 0.9
    w_weight_decay: float = 3e-4
    grad_clip: float = 5.0
    a_lr: float = 3e-4
    a_beta1: float = 0.5
    a_beta2: float = 0.999
    a_weight_decay: float = 1e-3
    objectives: tuple[str, ...] = ("val", "ood", "adv", "params", "flops")
    weighting: str = "mgda"
    # cost objectives as the paper's two-sided targets |x - B| / B ("target", the paper preset) or as the budget's
    # band, zero inside [params_floor x L, L], <= F, <= T ("band": a met bound sits out MGDA; docs/cost-forms.md)
    cost_form: str = "band"
    # the cost objectives divided by their bound ("relative") or in M params / M MACs / ms ("paper": eqs. 5, 6)
    cost_units: str = "relative"
    # N(alpha), F(alpha) of the deployed network ("deployed": kept-edge weights, fixed part, measured MACs) or eqs.
    # 5, 6 as written ("paper": every edge, softmax over all ops, the paper's op formulas); docs/fidelity.md row 19
    cost_estimate: str = "deployed"
    normalization: str = "l2"
    mgda_max_iter: int = 1000
    mgda_update: str = "normalized"  # "paper": alpha steps along sum gamma_k g_k (eq. 10); docs/mgda.md
    # None: by method (second order for darts, first order for pc-darts and p-darts, as those papers search)
    first_order: bool | None = None
    hvp: str = "forward"  # second-order term by "central" (DARTS, the paper preset) or "forward" differences
    hvp_eps: float = 0.01  # r = hvp_eps / |v| (DARTS' 0.01)
    a_grad_clip: float | None = None  # clip the alpha gradient's norm before Adam (P-DARTS: 5)
    ll_ood: bool = True
    ll_ood_weight: float = 1.0  # weight of KL(U || softmax) in L_lower: the paper's 1 (the authors' code ran 1/K)
    ll_adv: bool = False
    # search-time augmentation of both halves (crop pad 4 + flip, as DARTS): None = on except for the digits set
    search_augment: bool | None = None
    search_cutout: int = 0  # cutout side during search (0: off; the authors' command used 16)
    eps: float = 2 / 255
    fgsm_step: float = 1.25
    # upper-level FGSM gradient at the random start ("random", fast FGSM as the paper's [21]) or at the clean input
    # from the val objective's own backward ("clean", the authors' code: one pass fewer)
    fgsm_start: str = "random"
    params_bound: float = 2.5  # L, M params of the deploy network
    flops_bound: float = 425.0  # F, M MACs (multiply-adds) of the deploy network
    deploy_layers: int = 20
    deploy_C: int = 36
    deploy_num_classes: int | None = None  # None: the data set's class count
    deploy_input_size: int | None = None  # None: the search image size
    seed: int = 0
    device: str = "cpu"
    # precision on CUDA: off | auto (tf32) | tf32 | bf16 (autocast; the finite-difference passes stay fp32)
    amp: str = "off"
    # capture the bi-level step in a CUDA graph: auto = on for CUDA when nothing blocks it (e2rnas.search.graphs);
    # changes the speed, not the step (docs/cuda-graphs.md), so a run may resume with another value
    cuda_graphs: str = "auto"
    max_steps_per_epoch: int | None = None
    val_batches: int = 4
    # P-DARTS (method p-darts): cells per stage, non-none ops kept per edge when a stage starts, skip dropout,
    # and at most this many skip connections in the final normal cell.
    pdarts_layers: tuple[int, ...] = (5, 11, 17)
    pdarts_keep: tuple[int, ...] = (8, 5, 3)
    pdarts_skip_dropout: tuple[float, ...] = (0.0, 0.3, 0.6)
    pdarts_max_skips: int = 2
    pdarts_dropout_decay: bool = False  # P-DARTS: skip dropout p (1 - e / E) over a stage's E epochs
    pdarts_keep_none: bool = False  # P-DARTS: `none` competes for the kept places until the last stage
    pdarts_warmup_epochs: int = 0  # P-DARTS: the first epochs of every stage train the weights only
    warmup_epochs: int = 0  # first epochs train the weights only (alphas frozen): cheap, and alphas then see a
    # trained supernet instead of ranking untrained ops
    # Derivation of the handed-over genotype: "budget" (exact optimum under the bounds) or "darts" (top-2 rule).
    derive: str = "budget"
    params_floor: float = 0.8  # the budget rule keeps params in [params_floor x L, L]
    max_normal_skips: int | None = None  # at most this many skip_connect in the derived normal cell (P-DARTS' rule)
    max_normal_free_ops: int | None = None  # budget rule: at most this many skips + pools in the normal cell
    latency_bound: float | None = None  # T, ms on the latency table's target (adds the latency objective)
    # or T placed this fraction of the way from the table's fastest to its slowest genotype (portable across machines)
    latency_bound_fraction: float | None = None
    lut: str | None = None  # latency table (``e2rnas lut``) of the deploy network on the target

    def __post_init__(self) -> None:
        if isinstance(self.objectives, str):
            object.__setattr__(self, "objectives", tuple(s.strip() for s in self.objectives.split(",") if s.strip()))
        else:
            object.__setattr__(self, "objectives", tuple(self.objectives))
        bounded = self.latency_bound is not None or self.latency_bound_fraction is not None
        if bounded and "latency" not in self.objectives:
            object.__setattr__(self, "objectives", (*self.objectives, "latency"))
        unknown = [o for o in self.objectives if o not in OBJECTIVES]
        if unknown or not self.objectives:
            raise ValueError(f"unknown objective(s) {unknown}; choose from {', '.join(OBJECTIVES)}")
        if self.method not in METHODS:
            raise ValueError(f"unknown method {self.method!r}; choose from {', '.join(METHODS)}")
        if self.first_order is None:
            object.__setattr__(self, "first_order", self.method != "darts")
        if self.hvp not in HVP_SCHEMES:
            raise ValueError(f"unknown hvp scheme {self.hvp!r}; choose from {', '.join(HVP_SCHEMES)}")
        if not 0 < self.hvp_eps < 1:
            raise ValueError(f"hvp_eps must be in (0, 1), got {self.hvp_eps}")
        if self.ll_ood_weight < 0 or self.search_cutout < 0:
            raise ValueError("ll_ood_weight and search_cutout must be >= 0")
        if self.a_grad_clip is not None and self.a_grad_clip <= 0:
            raise ValueError(f"a_grad_clip must be positive (or unset), got {self.a_grad_clip}")
        if not 0 < self.train_portion < 1:
            raise ValueError(f"train_portion must be in (0, 1), got {self.train_portion}")
        if self.epochs < 1 or self.batch_size < 1 or self.layers < 3 or self.C < 1:
            raise ValueError("epochs, batch_size and C must be positive and layers >= 3")
        if self.params_bound <= 0 or self.flops_bound <= 0:
            raise ValueError("params_bound (M params) and flops_bound (M MACs) must be positive")
        if self.ood_dataset is None and ("ood" in self.objectives or self.ll_ood):
            raise ValueError("the ood objective and the lower-level OoD loss need ood_dataset (or drop them: "
                             "--objectives without ood and --no-ll-ood)")
        Weighting(self.weighting, self.normalization, self.mgda_max_iter, self.mgda_update)
        if self.cost_form not in COST_FORMS:
            raise ValueError(f"unknown cost_form {self.cost_form!r}; choose from {', '.join(COST_FORMS)}")
        if self.cost_units not in COST_UNITS:
            raise ValueError(f"unknown cost_units {self.cost_units!r}; choose from {', '.join(COST_UNITS)}")
        if self.cost_estimate not in COST_ESTIMATES:
            raise ValueError(f"unknown cost_estimate {self.cost_estimate!r}; choose from {', '.join(COST_ESTIMATES)}")
        if self.fgsm_start not in FGSM_STARTS:
            raise ValueError(f"unknown fgsm_start {self.fgsm_start!r}; choose from {', '.join(FGSM_STARTS)}")
        if self.amp == "fp16":
            raise ValueError("amp fp16 needs a gradient scaler, which the bi-level step's per-objective gradients "
                             "do not use: use --amp bf16 or tf32 (docs/amp.md)")
        if self.amp not in AMP_MODES:
            raise ValueError(f"amp must be one of {', '.join(m for m in AMP_MODES if m != 'fp16')}, got {self.amp!r}")
        if self.cuda_graphs not in CUDA_GRAPHS:
            raise ValueError(f"unknown cuda_graphs {self.cuda_graphs!r}; choose from {', '.join(CUDA_GRAPHS)}")
        if self.max_steps_per_epoch is not None and self.max_steps_per_epoch < 1:
            raise ValueError(f"max_steps_per_epoch must be >= 1 (or unset for whole epochs), got "
                             f"{self.max_steps_per_epoch}")
        if self.derive not in DERIVE_RULES:
            raise ValueError(f"unknown derive rule {self.derive!r}; choose from {', '.join(DERIVE_RULES)}")
        for name in ("max_normal_skips", "max_normal_free_ops"):
            value = getattr(self, name)
            if value is not None and not 0 <= value <= 8:
                raise ValueError(f"{name} must be in 0..8, got {value}")
        if not 0 <= self.params_floor <= 1:
            raise ValueError(f"params_floor is a fraction of L in [0, 1], got {self.params_floor}")
        if self.latency_bound is not None and self.latency_bound_fraction is not None:
            raise ValueError("give the latency bound in ms or as a fraction of the table's range, not both")
        if self.latency_bound is not None and self.latency_bound <= 0:
            raise ValueError(f"latency_bound (T, ms) must be positive, got {self.latency_bound}")
        if self.latency_bound_fraction is not None and not 0 <= self.latency_bound_fraction <= 1:
            raise ValueError(f"latency_bound_fraction must be in [0, 1], got {self.latency_bound_fraction}")
        if bounded and not self.lut:
            raise ValueError("a latency bound needs a latency table: --lut lut.json (make one with "
                             "`e2rnas lut --target TARGET`)")
        if "latency" in self.objectives and not bounded:
            raise ValueError("the latency objective needs --latency-bound MS and --lut lut.json")
        for name in ("pdarts_layers", "pdarts_keep", "pdarts_skip_dropout"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        if self.method == "p-darts":
            n = len(self.pdarts_layers)
            if not (len(self.pdarts_keep) == len(self.pdarts_skip_dropout) == n) or self.epochs < n:
                raise ValueError("p-darts needs as many pdarts_keep and pdarts_skip_dropout entries as pdarts_layers, "
                                 "and at least one epoch per stage")
            if min(self.pdarts_layers) < 3 or not all(1 <= k <= 8 for k in self.pdarts_keep):
                raise ValueError("pdarts_layers must be >= 3 cells and pdarts_keep between 1 and 8 ops")
        if not 0 <= self.warmup_epochs < self.epochs:
            raise ValueError(f"warmup_epochs must be in [0, epochs), got {self.warmup_epochs} of {self.epochs} epochs "
                             f"(set --warmup-epochs)")
        if self.method == "p-darts" and not 0 <= self.pdarts_warmup_epochs < min(stage_epochs(self)):
            raise ValueError(f"pdarts_warmup_epochs must be in [0, epochs of a stage), got "
                             f"{self.pdarts_warmup_epochs} of {min(stage_epochs(self))}")
        if self.search_augment is None:
            object.__setattr__(self, "search_augment", self.dataset != "digits")
        if self.search_cutout and not self.search_augment:
            raise ValueError("search_cutout needs search-time augmentation (--search-augment)")

    def as_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["objectives"] = list(self.objectives)
        for name in ("pdarts_layers", "pdarts_keep", "pdarts_skip_dropout"):
            d[name] = list(d[name])
        return d


@dataclass(frozen=True)
class SearchData:
    train: ImageSet
    val: ImageSet
    ood: ImageSet | None
    num_classes: int
    image_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]


def load_search_data(cfg: SearchConfig) -> SearchData:
    """Half of the training split for the weights and half for the architecture (stratified, fixed seed)."""
    full = load_dataset(cfg.dataset, split="train", data_dir=cfg.data_dir, download=cfg.download,
                        image_size=cfg.image_size)
    # both halves feed every step: an empty or one-image half would spin or break BatchNorm before a step ends
    weights, arch = split_parts(full, 1 - cfg.train_portion, seed=cfg.seed, names=("weight", "architecture"),
                                min_sizes=(2, 2), what=f"search data {cfg.dataset}",
                                fix="use a larger data set, or move --train-portion towards 0.5")
    ood = None
    if cfg.ood_dataset is not None:
        ood = load_dataset(cfg.ood_dataset, split="train" if cfg.ood_dataset != "digits-ood" else "all",
                           data_dir=cfg.data_dir, download=cfg.download, image_size=full.image_size)
    mean, std = normalization_for(cfg.dataset, full)
    if ood is not None:
        require_nonempty(ood, f"OoD set {cfg.ood_dataset}")
    return SearchData(weights, arch, ood, full.num_classes, full.image_size, mean, std)


def deploy_shape(cfg: SearchConfig, data: SearchData) -> DeployShape:
    return DeployShape(layers=cfg.deploy_layers, C=cfg.deploy_C,
                       num_classes=cfg.deploy_num_classes or data.num_classes,
                       input_size=cfg.deploy_input_size or data.image_size)


def load_latency_table(cfg: SearchConfig, shape: DeployShape):
    """The run's latency table, checked against its deploy network (``None`` without ``--lut``)."""
    if not cfg.lut:
        return None
    from e2rnas.space.latency_table import LatencyTable

    table = LatencyTable.load(cfg.lut)
    table.check_matches(shape=shape)
    return table


def resolve_latency_bound(cfg: SearchConfig, cost_model: CostModel, table) -> float | None:
    """T in ms: as given, or at ``latency_bound_fraction`` of the table's fastest-to-slowest genotype range."""
    if cfg.latency_bound_fraction is None:
        return cfg.latency_bound
    latency = deploy_costs(cost_model, latency_table=table)[-1]
    lo, hi = cost_range([latency], cost_model.primitives)["latency"]
    return lo + cfg.latency_bound_fraction * (hi - lo)


class SearchRun:
    """State of one search (model, optimisers, generators, counters); saves and restores itself."""

    def __init__(self, cfg: SearchConfig, data: SearchData, out_dir: Path, dist: DistInfo | None = None):
        self.cfg, self.data, self.out_dir = cfg, data, Path(out_dir)
        self.dist = dist or DistInfo()
        torch.manual_seed(cfg.seed)
        self.device = torch.device(local_device(cfg.device, self.dist))
        self.precision = make_precision(resolve_amp(cfg.amp, self.device), self.device)
        self.cost_model = CostModel(deploy_shape(cfg, data), estimate=cfg.cost_estimate)
        self.latency_table = load_latency_table(cfg, self.cost_model.shape)
        self.latency_bound_ms = resolve_latency_bound(cfg, self.cost_model, self.latency_table)
        self.costs = deploy_costs(self.cost_model, params_bound_m=cfg.params_bound, params_floor=cfg.params_floor,
                                  macs_bound_m=cfg.flops_bound, latency_table=self.latency_table,
                                  latency_bound_ms=self.latency_bound_ms)
        if cfg.derive == "budget":
            check_feasible(self.costs, self.cost_model.primitives, max_skips_normal=self.max_skips,
                           max_free_normal=cfg.max_normal_free_ops)
        self.stage_epochs = stage_epochs(cfg)
        self.build_stage(0)
        self.data_gen = torch.Generator().manual_seed(cfg.seed)  # batch order; state kept at epoch start
        # FGSM random starts, drawn where the step runs: a CPU draw copied to a GPU is a host synchronisation
        self.attack_gen = torch.Generator(device=self.device if self.device.type == "cuda" else "cpu")
        self.attack_gen.manual_seed(cfg.seed + 1)
        self.graph_notes: list[str] = []  # why the step is not captured (--cuda-graphs), said once per stage
        self.build_graphed_step()
        self.epoch = 0  # epochs completed
        self.step_in_epoch = 0  # steps completed in the current epoch (non-zero only after an interrupt)
        self.epoch_start_data_state = self.data_gen.get_state()

    def build_stage(self, stage: int, masks: tuple[torch.Tensor, torch.Tensor] | None = None) -> None:
        """A fresh supernet, optimisers and schedule for a stage (one stage unless ``method`` is p-darts)."""
        cfg, data = self.cfg, self.data
        self.stage = stage
        layers = cfg.pdarts_layers[stage] if cfg.method == "p-darts" else cfg.layers
        self.model = SearchNetwork(cfg.C, layers, data.num_classes,
                                   partial_channels=cfg.partial_channels if cfg.method == "pc-darts" else 1,
                                   mean=data.mean, std=data.std).to(self.device)
        if masks is not None:
            self.model.set_masks(*masks)
        if cfg.method == "p-darts":
            self.model.set_skip_dropout(skip_dropout(cfg, stage, 0, self.stage_epochs[stage]))
        self.w_opt = torch.optim.SGD(self.model.weight_parameters(), lr=cfg.w_lr, momentum=cfg.w_momentum,
                                     weight_decay=cfg.w_weight_decay)
        # capturable: Adam's step count lives on the device, so a CUDA graph's replays advance it
        self.a_opt = torch.optim.Adam(self.model.arch_parameters(), lr=cfg.a_lr, betas=(cfg.a_beta1, cfg.a_beta2),
                                      weight_decay=cfg.a_weight_decay, capturable=self.device.type == "cuda")
        self.sched = torch.optim.lr_scheduler.CosineAnnealingLR(self.w_opt, T_max=self.stage_epochs[stage],
                                                                eta_min=cfg.w_lr_min)
        self.step_fn = BilevelStep(
            self.model, objectives=make_objectives(cfg.objectives, cost_form=cfg.cost_form,
                                                  cost_units=cfg.cost_units),
            weighting=Weighting(cfg.weighting, cfg.normalization, cfg.mgda_max_iter, cfg.mgda_update),
            cost_model=self.cost_model, w_optimizer=self.w_opt, a_optimizer=self.a_opt, first_order=cfg.first_order,
            ll_ood=cfg.ll_ood and data.ood is not None, ll_adv=cfg.ll_adv, eps=cfg.eps, fgsm_step=cfg.fgsm_step,
            grad_clip=cfg.grad_clip, params_bound_m=cfg.params_bound, macs_bound_m=cfg.flops_bound,
            hvp=cfg.hvp, hvp_eps=cfg.hvp_eps, ll_ood_weight=cfg.ll_ood_weight, a_grad_clip=cfg.a_grad_clip,
            latency_table=self.latency_table, latency_bound_ms=self.latency_bound_ms,
            reduce=functools.partial(mean_all_reduce, info=self.dist) if self.dist.active else None,
            autocast=self.precision.autocast if cfg.amp == "bf16" else None, fgsm_start=cfg.fgsm_start,
            params_lower_m=cfg.params_floor * cfg.params_bound if cfg.params_floor else None,
            sync_free=self.device.type != "cpu")
        if hasattr(self, "attack_gen"):  # a later P-DARTS stage: a new supernet, so a new graph
            self.build_graphed_step()

    def build_graphed_step(self) -> None:
        """The step as the loop runs it: captured in a CUDA graph where ``cuda_graphs`` and the step allow."""
        blockers = [] if self.cfg.cuda_graphs == "off" else capture_blockers(
            self.step_fn, device=self.device, distributed=self.dist.active)
        if self.cfg.cuda_graphs != "off" and self.cfg.method == "p-darts" and any(self.cfg.pdarts_skip_dropout):
            blockers.append("P-DARTS skip dropout changes every epoch and is random in the step")
        if self.cfg.cuda_graphs != "off" and self.attack_gen.device.type != self.device.type:
            blockers.append("the FGSM starts draw on the CPU (a checkpoint from before they were drawn on the GPU)")
        enabled = self.cfg.cuda_graphs != "off" and not blockers
        if blockers and (self.cfg.cuda_graphs == "on" or self.device.type == "cuda"):
            self._graph_note(f"CUDA graphs off: {'; '.join(blockers)}")
        self.graphed = GraphedStep(self.step_fn, generator=self.attack_gen, enabled=enabled,
                                   on_fallback=self._graph_note)

    def _graph_note(self, line: str) -> None:
        if line not in self.graph_notes:
            self.graph_notes.append(line)
            log.warning("%s", line)

    def next_stage_if_due(self) -> bool:
        """P-DARTS: after a stage's last epoch, keep each edge's strongest ops and grow the network."""
        if self.stage + 1 >= len(self.stage_epochs) or self.epoch != sum(self.stage_epochs[:self.stage + 1]):
            return False
        keep = self.cfg.pdarts_keep[self.stage + 1]
        masks = tuple(prune_mask(self.model.edge_strengths(red).detach(), self.model.primitives, keep,
                                 keep_none=self.cfg.pdarts_keep_none) for red in (False, True))
        self.build_stage(self.stage + 1, masks)
        return True

    @property
    def max_skips(self) -> int | None:
        return self.cfg.pdarts_max_skips if self.cfg.method == "p-darts" else self.cfg.max_normal_skips

    def derivations(self) -> dict[str, Derivation]:
        """Both rules' genotypes with their exact costs and strengths; ``cfg.derive`` names the handed-over one.

        Cached until an alpha changes (in-place optimiser steps bump a tensor's version): warm-up steps, the step
        record, the epoch record and the summary then solve the integer program once per alpha update."""
        m = self.model
        # a CUDA graph's replay updates the alphas without bumping their version counters: its count is in the key
        key = (self.stage, id(m), m.mask_normal._version, m.mask_reduce._version, self.graphed.replays,
               *(a._version for a in m.arch_parameters()))
        if getattr(self, "_derived", (None,))[0] == key:
            return self._derived[1]
        self._derived = (key, self._derive())
        return self._derived[1]

    def _derive(self) -> dict[str, Derivation]:
        strengths = {"normal": self.model.edge_strengths(False).detach(),
                     "reduce": self.model.edge_strengths(True).detach()}
        prims = self.model.primitives
        out = {"darts": derive_darts(strengths, prims, self.costs, max_skips_normal=self.max_skips)}
        if self.cfg.derive == "budget":
            out["budget"] = derive_budget(strengths, prims, self.costs, max_skips_normal=self.max_skips,
                                          max_free_normal=self.cfg.max_normal_free_ops)
        return out

    def genotype(self):
        return self.derivations()[self.cfg.derive].genotype

    def op_weights(self) -> dict[str, torch.Tensor]:
        a_normal, a_reduce = self.model.masked_alphas()
        return {"normal": torch.softmax(a_normal.detach(), -1), "reduce": torch.softmax(a_reduce.detach(), -1)}

    @property
    def checkpoint_path(self) -> Path:
        return self.out_dir / "checkpoint.pt"

    def state(self) -> dict[str, Any]:
        return {
            "model": self.model.state_dict(), "w_opt": self.w_opt.state_dict(), "a_opt": self.a_opt.state_dict(),
            "sched": self.sched.state_dict(), "epoch": self.epoch, "step_in_epoch": self.step_in_epoch,
            "epoch_start_data_state": self.epoch_start_data_state, "attack_gen": self.attack_gen.get_state(),
            "torch_rng": torch.get_rng_state(), "config": self.cfg.as_dict(), "stage": self.stage,
            "masks": [self.model.mask_normal.cpu(), self.model.mask_reduce.cpu()],
            "world_size": self.dist.world_size,
        }

    def save(self) -> None:
        """The main process writes the checkpoint; every process waits until it is on disk."""
        if self.dist.main:
            atomic_torch_save(self.checkpoint_path, self.state())
        barrier(self.dist)

    def load(self) -> None:
        if not self.checkpoint_path.is_file():
            raise E2RNASError(f"nothing to resume: {self.checkpoint_path} does not exist (drop --resume to start)")
        blob = torch_load(self.checkpoint_path, what="search checkpoint", error=E2RNASError,
                          fix=f"it is damaged (a full disk or a copy cut short?): restore it, or start the search "
                              f"again in a new --out (or delete {self.checkpoint_path.name} there)",
                          map_location=self.device)
        if not isinstance(blob, dict) or not {"config", "model", "epoch"} <= blob.keys():
            raise E2RNASError(f"{self.checkpoint_path} is not an e2rnas search checkpoint; resume a search run's "
                              f"folder, or start a new --out")
        # checkpoints from before these settings searched in fp32 with fast FGSM
        saved = {"amp": "off", "fgsm_start": "random"} | dict(blob["config"])
        saved.pop("cuda_graphs", None)  # the speed, not the search: any value resumes
        now = {k: v for k, v in self.cfg.as_dict().items() if k != "cuda_graphs"}
        if saved != now:
            changed = sorted(k for k in saved if saved[k] != now.get(k))
            raise E2RNASError(f"cannot resume: settings differ from the checkpoint's ({', '.join(changed)}); "
                              f"use the same settings or a new --out")
        if int(blob.get("world_size", 1)) != self.dist.world_size:
            raise E2RNASError(f"cannot resume: the checkpoint was written by {blob.get('world_size', 1)} process(es), "
                              f"this run has {self.dist.world_size}; resume with the same --nproc-per-node")
        if int(blob.get("stage", 0)) != self.stage:
            self.build_stage(int(blob["stage"]), tuple(blob["masks"]))
        self.model.load_state_dict(blob["model"])
        self.w_opt.load_state_dict(blob["w_opt"])
        self.a_opt.load_state_dict(blob["a_opt"])
        self.sched.load_state_dict(blob["sched"])
        self.epoch, self.step_in_epoch = int(blob["epoch"]), int(blob["step_in_epoch"])
        self.epoch_start_data_state = blob["epoch_start_data_state"]
        if blob["attack_gen"].numel() != self.attack_gen.get_state().numel():
            # a GPU search checkpointed before the FGSM starts were drawn on the device: keep its CPU stream (the
            # same numbers as before the interruption); the step is then not captured (build_graphed_step says so)
            self.attack_gen = torch.Generator()
            self.build_graphed_step()
        self.attack_gen.set_state(blob["attack_gen"])
        torch.set_rng_state(blob["torch_rng"])

    def epoch_batches(self):
        """The epoch's step batches, replayed from the epoch-start generator state (so a resume sees the same)."""
        cfg, d = self.cfg, self.data
        self.data_gen.set_state(self.epoch_start_data_state)
        train = batches(d.train, cfg.batch_size, shuffle=True, generator=self.data_gen, drop_last=True)
        val = cycle_labeled(d.val, cfg.batch_size, self.data_gen)
        ood = cycle(d.ood, cfg.batch_size, generator=self.data_gen) if d.ood is not None else None
        aug = dict(generator=self.data_gen, pad=4, flip=True, cutout=cfg.search_cutout, cutout_fill=d.mean)
        for k, (x_tr, y_tr) in enumerate(train):
            if cfg.max_steps_per_epoch is not None and k >= cfg.max_steps_per_epoch:
                return
            x_val, y_val = next(val)
            x_ood_lower = next(ood) if ood is not None else None
            x_ood_upper = next(ood) if ood is not None else None
            if cfg.search_augment:  # both halves, as DARTS' search loader; the OoD stream stays raw (authors)
                x_tr, x_val = augment(x_tr, **aug), augment(x_val, **aug)
            if k < self.step_in_epoch:
                continue
            to = self._to_device
            yield StepBatch(to(x_tr), to(y_tr), to(x_val), to(y_val), to(x_ood_lower), to(x_ood_upper))

    def _to_device(self, t: torch.Tensor | None) -> torch.Tensor | None:
        """This process's slice of a batch tensor on the search device; to a GPU pinned and asynchronous (a pageable
        copy waits for the GPU to finish the previous step)."""
        if t is None:
            return None
        t = shard(t, info=self.dist)
        if self.device.type == "cuda":
            return t.pin_memory().to(self.device, non_blocking=True)
        return t.to(self.device)

    def steps_per_epoch(self) -> int:
        n = len(self.data.train) // self.cfg.batch_size or 1
        return min(n, self.cfg.max_steps_per_epoch or n)

    @torch.no_grad()
    def val_accuracy(self) -> float:
        self.model.eval()
        correct = total = 0
        # a seeded class-mixed sample: a data set stored sorted by class would otherwise give its first classes only
        for x, y in batches(self.data.val.head(self.cfg.val_batches * 256), 256, shuffle=False):
            correct += int((self.model(x.to(self.device)).argmax(1).cpu() == y).sum())
            total += len(y)
        self.model.train()
        return correct / max(total, 1)


def stage_epochs(cfg: SearchConfig) -> list[int]:
    """Epochs per stage: all in one for DARTS/PC-DARTS; split evenly (rest to the last) for P-DARTS."""
    if cfg.method != "p-darts":
        return [cfg.epochs]
    n = len(cfg.pdarts_layers)
    return [cfg.epochs // n] * (n - 1) + [cfg.epochs - (cfg.epochs // n) * (n - 1)]


def prune_mask(strengths: torch.Tensor, primitives: tuple[str, ...], keep: int, *,
               keep_none: bool = False) -> torch.Tensor:
    """Per edge, the ``keep`` strongest ops; ``none`` is dropped at the first prune unless ``keep_none``.

    ``keep_none`` (P-DARTS' ``get_min_k``): ``none`` competes for the ``keep`` places like any other op until the
    last stage; P-DARTS removes it only for the final cell, which the derivation rules do anyway."""
    w = strengths.clone()
    if "none" in primitives and not keep_none:
        w[:, primitives.index("none")] = float("-inf")
    w[w <= 0] = float("-inf")  # already pruned
    top = w.topk(keep, dim=1).indices
    mask = torch.zeros_like(w, dtype=torch.bool)
    mask.scatter_(1, top, True)
    return mask & torch.isfinite(w)


def skip_dropout(cfg: SearchConfig, stage: int, epoch_in_stage: int, stage_len: int) -> float:
    """P-DARTS' skip dropout for an epoch of a stage: fixed, or (``pdarts_dropout_decay``) P-DARTS' schedule,
    p (E - e - 1) / E during the stage's warm-up epochs and p exp(-0.2 (e - warm-up)) after them."""
    p = cfg.pdarts_skip_dropout[stage]
    if not cfg.pdarts_dropout_decay:
        return p
    if epoch_in_stage < cfg.pdarts_warmup_epochs:
        return p * (stage_len - epoch_in_stage - 1) / stage_len
    return p * math.exp(-0.2 * (epoch_in_stage - cfg.pdarts_warmup_epochs))


def cycle_labeled(data: ImageSet, batch_size: int, generator: torch.Generator):
    require_nonempty(data, "architecture half")
    while True:
        yield from batches(data, batch_size, shuffle=True, generator=generator, drop_last=len(data) >= batch_size)


def _step_record(run: SearchRun, res: StepResult, step: int, displacement: float) -> dict[str, Any]:
    g = run.genotype()
    exact = run.cost_model.genotype_cost(g)
    rec = {"type": "step", "epoch": run.epoch, "step": step, "lower_loss": res.lower_loss, "objectives": res.losses,
           "gammas": res.gammas, "effective_weights": res.effective, "expected_params_m": res.params_m,
           "expected_macs_m": res.macs_m, "exact_params_m": exact.params_m, "exact_macs_m": exact.macs_m,
           "lr": run.sched.get_last_lr()[0], "genotype": g.to_dict()}
    if res.diagnostics:  # bi-level steps only (warm-up steps leave alpha alone)
        rec |= {"diagnostics": res.diagnostics | {"alpha_displacement": displacement},
                "mean_normalized_entropy": normalized_entropy(torch.cat(list(run.op_weights().values())))}
    if res.dropped:
        rec["dropped_from_mgda"] = res.dropped
    if run.latency_table is not None:
        rec |= {"expected_latency_ms": res.latency_ms, "table_latency_ms": float(run.latency_table.genotype_ms(g))}
    return rec


ProgressFn = Callable[[dict[str, Any]], None]


def _drop_records_after_checkpoint(metrics: Path, alphas: Path, *, epoch: int, step: int) -> None:
    """A run killed after its last checkpoint logged steps that the resume runs again: keep each record once.
    Rewritten whole (atomic) every time, so that a torn last line, which ``read_jsonl`` drops, is gone too."""
    def kept(rec: dict[str, Any]) -> bool:
        if rec.get("type") == "step":
            return rec["epoch"] < epoch or (rec["epoch"] == epoch and rec["step"] <= step)
        return rec["epoch"] <= epoch  # epoch records and alpha snapshots carry the number of completed epochs

    for path in (metrics, alphas):
        records = read_jsonl(path)
        if path.is_file():
            atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in records if kept(r)))


def run_search(config: SearchConfig, *, out_dir: Path, resume: bool = False,
               on_step: ProgressFn | None = None, on_epoch: ProgressFn | None = None) -> dict[str, Any]:
    """Search; returns the summary (also written as ``summary.json``). ``on_step``/``on_epoch`` get the records."""

    out_dir = Path(out_dir)
    info = init_distributed(config.device)
    if info.active and config.batch_size % info.world_size:
        raise E2RNASError(f"batch_size {config.batch_size} must be a multiple of the {info.world_size} processes "
                          f"(each takes an equal slice of every global batch)")
    if info.main:
        check_dir(out_dir, command="search")  # a refusal before the data loads
    # config.yaml records the precision that ran (auto -> tf32 on CUDA, off elsewhere)
    config = replace(config, amp=resolve_amp(config.amp, torch.device(local_device(config.device, info))))
    data = load_search_data(config)
    run = SearchRun(config, data, out_dir, dist=info)
    with owned_dir(out_dir, command="search", enabled=info.main), RunLock(out_dir, enabled=info.main), \
            run.precision.tf32():
        return _run(run, config, out_dir, resume=resume, on_step=on_step if info.main else None,
                    on_epoch=on_epoch if info.main else None)


def _run(run: SearchRun, config: SearchConfig, out_dir: Path, *, resume: bool, on_step: ProgressFn | None,
         on_epoch: ProgressFn | None) -> dict[str, Any]:
    import yaml

    info = run.dist
    if resume:
        run.load()
        finished = _finished_summary(out_dir, run)
        if finished is not None:  # resuming a finished run changes nothing, its summary's provenance included
            return finished
    elif run.checkpoint_path.exists():
        raise E2RNASError(f"{out_dir} already holds a search; pass --resume to continue it or choose another --out")
    metrics, alphas = out_dir / "metrics.jsonl", out_dir / "alphas.jsonl"
    if info.main:
        out_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out_dir / "config.yaml", yaml.safe_dump({"search": config.as_dict(),
                                                                   "world_size": info.world_size}, sort_keys=False))
        if not resume:
            metrics.unlink(missing_ok=True)
            alphas.unlink(missing_ok=True)
        else:
            _drop_records_after_checkpoint(metrics, alphas, epoch=run.epoch, step=run.step_in_epoch)
    barrier(info)
    log_jsonl = append_jsonl if info.main else (lambda path, rec: None)
    try:
        while run.epoch < config.epochs:
            t0 = time.time()
            lr = run.sched.get_last_lr()[0]
            in_stage = run.epoch - sum(run.stage_epochs[:run.stage])
            if config.method == "p-darts":
                run.model.set_skip_dropout(skip_dropout(config, run.stage, in_stage, run.stage_epochs[run.stage]))
            for batch in run.epoch_batches():
                warm = run.epoch < config.warmup_epochs or (config.method == "p-darts"
                                                             and in_stage < config.pdarts_warmup_epochs)
                before = torch.cat([a.detach().flatten() for a in run.model.arch_parameters()])
                if warm:
                    res = run.step_fn.weight_step(batch, generator=run.attack_gen)
                else:
                    res = run.graphed.step(batch, lr=lr)
                after = torch.cat([a.detach().flatten() for a in run.model.arch_parameters()])
                run.step_in_epoch += 1
                rec = _step_record(run, res, run.step_in_epoch, float((after - before).norm()))
                log_jsonl(metrics, rec)
                if on_step:
                    on_step(rec | {"steps_per_epoch": run.steps_per_epoch(), "epochs": config.epochs})
            run.sched.step()
            run.epoch += 1
            run.step_in_epoch = 0
            run.epoch_start_data_state = run.data_gen.get_state()
            genotype = run.genotype()
            exact = run.cost_model.genotype_cost(genotype)
            with torch.no_grad():
                n_est, f_est = run.cost_model.expected_cost(*run.model.cost_inputs())
            epoch_rec = {"type": "epoch", "epoch": run.epoch, "val_accuracy": run.val_accuracy(),
                         "expected_params_m": float(n_est), "expected_macs_m": float(f_est),
                         "exact_params_m": exact.params_m, "exact_macs_m": exact.macs_m,
                         "seconds": time.time() - t0, "genotype": genotype.to_dict(),
                         "mean_normalized_entropy": normalized_entropy(torch.cat(list(run.op_weights().values())))}
            log_jsonl(metrics, epoch_rec)
            check_agree(list(run.model.arch_parameters()), info, what="architecture weights")
            log.info("search epoch %d/%d: val acc %.3f, estimate %.4f M params / %.2f M MACs, genotype %.4f M / "
                     "%.2f M, entropy %.3f", run.epoch, config.epochs, epoch_rec["val_accuracy"],
                     epoch_rec["expected_params_m"], epoch_rec["expected_macs_m"], exact.params_m, exact.macs_m,
                     epoch_rec["mean_normalized_entropy"])
            log_jsonl(alphas, {"epoch": run.epoch, **{n: p.detach().cpu().tolist() for n, p in
                                                          run.model.named_parameters()
                                                          if n in ("alpha_normal", "alpha_reduce", "beta_normal",
                                                                   "beta_reduce")}})
            run.next_stage_if_due()
            run.save()
            if on_epoch:
                on_epoch(epoch_rec | {"epochs": config.epochs})
    except KeyboardInterrupt:
        run.save()
        raise
    return finalize(run, out_dir)


def _finished_summary(out_dir: Path, run: SearchRun) -> dict[str, Any] | None:
    """The summary of a run whose every epoch is done and whose summary and genotype are on disk, else None."""
    path = out_dir / "summary.json"
    if run.epoch < run.cfg.epochs or not path.is_file() or not (out_dir / "genotype.json").is_file():
        return None
    try:
        return json.loads(path.read_text())
    except ValueError:
        return None  # a damaged summary is written again


def finalize(run: SearchRun, out_dir: Path) -> dict[str, Any]:
    cfg = run.cfg
    derivations = run.derivations()
    handed = derivations[cfg.derive]
    genotype = handed.genotype
    if run.dist.main:
        genotype.save(out_dir / "genotype.json")
    exact = run.cost_model.genotype_cost(genotype)
    with torch.no_grad():
        n_est, f_est = run.cost_model.expected_cost(*run.model.cost_inputs())
    warnings = search_warnings(genotype, weights=run.op_weights())
    summary = {
        "params_bound_m": cfg.params_bound, "flops_bound_m": cfg.flops_bound, "flops_unit": "MACs",
        "cost_estimate": cfg.cost_estimate,  # the form of expected_params_m / expected_macs_m
        "params_floor": cfg.params_floor if cfg.derive == "budget" else None,
        "expected_params_m": float(n_est), "expected_macs_m": float(f_est),
        "exact_params_m": exact.params_m, "exact_macs_m": exact.macs_m, "exact_flops_m": exact.flops_m,
        "deploy_shape": dataclasses.asdict(run.cost_model.shape), "objectives": list(cfg.objectives),
        "weighting": cfg.weighting, "method": cfg.method, "first_order": cfg.first_order,
        "dataset": cfg.dataset, "ood_dataset": cfg.ood_dataset, "epochs": run.epoch,
        "val_accuracy": run.val_accuracy(), "genotype": genotype.to_dict(), "genotype_text": genotype.describe(),
        "final_entropy": normalized_entropy(torch.cat(list(run.op_weights().values()))),
        "derive": cfg.derive, "derivations": {k: d.as_dict() for k, d in derivations.items()},
        "derivation_gap": derivations["darts"].strength - handed.strength,
        "warnings": warnings, "notes": search_notes(genotype), "provenance": provenance(gpu=run.device.type == "cuda"),
    }
    if run.latency_table is not None:
        with torch.no_grad():
            lat_est = float(run.latency_table.expected_ms(*run.model.cost_inputs()))
        summary |= {"latency_bound_ms": run.latency_bound_ms, "latency_bound_fraction": cfg.latency_bound_fraction,
                    "expected_latency_ms": lat_est,
                    "table_latency_ms": float(run.latency_table.genotype_ms(genotype)),
                    "lut": str(Path(cfg.lut).resolve()), "lut_key": run.latency_table.key}
    summary["world_size"] = run.dist.world_size
    summary["cuda_graphs"] = {"setting": cfg.cuda_graphs, "captured": run.graphed.captures > 0,
                              "captures": run.graphed.captures, "replays": run.graphed.replays,
                              "notes": list(run.graph_notes)}
    if run.dist.main:
        atomic_write_json(out_dir / "summary.json", summary)
    barrier(run.dist)
    return summary
