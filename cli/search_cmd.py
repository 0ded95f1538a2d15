"""``e2rnas search``: the E2RNAS architecture search."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Any

import typer

from e2rnas.cli import _options as opt
from e2rnas.cli._config import build_config, print_resolved
from e2rnas.cli._output import console, duration, print_json, print_table
from e2rnas.config import latency_bound_fields, without_ood
from e2rnas.errors import E2RNASError

#: without a terminal, a progress line every this many steps within an epoch (and at every epoch's end)
PLAIN_EVERY = 25


class SearchProgress:
    """Rich live view: epoch/step bar, objective values, gammas, N and F against the bounds, exact genotype cost.

    Without a terminal (a pipe, a CI log) a live view prints nothing until it ends: one plain line per epoch (and
    every ``PLAIN_EVERY`` steps) with the step time, the ETA and MGDA's weights instead."""

    def __init__(self, params_bound: float, flops_bound: float, enabled: bool = True,
                 header: list[str] | None = None, plain: bool | None = None):
        from rich.live import Live
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self.L, self.F = params_bound, flops_bound
        self.header = header or []
        self.progress = Progress(TextColumn("[bold]search[/] {task.description}"), BarColumn(), MofNCompleteColumn(),
                                 TimeRemainingColumn(), console=console)
        self.task = None
        self.last: dict[str, Any] = {}
        self.started = False
        self.plain = enabled and (not console.is_terminal if plain is None else plain)
        self.live = (Live(self._render(), console=console, refresh_per_second=4, transient=False)
                     if enabled and not self.plain else None)
        self._clock: tuple[float, int] | None = None  # (time, global step) at the first step seen

    def _render(self):
        from rich.console import Group
        from rich.table import Table

        table = Table(show_header=True, header_style="bold", box=None)
        for col in ("objective", "value", "gamma"):
            table.add_column(col, justify="right")
        rec = self.last
        for name, value in rec.get("objectives", {}).items():
            table.add_row(name, f"{value:.4f}", f"{rec['gammas'][name]:.3f}")
        if rec:
            table.add_row("N(alpha) / L", f"{rec['expected_params_m']:.4f} M", f"{self.L:.4f} M")
            table.add_row("F(alpha) / F", f"{rec['expected_macs_m']:.2f} M MACs", f"{self.F:.2f} M MACs")
            table.add_row("genotype (exact)", f"{rec['exact_params_m']:.4f} M", f"{rec['exact_macs_m']:.2f} M MACs")
            if rec.get("expected_latency_ms") is not None:
                table.add_row("Lat(alpha) / genotype (table)", f"{rec['expected_latency_ms']:.4f} ms",
                              f"{rec['table_latency_ms']:.4f} ms")
        return Group(self.progress, table)

    def __enter__(self) -> SearchProgress:
        return self  # the live view starts at the first step: a bad input's error line then stands alone

    def __exit__(self, *exc) -> None:
        if self.live and self.started:
            self.live.__exit__(*exc)

    def on_step(self, rec: dict[str, Any]) -> None:
        if self.plain:
            self._plain_line(rec)
            return
        if self.live and not self.started:
            for line in self.header:
                console.print(line, highlight=False)
            self.live.__enter__()
            self.started = True
        total = rec["steps_per_epoch"] * rec["epochs"]
        if self.task is None:
            self.task = self.progress.add_task("", total=total, completed=(rec["epoch"]) * rec["steps_per_epoch"])
        self.progress.update(self.task, completed=rec["epoch"] * rec["steps_per_epoch"] + rec["step"],
                             description=f"epoch {rec['epoch'] + 1}/{rec['epochs']} step {rec['step']}")
        self.last = rec
        if self.live:
            self.live.update(self._render())


    def _plain_line(self, rec: dict[str, Any]) -> None:
        now, done = time.monotonic(), rec["epoch"] * rec["steps_per_epoch"] + rec["step"]
        total = rec["steps_per_epoch"] * rec["epochs"]
        if self._clock is None:
            for line in self.header:
                console.print(line, highlight=False)
            self._clock = (now, done)
            return
        if rec["step"] % PLAIN_EVERY and rec["step"] != rec["steps_per_epoch"]:
            return
        per_step = (now - self._clock[0]) / max(done - self._clock[1], 1)
        gammas = " ".join(f"{k} {v:.2f}" for k, v in rec.get("gammas", {}).items()) or "weights only (warm-up)"
        console.print(f"search epoch {rec['epoch'] + 1}/{rec['epochs']} step {rec['step']}/"
                      f"{rec['steps_per_epoch']}: {per_step:.2f} s/step, about {duration(per_step * (total - done))}"
                      f" left; gamma {gammas}; genotype {rec['exact_params_m']:.4f} M params, "
                      f"{rec['exact_macs_m']:.2f} M MACs", highlight=False, soft_wrap=True)


