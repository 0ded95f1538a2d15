"""One E2RNAS step: the lower-level weight update (eq. 8) and the multi-objective upper-level update (eqs. 9, 10).

Both levels are evaluated at (theta_t, alpha_t): the lower-level gradient g = grad_theta L_lower(theta_t, alpha_t)
is computed once and serves both the weight step (eq. 8, exactly) and the unrolled weights
theta' = theta_t - xi * (momentum buffer + g + wd theta_t) of the second-order approximation (DARTS' unroll).
Each objective's gradient is computed once, w.r.t. alpha and theta'; MGDA weighs the alpha-gradients; the
second-order term is one Hessian-vector product for the weighted combination of the data objectives'
theta'-gradients (it is linear in them), by finite differences along that combination: ``hvp="central"`` is
DARTS' two passes at theta +- r v (the paper preset), ``hvp="forward"`` one pass at theta + r v against the
lower-level gradient the step computed anyway. They are different searches, not one search at two speeds
(``docs/bilevel-step.md``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass, field, replace

import torch
import torch.nn.functional as F
from torch.func import functional_call

from e2rnas.errors import E2RNASError
from e2rnas.evaluation.attacks import fgsm, fgsm_clean, fgsm_from_gradient
from e2rnas.search.diagnostics import step_diagnostics
from e2rnas.search.mgda import Weighting
from e2rnas.search.objectives import Objective, ObjectiveContext, ood_kl_uniform
from e2rnas.space.cost import CostModel
from e2rnas.space.supernet import SearchNetwork


class DivergenceError(E2RNASError):
    """A loss became NaN or Inf."""


@dataclass(frozen=True)
class StepBatch:
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor
    x_ood_lower: torch.Tensor | None = None
    x_ood_upper: torch.Tensor | None = None


@dataclass
class StepResult:
    lower_loss: float
    losses: dict[str, float]
    gammas: dict[str, float]
    effective: dict[str, float]
    params_m: float
    macs_m: float
    latency_ms: float | None = None
    extra: dict[str, float] = field(default_factory=dict)
    dropped: list[str] = field(default_factory=list)  # objectives that sat out MGDA (alpha-gradient ~0)
    diagnostics: dict = field(default_factory=dict)  # e2rnas.search.diagnostics.step_diagnostics


@dataclass
class PendingRecord:
    """A step's record as tensors on the step's device, read on the host by ``BilevelStep.record``."""

    names: list[str]
    lower: torch.Tensor
    losses: torch.Tensor
    gamma: torch.Tensor
    eff: torch.Tensor
    degenerate: torch.Tensor
    G: torch.Tensor
    combined: torch.Tensor
    params_m: torch.Tensor | None
    macs_m: torch.Tensor | None
    latency_ms: torch.Tensor | None


HVP_SCHEMES = ("central", "forward")
#: where the upper level's FGSM takes its gradient: "random" at the random start (fast FGSM, the paper's [21]);
#: "clean" at the clean input, from the val objective's own backward (the authors' code; one pass fewer)
FGSM_STARTS = ("random", "clean")


class BilevelStep:
    """Owns no data: give it a batch, it updates the supernet's weights and alphas in place."""

    def __init__(self, model: SearchNetwork, *, objectives: list[Objective], weighting: Weighting,
                 cost_model: CostModel | None, w_optimizer: torch.optim.SGD, a_optimizer: torch.optim.Optimizer,
                 first_order: bool = False, ll_ood: bool = True, ll_adv: bool = False, eps: float = 2 / 255,
                 fgsm_step: float = 1.25, grad_clip: float = 5.0, params_bound_m: float | None = None,
                 macs_bound_m: float | None = None, hvp_eps: float = 0.01, hvp: str = "forward",
                 ll_ood_weight: float = 1.0, a_grad_clip: float | None = None, latency_table=None,
                 latency_bound_ms: float | None = None,
                 reduce: Callable[[list[torch.Tensor]], list[torch.Tensor]] | None = None,
                 autocast: Callable[[], AbstractContextManager] | None = None, fgsm_start: str = "random",
                 params_lower_m: float | None = None, sync_free: bool = False):
        self.model = model
        # sync_free (issue 26): nothing is read on the host between the first forward and the alpha update; the
        # finite check and the step record are read once after it (``docs/bilevel-step.md``)
        self.sync_free = sync_free
        # the finite-difference passes replay the lower-level pass's random stream (stochastic ops draw the same
        # masks); a CUDA graph turns it off, having refused stochastic ops (reading a CUDA random state there is
        # illegal)
        self.replay_rng = True
        if fgsm_start not in FGSM_STARTS:
            raise ValueError(f"unknown FGSM start {fgsm_start!r}; choose from {', '.join(FGSM_STARTS)}")
        self.fgsm_start = fgsm_start
        # mixed precision (search --amp bf16): the lower-level pass, FGSM and the objectives run under it; the
        # finite-difference passes of the second-order term never do (r v is below bf16's resolution)
        self._autocast = autocast or nullcontext
        # data parallelism: the mean over processes of every data-dependent gradient and loss (identity when one)
        self._reduce = reduce or (lambda tensors: tensors)
        self.objectives = objectives
        self.weighting = weighting
        self.cost_model = cost_model
        self.w_optimizer = w_optimizer
        self.a_optimizer = a_optimizer
        self.first_order = first_order
        self.ll_ood = ll_ood
        self.ll_adv = ll_adv
        self.eps = eps
        self.fgsm_step = fgsm_step
        self.grad_clip = grad_clip
        self.params_bound_m = params_bound_m
        self.macs_bound_m = macs_bound_m
        self.params_lower_m = params_lower_m  # the params band's lower edge (cost form ``band``)
        self.hvp_eps = hvp_eps
        self.latency_table = latency_table
        self.latency_bound_ms = latency_bound_ms
        if hvp not in HVP_SCHEMES:
            raise ValueError(f"unknown Hessian-vector scheme {hvp!r}; choose from {', '.join(HVP_SCHEMES)}")
        self.hvp = hvp
        self.ll_ood_weight = ll_ood_weight
        self.a_grad_clip = a_grad_clip
        self.weight_names = list(model.named_weight_parameters())
        self.weights = list(model.named_weight_parameters().values())
        self.alphas = model.arch_parameters()
        if {o.name for o in objectives} & {"params", "flops"} and cost_model is None:
            raise ValueError("the params/flops objectives need a cost model")
        if "latency" in {o.name for o in objectives} and (latency_table is None or latency_bound_ms is None):
            raise ValueError("the latency objective needs a latency table and a bound")

    # -- helpers ---------------------------------------------------------------------------------------------
    def _forward(self, theta: list[torch.Tensor] | None):
        if theta is None:
            return self.model
        params = dict(zip(self.weight_names, theta, strict=True))
        return lambda x: functional_call(self.model, params, (x,))

    def _amp(self, forward):
        """``forward`` under the step's mixed precision, logits back in float32 (losses and gradients in fp32)."""
        if self._autocast is nullcontext:
            return forward

        def run(x):
            with self._autocast():
                return forward(x).float()

        return run

    def _lower_grads(self, forward, batch: StepBatch, x_train_adv: torch.Tensor | None,
                     wrt: list[torch.Tensor], *, autocast: bool = True) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """(L_lower, grad of L_lower w.r.t. ``wrt``), one term at a time so that only one graph is alive;
        ``autocast=False`` runs in full precision whatever the step's mixed precision."""
        forward = self._amp(forward) if autocast else forward
        terms = [lambda: F.cross_entropy(forward(batch.x_train), batch.y_train)]
        if self.ll_ood and batch.x_ood_lower is not None:
            terms.append(lambda: self.ll_ood_weight * ood_kl_uniform(forward(batch.x_ood_lower)))
        if x_train_adv is not None:
            terms.append(lambda: F.cross_entropy(forward(x_train_adv), batch.y_train))
        total, grads = None, None
        for term in terms:
            loss = term()
            g = torch.autograd.grad(loss, wrt, allow_unused=True, materialize_grads=True)
            grads = list(g) if grads is None else [a + b for a, b in zip(grads, g, strict=True)]
            total = loss.detach() if total is None else total + loss.detach()
        *grads, total = self._reduce([*grads, total])
        return total, grads

    def _unrolled(self, g: list[torch.Tensor], xi: float) -> list[torch.Tensor]:
        group = self.w_optimizer.param_groups[0]
        momentum, wd = group.get("momentum", 0.0), group.get("weight_decay", 0.0)
        out = []
        for p, gp in zip(self.weights, g, strict=True):
            buf = self.w_optimizer.state.get(p, {}).get("momentum_buffer")
            step = gp + wd * p.detach()
            if buf is not None and momentum:
                step = step + momentum * buf
            out.append((p.detach() - xi * step).requires_grad_(True))
        return out

    def _hvp(self, v: list[torch.Tensor], batch: StepBatch, x_train_adv: torch.Tensor | None,
             alpha_grad_t: list[torch.Tensor], rng: tuple | None) -> list[torch.Tensor]:
        """grad_alpha grad_theta L_lower . v by finite differences along v (DARTS' eq. 8, r = hvp_eps / |v|).

        ``central``: [g(theta + r v) - g(theta - r v)] / 2r, two lower-level passes (DARTS, the authors' code).
        ``forward``: [g(theta + r v) - g(theta)] / r, one pass; g(theta) is a by-product of the lower-level pass.
        At DARTS' r |v| = 0.01 the perturbation crosses ReLU/max-pool kinks, so the two differ by about their
        own norm (docs/bilevel-step.md). Every pass replays the lower-level pass's random stream, so stochastic
        ops (P-DARTS' skip dropout) draw the same masks and the difference sees only the change of theta.
        """
        norm = torch.sqrt(sum((t * t).sum() for t in v))
        if self.sync_free:  # v = 0 gives theta +- 0 v = theta: an exact 0 below, whatever r, with no host read
            nonzero = norm > 0
            norm = torch.where(nonzero, norm, torch.ones_like(norm))
        elif float(norm) == 0.0:
            return [torch.zeros_like(a) for a in self.alphas]
        r = self.hvp_eps / norm
        central = self.hvp == "central"
        signs = (1.0, -1.0) if central else (1.0,)
        if not central and self._autocast is not nullcontext:
            signs = (1.0, 0.0)  # g(theta) again, in full precision: the step's own was taken under autocast
        grads = []
        for sign in signs:
            theta = [p.detach() + sign * r * t for p, t in zip(self.weights, v, strict=True)]
            with _replay_rng(rng, self.alphas[0].device) if rng is not None else nullcontext():
                grads.append(self._lower_grads(self._forward(theta), batch, x_train_adv, self.alphas,
                                               autocast=False)[1])
        if central:
            out = [(gp - gm) / (2 * r) for gp, gm in zip(*grads, strict=True)]
        else:
            base = grads[1] if len(grads) == 2 else alpha_grad_t
            out = [(gp - g0) / r for gp, g0 in zip(grads[0], base, strict=True)]
        return [torch.where(nonzero, h, torch.zeros_like(h)) for h in out] if self.sync_free else out

    # -- the step ----------------------------------------------------------------------------------------------
    def gradients(self, batch: StepBatch, *, lr: float, generator: torch.Generator | None = None
                  ) -> tuple[list[torch.Tensor], torch.Tensor, StepResult]:
        """(weight gradient of eq. 8, combined alpha gradient of eq. 10 (flat), step record); changes nothing."""
        g, combined, pending = self.pending_gradients(batch, lr=lr, generator=generator)
        return g, combined, self.record(pending)

    def pending_gradients(self, batch: StepBatch, *, lr: float, generator: torch.Generator | None = None
                          ) -> tuple[list[torch.Tensor], torch.Tensor, PendingRecord]:
        """``gradients`` with the step record left as tensors (``record`` reads them): with ``sync_free``, nothing in
        here reads a value on the host."""
        model = self.model
        model.train()
        x_train_adv = None
        if self.ll_adv:
            x_train_adv = fgsm(self._amp(model), batch.x_train, batch.y_train, eps=self.eps,
                               step_size=self.fgsm_step * self.eps, generator=generator)
        second_order = not self.first_order
        rng = _rng_snapshot(self.alphas[0].device) if self.replay_rng else None
        # the forward scheme reuses g(theta)'s alpha part, unless autocast made it (then _hvp takes it in fp32)
        reuse_g0 = second_order and self.hvp == "forward" and self._autocast is nullcontext
        wrt = self.weights + (self.alphas if reuse_g0 else [])
        lower, grads = self._lower_grads(model, batch, x_train_adv, wrt)
        if not self.sync_free:
            _check_finite({"lower": lower})
        g, alpha_grad_t = grads[:len(self.weights)], grads[len(self.weights):]

        theta = self._unrolled(g, lr) if second_order else None
        forward = self._amp(self._forward(theta))
        names = [o.name for o in self.objectives]
        x_adv, x_val = None, batch.x_val
        # "clean": the val objective's backward also gives the input gradient (val must come before adv)
        reuse = self.fgsm_start == "clean" and "adv" in names and "val" in names[:names.index("adv")]
        if reuse:
            x_val = batch.x_val.detach().requires_grad_(True)
        elif "adv" in names:  # made at theta', where L_adv is evaluated (eq. 4 at the unrolled weights)
            x_adv = self._fgsm_val(forward, batch, generator)
        params_m = macs_m = None
        if self.cost_model is not None:
            a_normal, a_reduce, keep = model.cost_inputs()
            params_m, macs_m = self.cost_model.expected_cost(a_normal, a_reduce, keep)
        latency_ms = None
        if self.latency_table is not None:
            latency_ms = self.latency_table.expected_ms(*model.cost_inputs())
        ctx = ObjectiveContext(forward=forward, x_val=x_val, y_val=batch.y_val, x_adv=x_adv,
                               x_ood=batch.x_ood_upper, params_m=params_m, macs_m=macs_m,
                               params_bound_m=self.params_bound_m, macs_bound_m=self.macs_bound_m,
                               latency_ms=latency_ms, latency_bound_ms=self.latency_bound_ms,
                               params_lower_m=self.params_lower_m)
        losses, alpha_grads, theta_grads = [], [], []
        n_arch = sum(not o.uses_weights for o in self.objectives)
        for obj in self.objectives:
            loss = obj(ctx)
            losses.append(loss.detach())
            wrt = list(self.alphas) + (theta if (second_order and obj.uses_weights) else [])
            n_arch -= not obj.uses_weights
            with_input = reuse and obj.name == "val"
            grads = torch.autograd.grad(loss, wrt + ([x_val] if with_input else []), allow_unused=True,
                                        materialize_grads=True, retain_graph=not obj.uses_weights and n_arch > 0)
            if with_input:
                *grads, x_grad = grads
                ctx = replace(ctx, x_val=batch.x_val, x_adv=fgsm_from_gradient(
                    batch.x_val, x_grad, eps=self.eps, step_size=self.fgsm_step * self.eps, generator=generator))
            alpha_grads.append(torch.cat([t.reshape(-1) for t in grads[:len(self.alphas)]]))
            theta_grads.append(grads[len(self.alphas):] if obj.uses_weights else None)
        if not self.sync_free:
            _check_finite(dict(zip(names, losses, strict=True)))

        G, loss_vec = self._reduce([torch.stack(alpha_grads), torch.stack(losses)])
        if self.sync_free:
            gamma, eff, degenerate = self.weighting.weights_on_device(G, loss_vec, names)
        else:
            gamma, eff = self.weighting.weights(G, loss_vec, names)
            degenerate = self.weighting.degenerate(G, loss_vec)
        eff = eff.to(device=G.device, dtype=G.dtype)
        combined = (eff[:, None] * G).sum(0)
        if second_order and any(t is not None for t in theta_grads):
            v = None
            for w, tg in zip(eff, theta_grads, strict=True):
                if tg is None:
                    continue
                v = [w * t for t in tg] if v is None else [a + w * t for a, t in zip(v, tg, strict=True)]
            v = self._reduce(v)  # the same direction on every process (gamma is already the same)
            implicit = torch.cat([h.reshape(-1) for h in self._hvp(v, batch, x_train_adv, alpha_grad_t, rng)])
            combined = combined - lr * implicit
        # a copy of the applied gradient: the alpha step's clipping scales .grad, a view of it, in place
        pending = PendingRecord(names=names, lower=lower.detach(), losses=loss_vec.detach(), gamma=gamma, eff=eff,
                                degenerate=degenerate, G=G.detach(), combined=combined.detach().clone(),
                                params_m=None if params_m is None else params_m.detach(),
                                macs_m=None if macs_m is None else macs_m.detach(),
                                latency_ms=None if latency_ms is None else latency_ms.detach())
        return g, combined, pending

    def record(self, pending: PendingRecord) -> StepResult:
        """The step record: every value read on the host here, once; a NaN/Inf raises ``DivergenceError`` (with
        ``sync_free`` this is the step's finite check, after its update: the checkpoint on disk is the last good)."""
        names = pending.names
        if self.sync_free:
            _check_finite({"lower": pending.lower, **dict(zip(names, pending.losses, strict=True))})
        return StepResult(
            lower_loss=float(pending.lower),
            losses={n: float(v) for n, v in zip(names, pending.losses, strict=True)},
            gammas={n: float(v) for n, v in zip(names, pending.gamma, strict=True)},
            effective={n: float(v) for n, v in zip(names, pending.eff, strict=True)},
            params_m=float(pending.params_m) if pending.params_m is not None else float("nan"),
            macs_m=float(pending.macs_m) if pending.macs_m is not None else float("nan"),
            latency_ms=float(pending.latency_ms) if pending.latency_ms is not None else None,
            dropped=[n for n, bad in zip(names, pending.degenerate.tolist(), strict=True) if bad],
            diagnostics=step_diagnostics(pending.G, pending.eff, pending.combined, names),
        )

    def _fgsm_val(self, forward, batch: StepBatch, generator: torch.Generator | None) -> torch.Tensor:
        """The FGSM example of the validation batch at ``forward``'s weights, in its own pass."""
        attack = fgsm if self.fgsm_start == "random" else fgsm_clean
        return attack(forward, batch.x_val, batch.y_val, eps=self.eps, step_size=self.fgsm_step * self.eps,
                      generator=generator)

    def _apply_weight_step(self, g: list[torch.Tensor]) -> None:
        for p, gp in zip(self.weights, g, strict=True):
            p.grad = gp
        torch.nn.utils.clip_grad_norm_(self.weights, self.grad_clip)
        self.w_optimizer.step()

    def weight_step(self, batch: StepBatch, *, generator: torch.Generator | None = None) -> StepResult:
        """Warm-up: the lower-level weight step alone (eq. 8), alphas frozen; one lower-level pass."""
        self.model.train()
        x_train_adv = None
        if self.ll_adv:
            x_train_adv = fgsm(self._amp(self.model), batch.x_train, batch.y_train, eps=self.eps,
                               step_size=self.fgsm_step * self.eps, generator=generator)
        lower, g = self._lower_grads(self.model, batch, x_train_adv, self.weights)
        _check_finite({"lower": lower})
        self._apply_weight_step(g)
        self.w_optimizer.zero_grad(set_to_none=True)
        return StepResult(lower_loss=float(lower), losses={}, gammas={}, effective={}, params_m=float("nan"),
                          macs_m=float("nan"))

    def step(self, batch: StepBatch, *, lr: float, generator: torch.Generator | None = None) -> StepResult:
        """Compute both gradients at (theta_t, alpha_t), then apply the SGD weight step and the Adam alpha step."""
        return self.record(self.pending_step(batch, lr=lr, generator=generator))

    def pending_step(self, batch: StepBatch, *, lr: float, generator: torch.Generator | None = None
                     ) -> PendingRecord:
        """``step`` with its record left as tensors (what a CUDA graph captures); ``record`` reads it."""
        g, combined, pending = self.pending_gradients(batch, lr=lr, generator=generator)
        self._apply_weight_step(g)
        offset = 0
        for a in self.alphas:
            a.grad = combined[offset:offset + a.numel()].view_as(a).to(a.dtype)
            offset += a.numel()
        if self.a_grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(self.alphas, self.a_grad_clip)
        self.a_optimizer.step()
        self.w_optimizer.zero_grad(set_to_none=True)
        self.a_optimizer.zero_grad(set_to_none=True)
        return pending


def _rng_snapshot(device: torch.device) -> tuple:
    return torch.get_rng_state(), (torch.cuda.get_rng_state(device) if device.type == "cuda" else None)


@contextmanager
def _replay_rng(snapshot: tuple, device: torch.device) -> Iterator[None]:
    """Run the block on a copy of the random stream as it was at ``snapshot``; the global stream is untouched."""
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.set_rng_state(snapshot[0])
        if snapshot[1] is not None:
            torch.cuda.set_rng_state(snapshot[1], device)
        yield


def _check_finite(losses: dict[str, torch.Tensor]) -> None:
    bad = [n for n, v in losses.items() if not torch.isfinite(v).all()]
    if bad:
        raise DivergenceError(f"objective(s) {', '.join(bad)} became NaN/Inf; the last good checkpoint is kept "
                              f"(lower the learning rates or check the data, then --resume)")
