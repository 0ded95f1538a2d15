"""An fp16 copy of the validated fp32 ONNX graph: float16 weights, input and output, for GPU runtimes.

ONNX Runtime's CUDA and TensorRT execution providers, and TensorRT 11 (strongly typed: the graph's types are
what it builds), run such a file in half precision. ONNX Runtime's CPU provider loads it too, inserting casts
around the operators it has no fp16 kernel for, which is what lets export validate it on a CPU machine.

The conversion is done on the graph rather than by re-tracing a ``.half()`` model, so the fp16 file has exactly
the fp32 file's operators: float initializers and ``Constant`` tensors become float16, ``Cast(to=float)``
becomes ``Cast(to=float16)``, the graph input and output are declared float16 and shapes are inferred again.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from e2rnas.errors import E2RNASError

FP16_MAX = 65504.0


def convert_to_fp16(src: str | Path, dst: str | Path) -> dict[str, Any]:
    """Write the fp16 graph of ``src`` to ``dst``; returns what was converted (and what overflowed fp16)."""
    import onnx
    from onnx import TensorProto, numpy_helper

    model = onnx.load(str(src))
    graph = model.graph
    converted, clipped = 0, 0

    def half(t: Any) -> Any:
        nonlocal converted, clipped
        arr = numpy_helper.to_array(t)
        clipped += int(np.count_nonzero(np.abs(arr) > FP16_MAX))
        converted += 1
        return numpy_helper.from_array(np.clip(arr, -FP16_MAX, FP16_MAX).astype(np.float16), t.name)

    for i, init in enumerate(graph.initializer):
        if init.data_type == TensorProto.FLOAT:
            graph.initializer[i].CopyFrom(half(init))
    for node in graph.node:
        for attr in node.attribute:
            if node.op_type == "Constant" and attr.name == "value" and attr.t.data_type == TensorProto.FLOAT:
                attr.t.CopyFrom(half(attr.t))
            elif node.op_type == "Cast" and attr.name == "to" and attr.i == TensorProto.FLOAT:
                attr.i = TensorProto.FLOAT16
        if node.op_type == "Resize":  # its scales input must stay float32: not in our graphs, refuse clearly
            raise E2RNASError("fp16 export: the graph has a Resize node, whose scales must stay float32")
    for value in (*graph.input, *graph.output):
        if value.type.tensor_type.elem_type == TensorProto.FLOAT:
            value.type.tensor_type.elem_type = TensorProto.FLOAT16
    del graph.value_info[:]
    model = onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True)
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(dst))
    return {"tool": "e2rnas.export.fp16", "tensors_converted": converted, "values_clipped_to_fp16_range": clipped,
            "io_dtype": "float16"}
