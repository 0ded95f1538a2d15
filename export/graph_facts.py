"""What an ONNX file says about itself, read without running it: input dims, the precision its graph carries,
and whether its Q/DQ quantisation is one TensorRT can parse.

TensorRT accepts only symmetric int8 Q/DQ (zero point 0, signed int8): ONNX Runtime's static quantisation writes
asymmetric activations (int8 zero points such as -128 after a ReLU, or uint8), which TensorRT's ONNX parser
rejects. Imports onnx lazily, numpy only otherwise.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

QDQ_OPS = ("QuantizeLinear", "DequantizeLinear")


def onnx_input(path: str | Path) -> tuple[str, list[int | None]]:
    """Name and dims of the first graph input; a symbolic or unknown dim is None (weights are not loaded)."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return _input_of(model)


def _input_of(model: Any) -> tuple[str, list[int | None]]:
    inp = model.graph.input[0]
    dims = [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None
            for d in inp.type.tensor_type.shape.dim]
    return inp.name, dims


def static_batch_of(path: str | Path) -> int | None:
    """The fixed batch of an ONNX file's input, or None when the batch axis is dynamic."""
    dims = onnx_input(path)[1]
    return dims[0] if dims else None


def quantization_of(model: Any) -> str | None:
    """None (no Q/DQ nodes), "symmetric" (every zero point is a signed int8 0: TensorRT's form) or
    "asymmetric" (a non-zero zero point, or a uint8/int32 one: ONNX Runtime's QDQ files, whose biases are also
    quantised to int32; TensorRT's explicit quantisation is symmetric int8 with fp32 biases)."""
    from onnx import TensorProto, numpy_helper

    inits = {i.name: i for i in model.graph.initializer}
    consts = {n.output[0]: n.attribute[0].t for n in model.graph.node
              if n.op_type == "Constant" and n.attribute and n.attribute[0].HasField("t")}
    found = False
    for node in model.graph.node:
        if node.op_type not in QDQ_OPS:
            continue
        found = True
        if len(node.input) < 3 or not node.input[2]:
            continue  # no zero point: 0 (uint8 for a QuantizeLinear, which TensorRT's exporters never write)
        zp = inits.get(node.input[2]) or consts.get(node.input[2])
        if zp is None:
            return "asymmetric"  # a computed zero point: not a form TensorRT parses
        if zp.data_type != TensorProto.INT8 or np.any(numpy_helper.to_array(zp) != 0):
            return "asymmetric"
    return "symmetric" if found else None


def graph_facts(path: str | Path) -> dict[str, Any]:
    """{"input_name", "dims" (-1: dynamic), "precision" (fp32 | fp16 | int8), "quantization", "opset"}."""
    import onnx
    from onnx import TensorProto

    model = onnx.load(str(path), load_external_data=False)
    name, dims = _input_of(model)
    quant = quantization_of(model)
    elem = model.graph.input[0].type.tensor_type.elem_type
    half = elem == TensorProto.FLOAT16 or any(i.data_type == TensorProto.FLOAT16 for i in model.graph.initializer)
    precision = "int8" if quant else "fp16" if half else "fp32"
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
    return {"input_name": name, "dims": [-1 if d is None else d for d in dims], "precision": precision,
            "quantization": quant, "opset": opset}


def tensorrt_problem(facts: dict[str, Any], name: str = "this file") -> str | None:
    """Why TensorRT must not be handed this ONNX graph, or None."""
    if facts.get("quantization") == "asymmetric":
        return (f"{name} is ONNX Runtime's int8 QDQ file (asymmetric activations, e.g. zero point -128, or "
                "uint8/int32 zero points): TensorRT parses symmetric int8 Q/DQ only; for TensorRT int8 bench "
                "model.onnx (built from fp32) or export --trt --precision int8 on the GPU (calibrated)")
    return None
