"""Seconds per search step and peak memory: DARTS 2nd order, E2RNAS 2nd and 1st order, one supernet fwd+bwd.

Each measurement runs in its own process so that its peak RSS (VmHWM) is its own. Prints a table.

    python benchmarks/search_step.py                 # configs (a) and (b), 10 timed steps after 2 warm-ups
    python benchmarks/search_step.py --config paper --steps 2   # 8 cells, C=16, batch 64: memory check
    python benchmarks/search_step.py --device cuda --config paper --graphs eager captured --profile  # issue 26
    ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 python benchmarks/search_step.py --method pc-darts  # AVX2 kernels

The "cpu" column is the kernel set torch dispatched to (``torch.backends.cpu.get_cpu_capability()``). On CUDA the step
is the sync-free one (``BilevelStep(sync_free=True)``); ``--graphs captured`` replays it from a CUDA graph
(``e2rnas.search.graphs``), and the "50 ep h" column is the hours a 50-epoch search takes at that speed on CIFAR-10's
25,000-image search half at batch 64 (390 steps per epoch, 19,500 steps). ``--profile`` profiles one more step with
``torch.profiler`` and prints where its time goes: the ops of most self time, the kernel launches and the host
synchronisations (CUDA runtime calls that wait for the GPU) per step.
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
    # issue 26's other lever: the supernet pass under torch.compile's CUDA-graph mode (compiled in the warm-up steps)
    "supernet fwd+bwd, torch.compile reduce-overhead": dict(kind="unit", compile="reduce-overhead"),
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


STEPS_50_EPOCHS = 50 * (25_000 // 64)
#: CUDA runtime calls that make the host wait for the GPU (cudaMemcpy: a synchronous copy)
SYNC_CALLS = ("cudaStreamSynchronize", "cudaDeviceSynchronize", "cudaEventSynchronize", "cudaMemcpy")


def _profile(run, sync, device) -> dict:
    """One step under torch.profiler: top ops by self time, kernel launches, host synchronisations."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        run()
        sync()
    events = prof.events()
    runtime = [e for e in events if e.name.startswith("cuda")]
    launches = sum(e.name in ("cudaLaunchKernel", "cudaLaunchKernelExC", "cuLaunchKernel", "cudaGraphLaunch")
                   for e in runtime)
    syncs = {}
    for e in runtime:
        if e.name in SYNC_CALLS:
            syncs[e.name] = syncs.get(e.name, 0) + 1
    key = "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"
    rows = []
    for a in sorted(prof.key_averages(), key=lambda a: -getattr(a, key, 0.0))[:15]:
        rows.append({"op": a.key, "calls": a.count, "self_cpu_ms": a.self_cpu_time_total / 1e3,
                     "self_device_ms": getattr(a, "self_device_time_total", 0.0) / 1e3})
    aten = sum(a.count for a in prof.key_averages() if a.key.startswith("aten::"))
    return {"top": rows, "kernel_launches": launches if device.type == "cuda" else None, "aten_calls": aten,
            "host_syncs": syncs if device.type == "cuda" else None, "torch": torch.__version__}


