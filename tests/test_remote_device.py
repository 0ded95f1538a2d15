"""The device runner's parsers and its trtexec path, driven by output quoted from NVIDIA's sources, issues and
Jetson users (each fixture names its source), and by a stand-in trtexec that replays such output.

What needs the real tools (TensorRT's Python API, a CUDA GPU, a Jetson) is at the end, marked ``trt`` and skipped
with its reason where they are missing.
"""

from __future__ import annotations

import json
import stat
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from e2rnas.deploy_targets import remote_runner as R

# tegrastats on a Jetson AGX Orin 64GB (JetPack 6), as printed in a public project README found through the code
# index (file id 8329726155: "sudo tegrastats --interval 100 | grep -i dla", 11-21-2025). AGX Orin has no VDD_IN.
AGX_ORIN = ("11-21-2025 08:49:48 RAM 13983/62780MB (lfb 424x4MB) SWAP 126/31390MB (cached 0MB) CPU [90%@2201,100%@2201,"
            "100%@2201,100%@2201,100%@2201,100%@2201,100%@2201,100%@2201,100%@2201,100%@2201,100%@2201,100%@2201] "
            "EMC_FREQ 1%@2133 GR3D_FREQ 14%@[407,407] VIC_FREQ 115 NVDLA0_FREQ @1600 APE 174 CV0@73.625C CPU@77.281C "
            "Tboard@62C SOC2@70C Tdiode@62.25C SOC0@69.531C CV1@72.5C GPU@69.125C tj@77.281C SOC1@68.968C CV2@67.25C "
            "VDD_GPU_SOC 3150mW/2971mW VDD_CPU_CV 14312mW/12415mW VIN_SYS_5V0 4968mW/5048mW VDDQ_VDD2_1V8AO "
            "1091mW/1091mW")
# tegrastats before JetPack 5 (no "mW" suffix), quoted in henrygd/beszel pull request #1631 ("Jetson tegrastats
# regex pre jetpack5", 2026-01-12)
PRE_JP5 = ("RAM 3276/7859MB (lfb 5x4MB) SWAP 1626/12122MB (cached 181MB) CPU [44%@1421,49%@2031,67%@2034,17%@1420,"
           "25%@1419,8%@1420] EMC_FREQ 1%@1866 GR3D_FREQ 0%@114 APE 150 MTS fg 1% bg 1% PLL@42.5C MCPU@42.5C PMIC@50C "
           "Tboard@38C GPU@39.5C BCPU@42.5C thermal@41.3C Tdiode@39.25C VDD_SYS_GPU 182/182 VDD_SYS_SOC 730/730 "
           "VDD_4V0_WIFI 0/0 VDD_IN 5297/5297 VDD_SYS_CPU 1917/1917 VDD_SYS_DDR 1241/1241")
# the same older format, quoted in FindHao/tx-utils issue #3 (2019-09-05)
PRE_JP5_B = ("RAM 2020/7852MB (lfb 1164x4MB) CPU [9%@345,21%@345,25%@345,3%@345,1%@345,1%@345] EMC_FREQ 0% GR3D_FREQ "
             "0% PLL@42.5C MCPU@42.5C PMIC@100C Tboard@40C GPU@41C BCPU@42.5C thermal@41.9C Tdiode@41.25C VDD_SYS_GPU "
             "153/158 VDD_SYS_SOC 536/547 VDD_4V0_WIFI 633/527 VDD_IN 3140/3208 VDD_SYS_CPU 536/590 VDD_SYS_DDR "
             "557/601")


def test_agx_orin_power_is_the_sum_of_its_module_rails_and_says_which():
    power = R.parse_tegrastats([AGX_ORIN, AGX_ORIN])
    assert power["rail"] == "VDD_GPU_SOC+VDD_CPU_CV+VIN_SYS_5V0" and power["samples"] == 2
    assert power["mean_mw"] == 3150 + 14312 + 4968
    assert power["rails_mean_mw"]["VDDQ_VDD2_1V8AO"] == 1091 and "EMC_FREQ" not in power["rails_mean_mw"]


def test_a_module_with_a_total_rail_reports_it_with_or_without_mw():
    power = R.parse_tegrastats([PRE_JP5, PRE_JP5_B])
    assert power["rail"] == "VDD_IN" and power["mean_mw"] == (5297 + 3140) / 2 and power["samples"] == 2
    assert power["rails_mean_mw"]["VDD_SYS_GPU"] == (182 + 153) / 2
    assert R.parse_tegrastats(["RAM 3276/7859MB (lfb 5x4MB) GR3D_FREQ 0%@114"]) is None  # no rail at all


def test_power_sampler_result_records_the_rail_and_last_line():
    sampler = R.PowerSampler()
    sampler.lines = [AGX_ORIN]
    result = sampler.result()
    assert result["rail"].startswith("VDD_GPU_SOC") and result["last_line"].startswith("11-21-2025")