Objectives = Annotated[str | None, typer.Option("--objectives", help="Comma list of val,ood,adv,params,flops.")]
Weighting = Annotated[str | None, typer.Option("--weighting", help="mgda | equal | fixed:w1,...,wK.")]


def search(
    preset: opt.Preset = "embedded-default",
    config: opt.ConfigFile = None,
    dataset: opt.Dataset = None,
    ood_dataset: opt.OodDataset = None,
    data_dir: opt.DataDir = None,
    download: opt.Download = None,
    image_size: opt.ImageSize = None,
    method: Annotated[str | None, typer.Option("--method", help="darts | pc-darts | p-darts.")] = None,
    params_bound: Annotated[float | None, typer.Option("--params-bound", help="L: params of the deployed network, "
                                                       "in M (millions).")] = None,
    macs_bound: Annotated[float | None, typer.Option("--macs-bound", help="F: multiply-adds (MACs) of the "
                                                     "deployed network, in M (FLOPs = 2 x MACs).")] = None,
    flops_bound: Annotated[float | None, typer.Option("--flops-bound", hidden=True,
                                                      help="Old name of --macs-bound (the value is in MACs).")]
    = None,
    deploy_layers: Annotated[int | None, typer.Option("--deploy-layers", help="Cells of the deployed network.")] = None,
    deploy_channels: Annotated[int | None, typer.Option("--deploy-channels", help="C of the deployed network.")] = None,
    deploy_image_size: Annotated[int | None, typer.Option("--deploy-image-size", help="Deployed input size.")] = None,
    derive: Annotated[str | None, typer.Option("--derive", help="Genotype rule: budget (exact optimum of the "
                                               "alphas under L, F, T; default) or darts (top-2 rule).")] = None,
    params_floor: Annotated[float | None, typer.Option("--params-floor", help="Budget rule: params >= this "
                                                       "fraction of L (default 0.8).")] = None,
    latency_bound: Annotated[str | None, typer.Option("--latency-bound", help="T: latency of the deployed network "
                                                      "on the table's target, in ms, or NN% of the way from the "
                                                      "table's fastest to its slowest genotype (needs --lut).")] = None,
    lut: Annotated[Path | None, typer.Option("--lut", help="Latency table from `e2rnas lut` for the deploy "
                                             "network.")] = None,
    max_normal_free_ops: Annotated[int | None, typer.Option("--max-normal-free-ops", help="Budget rule: at most "
                                                            "this many skips + pools in the normal cell.")] = None,
    warmup_epochs: Annotated[int | None, typer.Option("--warmup-epochs", help="First epochs train the weights "
                                                      "only (alphas frozen).")] = None,
    max_normal_skips: Annotated[int | None, typer.Option("--max-normal-skips", help="At most this many "
                                                         "skip_connect in the derived normal cell.")] = None,
    arch_lr: Annotated[float | None, typer.Option("--arch-lr", help="Architecture (alpha) learning rate.")] = None,
    weighting: Weighting = None,
    cost_form: Annotated[str | None, typer.Option("--cost-form", help="Cost objectives: band (zero inside the "
                                                  "budget, \\[floor x L, L], <= F, <= T; default) or target "
                                                  "(|x - B| / B, the paper and its preset).")] = None,
    cost_units: Annotated[str | None, typer.Option("--cost-units", help="Cost objectives divided by their bound "
                                                   "(relative; default) or in M params / M MACs / ms (paper: eqs. "
                                                   "5-6 as written, the paper preset).")] = None,
    cost_estimate: Annotated[str | None, typer.Option("--cost-estimate", help="N(alpha), F(alpha) of the deployed "
                                                      "network (deployed; default) or eqs. 5-6 as written (paper: "
                                                      "every edge, all ops, the paper's op formulas; the paper "
                                                      "presets).")] = None,
    normalization: Annotated[str | None, typer.Option("--grad-norm", help="MGDA gradient normalisation: none, l2, "
                                                      "loss, loss+l2.")] = None,
    objectives: Objectives = None,
    first_order: Annotated[bool | None, typer.Option("--first-order/--second-order", help="Unrolled "
                                                     "approximation order (default: second for darts, first for "
                                                     "pc-darts and p-darts).")] = None,
    mgda_update: Annotated[str | None, typer.Option("--mgda-update", help="paper: alpha steps along sum gamma_k "
                                                    "g_k (eq. 10); normalized: along sum gamma_k g_k / |g_k|.")]
    = None,
    hvp: Annotated[str | None, typer.Option("--hvp", help="Second-order term by central (DARTS, paper preset) or "
                                            "forward differences (one pass fewer; a different search).")] = None,
    hvp_eps: Annotated[float | None, typer.Option("--hvp-eps", help="Finite-difference step r |v| (DARTS: "
                                                  "0.01).")] = None,
    ll_ood_weight: Annotated[float | None, typer.Option("--ll-ood-weight", help="Weight of the lower-level OoD "
                                                        "loss (paper 1; the authors' code 1/K).")] = None,
    search_augment: Annotated[bool | None, typer.Option("--search-augment/--no-search-augment", help="Crop + "
                                                        "flip both halves during search (default: on except "
                                                        "digits).")] = None,
    search_cutout: Annotated[int | None, typer.Option("--search-cutout", help="Cutout side during search (0: "
                                                      "off; the authors' command used 16).")] = None,
    fgsm_start: Annotated[str | None, typer.Option("--fgsm-start", help="Upper-level FGSM gradient at the random "
                                                   "start (random: fast FGSM, the paper) or at the clean input "
                                                   "(clean: the authors' code, one pass fewer).")] = None,
    ll_ood: Annotated[bool | None, typer.Option("--ll-ood/--no-ll-ood", help="OoD loss in the lower level.")] = None,
    ll_adv: Annotated[bool | None, typer.Option("--ll-adv/--no-ll-adv", help="FGSM adversarial training in the "
                                                "lower level.")] = None,
    layers: opt.Layers = None,
    channels: opt.Channels = None,
    epochs: opt.Epochs = None,
    batch_size: opt.BatchSize = None,
    max_steps: Annotated[int | None, typer.Option("--max-steps-per-epoch", help="Cap steps per epoch.")] = None,
    seed: opt.Seed = None,
    device: opt.Device = None,
    amp: Annotated[str | None, typer.Option("--amp", help="Precision on CUDA: off (fp32, TF32 off), auto (TF32), "
                                            "tf32, or bf16 (autocast; the second-order finite differences stay "
                                            "fp32); recorded in config.yaml (docs/amp.md).")] = None,
    cuda_graphs: Annotated[str | None, typer.Option(
        "--cuda-graphs", metavar="auto|on|off",
        help="Capture the bi-level step in a CUDA graph: auto (on for CUDA when nothing blocks capture; a line says "
             "what does), on, off. Speed only: the step is the same (docs/cuda-graphs.md).")] = None,
    out: opt.Out = None,
    resume: opt.Resume = False,
    print_config: opt.PrintConfig = False,
    tracker: opt.Tracker = None,
    json: opt.Json = False,
) -> None:
    """Search a cell with E2RNAS: val, OoD, adversarial, params and MACs objectives (and latency, with --lut)
    combined by MGDA; the genotype is derived under the deploy budget (--derive budget) or by the DARTS rule."""
    from e2rnas.search.runner import SearchConfig, run_search

    given, notes, no_ood = without_ood(dict(ood_dataset=ood_dataset, objectives=objectives, ll_ood=ll_ood))
    ood_dataset, objectives, ll_ood = given["ood_dataset"], given["objectives"], given["ll_ood"]
    if macs_bound is not None and flops_bound is not None and macs_bound != flops_bound:
        raise E2RNASError("--macs-bound and its old name --flops-bound disagree: give --macs-bound only")
    out_dir = out or Path("runs") / f"search-{time.strftime('%Y%m%d-%H%M%S')}"
    run_config = out_dir / "config.yaml" if resume and (out_dir / "config.yaml").is_file() else None
    cfg = build_config(SearchConfig, preset=preset, section="search", config_file=config, run_config=run_config,
                       drop_ood=no_ood, overrides=dict(
        dataset=dataset, ood_dataset=ood_dataset, data_dir=str(data_dir) if data_dir else None, download=download,
        image_size=image_size, method=method, params_bound=params_bound,
        flops_bound=macs_bound if macs_bound is not None else flops_bound,
        deploy_layers=deploy_layers, deploy_C=deploy_channels, deploy_input_size=deploy_image_size,
        weighting=weighting, cost_form=cost_form, cost_units=cost_units, cost_estimate=cost_estimate,
        normalization=normalization,
        objectives=objectives,
        first_order=first_order,
        mgda_update=mgda_update, hvp=hvp, hvp_eps=hvp_eps, ll_ood_weight=ll_ood_weight,
        search_augment=search_augment, search_cutout=search_cutout, fgsm_start=fgsm_start,
        ll_ood=ll_ood, ll_adv=ll_adv, layers=layers, C=channels, epochs=epochs, batch_size=batch_size,
        max_steps_per_epoch=max_steps, seed=seed, device=opt.resolve_device(device) if device else None, amp=amp,
        cuda_graphs=cuda_graphs,
        derive=derive, params_floor=params_floor,
        **latency_bound_fields(latency_bound, "--latency-bound"), lut=str(lut) if lut else None, a_lr=arch_lr,
        max_normal_skips=max_normal_skips, warmup_epochs=warmup_epochs, max_normal_free_ops=max_normal_free_ops))
    opt.resolve_device(cfg.device)  # a device from the preset or --config must exist here too
    if print_config:
        print_resolved(cfg, section="search")
        return
    # printed when the first step starts: a data-loading error before it then stands alone on its line
    header = [*(f"note: {n}" for n in notes),
              f"search: {cfg.dataset} (OoD {cfg.ood_dataset}), {cfg.method}, {cfg.layers} cells C={cfg.C}, "
              f"{cfg.epochs} epochs; L = {cfg.params_bound} M params, F = {cfg.flops_bound} M MACs",
              f"run directory: {out_dir}"]
    from e2rnas.run.tracking import log_record, open_tracker

    with open_tracker(tracker, run_dir=out_dir, config=cfg.as_dict()) as track, \
            SearchProgress(cfg.params_bound, cfg.flops_bound, enabled=not json, header=header) as view:
        def on_step(rec: dict[str, Any]) -> None:
            view.on_step(rec)
            log_record(track, rec, step=rec["epoch"] * rec["steps_per_epoch"] + rec["step"], prefix="step/")

        summary = run_search(cfg, out_dir=out_dir, resume=resume, on_step=on_step,
                             on_epoch=lambda rec: log_record(track, rec, step=rec["epoch"], prefix="epoch/"))
    if json:
        print_json(summary | {"run_dir": str(out_dir)})
        return
    print_search_summary(summary)
    for note in summary.get("notes", []) + summary.get("cuda_graphs", {}).get("notes", []):
        console.print(f"note: {note}", highlight=False)
    console.print(f"genotype: {out_dir / 'genotype.json'}  (supernet val accuracy {summary['val_accuracy']:.3f})")