def child(cfg: dict, mode: dict, warmup: int, steps: int, device: str = "cpu", graphs: str = "eager",
          profile_step: bool = False) -> dict:
    import torch

    from e2rnas.search.bilevel import BilevelStep, StepBatch
    from e2rnas.search.graphs import GraphedStep

    if graphs == "captured" and not device.startswith("cuda"):
        raise SystemExit("a CUDA graph needs a CUDA device (--device cuda)")
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
        forward = torch.compile(model, mode=mode["compile"]) if mode.get("compile") else model

        def run():
            model.zero_grad(set_to_none=True)
            torch.nn.functional.cross_entropy(forward(batch.x_train), batch.y_train).backward()
    else:
        cost = CostModel(DeployShape())
        w_opt = torch.optim.SGD(model.weight_parameters(), lr=0.025, momentum=0.9, weight_decay=3e-4)
        a_opt = torch.optim.Adam(model.arch_parameters(), lr=3e-4, betas=(0.5, 0.999), weight_decay=1e-3,
                                 capturable=dev.type == "cuda")
        step = BilevelStep(model, objectives=make_objectives(mode["objectives"]),
                           weighting=Weighting("mgda", update=mode.get("mgda_update", "normalized")),
                           cost_model=cost, w_optimizer=w_opt, a_optimizer=a_opt, first_order=mode["first_order"],
                           ll_ood=mode["ll_ood"], params_bound_m=2.5, macs_bound_m=425.0,
                           hvp=mode.get("hvp", "central"), fgsm_start=mode.get("fgsm_start", "random"),
                           sync_free=dev.type == "cuda")
        attack = torch.Generator(device=dev if dev.type == "cuda" else "cpu").manual_seed(1)
        graphed = GraphedStep(step, generator=attack, enabled=graphs == "captured", warmup_steps=1,
                              on_fallback=lambda line: print(line, file=sys.stderr))

        def run():
            graphed.step(batch, lr=0.025)
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
    if graphs == "captured" and mode["kind"] == "step" and not graphed.enabled:
        raise SystemExit("the step was not captured (see the line above); the eager figure is the other row")
    out = {"median_s": statistics.median(times), "min_s": min(times), "peak_rss_gb": _peak_rss_gb(),
           "peak_gpu_gb": peak_gpu, "threads": torch.get_num_threads(),
           "cpu": torch.backends.cpu.get_cpu_capability() if dev.type == "cpu" else torch.cuda.get_device_name(dev)}
    if profile_step:
        out["profile"] = _profile(run, sync, dev)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", nargs="+", default=["a", "b"], choices=list(CONFIGS))
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--modes", nargs="+", default=list(MODES), choices=list(MODES))
    ap.add_argument("--method", choices=["darts", "pc-darts"], default="darts",
                    help="supernet variant (pc-darts: K=4 partial channels)")
    ap.add_argument("--device", default="cpu", help="cpu, or cuda / cuda:N for a GPU (peak GPU memory column)")
    ap.add_argument("--graphs", nargs="+", default=["eager"], choices=["eager", "captured"],
                    help="the step as it runs (eager) and/or replayed from a CUDA graph (captured; CUDA only)")
    ap.add_argument("--profile", action="store_true", help="profile one more step of each row: time per op, "
                    "kernel launches and host synchronisations")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        spec = json.loads(args.child)
        print(json.dumps(child(spec["cfg"], spec["mode"], spec["warmup"], spec["steps"], spec.get("device", "cpu"),
                               spec.get("graphs", "eager"), spec.get("profile", False))))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title="Search step on this CPU (median of timed steps; peak RSS of the measuring process)")
    where = "this CPU" if args.device == "cpu" else args.device
    table.title = f"Search step on {where} (median of timed steps; peak RSS of the measuring process)"
    for col in ("config", "mode", "graph", "s/step", "x unit", "50 ep h", "peak RSS GB", "peak GPU GB", "threads",
                "cpu / gpu"):
        table.add_column(col, justify="right" if col not in ("config", "mode", "graph") else "left")
    profiles = []
    for name in args.config:
        cfg = CONFIGS[name] | ({"partial_channels": 4} if args.method == "pc-darts" else {})
        unit = None
        for label in args.modes:
            for graphs in args.graphs if MODES[label]["kind"] == "step" else ["eager"]:
                spec = json.dumps({"cfg": cfg, "mode": MODES[label], "warmup": args.warmup, "steps": args.steps,
                                   "device": args.device, "graphs": graphs, "profile": args.profile})
                out = subprocess.run([sys.executable, __file__, "--child", spec], capture_output=True, text=True)
                if out.returncode != 0:
                    last = (out.stderr.strip().splitlines() or ["no output"])[-1]
                    table.add_row(f"({name})", label, graphs, "failed", "-", "-", "-", "-", "-", last)
                    print(out.stderr, file=sys.stderr)
                    continue
                res = json.loads(out.stdout.strip().splitlines()[-1])
                if MODES[label]["kind"] == "unit" and MODES[label].get("batched", True) and not MODES[label].get(
                        "compile"):
                    unit = res["median_s"]
                ratio = f"{res['median_s'] / unit:.1f}" if unit else "-"
                hours = f"{res['median_s'] * STEPS_50_EPOCHS / 3600:.1f}" if MODES[label]["kind"] == "step" else "-"
                desc = f"({name}) {args.method} {cfg['layers']} cells C={cfg['C']} b{cfg['batch']} {cfg['size']}px"
                gpu_gb = f"{res['peak_gpu_gb']:.2f}" if res.get("peak_gpu_gb") is not None else "-"
                table.add_row(desc, label, graphs, f"{res['median_s']:.3f}", ratio, hours, f"{res['peak_rss_gb']:.2f}",
                              gpu_gb, str(res["threads"]), res["cpu"])
                print(json.dumps({"config": name, "mode": label, "graphs": graphs, **res}), file=sys.stderr)
                if "profile" in res:
                    profiles.append((f"({name}) {label}, {graphs}", res["profile"]))
    console = Console(width=200)
    console.print(table)
    for title, prof in profiles:
        launches = prof["kernel_launches"]
        syncs = prof["host_syncs"]
        sub = Table(title=f"{title}: one step profiled; {prof['aten_calls']} aten calls"
                    + (f", {launches} kernel launches, host syncs {syncs or 'none'}" if launches is not None else ""))
        for col in ("op", "calls", "self CPU ms", "self device ms"):
            sub.add_column(col, justify="left" if col == "op" else "right")
        for row in prof["top"]:
            sub.add_row(row["op"][:60], str(row["calls"]), f"{row['self_cpu_ms']:.2f}",
                        f"{row['self_device_ms']:.2f}")
        console.print(sub)


if __name__ == "__main__":
    main()
