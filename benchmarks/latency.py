"""CPU (or CUDA) latency of DARTS_V2 (20 cells, C=36, 32x32) and of an embedded-default-shaped network
(8 cells, C=16, 16x16, 5 classes) against the compute floor, with random weights.

    .venv/bin/python benchmarks/latency.py                      # CPU: torch, ONNX Runtime variants, INT8, floor
    .venv/bin/python benchmarks/latency.py --quick              # fewer runs, a minute or two on 2 cores
    .venv/bin/python benchmarks/latency.py --target cuda        # GPU: torch fp32 / fp16 / autocast / CUDA graph

The floor is MACs x batch / the sustained multiply-add rate of this machine, measured by a large float32 matmul
with the same thread count. Where the best CPU path at batch 1 is above 1.5x the floor, an ONNX Runtime profile
splits the time by op type. Numbers are medians (p50) of per-call timings; see docs/deploy-targets.md.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from e2rnas.deploy_targets.env import environment, physical_cores
from e2rnas.deploy_targets.runners import OrtRunner, TorchRunner, profile_op_share
from e2rnas.space.genotypes import GENOTYPES
from e2rnas.space.network import Network, count_macs, count_params

MODELS = {  # name -> (genotype, C, layers, classes, input size)
    "DARTS_V2": ("DARTS_V2", 36, 20, 10, 32),
    "embedded": ("E2RNAS", 16, 8, 5, 16),
}
ORT_VARIANTS = {  # name -> OrtRunner keyword arguments (threads filled in at run time where None means "ours")
    "ORT defaults": dict(optimization="all", threads=0),
    "ORT all, threads={t}": dict(optimization="all"),
    "ORT extended, threads={t}": dict(optimization="extended"),
    "ORT all, no spinning": dict(optimization="all", spinning=False),
    "ORT all, parallel": dict(optimization="all", execution_mode="parallel"),
}
SHARED_DATA = Path("/work/shared/data/cifar10_train_10k.npz")


def matmul_rate(threads: int, n: int = 2048, seconds: float = 3.0) -> tuple[float, float]:
    """float32 multiply-adds per second of a large matmul (n^3 MACs per call): (best call, mean of all calls).

    The best call is the machine's sustained rate when nothing else runs; the mean shows how busy it is now."""
    torch.set_num_threads(threads)
    a, b = torch.randn(n, n), torch.randn(n, n)
    for _ in range(2):
        a @ b
    times, t0 = [], time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        t = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - t)
    return n**3 / min(times), n**3 * len(times) / sum(times)


def calibration_images(size: int, n: int = 64) -> tuple[np.ndarray, str]:
    """Real images for INT8 calibration: the CIFAR-10 subset when present, else scikit-learn digits."""
    if SHARED_DATA.is_file() and size == 32:
        with np.load(SHARED_DATA) as d:
            x = d["x"][:n].astype(np.float32).transpose(0, 3, 1, 2) / 255
        return x, "cifar10_train_10k"
    from e2rnas.data import load_dataset

    return load_dataset("digits", split="train", image_size=size).head(n).tensors()[0].numpy(), "digits"


def build(name: str) -> tuple[Network, int]:
    genotype, C, layers, classes, size = MODELS[name]
    torch.manual_seed(0)
    return Network(GENOTYPES[genotype], C, layers, classes, input_size=size).eval(), size


def export(model: Network, size: int, path: Path) -> Path:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, torch.rand(1, 3, size, size), str(path), dynamo=False, input_names=["images"],
                          output_names=["logits"], dynamic_axes={"images": {0: "batch"}, "logits": {0: "batch"}})
    return path


def runs_for(batch: int, args: argparse.Namespace) -> int:
    return args.runs if batch == 1 else args.runs_large


