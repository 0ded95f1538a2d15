"""Seconds per retrain step of the evaluation network (DARTS protocol: auxiliary head, drop-path), AMP off and on.

One step = forward_train (logits + auxiliary logits), cross-entropy + 0.4 x auxiliary loss, backward, gradient clip
at 5, SGD with momentum and weight decay: what ``e2rnas train`` does per batch, on random data. Prints a table.

    python benchmarks/train_step.py --device cuda                       # 20 cells, C=36, batch 96 (paper)
    python benchmarks/train_step.py --device cpu --layers 8 --C 16 --batch 32 --steps 3   # a CPU-sized check

``--amp`` modes: ``off`` (fp32; TF32 off so that fp32 means fp32), ``tf32`` (fp32 with TF32 matmuls/convs),
``bf16`` (autocast, no scaler) and ``fp16`` (autocast with a GradScaler). CUDA only for the last three.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from e2rnas.space.genotypes import GENOTYPES
from e2rnas.space.network import Network

AMP = {"off": None, "tf32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def measure(*, genotype: str, layers: int, C: int, batch: int, size: int, classes: int, device: torch.device,
            amp: str, steps: int, warmup: int, channels_last: bool) -> dict[str, float]:
    torch.manual_seed(0)
    with_tf32 = amp != "off"
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = with_tf32
        torch.backends.cudnn.allow_tf32 = with_tf32
        torch.backends.cudnn.benchmark = True
    model = Network(GENOTYPES[genotype], C, layers, classes, auxiliary=True, drop_path=0.2, input_size=size)
    model = model.to(device).train()
    model.drop_path_prob = 0.1
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=0.025, momentum=0.9, weight_decay=3e-4)
    dtype = AMP[amp]
    scaler = torch.amp.GradScaler("cuda") if amp == "fp16" else None
    x = torch.rand(batch, 3, size, size, device=device)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, classes, (batch,), device=device)

    def step() -> None:
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            logits, aux = model.forward_train(x)
            loss = F.cross_entropy(logits, y) + 0.4 * F.cross_entropy(aux, y)
        opt.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.unscale_(opt)
            torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
            scaler.step(opt)
            scaler.update()
        else:
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
            opt.step()

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    for _ in range(warmup):
        step()
    sync()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        step()
        sync()
        times.append(time.perf_counter() - t)
    med = statistics.median(times)
    return {"s_per_step": med, "images_per_s": batch / med,
            "peak_gpu_gb": torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else float("nan")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--genotype", default="DARTS_V2", choices=sorted(GENOTYPES))
    ap.add_argument("--layers", type=int, default=20)
    ap.add_argument("--C", type=int, default=36)
    ap.add_argument("--batch", type=int, default=96)
    ap.add_argument("--size", type=int, default=32)
    ap.add_argument("--classes", type=int, default=10)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--amp", default=None, help="comma-separated from off,tf32,bf16,fp16 (default: all on CUDA, off on "
                                                "CPU)")
    ap.add_argument("--channels-last", action="store_true")
    args = ap.parse_args()
    device = torch.device(args.device)
    modes = (args.amp or ("off,tf32,bf16,fp16" if device.type == "cuda" else "off")).split(",")
    bad = [m for m in modes if m not in AMP or (device.type != "cuda" and m != "off")]
    if bad:
        raise SystemExit(f"--amp {','.join(bad)}: choose from {', '.join(AMP)} (only 'off' on the CPU)")
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"# retrain step, {args.genotype}, {args.layers} cells, C={args.C}, batch {args.batch}, {args.size}px, "
          f"auxiliary + drop-path, on {where}, torch {torch.__version__}; median of {args.steps} steps after "
          f"{args.warmup} warm-ups")
    print("| amp | s/step | images/s | peak GPU GB |")
    print("|---|---|---|---|")
    for amp in modes:
        try:
            r = measure(genotype=args.genotype, layers=args.layers, C=args.C, batch=args.batch, size=args.size,
                        classes=args.classes, device=device, amp=amp, steps=args.steps, warmup=args.warmup,
                        channels_last=args.channels_last)
        except Exception as exc:  # one failing mode (bf16 on an old GPU) must not hide the others
            print(f"| {amp} | failed: {type(exc).__name__}: {str(exc).splitlines()[0]} | | |", flush=True)
            continue
        print(f"| {amp} | {r['s_per_step']:.4f} | {r['images_per_s']:.0f} | {r['peak_gpu_gb']:.2f} |", flush=True)


if __name__ == "__main__":
    main()