# /etc/nv_tegra_release and the device-tree model of a Jetson Orin Nano on JetPack 6 (L4T 36.4.7), quoted from an
# environment report in a public repository (code index file id 71614156084)
NV_TEGRA_RELEASE = ("# R36 (release), REVISION: 4.7, GCID: 42132812, BOARD: generic, EABI: aarch64, DATE: Thu Sep 18 "
                    "22:54:44 UTC 2025\n# KERNEL_VARIANT: oot\nTARGET_USERSPACE_LIB_DIR=nvidia\n")
DT_MODEL = "NVIDIA Jetson Orin Nano Engineering Reference Developer Kit Super"


def test_release_facts_read_l4t_and_board_from_jetpack_files(tmp_path):
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc" / "nv_tegra_release").write_text(NV_TEGRA_RELEASE)
    (tmp_path / "proc" / "device-tree").mkdir(parents=True)
    (tmp_path / "proc" / "device-tree" / "model").write_bytes(DT_MODEL.encode() + b"\x00")  # NUL-terminated
    facts = R.release_facts(str(tmp_path))
    assert facts["l4t"] == "36.4.7" and facts["model"] == DT_MODEL and facts["cpu"] is None
    assert R.release_facts(str(tmp_path / "nowhere")) == {"model": None, "cpu": None}  # not a Jetson: nothing


# trtexec's first line on a Jetson Orin with JetPack 6.1 (TensorRT 10.3), quoted from NVIDIA/TensorRT issue #4494
BANNER_10_3 = ("&&&& RUNNING TensorRT.trtexec [TensorRT v100300] # /usr/src/tensorrt/bin/trtexec --int8 "
               "--onnx=model_quantized_int8_512x512_iter4.onnx --saveEngine=model_quantized_int8_512x512_iter4.engine")
# trtexec building a static-batch ONNX file with explicit shapes (TensorRT 8.x), quoted from shouxieai/infer issue #1
STATIC_SHAPES_ERROR = """\
[03/05/2023-13:17:08] [I] Finish parsing network model
[03/05/2023-13:17:08] [E] Static model does not take explicit shapes since the shape of inference tensors will be \
determined by the model itself
[03/05/2023-13:17:08] [E] Network And Config setup failed
[03/05/2023-13:17:08] [E] Building engine failed
[03/05/2023-13:17:08] [E] Failed to create engine from model or file.
[03/05/2023-13:17:08] [E] Engine set up failed
"""


def _stand_in_trtexec(path: Path, *, banner: str, build_output: str = "", build_rc: int = 0) -> Path:
    """A stand-in for trtexec on this CPU machine. It prints the quoted banner (trtexec prints it first on every
    run, ``--help`` included: ``reportTestStart`` in samples/trtexec/trtexec.cpp), records its argv, and writes
    the engine and the ``--exportTimes`` records (key names as in NVIDIA's samples/trtexec/tracer.py). The
    computeMs values are test inputs, not measurements."""
    log = path.with_suffix(".argv")
    script = f"""\
        #!{sys.executable}
        import json, sys
        args = sys.argv[1:]
        with open({str(log)!r}, "a") as fh:
            fh.write(json.dumps(args) + "\\n")
        print({banner!r})
        opts = dict(a[2:].split("=", 1) for a in args if a.startswith("--") and "=" in a)
        if "saveEngine" in opts:
            sys.stdout.write({build_output!r})
            if {build_rc}:
                sys.exit({build_rc})
            open(opts["saveEngine"], "wb").write(b"engine")
        if "exportTimes" in opts:
            records = [{{"startComputeMs": i, "endComputeMs": i + 1.0 + i / 10, "computeMs": 1.0 + i / 10,
                         "latencyMs": 1.5 + i / 10}} for i in range(int(opts.get("iterations", 10)))]
            json.dump(records, open(opts["exportTimes"], "w"))
        """
    path.write_text(textwrap.dedent(script))
    path.chmod(path.stat().st_mode | stat.S_IEXEC)
    return path


def _argvs(exe: Path) -> list[list[str]]:
    return [json.loads(line) for line in exe.with_suffix(".argv").read_text().splitlines()]


def test_trtexec_version_comes_from_the_binary_that_will_run(tmp_path):
    exe = _stand_in_trtexec(tmp_path / "trtexec", banner=BANNER_10_3)
    assert R.trtexec_version(str(exe)) == "10.3.0" and _argvs(exe) == [["--help"]]
    assert R.find_trtexec(str(exe)) == str(exe)  # --trtexec PATH: a tar install outside PATH
    assert R.find_trtexec(str(tmp_path / "missing")) is None
    plain = tmp_path / "not-executable"
    plain.write_text("")
    assert R.find_trtexec(str(plain)) is None


def _args(artifact: Path, **kw) -> SimpleNamespace:
    base = dict(artifact=str(artifact), precision="fp16", graph_precision="fp32", opset=17, dims=[-1, 3, 16, 16],
                shape=(3, 16, 16), input_name="images", profile_max=None, workspace_mb=256, runs=4, duration=None,
                warmup=1, cuda_graph=True)
    return SimpleNamespace(**{**base, **kw})