def cpu(args: argparse.Namespace) -> None:
    threads = args.threads or physical_cores()
    start_rate, mean_rate = matmul_rate(threads)
    env = environment(threads=threads, gpu=False)
    load = Path("/proc/loadavg").read_text().split()[0] if Path("/proc/loadavg").is_file() else "?"
    print(f"# {env['cpu']}, {env['physical_cores']} physical cores, threads={threads}; torch "
          f"{env['versions']['torch']}, onnxruntime {env['versions']['onnxruntime']}; load average {load}")
    rows: list[tuple] = []  # model, batch, path, p50 ms, min ms, images/s, MACs of the call
    profiles = {}
    with tempfile.TemporaryDirectory(prefix="e2rnas-bench-") as tmp:
        for name in args.models:
            model, size = build(name)
            macs = count_macs(model, input_size=size)
            params = count_params(model)
            onnx = export(model, size, Path(tmp) / f"{name}.onnx")
            int8 = None
            if not args.no_int8:
                from e2rnas.export.onnx_export import quantize_int8

                calib, calib_name = calibration_images(size)
                int8 = Path(tmp) / f"{name}.int8.onnx"
                quantize_int8(onnx, int8, calibration=calib)
            print(f"# {name}: {params / 1e6:.3f} M params, {macs / 1e6:.1f} M MACs at {size}x{size}"
                  + (f"; INT8 calibrated on 64 {calib_name} images" if int8 else ""), flush=True)
            for batch in args.batch:
                n = runs_for(batch, args)

                def add(path_name: str, stats, name=name, batch=batch, work=macs * batch) -> None:
                    rows.append((name, batch, path_name, stats.p50_ms, stats.min_ms, stats.throughput, work))
                    print(f"  {name} b{batch} {path_name}: p50 {stats.p50_ms:.2f} ms", file=sys.stderr, flush=True)

                for cl in (False, True):
                    with TorchRunner(model, input_shape=(3, size, size), threads=threads, channels_last=cl) as r:
                        add("torch eager" + (" channels_last" if cl else ""), r.measure(batch, warmup=2, runs=n))
                for vname, kw in ORT_VARIANTS.items():
                    kw = dict(kw)
                    kw["threads"] = None if kw.get("threads") == 0 else threads
                    with OrtRunner(onnx, **kw) as r:
                        add(vname.format(t=threads), r.measure(batch, warmup=3, runs=n))
                if int8 is not None:
                    with OrtRunner(int8, threads=threads) as r:
                        add(f"ORT INT8 QDQ, threads={threads}", r.measure(batch, warmup=3, runs=n))
                rows.append((name, batch, "compute floor", None, None, None, macs * batch))
                if batch == 1 and args.profile:
                    best = min((r for r in rows if r[0] == name and r[1] == 1 and r[2].startswith("ORT")),
                               key=lambda r: r[3])
                    path = int8 if "INT8" in best[2] else onnx
                    kw = {**ORT_VARIANTS.get(best[2].replace(f"={threads}", "={t}"), {}), "threads": threads}
                    with OrtRunner(path, **kw, profile=True, profile_prefix=Path(tmp) / f"{name}-prof") as r:
                        r.measure(1, warmup=3, runs=max(20, n // 2))
                        prof = r.end_profiling()
                        profiles[(name, best[2])] = (profile_op_share(prof), conv_breakdown(prof))
    end_rate, _ = matmul_rate(threads)
    rate = args.rate * 1e9 if args.rate else max(start_rate, end_rate)
    print(f"# float32 multiply-add rate (2048^3 matmul, {threads} threads): best call {start_rate / 1e9:.1f} GMAC/s "
          f"before, {end_rate / 1e9:.1f} after (mean {mean_rate / 1e9:.1f} before); floor uses {rate / 1e9:.1f}"
          + (" (--rate)" if args.rate else ""))
    print_rows(rows, rate)
    for (name, path), (shares, convs) in profiles.items():
        top = ", ".join(f"{op} {100 * s:.0f}%" for op, s in list(shares.items())[:8])
        print(f"\nORT profile, {name} batch 1, {path}: kernel time by op type: {top}")
        for kind, d in convs.items():
            print(f"  {kind}: {100 * d['time_share']:.0f}% of kernel time, {100 * d['mac_share']:.0f}% of conv MACs, "
                  f"{d['gmacs']:.1f} GMAC/s (floor rate {rate / 1e9:.1f})")
    verdict(rows, rate)


def conv_breakdown(profile_json: Path) -> dict[str, dict[str, float]]:
    """Kernel time and multiply-adds of depthwise vs dense convolutions, from an ONNX Runtime profile (the
    weight shape [C_out, C_in/groups, kh, kw] tells them apart): where the time goes against the floor."""
    import json

    events = json.loads(Path(profile_json).read_text())
    out: dict[str, dict[str, float]] = {}
    total = 0.0
    for ev in events:
        if ev.get("cat") != "Node" or not str(ev.get("name", "")).endswith("_kernel_time"):
            continue
        total += float(ev.get("dur", 0))
        args = ev.get("args", {})
        if args.get("op_name") not in ("Conv", "FusedConv", "QLinearConv"):
            continue
        shapes = [next(iter(d.values())) for d in args.get("input_type_shape", [])]
        outs = [next(iter(d.values())) for d in args.get("output_type_shape", [])]
        if len(shapes) < 2 or not outs:
            continue
        w = shapes[1]
        kind = "depthwise conv" if len(w) == 4 and w[1] == 1 else "dense conv"
        macs = float(np.prod(outs[0])) * float(np.prod(w[1:]))
        d = out.setdefault(kind, {"us": 0.0, "macs": 0.0})
        d["us"] += float(ev.get("dur", 0))
        d["macs"] += macs
    all_macs = sum(d["macs"] for d in out.values()) or 1.0
    return {k: {"time_share": d["us"] / (total or 1.0), "mac_share": d["macs"] / all_macs,
                "gmacs": d["macs"] / max(d["us"], 1e-9) / 1e3} for k, d in out.items()}


def print_rows(rows: list[tuple], rate: float | None = None) -> None:
    """model, batch, path, p50 ms, fastest call ms, images/s (batch / mean), and both times over the floor."""
    print("\n| model | batch | path | p50 ms | min ms | img/s | p50 / floor | min / floor |")
    print("|---|---|---|---|---|---|---|---|")
    for name, batch, path, p50, low, thr, work in rows:
        floor = work / rate * 1e3 if rate and work else None
        if p50 is None:  # the floor row itself
            p50, thr = floor, batch / floor * 1e3
        cells = [f"{v:.2f}" if v is not None else "-" for v in (p50, low)]
        ratios = [f"{v / floor:.2f}" if v is not None and floor else "-" for v in (p50, low)]
        print(f"| {name} | {batch} | {path} | {cells[0]} | {cells[1]} | {thr:.0f} | {ratios[0]} | {ratios[1]} |")


def verdict(rows: list[tuple], rate: float) -> None:
    for name in dict.fromkeys(r[0] for r in rows):
        mine = [r for r in rows if r[0] == name and r[1] == 1 and r[3] is not None]
        if not mine:
            continue
        best = min(mine, key=lambda r: r[3])
        floor = best[6] / rate * 1e3
        ok = "meets" if best[3] <= 1.5 * floor else "misses"
        print(f"{name} batch 1: best CPU path {best[2]}, p50 {best[3]:.2f} ms = {best[3] / floor:.2f}x the floor "
              f"{floor:.2f} ms ({ok} 1.5x); its fastest call {best[4]:.2f} ms = {best[4] / floor:.2f}x")


def cuda(args: argparse.Namespace) -> None:
    if not torch.cuda.is_available():
        sys.exit("--target cuda needs a CUDA GPU visible to torch")
    env = environment()
    gpu = env["gpu"]
    print(f"# {gpu['name']} (sm{gpu['compute_capability']}), torch {env['versions']['torch']}, CUDA {gpu['cuda']}, "
          f"driver {env['nvidia_driver']}; clocks {gpu.get('clocks')}")
    print("# GPU ms: CUDA events around the call (GPU compute time); host ms: the whole call timed on the host "
          "(numpy in, copy, run, copy out, synchronise). Warm-up >= 200 ms per row.")
    rows = []

    class Half(torch.nn.Module):
        def __init__(self, m: torch.nn.Module):
            super().__init__()
            self.m = m.half()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.m(x.half())

    class Autocast(torch.nn.Module):
        def __init__(self, m: torch.nn.Module):
            super().__init__()
            self.m = m

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            with torch.autocast("cuda", dtype=torch.float16):
                return self.m(x)

    variants = (("fp32 (TF32 off)", None, False, False), ("fp32 TF32", None, False, True),
                ("fp32 (TF32 off) + CUDA graph", None, True, False), ("fp16 autocast", Autocast, False, False),
                ("fp16 .half()", Half, False, False), ("fp16 .half() + CUDA graph", Half, True, False))
    for name in args.models:
        for batch in args.batch:
            for label, wrap, graph, tf32 in variants:
                model, size = build(name)
                module = wrap(model) if wrap else model
                try:
                    with TorchRunner(module, device="cuda", input_shape=(3, size, size), cuda_graph=graph,
                                     tf32=tf32) as r:
                        s = r.measure(batch, warmup=10, runs=runs_for(batch, args) * 4)
                except Exception as exc:  # one failing path must not hide the others
                    print(f"  {name} b{batch} torch {label}: failed: {str(exc).splitlines()[0]}", file=sys.stderr)
                    continue
                rows.append((name, batch, f"torch {label}", s))
            for label, stats in gpu_runtimes(name, batch, args):
                rows.append((name, batch, label, stats))
    print("\n| model | batch | path | GPU p50 ms | host p50 ms | img/s (GPU) | timer | CV | peak MB |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, batch, path, st in rows:
        host = f"{st.host_p50_ms:.3f}" if st.host_p50_ms is not None else "-"
        mem = f"{st.peak_memory_mb:.0f}" if st.peak_memory_mb is not None else "-"
        print(f"| {name} | {batch} | {path} | {st.p50_ms:.3f} | {host} | {batch / st.p50_ms * 1e3:.0f} | {st.timer} | "
              f"{st.cv:.2f} | {mem} |")
    for name, _, path, st in rows:
        if st.noise_warning():
            print(f"warning: {name} {path}: {st.noise_warning()}")


def gpu_runtimes(name: str, batch: int, args: argparse.Namespace) -> list[tuple[str, object]]:
    """ONNX Runtime's CUDA provider and TensorRT fp16 (with and without CUDA graph), where installed."""
    import importlib.util

    import onnxruntime as ort

    out = []
    has_ort_cuda = "CUDAExecutionProvider" in ort.get_available_providers()
    has_trt = importlib.util.find_spec("tensorrt") is not None
    if not (has_ort_cuda or has_trt):
        print(f"  {name} b{batch}: no ORT CUDA provider (pip install onnxruntime-gpu) and no TensorRT: torch rows only",
              file=sys.stderr)
        return out
    model, size = build(name)
    with tempfile.TemporaryDirectory(prefix="e2rnas-bench-") as tmp:
        onnx = export(model, size, Path(tmp) / f"{name}.onnx")
        n = runs_for(batch, args) * 4
        if has_ort_cuda:
            with OrtRunner(onnx, providers=["CUDAExecutionProvider"]) as r:
                out.append(("ORT CUDA EP", r.measure(batch, warmup=10, runs=n)))
        if has_trt:
            from e2rnas.deploy_targets.runners import TensorRTRunner

            engine = build_engine(onnx, Path(tmp) / f"{name}.fp16.engine", size=size, opt_batch=batch,
                                  max_batch=max(args.batch))
            for graph in (False, True):
                with TensorRTRunner(engine, cuda_graph=graph) as r:
                    out.append(("TensorRT fp16" + (" + CUDA graph" if graph else ""),
                                r.measure(batch, warmup=10, runs=n)))
    return out


def build_engine(onnx: Path, path: Path, *, size: int, opt_batch: int, max_batch: int) -> Path:
    import tensorrt as trt

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(onnx.read_bytes()):
        raise RuntimeError(str(parser.get_error(0)))
    config = builder.create_builder_config()
    config.set_flag(trt.BuilderFlag.FP16)
    profile = builder.create_optimization_profile()
    profile.set_shape("images", (1, 3, size, size), (opt_batch, 3, size, size), (max_batch, 3, size, size))
    config.add_optimization_profile(profile)
    path.write_bytes(bytes(builder.build_serialized_network(network, config)))
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--target", choices=("cpu", "cuda"), default="cpu")
    ap.add_argument("--models", default=",".join(MODELS), help=f"comma-separated: {', '.join(MODELS)}")
    ap.add_argument("--batch", default="1,64")
    ap.add_argument("--runs", type=int, default=50, help="timed calls at batch 1")
    ap.add_argument("--runs-large", type=int, default=5, help="timed calls at larger batches")
    ap.add_argument("--threads", type=int, default=None, help="default: physical cores")
    ap.add_argument("--no-int8", action="store_true", help="skip INT8 quantisation")
    ap.add_argument("--no-profile", dest="profile", action="store_false", help="skip the ORT profile")
    ap.add_argument("--quick", action="store_true", help="runs=15, runs-large=3")
    ap.add_argument("--rate", type=float, default=None,
                    help="floor rate in GMAC/s instead of the measured one (e.g. 162 for this machine when idle)")
    args = ap.parse_args()
    args.models = [m for m in args.models.split(",") if m]
    unknown = [m for m in args.models if m not in MODELS]
    if unknown:
        sys.exit(f"unknown model(s) {unknown}; choose from {', '.join(MODELS)}")
    args.batch = [int(b) for b in args.batch.split(",")]
    if args.quick:
        args.runs, args.runs_large = 15, 3
    (cuda if args.target == "cuda" else cpu)(args)


if __name__ == "__main__":
    main()
