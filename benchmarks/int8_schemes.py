"""ONNX Runtime int8 schemes on digits: accuracy vs fp32 and CPU latency, for docs/int8-cpu.md.

The model is the one ``tests/test_export_onnx.py`` trains (DARTS_V2, 3 cells, C=4, 16x16, 5 classes, 3 epochs on
digits); each scheme is exported through ``export_model`` with the test's calibration (64 images) and judged on
``--samples`` test images (default: all 225 of the 5 classes; the test uses 96), as the parity gate judges it.

    .venv/bin/python benchmarks/int8_schemes.py              # 5 rounds x 300 timed calls per artifact
    .venv/bin/python benchmarks/int8_schemes.py --rounds 2   # quicker

Latency: ONNX Runtime CPU, 1 intra-op thread, batch 1, 20 warm-up calls, then ``--runs`` timed calls; the p50 of
each round, median over rounds (the artifacts take turns in every round, so drift on a shared machine hits all).
"int ops" counts the integer kernels in ORT's optimised graph (QLinearConv etc.): 0 would mean ORT fell back to
float. "pairs > int16" is the share of adjacent weight pairs of dense (group 1) convolutions and matmuls with
|w1| + |w2| >= 129, i.e. that overflow a VPMADDUBSW int16 sum when both activations are 255 (non-VNNI x86 only).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import numpy_helper

from e2rnas.deploy_targets.cpu_features import cpu_features
from e2rnas.deploy_targets.runners import OrtRunner
from e2rnas.export import export_model
from e2rnas.export import validate as V
from e2rnas.export.int8_schemes import INT8_SCHEMES
from e2rnas.model_io import load_model
from e2rnas.predict import OnnxRuntimePredictor

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from _deploy_helpers import train_digits_model as train  # noqa: E402  (the very model the tests train)

_INT_OPS = {"QLinearConv", "QLinearMatMul", "QGemm", "ConvInteger", "MatMulInteger", "QLinearAdd", "QLinearConcat",
            "QLinearAveragePool", "QLinearGlobalAveragePool"}


def mean_diff(path: str | Path, x: np.ndarray, ref: np.ndarray) -> float:
    """Mean |logit - torch logit| over the validation images (the max is set by output clipping, see the doc)."""
    return float(np.abs(OnnxRuntimePredictor(path)(x) - ref).mean())


def int_ops(path: Path, scratch: Path) -> int:
    """Integer kernels in ORT's optimised graph (level all, as the runners use)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.log_severity_level = 3  # not the warning that an optimised graph is specific to this CPU: it is meant
    opts.optimized_model_filepath = str(scratch / f"{path.parent.name}.opt.onnx")
    ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    return sum(n.op_type in _INT_OPS for n in onnx.load(opts.optimized_model_filepath).graph.node)


def risky_pairs(path: Path) -> float:
    """Share of adjacent (reduction-axis) int8 weight pairs of dense Conv/MatMul/Gemm with |w1| + |w2| >= 129."""
    model = onnx.load(str(path))
    inits = {t.name: t for t in model.graph.initializer}
    producer = {o: n for n in model.graph.node for o in n.output}
    risky = total = 0
    for node in model.graph.node:
        if node.op_type not in ("Conv", "MatMul", "Gemm") or len(node.input) < 2:
            continue
        if any(a.name == "group" and a.i != 1 for a in node.attribute):
            continue  # depthwise convolutions run another kernel
        dq = producer.get(node.input[1])
        if dq is None or dq.op_type != "DequantizeLinear" or dq.input[0] not in inits:
            continue
        w = numpy_helper.to_array(inits[dq.input[0]])
        if w.dtype != np.int8:
            continue  # uint8 weights run the U8U8 kernels, which do not saturate
        w = w.reshape(w.shape[0], -1) if node.op_type == "Conv" else w.reshape(w.shape[0], -1).T
        k = w.shape[1] - w.shape[1] % 2
        s = np.abs(w[:, :k:2].astype(np.int32)) + np.abs(w[:, 1:k:2].astype(np.int32))
        risky += int((s >= 129).sum())
        total += s.size
    return risky / total if total else 0.0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--runs", type=int, default=300)
    ap.add_argument("--samples", type=int, default=225)
    args = ap.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory(prefix="e2rnas-int8-") as tmp:
        root = Path(tmp)
        model = train(root / "model.pt")
        x, _ = V.as_numpy(V.images_for("digits", split="test", image_size=16, samples=args.samples))
        ref = V.reference_logits(load_model(model).model, x)
        rows: dict[str, dict] = {}
        for name in INT8_SCHEMES:
            fp32, int8 = export_model(model, out_dir=root / name, precision="int8", calib_samples=64,
                                      exporter="torchscript", check_batch=16, validation_samples=args.samples,
                                      int8_scheme=name)
            if "fp32" not in rows:
                rows["fp32"] = {"path": Path(fp32.path), "top1": fp32.top1_agreement, "diff": fp32.max_abs_diff,
                                "mean": mean_diff(fp32.path, x, ref),
                                "acc": fp32.details["parity"].get("accuracy_candidate"), "ops": 0, "risky": None}
            path = Path(int8.path) if int8.ok else None
            rows[name] = {"path": path, "top1": int8.top1_agreement, "diff": int8.max_abs_diff,
                          "mean": mean_diff(path, x, ref) if path else float("nan"),
                          "acc": int8.details["parity"].get("accuracy_candidate"),
                          "ops": int_ops(path, root) if path else None, "risky": risky_pairs(path) if path else None}
        p50s: dict[str, list[float]] = {k: [] for k, r in rows.items() if r["path"]}
        for _ in range(args.rounds):
            for key in p50s:
                with OrtRunner(rows[key]["path"], threads=1) as runner:
                    p50s[key].append(runner.measure(1, warmup=20, runs=args.runs).p50_ms)
    print(f"cpu: {cpu_features()}; onnxruntime {__import__('onnxruntime').__version__}; "
          f"{args.rounds} rounds x {args.runs} calls")
    print("| artifact | top-1 agreement vs torch fp32 | max abs logit diff | mean abs logit diff | accuracy | int ops "
          "| pairs > int16 | batch-1 p50 ms |")
    print("|---|---|---|---|---|---|---|---|")
    for key, r in rows.items():
        lat = f"{statistics.median(p50s[key]):.3f}" if key in p50s else "-"
        risky = "-" if r["risky"] is None else f"{100 * r['risky']:.1f}%"
        print(f"| {key} | {r['top1']:.3f} | {r['diff']:.3g} | {r['mean']:.3g} | {r['acc']:.3f} | {r['ops']} | {risky} "
              f"| {lat} |")


if __name__ == "__main__":
    main()