def test_run_trtexec_builds_then_times_each_batch_with_the_binarys_flags(tmp_path):
    exe = _stand_in_trtexec(tmp_path / "trtexec", banner=BANNER_10_3)
    onnx = tmp_path / "model.onnx"
    onnx.write_bytes(b"onnx")
    info, results, errors = R.run_trtexec(_args(onnx), [1, 4], str(exe), R.trtexec_version(str(exe)))
    assert errors == {} and info["tensorrt"] == "10.3.0" and info["built_precision"] == "fp16"
    calls = _argvs(exe)[1:]  # after --help: build, time, build, time
    assert [("--skipInference" in c, any(a.startswith("--loadEngine=") for a in c)) for c in calls] == \
        [(True, False), (False, True)] * 2
    assert "--fp16" in calls[0] and "--minShapes=images:4x3x16x16" in calls[2] and "--useCudaGraph" in calls[1]
    assert "--iterations=4" in calls[1] and "--noDataTransfers" in calls[1]
    assert [r["batch"] for r in results] == [1, 4] and results[0]["runs"] == 4
    assert results[0]["timer"] == "trtexec computeMs" and results[0]["mean_ms"] == pytest.approx(1.15)


def test_run_trtexec_reports_every_error_line_of_a_failed_build(tmp_path):
    exe = _stand_in_trtexec(tmp_path / "trtexec", banner=BANNER_10_3, build_output=STATIC_SHAPES_ERROR, build_rc=1)
    onnx = tmp_path / "model.onnx"
    onnx.write_bytes(b"onnx")
    _, results, errors = R.run_trtexec(_args(onnx), [2], str(exe), "10.3.0")
    assert results == [] and errors["2"].startswith("trtexec build failed: Static model does not take explicit")
    assert errors["2"].count(" | ") == 4 and "\n" not in errors["2"]


def test_main_with_trtexec_path_takes_the_version_from_that_binary(tmp_path, capsys):
    exe = _stand_in_trtexec(tmp_path / "trtexec", banner=BANNER_10_3)
    onnx = tmp_path / "model.onnx"
    onnx.write_bytes(b"onnx")
    code = R.main(["--artifact", str(onnx), "--trtexec", str(exe), "--batch", "1", "--runs", "3",
                   "--input-dims=-1x3x16x16", "--input-shape", "3x16x16", "--precision", "fp16", "--opset", "17"])
    data = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert code == 0 and data["ok"] and data["backend"] == "trtexec" and data["trtexec"] == str(exe)
    assert data["device"]["trtexec_tensorrt"] == "10.3.0" and data["results"][0]["runs"] == 3
    code = R.main(["--artifact", str(onnx), "--trtexec", str(tmp_path / "nope")])
    data = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert code == 1 and "--trtexec" in data["error"] and "not an executable" in data["error"]


def test_libcudart_is_also_looked_for_where_the_pip_wheels_put_it(tmp_path):
    site = tmp_path / "site-packages"
    for rel in ("nvidia/cuda_runtime/lib/libcudart.so.12", "nvidia/cu13/lib/libcudart.so.13"):
        (site / rel).parent.mkdir(parents=True, exist_ok=True)
        (site / rel).write_bytes(b"")
    names = R.cudart_candidates([str(site)], cuda_roots=str(tmp_path / "no-cuda*"))
    assert names[0] == "libcudart.so" and str(site / "nvidia/cuda_runtime/lib/libcudart.so.12") in names
    assert str(site / "nvidia/cu13/lib/libcudart.so.13") in names and len(names) == len(set(names))


# ------------------------------------------------------------------------------- the real tools (skipped here)
@pytest.mark.trt
def test_build_and_time_an_engine_with_the_tensorrt_api(tmp_path):
    trt = pytest.importorskip("tensorrt", reason="TensorRT's Python package is not installed (CPU-only machine)")
    try:
        cuda = R.Cuda()
    except R.RunnerError as exc:
        pytest.skip(f"no CUDA runtime: {exc}")
    from _deploy_helpers import export_onnx

    from e2rnas.model_io import NetworkSpec
    from e2rnas.space.genotypes import GENOTYPES

    model = NetworkSpec(C=4, layers=3, num_classes=5, input_size=16).build(GENOTYPES["DARTS_V2"]).eval()
    onnx = export_onnx(model, tmp_path / "model.onnx")
    args = _args(onnx, graph_precision="fp32", precision="fp32", cuda_graph=True)
    plan = R.precision_plan("fp32", "fp32", trt.__version__, "tensorrt", 17)
    runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
    engine = R._load_engine(trt, runtime, R._build_engine(trt, args, 2, plan))
    stream = cuda.handle("cudaStreamCreate")
    start, end = cuda.handle("cudaEventCreate"), cuda.handle("cudaEventCreate")
    row = R._time_engine(trt, cuda, engine, 2, args, stream, start, end)
    assert row["batch"] == 2 and row["runs"] == 4 and row["timer"] == "cuda_event" and row["p50_ms"] > 0
    with pytest.raises(R._Skip, match="fixed batch|profile"):
        R._time_engine(trt, cuda, engine, 3, args, stream, start, end)
    assert np.isfinite(row["mean_ms"])
