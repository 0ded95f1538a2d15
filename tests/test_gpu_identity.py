"""Engine identity, named GPU targets and torch's arch list: the logic that refuses a wrong device, on real files."""

from __future__ import annotations

import json

import pytest

from e2rnas.deploy_targets.gpu_identity import (
    GpuIdentity,
    engine_identity_problem,
    gpu_model,
    identity_problem,
    recorded_identity,
    target_problem,
    torch_arch_problem,
)
from e2rnas.deploy_targets.profiles import TARGETS
from e2rnas.export import artifact_name

H200 = GpuIdentity(name="NVIDIA H200", sm="9.0", uuid="GPU-1", tensorrt="10.8.0.43")
H100 = GpuIdentity(name="NVIDIA H100 80GB HBM3", sm="9.0", uuid="GPU-2", tensorrt="10.8.0.43")
A30 = GpuIdentity(name="NVIDIA A30", sm="8.0", tensorrt="10.8.0.43")
NANO = GpuIdentity(name="NVIDIA Jetson Orin Nano Developer Kit", sm="8.7", tensorrt="10.3.0.30")
AGX = GpuIdentity(name="NVIDIA Jetson AGX Orin Developer Kit", sm="8.7", tensorrt="10.3.0.30")
# torch 2.9+ CUDA 13 wheels: no Volta (sm_70) code.
CU13_ARCHS = ["sm_75", "sm_80", "sm_86", "sm_90", "sm_100", "sm_120", "compute_120"]


@pytest.mark.parametrize("name, model", [
    ("NVIDIA H100 80GB HBM3", "h100"), ("NVIDIA H200", "h200"), ("NVIDIA A100-SXM4-80GB", "a100"),
    ("NVIDIA A100 PCIe 40GB", "a100"), ("Tesla V100-SXM2-16GB", "v100"),
    ("NVIDIA Jetson AGX Orin Developer Kit", "jetson agx orin"), ("NVIDIA GH200 480GB", "gh200")])
def test_gpu_model_drops_vendor_form_factor_and_memory(name, model):
    assert gpu_model(name) == model


@pytest.mark.parametrize("built, here, fragment", [
    (H100, H200, "another model"), (H200, H100, "another model"), (NANO, AGX, "another model"),
    (GpuIdentity(name="NVIDIA A100-SXM4-80GB", sm="8.0", tensorrt="10.8.0.43"), A30, "another model"),
    (H200, A30, "sm90"), (GpuIdentity(name="NVIDIA H200", sm="9.0", tensorrt="10.7.0.23"), H200, "TensorRT 10.7"),
])
def test_same_sm_other_model_or_version_is_refused(built, here, fragment):
    problem = identity_problem(built.as_dict(), here)
    assert problem is not None and fragment in problem


def test_same_model_other_card_is_accepted():
    other = GpuIdentity(name="NVIDIA H200", sm="9.0", uuid="GPU-other", tensorrt="10.8.0.43")
    assert identity_problem(H200.as_dict(), other) is None
    assert identity_problem(H200.as_dict(), None) is not None  # no GPU at all


def test_engine_identity_from_sidecar_then_from_name(tmp_path):
    name = artifact_name("tensorrt", "fp16", trt_version=H100.tensorrt, compute_capability=(9, 0), gpu=H100.model)
    engine = tmp_path / name
    engine.write_bytes(b"plan")
    # no sidecar: the name alone says H100, TensorRT 10.8.0.43, sm90
    assert recorded_identity(engine) == {"sm": "9.0", "name": "h100", "tensorrt": "10.8.0.43"}
    assert "another model" in engine_identity_problem(engine, H200)
    assert engine_identity_problem(engine, H100) is None
    # the sidecar wins over the name
    engine.with_suffix(".json").write_text(json.dumps({"identity": H200.as_dict()}))
    assert engine_identity_problem(engine, H200) is None
    # an older sidecar (TrtEnv only) still identifies the GPU
    engine.with_suffix(".json").write_text(json.dumps({"environment": {"gpu": "NVIDIA A30", "version": "10.8.0.43",
                                                                      "compute_capability": [8, 0]}}))
    assert engine_identity_problem(engine, A30) is None and "sm80" in engine_identity_problem(engine, H200)
    # an older name (major.minor only) compares the sm, not the version
    old = tmp_path / "model.trt10.8.sm100.fp16.engine"
    assert recorded_identity(old) == {"sm": "10.0"}


def test_named_gpu_target_refuses_another_gpu():
    v100 = TARGETS["v100"]
    problem = target_problem(target_name="v100", compute_capability=v100.compute_capability, current=H200)
    assert problem and "sm70" in problem and "--target cuda" in problem
    assert "different models" in target_problem(target_name="h100", compute_capability="9.0", current=H200)
    assert target_problem(target_name="h100", compute_capability="9.0", current=H100) is None
    assert target_problem(target_name="jetson-agx-orin", compute_capability="8.7", current=AGX) is None
    assert target_problem(target_name="jetson-orin-nano", compute_capability="8.7", current=AGX) is not None
    assert target_problem(target_name="cuda", compute_capability=None, current=H200) is None


def test_torch_without_volta_kernels_says_so_in_one_line():
    problem = torch_arch_problem(sm="7.0", arch_list=CU13_ARCHS, torch_version="2.14.1", gpu_name="Tesla V100")
    assert problem and "sm_70" in problem and "onnxruntime" in problem and "\n" not in problem
    assert torch_arch_problem(sm="9.0", arch_list=CU13_ARCHS, torch_version="2.14.1") is None
    assert torch_arch_problem(sm="8.9", arch_list=CU13_ARCHS, torch_version="2.14.1") is None  # sm_86 SASS runs
    assert torch_arch_problem(sm="12.1", arch_list=CU13_ARCHS, torch_version="2.14.1") is None  # PTX JIT
    assert torch_arch_problem(sm="8.7", arch_list=["sm_90"], torch_version="x") is not None


def test_bench_on_a_named_gpu_target_without_that_gpu_is_refused(tmp_path):
    import torch

    from e2rnas.deploy_targets.runners import open_runner
    from e2rnas.errors import E2RNASError

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU: the CPU-only refusal is not what runs here")
    with pytest.raises(E2RNASError, match="target v100 needs its GPU"):
        open_runner(tmp_path / "model.onnx", target=TARGETS["v100"])
