"""INT8 vs fp32 on this CPU: ORT QDQ vs QOperator, per-channel vs per-tensor, S8S8 vs U8S8 (DARTS_V2, embedded).

Run: ``OMP_NUM_THREADS=1 .venv/bin/python benchmarks/int8_formats.py [RUNS]`` (1 intra-op thread, batch 1, 20
warm-up calls, median over 3 rounds of the p50 of RUNS timed calls; random weights, 32 random calibration images:
latency only, accuracy is what ``benchmarks/int8_schemes.py`` measures).
"""

from __future__ import annotations

import logging
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
from onnxruntime.quantization.shape_inference import quant_pre_process

from e2rnas.export.onnx_export import export_onnx
from e2rnas.export.pipeline import load_source
from e2rnas.space.cost import DeployShape

SHAPES = {"DARTS_V2": DeployShape(), "embedded": DeployShape(layers=8, C=16, num_classes=5, input_size=16)}
QTYPES = {"S8": QuantType.QInt8, "U8": QuantType.QUInt8}


def session(path: Path) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def p50(sess: ort.InferenceSession, x: np.ndarray, runs: int) -> float:
    for _ in range(20):
        sess.run(None, {"images": x})
    times = []
    for _ in range(runs):
        t0 = time.perf_counter_ns()
        sess.run(None, {"images": x})
        times.append((time.perf_counter_ns() - t0) / 1e6)
    return float(np.median(times))


class Reader(CalibrationDataReader):
    def __init__(self, calib: np.ndarray) -> None:
        self.batches = iter([{"images": calib[i:i + 8]} for i in range(0, len(calib), 8)])

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self.batches, None)


def main(runs: int) -> None:
    logging.getLogger().setLevel(logging.ERROR)
    torch.set_num_threads(1)
    for name, shape in SHAPES.items():
        d = Path(tempfile.mkdtemp(prefix="e2rnas-int8-"))
        src = load_source("DARTS_V2", shape=shape)
        fp32, pre = d / "model.onnx", d / "pre.onnx"
        export_onnx(src.model, fp32, input_size=shape.input_size, exporter="torchscript")
        quant_pre_process(str(fp32), str(pre))
        calib = np.random.default_rng(0).random((32, 3, shape.input_size, shape.input_size), dtype=np.float32)
        files = {"fp32": fp32}
        for fmt in ("QDQ", "QOperator"):
            for per_channel in (True, False):
                for act in ("S8", "U8"):
                    out = d / f"{fmt}.{per_channel}.{act}.onnx"
                    quantize_static(str(pre), str(out), Reader(calib), quant_format=getattr(QuantFormat, fmt),
                                    per_channel=per_channel, activation_type=QTYPES[act], weight_type=QTYPES["S8"])
                    files[f"{fmt} {'per-channel' if per_channel else 'per-tensor'} {act}S8"] = out
        x = np.random.default_rng(1).random((1, 3, shape.input_size, shape.input_size), dtype=np.float32)
        sessions = {k: session(v) for k, v in files.items()}
        res: dict[str, list[float]] = {k: [] for k in files}
        for _ in range(3):  # the variants take turns within a round
            for k, sess in sessions.items():
                res[k].append(p50(sess, x, runs))
        for k in files:
            print(f"{name:9s} {k:30s} p50 {np.median(res[k]):.3f} ms", flush=True)


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 200)
