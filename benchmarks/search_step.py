"""Seconds per search step and peak memory: DARTS 2nd order, E2RNAS 2nd and 1st order, one supernet fwd+bwd.

Each measurement runs in its own process so that its peak RSS (VmHWM) is its own. Prints a table.

    python benchmarks/search_step.py                 # configs (a) and (b), 10 timed steps after 2 warm-ups
    python benchmarks/search_step.py --config paper --steps 2   # 8 cells, C=16, batch 64: memory check
    ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 python benchmarks/search_step.py --method pc-darts  # AVX2 kernels

The "cpu" column is the kernel set torch dispatched to (``torch.backends.cpu.get_cpu_capability()``).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time

CONFIGS = {
    "a": dict(layers=5, C=8, batch=16, size=32, classes=10),
    "b": dict(layers=8, C=16, batch=32, size=32, classes=10),
    "paper": dict(layers=8, C=16, batch=64, size=32, classes=10),
}
MODES = {
    "supernet fwd+bwd (unit)": dict(kind="unit"),
    "supernet fwd+bwd, per-edge loop (DARTS' layout)": dict(kind="unit", batched=False),
    "DARTS 2nd order (val only)": dict(kind="step", objectives=("val",), first_order=False, ll_ood=False),
    "E2RNAS paper preset (2nd order, central hvp)": dict(kind="step", objectives=("val", "ood", "adv", "params",
                                                                                  "flops"),
                                                         first_order=False, ll_ood=True, hvp="central",
                                                         mgda_update="paper"),
    "E2RNAS 2nd order, forward hvp (fast option)": dict(kind="step", objectives=("val", "ood", "adv", "params",
                                                                                 "flops"),
                                                        first_order=False, ll_ood=True, hvp="forward",
                                                        mgda_update="paper"),
    "E2RNAS 2nd order central, clean-start FGSM (authors' example)": dict(
        kind="step", objectives=("val", "ood", "adv", "params", "flops"), first_order=False, ll_ood=True,
        hvp="central", mgda_update="paper", fgsm_start="clean"),
    "E2RNAS 1st order (5 objectives, MGDA)": dict(kind="step", objectives=("val", "ood", "adv", "params", "flops"),
                                                  first_order=True, ll_ood=True),
}


def _peak_rss_gb() -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024**2
    return float("nan")


def child(cfg: dict, mode: dict, warmup: int, steps: int, device: str = "cpu") -> dict:
    import torch

    from e2rnas.search.bilevel import BilevelStep, StepBatch
    from e2rnas.search.mgda import Weighting
    from e2rnas.search.objectives import make_objectives
    from e2rnas.space.cost import CostModel, DeployShape
    from e2rnas.space.supernet import SearchNetwork

    torch.manual_seed(0)
    n, s, k = cfg["batch"], cfg["size"], cfg["classes"]
    model = SearchNetwork(cfg["C"], cfg["layers"], k, partial_channels=cfg.get("partial_channels", 1))
    g = torch.Generator().manual_seed(0)

    def rand():
        return torch.rand(n, 3, s, s, generator=g)

    dev = torch.device(device)
    model = model.to(dev)
    for cell in model.cells:  # edge-batched cells (default), or the per-edge loop of DARTS' code
        cell.batched = mode.get("batched", True)
    batch = StepBatch(*(t.to(dev) for t in (rand(), torch.randint(0, k, (n,), generator=g), rand(),
                                             torch.randint(0, k, (n,), generator=g), rand(), rand())))
    if mode["kind"] == "unit":
        def run():
            model.zero_grad(set_to_none=True)
            torch.nn.functional.cross_entropy(model(batch.x_train), batch.y_train).backward()
    else:
        cost = CostModel(DeployShape())
        w_opt = torch.optim.SGD(model.weight_parameters(), lr=0.025, momentum=0.9, weight_decay=3e-4)
        a_opt = torch.optim.Adam(model.arch_parameters(), lr=3e-4, betas=(0.5, 0.999), weight_decay=1e-3)
        step = BilevelStep(model, objectives=make_objectives(mode["objectives"]),
                           weighting=Weighting("mgda", update=mode.get("mgda_update", "normalized")),
                           cost_model=cost, w_optimizer=w_opt, a_optimizer=a_opt, first_order=mode["first_order"],
                           ll_ood=mode["ll_ood"], params_bound_m=2.5, macs_bound_m=425.0,
                           hvp=mode.get("hvp", "central"), fgsm_start=mode.get("fgsm_start", "random"))

        def run():
            step.step(batch, lr=0.025, generator=g)
    def sync() -> None:
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)

    for _ in range(warmup):
        run()
    sync()
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        run()
        sync()
        times.append(time.perf_counter() - t)
    peak_gpu = torch.cuda.max_memory_allocated(dev) / 2**30 if dev.type == "cuda" else None
    return {"median_s": statistics.median(times), "min_s": min(times), "peak_rss_gb": _peak_rss_gb(),
            "peak_gpu_gb": peak_gpu, "threads": torch.get_num_threads(),
            "cpu": torch.backends.cpu.get_cpu_capability() if dev.type == "cpu" else torch.cuda.get_device_name(dev)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", nargs="+", default=["a", "b"], choices=list(CONFIGS))
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--modes", nargs="+", default=list(MODES), choices=list(MODES))
    ap.add_argument("--method", choices=["darts", "pc-darts"], default="darts",
                    help="supernet variant (pc-darts: K=4 partial channels)")
    ap.add_argument("--device", default="cpu", help="cpu, or cuda / cuda:N for a GPU (peak GPU memory column)")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        spec = json.loads(args.child)
        print(json.dumps(child(spec["cfg"], spec["mode"], spec["warmup"], spec["steps"], spec.get("device", "cpu"))))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title="Search step on this CPU (median of timed steps; peak RSS of the measuring process)")
    where = "this CPU" if args.device == "cpu" else args.device
    table.title = f"Search step on {where} (median of timed steps; peak RSS of the measuring process)"
    for col in ("config", "mode", "s/step", "x unit", "peak RSS GB", "peak GPU GB", "threads", "cpu / gpu"):
        table.add_column(col, justify="right" if col not in ("config", "mode") else "left")
    for name in args.config:
        cfg = CONFIGS[name] | ({"partial_channels": 4} if args.method == "pc-darts" else {})
        unit = None
        for label in args.modes:
            spec = json.dumps({"cfg": cfg, "mode": MODES[label], "warmup": args.warmup, "steps": args.steps,
                               "device": args.device})
            out = subprocess.run([sys.executable, __file__, "--child", spec], capture_output=True, text=True)
            if out.returncode != 0:
                table.add_row(f"({name})", label, "failed", "-", "-", "-", "-", out.stderr.strip().splitlines()[-1])
                print(out.stderr, file=sys.stderr)
                continue
            res = json.loads(out.stdout.strip().splitlines()[-1])
            if MODES[label]["kind"] == "unit" and MODES[label].get("batched", True):
                unit = res["median_s"]
            ratio = f"{res['median_s'] / unit:.1f}" if unit else "-"
            desc = f"({name}) {args.method} {cfg['layers']} cells C={cfg['C']} b{cfg['batch']} {cfg['size']}px"
            gpu_gb = f"{res['peak_gpu_gb']:.2f}" if res.get("peak_gpu_gb") is not None else "-"
            table.add_row(desc, label, f"{res['median_s']:.2f}", ratio, f"{res['peak_rss_gb']:.2f}", gpu_gb,
                          str(res["threads"]), res["cpu"])
            print(json.dumps({"config": name, "mode": label, **res}), file=sys.stderr)
    Console(width=200).print(table)


if __name__ == "__main__":
    main()