def print_search_summary(summary: dict[str, Any]) -> None:
    """Bounds against the softmax estimate and each derivation rule's exact cost; then the warnings."""
    lat = "latency_bound_ms" in summary
    rows = [["bound (L, F" + (", T)" if lat else ")"), summary["params_bound_m"], summary["flops_bound_m"]]
            + ([summary["latency_bound_ms"]] if lat else []),
            ["softmax estimate at final alphas", summary["expected_params_m"], summary["expected_macs_m"]]
            + ([summary["expected_latency_ms"]] if lat else [])]
    for rule, d in summary["derivations"].items():
        mark = " (handed on)" if rule == summary["derive"] else ""
        rows.append([f"{rule} rule genotype{mark}", d["params"], d["macs"]] + ([d.get("latency")] if lat else []))
    print_table("Search result", ["", "params (M)", "MACs (M)"] + (["latency (ms)"] if lat else []), rows,
                caption=f"deploy network: {_shape_text(summary['deploy_shape'])}; derivation gap "
                        f"{summary['derivation_gap']:.3f} (summed log strength, darts - {summary['derive']})")
    for w in summary.get("warnings", []):
        console.print(f"[bold yellow]warning:[/] {w}", highlight=False)


def _shape_text(shape: dict[str, Any]) -> str:
    from e2rnas.space.cost import DeployShape
    from e2rnas.space.latency_table import describe_shape

    return describe_shape(DeployShape(**shape))
