"""On a GPU machine: what e2rnas records about this GPU, whether it refuses what it must, and whether torch CUDA and
(where installed) ONNX Runtime's CUDA provider agree with the CPU on a real exported network. Prints a table.

    python benchmarks/gpu_identity.py
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

from e2rnas.deploy_targets.env import environment
from e2rnas.deploy_targets.gpu_identity import (
    GpuIdentity,
    current_identity,
    engine_identity_problem,
    target_problem,
    torch_arch_problem,
)
from e2rnas.deploy_targets.profiles import TARGETS
from e2rnas.export import artifact_name


def main() -> int:
    if not torch.cuda.is_available():
        print("no CUDA GPU visible to torch: nothing to check here")
        return 2
    env = environment()
    me = current_identity()
    print(f"# identity: {json.dumps(me.as_dict())}")
    print(f"# gpu: {json.dumps(env['gpu'])}; driver {env['nvidia_driver']}; cpu governor {env['cpu_governor']}")
    print(f"# torch {torch.__version__} arch list {torch.cuda.get_arch_list()}")
    rows: list[tuple[str, str, str]] = []

    def check(what: str, got: str | None, want_refused: bool) -> None:
        ok = (got is not None) == want_refused
        rows.append((what, "refused" if got else "accepted", ("ok" if ok else "WRONG") + (f": {got}" if got else "")))

    check("torch kernels for this GPU", torch_arch_problem(sm=me.sm, arch_list=torch.cuda.get_arch_list(),
                                                         torch_version=torch.__version__, gpu_name=me.name), False)
    check("torch kernels for a V100 (sm70) with this torch",
          torch_arch_problem(sm="7.0", arch_list=torch.cuda.get_arch_list(), torch_version=torch.__version__,
                             gpu_name="Tesla V100"), "sm_70" not in torch.cuda.get_arch_list())
    for name in ("cuda", "h100", "a100", "v100"):
        t = TARGETS[name]
        same = t.compute_capability is None or (t.compute_capability == me.sm and name in me.model)
        check(f"bench --target {name} here", target_problem(target_name=name, compute_capability=t.compute_capability,
                                                            current=me), not same)
    with tempfile.TemporaryDirectory() as tmp:
        trt = me.tensorrt or "10.8.0.43"
        major, minor = (int(v) for v in me.sm.split("."))
        for label, ident in (("engine built on this GPU model", GpuIdentity(me.name, me.sm, None, trt)),
                             ("engine from a same-sm other model", GpuIdentity(
                                 "NVIDIA H100 80GB HBM3" if "h100" not in me.model else "NVIDIA H200", me.sm, None,
                                 trt)),
                             ("engine from another TensorRT", GpuIdentity(me.name, me.sm, None, "9.9.9.9"))):
            path = Path(tmp) / artifact_name("tensorrt", "fp16", trt_version=ident.tensorrt,
                                             compute_capability=(major, minor), gpu=ident.model)
            path.write_bytes(b"")
            here = GpuIdentity(me.name, me.sm, me.uuid, trt)
            check(f"{label} ({path.name})", engine_identity_problem(path, here),
                  label != "engine built on this GPU model")
    print("\n| check | result | verdict |")
    print("|---|---|---|")
    for r in rows:
        print(f"| {r[0]} | {r[1]} | {r[2]} |")
    parity()
    return 1 if any("WRONG" in r[2] for r in rows) else 0


def parity() -> None:
    """torch CPU vs torch CUDA fp32 (TF32 off) vs ORT CUDA, on DARTS_V2 (20 cells, C=36, random weights)."""
    import warnings

    from e2rnas.deploy_targets.runners import OrtRunner, TorchRunner
    from e2rnas.space.genotypes import GENOTYPES
    from e2rnas.space.network import Network

    torch.manual_seed(0)
    model = Network(GENOTYPES["DARTS_V2"], 36, 20, 10, input_size=32).eval()
    x = np.random.default_rng(0).random((64, 3, 32, 32), dtype=np.float32)
    with torch.inference_mode():
        ref = model(torch.from_numpy(x)).numpy()
    scale = float(np.abs(ref).max())
    print("\n| path | max abs diff vs torch CPU | relative to max logit | top-1 agreement |")
    print("|---|---|---|---|")

    def row(label: str, out: np.ndarray) -> None:
        d = float(np.abs(out - ref).max())
        print(f"| {label} | {d:.2e} | {d / scale:.2e} | {(out.argmax(1) == ref.argmax(1)).mean():.3f} |")

    for tf32 in (False, True):
        with TorchRunner(model, device="cuda", input_shape=(3, 32, 32), tf32=tf32) as r:
            row(f"torch CUDA fp32 (TF32 {'on' if tf32 else 'off'})", r(x))
    model.cpu()
    import onnxruntime as ort

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        print(f"| ONNX Runtime CUDA | skipped: onnxruntime {ort.__version__} has "
              f"{', '.join(ort.get_available_providers())} (pip install onnxruntime-gpu) | | |")
        return
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        path = Path(tmp) / "m.onnx"
        torch.onnx.export(model, torch.rand(1, 3, 32, 32), str(path), dynamo=False, input_names=["images"],
                          output_names=["logits"], dynamic_axes={"images": {0: "batch"}, "logits": {0: "batch"}})
        with OrtRunner(path, providers=["CUDAExecutionProvider"]) as r:
            row("ONNX Runtime CUDA EP fp32", r(x))


if __name__ == "__main__":
    sys.exit(main())
