"""What the device runner asks TensorRT for, decided on real ONNX files and trtexec output quoted from public logs
(each fixture names its source; no GPU needed).

The decisions are plain functions of ``remote_runner.py`` (shapes only for dynamic inputs, the 10/11 precision
split, batches outside a profile skipped, trtexec's ``[E]`` lines) and of ``remote.py``/``graph_facts.py``
(ONNX Runtime's asymmetric int8 file never goes to TensorRT). The TensorRT calls themselves need a GPU.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from _deploy_helpers import export_onnx

from e2rnas.deploy_targets import remote_runner as R
from e2rnas.deploy_targets.remote import RemoteError, SshConfig, artifact_plan, remote_backend
from e2rnas.export.graph_facts import graph_facts, tensorrt_problem
from e2rnas.model_io import NetworkSpec
from e2rnas.space.genotypes import GENOTYPES


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    """fp32 dynamic, fp32 static batch 4, ORT int8 (asymmetric QDQ) and a symmetric int8 Q/DQ file."""
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    from e2rnas.export.onnx_export import quantize_int8

    d = tmp_path_factory.mktemp("graphs")
    torch.manual_seed(0)
    model = NetworkSpec(C=4, layers=3, num_classes=5, input_size=16).build(GENOTYPES["DARTS_V2"]).eval()
    out = {"dynamic": export_onnx(model, d / "model.onnx"),
           "static": export_onnx(model, d / "model.bs4.onnx", static_batch=4)}
    calib = np.random.default_rng(0).random((8, 3, 16, 16), dtype=np.float32)
    quantize_int8(out["dynamic"], d / "model.int8.onnx", calibration=calib, scheme="s8s8")
    out["ort_int8"] = d / "model.int8.onnx"

    class Reader:
        def __init__(self):
            self.it = iter([{"images": calib}])

        def get_next(self):
            return next(self.it, None)

    quantize_static(str(out["dynamic"]), str(d / "model.sym.onnx"), Reader(), quant_format=QuantFormat.QDQ,
                    activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
                    extra_options={"ActivationSymmetric": True, "WeightSymmetric": True, "QuantizeBias": False})
    out["symmetric"] = d / "model.sym.onnx"
    return out


def test_graph_facts_read_dims_precision_and_quantisation(files):
    facts = graph_facts(files["dynamic"])
    assert facts == {"input_name": "images", "dims": [-1, 3, 16, 16], "precision": "fp32", "quantization": None,
                     "opset": facts["opset"]} and facts["opset"] >= 13
    assert graph_facts(files["static"])["dims"] == [4, 3, 16, 16]
    assert graph_facts(files["ort_int8"])["quantization"] == "asymmetric"
    sym = graph_facts(files["symmetric"])
    assert (sym["precision"], sym["quantization"]) == ("int8", "symmetric")


def test_ort_int8_file_never_goes_to_tensorrt(files, tmp_path):
    ort = artifact_plan(files["ort_int8"])
    problem = tensorrt_problem(ort, "model.int8.onnx")
    assert problem and "\n" not in problem and "symmetric" in problem
    assert remote_backend(("onnxruntime", "tensorrt"), ort, "model.int8.onnx") == "onnxruntime"  # ORT's file, ORT
    with pytest.raises(RemoteError, match="asymmetric"):
        remote_backend(("tensorrt",), ort, "model.int8.onnx")
    assert remote_backend(("onnxruntime", "tensorrt"), artifact_plan(files["symmetric"]), "m") == "auto"
    assert remote_backend(("onnxruntime", "tensorrt"), artifact_plan(files["dynamic"]), "m") == "auto"
    assert remote_backend(("onnxruntime",), ort, "m") == "onnxruntime"


@pytest.mark.parametrize("trt, requested, graph, backend, flag, built, says", [
    ("8.5.2", "fp16", "fp32", "trtexec", "fp16", "fp16", None),
    ("8.5.2", "fp16", "int8", "trtexec", "int8", "int8", None),  # 8.x needs --int8 for a Q/DQ graph
    ("10.3.0", "fp32", "fp32", "tensorrt", None, "fp32", None),
    ("10.3.0", "int8", "fp32", "trtexec", "int8", "int8", "placeholder"),
    ("10.3.0", "int8", "fp32", "tensorrt", None, "fp32", "skip"),
    ("11.1.0", "fp16", "fp32", "trtexec", None, "fp32", "strongly typed"),
    ("11.1.0", "fp16", "fp16", "tensorrt", None, "fp16", None),
    ("11.1.0", "int8", "int8", "trtexec", None, "int8", None),
])
def test_precision_plan_follows_the_10_11_split(trt, requested, graph, backend, flag, built, says):
    plan = R.precision_plan(requested, graph, trt, backend)
    if says == "skip":
        assert plan["skip"] and "calibration" in plan["skip"]
        return
    assert (plan["flag"], plan["built"], plan["skip"]) == (flag, built, None)
    assert (plan["note"] is None) == (says is None) and (says is None or says in plan["note"])


def test_trtexec_shapes_only_for_dynamic_inputs(files):
    plan = R.precision_plan("fp16", "fp32", "10.3.0", "trtexec")
    dyn = artifact_plan(files["dynamic"])["dims"]
    cmd = R.trtexec_build_cmd("trtexec", onnx="m.onnx", engine="m.engine", batch=8, input_name="images",
                              dims=dyn, chw=(3, 16, 16), plan=plan, trt_version="10.3.0")
    assert {"--minShapes=images:8x3x16x16", "--optShapes=images:8x3x16x16", "--maxShapes=images:8x3x16x16",
            "--fp16", "--skipInference"} <= set(cmd)
    static = artifact_plan(files["static"])["dims"]
    cmd = R.trtexec_build_cmd("trtexec", onnx="m.onnx", engine="m.engine", batch=4, input_name="images",
                              dims=static, chw=(3, 16, 16), plan=plan, trt_version="8.5.2")
    assert not any(a.startswith(("--minShapes", "--optShapes", "--maxShapes")) for a in cmd)
    assert "--buildOnly" in cmd  # 8.5 predates --skipInference
    assert R.batch_problem(static, 4) is None and "fixed batch of 4" in R.batch_problem(static, 8)
    timing = R.trtexec_time_cmd("trtexec", engine="m.engine", batch=4, input_name="images", dims=static,
                                chw=(3, 16, 16), times_file="t.json", warmup_ms=200, runs=10, duration=None,
                                cuda_graph=False)
    assert not any(a.startswith("--shapes") for a in timing)


def test_opset_above_17_is_refused_on_tensorrt_8_with_the_jetpack_named(files):
    opset = artifact_plan(files["dynamic"])["opset"]  # what torch wrote (20 with torch 2.14's TorchScript)
    assert R.precision_plan("fp16", "fp32", "8.5.2", "trtexec", 17)["skip"] is None  # 17 parses on 8.5
    assert (R.precision_plan("fp16", "fp32", "8.5.2", "trtexec", opset)["skip"] is None) == (opset <= 17)
    skip = R.precision_plan("fp16", "fp32", "8.6.2", "trtexec", 18)["skip"]
    assert "opset 17" in skip and "JetPack 6.0" in skip and "\n" not in skip
    assert R.precision_plan("fp16", "fp32", "10.3.0", "trtexec", 18)["skip"] is None


def test_trtexec_on_tensorrt_11_gets_no_precision_flags():
    plan = R.precision_plan("fp16", "fp16", "11.1.0", "trtexec")
    cmd = R.trtexec_build_cmd("trtexec", onnx="m.onnx", engine="e", batch=1, input_name="images", dims=[-1, 3, 8, 8],
                              chw=(3, 8, 8), plan=plan, trt_version="11.1.0")
    assert "--fp16" not in cmd and "--int8" not in cmd and "--noTF32" not in cmd


def test_engine_profile_bounds_skip_a_batch_with_a_reason(tmp_path):
    engine = tmp_path / "model.trt10.3.sm87.fp16.engine"
    engine.write_bytes(b"engine")
    engine.with_suffix(".json").write_text('{"precision": "fp16", "profile": {"min": 1, "opt": 8, "max": 16}}')
    plan = artifact_plan(engine)
    assert plan["dims"] == [-1] and plan["profile_max"] == 16
    assert R.batch_problem(plan["dims"], 16, plan["profile_max"]) is None
    assert "above the engine's optimisation profile (max 16)" in R.batch_problem(plan["dims"], 64, 16)


def test_trtexec_error_lines_are_reported_not_only_the_last():
    # trtexec given explicit shapes for a static model, quoted from shouxieai/infer issue #1 (TensorRT 8.x, 2023)
    out = ("[03/05/2023-13:17:08] [I] Finish parsing network model\n"
           "[03/05/2023-13:17:08] [E] Static model does not take explicit shapes since the shape of inference "
           "tensors will be determined by the model itself\n"
           "[03/05/2023-13:17:08] [E] Network And Config setup failed\n"
           "[03/05/2023-13:17:08] [E] Building engine failed\n"
           "[03/05/2023-13:17:08] [E] Failed to create engine from model or file.\n"
           "[03/05/2023-13:17:08] [E] Engine set up failed\n")
    reason = R.trtexec_errors(out, 1)
    assert reason.startswith("Static model does not take explicit shapes") and reason.count(" | ") == 4
    assert R.trtexec_errors("", 3) == "exit 3"
    assert R.trtexec_errors("[01/01/1970-03:47:30] [I] TensorRT version: 10.16.2\n", 1).endswith("10.16.2")


@pytest.mark.parametrize("line, version", [
    # banners quoted from NVIDIA/TensorRT issues #4494 (Jetson Orin, JetPack 6.1), #3229 and #4136
    ("&&&& RUNNING TensorRT.trtexec [TensorRT v100300] # /usr/src/tensorrt/bin/trtexec --int8 "
     "--onnx=model_quantized_int8_512x512_iter4.onnx", "10.3.0"),
    ("&&&& RUNNING TensorRT.trtexec [TensorRT v8601] # D:\\python_workspace\\stable-diffusion-webui", "8.6.1"),
    ("&&&& RUNNING TensorRT.trtexec [TensorRT v8003] # trtexec --onnx=weights/wav2lip/wav2lip.onnx", "8.0.3"),
    # the version line of a run, quoted from OE4T/meta-tegra pull request #2243 (TensorRT 10.16 on Orin)
    ("[01/01/1970-03:47:30] [I] TensorRT version: 10.16.2", "10.16.2"),
    # no trtexec 11 log is public yet: this is NV_TENSORRT_VERSION's formula (major*10000 + minor*100 + patch,
    # NvInferVersion.h since 10.0), not quoted output
    ("[TensorRT v110100]", "11.1.0"),
    # TensorRT 7.1 (JetPack 4.5.1) prints no version, quoted from NobuoTsukamoto/tensorrt-examples issue #3
    ("&&&& RUNNING TensorRT.trtexec # /usr/src/tensorrt/bin/trtexec --onnx=/home/jetson/ssdlite_mobilenet_v2_300x300_gs"
     ".onnx", None),
])
def test_trtexec_version_from_its_banner(line, version):
    assert R.parse_trt_version(line) == version


@pytest.mark.parametrize("host, ssh_dest, scp_dest", [
    ("me@::1", "me@::1", "me@[::1]:/t"), ("me@[::1]", "me@::1", "me@[::1]:/t"), ("::1", "::1", "[::1]:/t"),
    ("me@orin_nano", "me@orin_nano", "me@orin_nano:/t"), ("lab_orin", "lab_orin", "lab_orin:/t"),
    ("me@10.0.0.7", "me@10.0.0.7", "me@10.0.0.7:/t"),
])
def test_ipv6_hosts_are_bare_for_ssh_and_bracketed_for_scp(host, ssh_dest, scp_dest):
    cfg = SshConfig(host)
    assert cfg.ssh_destination == ssh_dest and cfg.scp_destination("/t") == scp_dest
