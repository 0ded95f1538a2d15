"""Throughput of the search step and the retrain epoch: 1 vs 2 torch threads on this CPU; a GPU section to run on a
lent single- or multi-GPU machine.

Each measurement runs the library (``run_search``, ``train``) on the embedded-default preset in its own process
(``OMP_NUM_THREADS`` and ``torch.set_num_threads`` = the thread count), times the steps after ``--warmup`` of them,
and prints images/s (a search step reads one training and one validation batch; it counts the training batch).

    python benchmarks/scaling.py cpu                          # 1 and 2 threads, embedded-default preset
    python benchmarks/scaling.py cpu --threads 1,2,4 --steps 8
    python benchmarks/scaling.py gpu --amp off,tf32,bf16,fp16    # one GPU: train epoch images/s per precision
    python benchmarks/scaling.py gpu --nproc 1,2,4,8             # N GPUs through torchrun (needs the DDP train)

The ``gpu`` section has not run on this machine (no GPU here). With ``--nproc`` it launches
``torchrun --nproc-per-node N -m e2rnas.cli train ...`` with a global ``--batch-size`` of 64 x N (64 images per
process: weak scaling; e2rnas' batch size is global, docs/distributed.md) and counts batch x batches images.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def search_child(steps: int, warmup: int, device: str) -> dict:
    from e2rnas.config import build_config
    from e2rnas.search.runner import SearchConfig, run_search

    cfg = build_config(SearchConfig, preset="embedded-default", section="search", overrides=dict(
        epochs=1, warmup_epochs=0, max_steps_per_epoch=steps + warmup, device=device))
    stamps: list[float] = []
    with tempfile.TemporaryDirectory() as tmp:
        run_search(cfg, out_dir=Path(tmp) / "s", on_step=lambda rec: stamps.append(time.perf_counter()))
    gaps = [b - a for a, b in zip(stamps[warmup:], stamps[warmup + 1:], strict=False)]
    sec = statistics.median(gaps)
    return {"what": f"search step ({cfg.layers} cells, C={cfg.C}, batch {cfg.batch_size}, "
                    f"{'1st' if cfg.first_order else '2nd'} order)", "s_per_step": sec,
            "images_per_s": cfg.batch_size / sec}


def train_child(steps: int, warmup: int, device: str, amp: str = "off") -> dict:
    from e2rnas.config import build_config
    from e2rnas.space.genotypes import GENOTYPES
    from e2rnas.train.trainer import TrainConfig, train

    cfg = build_config(TrainConfig, preset="embedded-default", section="train", overrides=dict(
        epochs=2, max_train_batches=steps, device=device, amp=amp, val_fraction=0.1))
    times: list[float] = []
    with tempfile.TemporaryDirectory() as tmp:  # epoch 1 warms up (allocator, cudnn); epoch 2 is timed
        train(cfg, genotype=GENOTYPES["DARTS_V2"], out_dir=Path(tmp) / "t", progress=False,
              callback=lambda rec: times.append(rec["time_s"]))
    sec = times[-1]
    return {"what": f"train epoch of {steps} batches ({cfg.layers} cells, C={cfg.C}, batch {cfg.batch_size}"
                    f"{', amp ' + amp if amp != 'off' else ''})", "s_per_step": sec / steps,
            "images_per_s": steps * cfg.batch_size / sec}


def _spawn(kind: str, threads: int, args: argparse.Namespace, **extra: str) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    cmd = [sys.executable, __file__, "_child", kind, "--threads", str(threads), "--steps", str(args.steps),
           "--warmup", str(args.warmup), "--device", args.device] + [a for k, v in extra.items()
                                                                       for a in (f"--{k}", v)]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def run_cpu(args: argparse.Namespace) -> None:
    threads = [int(t) for t in args.threads.split(",")]
    print(f"cpu: {os.cpu_count()} logical CPUs visible, {len(os.sched_getaffinity(0))} in this process's set; "
          f"load average {os.getloadavg()[0]:.1f} (other processes share the cores: threads > free cores stall "
          "at OpenMP barriers)")
    print(f"{'measurement':64s} {'threads':>7s} {'s/step':>8s} {'img/s':>8s} {'speed-up':>8s}")
    for kind in ("search", "train"):
        base = None
        for t in threads:
            r = _spawn(kind, t, args)
            base = base or r["images_per_s"]
            print(f"{r['what']:64s} {t:7d} {r['s_per_step']:8.3f} {r['images_per_s']:8.1f} "
                  f"{r['images_per_s'] / base:8.2f}x", flush=True)


def run_gpu(args: argparse.Namespace) -> None:
    """Untried here: one GPU per precision, then 1..N GPUs through torchrun."""
    import yaml

    print(f"{'measurement':64s} {'amp':>5s} {'GPUs':>4s} {'img/s':>8s}")
    for amp in args.amp.split(","):
        r = _spawn("train", 1, args, amp=amp)
        print(f"{r['what']:64s} {amp:>5s} {1:4d} {r['images_per_s']:8.1f}", flush=True)
    for n in [int(v) for v in args.nproc.split(",")] if args.nproc else []:
        with tempfile.TemporaryDirectory() as tmp:
            cmd = ["torchrun", f"--nproc-per-node={n}", "-m", "e2rnas.cli", "train", "DARTS_V2", "--device", "cuda",
                   "--epochs", "2", "--max-train-batches", str(args.steps), "--amp", args.amp.split(",")[0],
                   "--batch-size", str(64 * n),
                   "--out", str(Path(tmp) / "t"), "--json"]
            subprocess.run(cmd, check=True, capture_output=True)
            rec = [json.loads(line) for line in (Path(tmp) / "t" / "metrics.jsonl").read_text().splitlines()][-1]
            cfg = yaml.safe_load((Path(tmp) / "t" / "config.yaml").read_text())
        images = cfg["batch_size"] * args.steps  # the global batch
        print(f"{'train epoch (torchrun, 64 images per process)':64s} {cfg.get('amp', '?'):>5s} {n:4d} "
              f"{images / rec['time_s']:8.1f}", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("section", choices=["cpu", "gpu", "_child"])
    ap.add_argument("kind", nargs="?", help=argparse.SUPPRESS)
    ap.add_argument("--threads", default="1,2", help="torch threads to compare (cpu section)")
    ap.add_argument("--steps", type=int, default=6, help="timed search steps / train batches")
    ap.add_argument("--warmup", type=int, default=2, help="untimed search steps first")
    ap.add_argument("--device", default=None, help="default: cpu for the cpu section, cuda for the gpu section")
    ap.add_argument("--amp", default="off,tf32,bf16,fp16", help="gpu section: precisions (e2rnas train --amp)")
    ap.add_argument("--nproc", default=None, help="gpu section: GPU counts for torchrun, e.g. 1,2,4")
    args = ap.parse_args()
    args.device = args.device or ("cuda" if args.section == "gpu" else "cpu")
    if args.section == "_child":
        import torch

        torch.set_num_threads(int(args.threads))
        fn = search_child if args.kind == "search" else train_child
        extra = {"amp": args.amp} if args.kind == "train" and "," not in args.amp else {}
        print(json.dumps(fn(args.steps, args.warmup, args.device, **extra)))
    elif args.section == "cpu":
        run_cpu(args)
    else:
        run_gpu(args)


if __name__ == "__main__":
    main()
