"""``budget.check`` called directly on a real trained model.pt and its ONNX file, against numbers computed here.

Fast enough for the mutation run of ``deploy_targets/budget.py`` (docs/testing.md): one 2-s training per process,
latency from a handful of runs, accuracy on the 225 embedded digits test images. The CLI around it is tested in
``tests/test_budget.py``; the SSH target in ``tests/test_remote.py``.
"""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from _deploy_helpers import export_onnx, train_digits_model
from _sshd import sshd  # noqa: F401 - fixture

from e2rnas.deploy_targets.budget import (
    FORMAT,
    Budget,
    RunFiles,
    check,
    choose_artifact,
    engine_profile_batch,
    find_run,
    pick_engine,
)
from e2rnas.deploy_targets.profiles import TARGETS
from e2rnas.errors import E2RNASError

CPU = TARGETS["cpu"]
SEARCH = {"params_bound_m": 0.05, "flops_bound_m": 2.0, "expected_params_m": 0.04, "expected_macs_m": 1.5,
          "exact_params_m": 0.045, "exact_macs_m": 1.6, "warnings": ["the search decided nothing (flat alphas)"],
          "deploy_shape": {"layers": 3, "C": 4, "num_classes": 5, "input_size": 16},
          "lut_key": {"target": "cpu", "batch": 1}, "latency_bound_ms": 3.0, "expected_latency_ms": 2.5,
          "table_latency_ms": 2.75}
FAST = dict(warmup=0, runs=3, threads=1)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("run")
    model = train_digits_model(root / "model.pt", search=SEARCH)
    from e2rnas.model_io import load_model

    net = load_model(model).model
    export_onnx(net, root / "export" / "model.onnx")
    export_onnx(net, root / "export" / "model.bs2.onnx", static_batch=2)
    return root


@pytest.fixture(scope="module")
def by_hand(run):
    """Params, MACs and clean accuracy of the model, computed here (the digits test set: 225 images)."""
    from e2rnas.data import load_dataset
    from e2rnas.model_io import load_model
    from e2rnas.space.cost import CostModel, DeployShape

    loaded = load_model(run / "model.pt")
    net = loaded.model.eval()
    params = sum(p.numel() for n, p in net.named_parameters() if "auxiliary" not in n)
    exact = CostModel(DeployShape(layers=3, C=4, num_classes=5, input_size=16)).genotype_cost(loaded.genotype)
    test = load_dataset("digits", split="test")
    with torch.no_grad():
        acc = float((net(test.x.float() / 255).argmax(1) == test.y).double().mean())
    return {"params_m": params / 1e6, "exact": exact, "accuracy": acc}


def _lines(result):
    return {ln["key"]: ln for ln in result["lines"]}


def test_params_and_macs_lines_are_the_models_own_numbers_beside_the_search(run, by_hand):
    result = check(run, budget=Budget(max_params_m=1.0, max_macs_m=by_hand["exact"].macs_m), target=CPU, **FAST)
    lines = _lines(result)
    p, m = lines["max_params_m"], lines["max_macs_m"]
    assert p["measured"] == pytest.approx(by_hand["params_m"], rel=1e-12)
    assert p["measured"] == pytest.approx(by_hand["exact"].params_m, rel=1e-12)  # the cost model agrees
    assert m["measured"] == pytest.approx(by_hand["exact"].macs_m, rel=1e-12)
    assert m["passed"] and m["margin"] == pytest.approx(0.0, abs=1e-9)  # exactly at its limit passes
    assert (p["what"], p["source"], m["what"], m["source"]) == (
        "params (M)", "counted on model.pt", "MACs (M)", "FlopCounterMode on model.pt")
    assert (p["bound"], p["estimate"], p["exact"]) == (0.05, 0.04, 0.045)
    assert (m["bound"], m["estimate"], m["exact"]) == (2.0, 1.5, 1.6)
    assert p["op"] == "<=" and p["margin"] == pytest.approx(1.0 - by_hand["params_m"], rel=1e-12)
    assert p["margin_pct"] == pytest.approx(100 * (1.0 - by_hand["params_m"]), rel=1e-12)
    assert result["passed"] is True and result["format"] == FORMAT
    assert result["artifact"] is None and result["latency"] is None and result["eval_source"] is None
    assert result["run"] == str(run) and result["model"] == str(run / "model.pt")
    assert result["search"]["params_bound_m"] == 0.05 and result["search_from"] == f"{run / 'model.pt'} (meta)"
    assert result["budget"]["max_params_m"] == 1.0 and result["target"]["name"] == "cpu"
    assert "search: the search decided nothing (flat alphas)" in result["notes"]
    assert not any("another deploy shape" in n for n in result["notes"])
    # one MAC over the limit fails
    over = check(run, budget=Budget(max_macs_m=by_hand["exact"].macs_m - 1e-6), target=CPU, **FAST)
    assert over["passed"] is False and not _lines(over)["max_macs_m"]["passed"]


def test_latency_line_measures_the_onnx_file_at_the_percentile(run):
    result = check(run, budget=Budget(max_latency_ms=1e4, latency_percentile=90), target=CPU, **FAST)
    line = _lines(result)["max_latency_ms"]
    assert result["artifact"] == str(run / "export" / "model.onnx")  # the dynamic-batch file, not .bs2
    assert line["measured"] == result["latency"]["p90_ms"] > 0 and line["passed"]
    assert line["what"] == "latency p90 ms, batch 1" and line["source"] == "onnx on cpu"
    assert result["latency"]["batch"] == 1 and result["latency"]["runs"] >= 3
    # T, the softmax estimate and the prediction are p50s: on a row of their own against the measured p50
    assert (line["bound"], line["estimate"], line["exact"]) == (None, None, None)
    t_row = _lines(result)["search_latency_bound_ms"]
    assert (t_row["bound"], t_row["estimate"], t_row["exact"]) == (3.0, 2.5, 2.75) and t_row["limit"] == 3.0
    assert t_row["measured"] == result["latency"]["p50_ms"] and t_row["decides"] is False
    p50 = check(run, budget=Budget(max_latency_ms=1e4), target=CPU, **FAST)
    assert "search_latency_bound_ms" not in _lines(p50)
    assert (_lines(p50)["max_latency_ms"]["bound"], _lines(p50)["max_latency_ms"]["exact"]) == (3.0, 2.75)
    tiny = check(run, budget=Budget(max_latency_ms=1e-9), target=CPU, **FAST)
    assert tiny["passed"] is False


def test_latency_from_another_target_or_batch_is_not_shown(run):
    result = check(run, budget=Budget(max_latency_ms=1e4, latency_batch=2, artifact="torch"), target=CPU, **FAST)
    line = _lines(result)["max_latency_ms"]
    assert result["artifact"] == str(run / "model.pt") and line["source"] == "torch on cpu"
    assert line["what"] == "latency p50 ms, batch 2" and line["measured"] == result["latency"]["p50_ms"]
    assert result["latency"]["batch"] == 2
    assert (line["bound"], line["estimate"], line["exact"]) == (None, None, None)
    assert ("the search's latency table was measured on cpu at batch 1; this check measures cpu at batch 2, so the "
            "table's prediction is not shown") in result["notes"]


def test_a_static_batch_file_refuses_another_batch(run, tmp_path):
    root = tmp_path / "r"
    (root / "export").mkdir(parents=True)
    shutil.copy(run / "model.pt", root / "model.pt")
    shutil.copy(run / "export" / "model.bs2.onnx", root / "export" / "model.bs2.onnx")
    with pytest.raises(E2RNASError) as err:
        check(root, budget=Budget(max_latency_ms=10, latency_batch=3), target=CPU, **FAST)
    assert str(err.value) == ("model.bs2.onnx cannot run latency_batch 3 (fixed batch 2); set latency_batch or "
                              "artifact")


def test_accuracy_and_pgd_lines_are_measured_on_the_artifact(run, by_hand):
    result = check(run, budget=Budget(min_accuracy=0.5, min_pgd_accuracy=0.0), target=CPU, **FAST)
    lines = _lines(result)
    acc, pgd = lines["min_accuracy"], lines["min_pgd_accuracy"]
    assert acc["measured"] == pytest.approx(by_hand["accuracy"], abs=1e-9) and acc["measured"] > 0.5
    assert 0 <= pgd["measured"] < acc["measured"]  # PGD-10 at 2/255 hurts this small model
    assert acc["op"] == ">=" and acc["margin"] == pytest.approx(acc["measured"] - 0.5)
    assert acc["what"] == "accuracy" and pgd["what"] == "PGD accuracy"
    assert acc["source"] == pgd["source"] == result["eval_source"] == "evaluate() on model.onnx (cpu)"
    assert result["data"]["test_images"] == 225 and result["latency"] is None
    assert list(lines) == ["min_accuracy", "min_pgd_accuracy"]
    # the torch artifact gives the same accuracy (the same weights, another runtime)
    again = check(run, budget=Budget(min_accuracy=0.5, artifact="torch"), target=CPU, **FAST)
    assert _lines(again)["min_accuracy"]["measured"] == pytest.approx(acc["measured"], abs=1e-9)
    assert again["eval_source"] == "evaluate() on model.pt (cpu)"
    capped = check(run, budget=Budget(min_accuracy=0.0), target=CPU, max_samples=40, **FAST)
    assert capped["data"]["test_images"] == 40


def test_reuse_eval_reads_the_file_and_otherwise_measures(run, tmp_path):
    root = tmp_path / "r"
    root.mkdir()
    shutil.copy(run / "model.pt", root / "model.pt")
    (root / "eval.json").write_text(json.dumps({"clean_acc": 0.42, "pgd_acc": 0.1, "ood": {"aupr_out": 0.77}}))
    budget = Budget(min_accuracy=0.42, min_pgd_accuracy=0.2, min_aupr=0.7)
    result = check(root, budget=budget, target=CPU, reuse_eval=True, **FAST)
    lines = _lines(result)
    assert [lines[k]["measured"] for k in ("min_accuracy", "min_pgd_accuracy", "min_aupr")] == [0.42, 0.1, 0.77]
    assert [lines[k]["passed"] for k in ("min_accuracy", "min_pgd_accuracy", "min_aupr")] == [True, False, True]
    assert result["eval_source"] == f"{root / 'eval.json'} (reused)" and lines["min_aupr"]["what"] == "OoD AUPR"
    assert result["artifact"] == str(root / "model.pt")  # no ONNX file: torch
    measured = check(root, budget=Budget(min_accuracy=0.0), target=CPU, reuse_eval=False, **FAST)
    assert _lines(measured)["min_accuracy"]["measured"] != 0.42
    assert measured["eval_source"] == "evaluate() on model.pt (cpu)"


def test_the_search_costed_another_deploy_shape(run, tmp_path):
    from e2rnas.model_io import load_model, save_model

    loaded = load_model(run / "model.pt")
    other = {**SEARCH, "deploy_shape": {"layers": 8, "C": 4, "num_classes": 5, "input_size": None}, "warnings": []}
    save_model(tmp_path / "model.pt", model=loaded.model, genotype=loaded.genotype, spec=loaded.spec,
               data={"dataset": "digits", "num_classes": 5}, search=other)
    result = check(tmp_path / "model.pt", budget=Budget(max_params_m=1), target=CPU, **FAST)
    assert result["notes"] == ["the search costed another deploy shape than this model: {'layers': (8, 3)} "
                               "(search, model)"]


def _run_files(tmp_path, artifacts: dict, candidates: dict | None = None) -> RunFiles:
    return RunFiles(root=tmp_path, model=tmp_path / "model.pt", eval_json=None, search={}, search_from=None,
                    artifacts={"torch": tmp_path / "model.pt", **artifacts}, candidates=candidates or {})


def test_choose_artifact(tmp_path):
    onnx, bs8 = tmp_path / "model.onnx", tmp_path / "model.bs8.onnx"
    jetson = TARGETS["jetson-orin-nano"]
    run = _run_files(tmp_path, {"onnx": onnx}, {"onnx": [onnx, bs8]})
    assert choose_artifact(run, Budget(max_params_m=1), remote=False) == onnx
    assert choose_artifact(run, Budget(max_params_m=1), remote=True) == onnx
    assert choose_artifact(run, Budget(max_params_m=1, artifact="torch"), remote=False) == tmp_path / "model.pt"
    assert choose_artifact(run, Budget(max_params_m=1, artifact="onnx"), remote=False) == onnx
    bare = _run_files(tmp_path, {})
    assert choose_artifact(bare, Budget(max_params_m=1), remote=False) == tmp_path / "model.pt"
    with pytest.raises(E2RNASError) as err:
        choose_artifact(bare, Budget(max_params_m=1), remote=jetson.remote)
    assert str(err.value) == (f"a remote target needs an ONNX or engine file and {tmp_path} has none: run e2rnas "
                              "export --onnx first")
    with pytest.raises(E2RNASError) as err:
        choose_artifact(run, Budget(max_params_m=1, artifact="onnx-int8"), remote=False)
    assert str(err.value) == (f"the budget asks for artifact 'onnx-int8' but {tmp_path} has torch, onnx; export it "
                              "first or change 'artifact'")
    # a remote device checks its own engine: the first one is handed over without a local GPU check
    engines = [tmp_path / "a.engine", tmp_path / "b.engine"]
    trt = _run_files(tmp_path, {"tensorrt-fp16": engines[0]}, {"tensorrt-fp16": engines})
    assert choose_artifact(trt, Budget(max_params_m=1, artifact="tensorrt-fp16"), remote=True) == engines[0]


def _engine(tmp_path, name: str, sidecar):
    path = tmp_path / name
    path.write_bytes(b"plan")
    if sidecar is not None:
        path.with_suffix(".json").write_text(sidecar if isinstance(sidecar, str) else json.dumps(sidecar))
    return path


def test_engine_profile_batch_and_pick_engine(tmp_path):
    b4 = _engine(tmp_path, "b4.engine", {"profile": {"min": 1, "opt": 4, "max": 8}})
    static = _engine(tmp_path, "s2.engine", {"static_batch": 2})
    bare = _engine(tmp_path, "bare.engine", None)
    broken = _engine(tmp_path, "broken.engine", "{not json")
    empty = _engine(tmp_path, "empty.engine", {"profile": {}})
    assert [engine_profile_batch(p) for p in (b4, static, bare, broken, empty)] == [4, 2, None, None, None]
    ok = lambda p: None  # noqa: E731
    assert pick_engine([bare, static, b4], problem_of=ok, batch=4) == (b4, None)
    assert pick_engine([bare, static, b4], problem_of=ok, batch=2) == (static, None)
    path, note = pick_engine([static, b4], problem_of=ok, batch=1)
    assert path == static and note == ("s2.engine is optimised for batch 2, not latency_batch 1: re-export with --trt "
                                       "--batch 1 for a profile whose opt shape is the measured batch")
    path, note = pick_engine([bare], problem_of=ok, batch=1)
    assert note.startswith("bare.engine is optimised for batch unknown, not latency_batch 1")
    only_b4 = lambda p: None if p == b4 else f"{p.name} was built elsewhere"  # noqa: E731
    assert pick_engine([static, b4], problem_of=only_b4, batch=2)[0] == b4
    with pytest.raises(E2RNASError) as err:
        pick_engine([static, bare], problem_of=only_b4, batch=1)
    assert str(err.value) == "none of the 2 engine(s) was built for this device: s2.engine was built elsewhere"


def test_find_run_layouts_and_records(run, tmp_path):
    files = find_run(run / "model.pt")
    assert files.root == run and files.model == run / "model.pt" and files.eval_json is None
    assert files.artifacts == {"torch": run / "model.pt", "onnx": run / "export" / "model.onnx"}
    assert files.candidates == {"onnx": [run / "export" / "model.onnx", run / "export" / "model.bs2.onnx"]}
    assert files.search == SEARCH and find_run(run).model == run / "model.pt"
    # a pipeline run: RUN/train/model.pt without a search record, RUN/search/summary.json, RUN/eval/eval.json
    from e2rnas.model_io import load_model, save_model

    loaded = load_model(run / "model.pt")
    pipe = tmp_path / "pipe"
    for d in ("train", "search", "eval", "export"):
        (pipe / d).mkdir(parents=True)
    save_model(pipe / "train" / "model.pt", model=loaded.model, genotype=loaded.genotype, spec=loaded.spec)
    (pipe / "search" / "summary.json").write_text(json.dumps({"summary": {"exact_params_m": 0.1}}))
    (pipe / "eval" / "eval.json").write_text("{}")
    files = find_run(pipe)
    assert files.root == pipe and files.model == pipe / "train" / "model.pt"
    assert files.search == {"exact_params_m": 0.1} and files.search_from == str(pipe / "search" / "summary.json")
    assert files.eval_json == pipe / "eval" / "eval.json" and files.artifacts == {"torch": files.model}
    assert find_run(pipe / "train").root == pipe / "train"
    (pipe / "train" / "eval.json").write_text("{}")  # the train run's own eval comes first
    assert find_run(pipe).eval_json == pipe / "train" / "eval.json"
    (pipe / "search" / "summary.json").write_text("{cut")
    with pytest.raises(E2RNASError, match=r"summary.json is not valid JSON"):
        find_run(pipe)
    (pipe / "search" / "summary.json").write_text(json.dumps({"other": 1}))
    files = find_run(pipe)
    assert files.search == {} and files.search_from is None
    with pytest.raises(E2RNASError) as err:
        find_run(tmp_path / "nothing")
    assert str(err.value) == (f"no model found at {tmp_path / 'nothing'}: give a model.pt, a train run directory or "
                              "a pipeline run directory holding train/model.pt")


def _npz(path, *, size: int, n: int = 200, classes: int = 5, seed: int = 0):
    """A real .npz image set (uint8 NHWC ``x``, int ``y``) of random images at ``size`` px."""
    import numpy as np

    rng = np.random.default_rng(seed)
    np.savez(path, x=rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8), y=np.arange(n) % classes)
    return path


def test_data_options_reach_the_evaluation(run, tmp_path):
    """dataset / ood_dataset / seed / max_samples go to the evaluation; a 32 px set is resized to the model's 16."""
    test = _npz(tmp_path / "test.npz", size=32)
    ood = _npz(tmp_path / "ood.npz", size=32, seed=1)
    result = check(run, budget=Budget(min_accuracy=0.0, min_aupr=0.0), target=CPU, dataset=f"npz:{test}",
                   ood_dataset=f"npz:{ood}", max_samples=30, seed=3, **FAST)
    info = result["data"]
    assert info["dataset"] == f"npz:{test}" and info["ood_dataset"] == f"npz:{ood}"
    assert info["test_images"] == 30 and info["protocol"]["seed"] == 3 and info["protocol"]["max_samples"] == 30
    lines = _lines(result)
    assert 0 <= lines["min_accuracy"]["measured"] <= 1 and 0 <= lines["min_aupr"]["measured"] <= 1
    default = check(run, budget=Budget(min_accuracy=0.0), target=CPU, max_samples=30, **FAST)
    assert default["data"]["protocol"]["seed"] == 0 and default["data"]["dataset"] == "digits"


def test_pgd_alone_is_measured_with_its_clean_accuracy_and_aupr_on_the_embedded_ood_set(run, by_hand):
    result = check(run, budget=Budget(min_pgd_accuracy=0.0, min_aupr=0.0), target=CPU, **FAST)
    lines = _lines(result)
    assert list(lines) == ["min_pgd_accuracy", "min_aupr"]
    assert 0 <= lines["min_pgd_accuracy"]["measured"] < by_hand["accuracy"]
    assert 0.0 < lines["min_aupr"]["measured"] <= 1.0 and result["data"]["ood_images"] > 0


def test_reuse_eval_is_off_by_default(run, tmp_path):
    root = tmp_path / "r"
    root.mkdir()
    shutil.copy(run / "model.pt", root / "model.pt")
    (root / "eval.json").write_text(json.dumps({"clean_acc": 0.01}))
    result = check(root, budget=Budget(min_accuracy=0.5), target=CPU, **FAST)
    assert result["eval_source"] == "evaluate() on model.pt (cpu)" and _lines(result)["min_accuracy"]["passed"]


def test_every_deploy_shape_difference_is_named(run, tmp_path):
    from e2rnas.model_io import load_model, save_model

    loaded = load_model(run / "model.pt")
    other = {**SEARCH, "deploy_shape": {"layers": 8, "C": 16, "num_classes": 10, "input_size": 32}, "warnings": []}
    save_model(tmp_path / "model.pt", model=loaded.model, genotype=loaded.genotype, spec=loaded.spec,
               data={"dataset": "digits", "num_classes": 5}, search=other)
    (note,) = check(tmp_path / "model.pt", budget=Budget(max_params_m=1), target=CPU, **FAST)["notes"]
    assert note == ("the search costed another deploy shape than this model: {'layers': (8, 3), 'C': (16, 4), "
                    "'num_classes': (10, 5), 'input_size': (32, 16)} (search, model)")


def test_a_local_engine_is_checked_against_this_machine(tmp_path):
    """A TensorRT engine chosen for a local check must have been built for this GPU: here there is none."""
    engine = _engine(tmp_path, "model.trt10.8.0.43.sm90.h200.fp16.engine",
                     {"identity": {"name": "NVIDIA H200", "sm": "9.0", "tensorrt": "10.8.0.43"},
                      "profile": {"min": 1, "opt": 1, "max": 8}})
    run = _run_files(tmp_path, {"tensorrt-fp16": engine}, {"tensorrt-fp16": [engine]})
    from e2rnas.deploy_targets.gpu_identity import current_identity, engine_identity_problem

    expected = engine_identity_problem(engine, current_identity())
    if expected is None:
        pytest.skip("this machine is the H200 the engine names")
    with pytest.raises(E2RNASError) as err:
        choose_artifact(run, Budget(max_latency_ms=1, artifact="tensorrt-fp16"), remote=False)
    assert str(err.value) == f"none of the 1 engine(s) was built for this device: {expected}"


def test_int8_rows_time_the_fp32_file_beside_the_int8_one(run, tmp_path):
    """An onnx-int8 artifact: its row, and the fp32 ONNX file timed at the same batch (for the slower-than-fp32
    note); nothing for other artifacts or without a latency."""
    import numpy as np

    from e2rnas.deploy_targets.budget import _int8_rows
    from e2rnas.export.onnx_export import quantize_int8

    root = tmp_path / "r"
    (root / "export").mkdir(parents=True)
    shutil.copy(run / "model.pt", root / "model.pt")
    shutil.copy(run / "export" / "model.onnx", root / "export" / "model.onnx")
    calib = np.random.default_rng(0).random((16, 3, 16, 16), dtype=np.float32)
    int8_path = root / "export" / "model.int8.onnx"
    info = quantize_int8(root / "export" / "model.onnx", int8_path, calibration=calib)
    import onnx

    from e2rnas.export.onnx_export import set_metadata

    model = onnx.load(str(int8_path))  # as the export pipeline records it
    set_metadata(model, {"precision": "int8", "int8_scheme": info["scheme"]})
    onnx.save(model, str(int8_path))
    files = find_run(root)
    int8 = files.artifacts["onnx-int8"]
    latency = {"batch": 2, "p50_ms": 1.0}
    rows = _int8_rows(int8, files, target=CPU, latency=latency, batch=2, threads=1, warmup=0, runs=3, duration=None)
    assert [r["format"] for r in rows] == ["onnx-int8", "onnx"] and rows[0]["status"] == "ok"
    assert rows[0]["artifact"] == str(int8) and rows[0]["latency"] == {"2": latency}
    assert rows[0]["int8_scheme"] == info["scheme"]
    assert rows[1]["artifact"] == str(root / "export" / "model.onnx") and rows[1]["latency"]["2"]["batch"] == 2
    assert rows[1]["latency"]["2"]["runs"] == 3 and rows[1]["status"] == "ok"
    no_latency = _int8_rows(int8, files, target=CPU, latency=None, batch=2, threads=1, warmup=0, runs=3,
                            duration=None)
    assert no_latency == [{**rows[0], "latency": {}}]
    assert _int8_rows(files.artifacts["onnx"], files, target=CPU, latency=latency, batch=2, threads=1, warmup=0,
                      runs=3, duration=None) == []
    assert _int8_rows(None, files, target=CPU, latency=latency, batch=2, threads=1, warmup=0, runs=3,
                      duration=None) == []
    result = check(root, budget=Budget(max_latency_ms=1e4, artifact="onnx-int8"), target=CPU, **FAST)
    assert result["artifact"] == str(int8) and _lines(result)["max_latency_ms"]["source"] == "onnx-int8 on cpu"
    for note in (n for n in result["notes"] if "int8" in n):
        assert "model.int8.onnx" in note  # a slower-than-fp32 or saturation note names the file


@pytest.mark.ssh
def test_a_remote_target_times_the_onnx_file_on_the_device_and_evaluates_here(run, sshd):  # noqa: F811
    """Over a real OpenSSH server on loopback: latency from the device at the budget's batch and percentile,
    accuracy from model.pt on this machine (the device cannot hold the data); a device failure is the error."""
    from e2rnas.deploy_targets.profiles import Target
    from e2rnas.deploy_targets.remote import SshConfig

    loopback = Target("loopback", "this machine over SSH", remote=True, backends=("onnxruntime",))
    ssh = SshConfig(sshd.host, port=sshd.port, identity=sshd.identity, known_hosts=sshd.known_hosts,
                    remote_python=sshd.remote_python, connect_timeout=5)
    budget = Budget(max_latency_ms=1e4, latency_batch=2, latency_percentile=95, min_accuracy=0.5)
    result = check(run, budget=budget, target=loopback, ssh=ssh, warmup=1, runs=4, threads=1)
    lines = _lines(result)
    assert result["artifact"] == str(run / "export" / "model.onnx")
    assert result["latency"]["batch"] == 2 and result["latency"]["runs"] == 4
    assert lines["max_latency_ms"]["measured"] == result["latency"]["p95_ms"] > 0
    assert lines["max_latency_ms"]["source"] == "onnx on loopback"
    assert result["eval_source"] == "evaluate() on model.pt here (remote target)"
    assert lines["min_accuracy"]["measured"] > 0.5 and result["passed"]
    # the search's table was measured on cpu: not this target
    assert any("this check measures loopback at batch 2" in n for n in result["notes"])
    wrong = SshConfig(sshd.host, port=sshd.port, identity=sshd.wrong_identity, known_hosts=sshd.known_hosts,
                      remote_python=sshd.remote_python, connect_timeout=5)
    refused = r"^ssh to .* failed .*Permission denied \(publickey\); the key was refused"
    with pytest.raises(E2RNASError, match=refused) as err:
        check(run, budget=Budget(max_latency_ms=1e4), target=loopback, ssh=wrong, warmup=1, runs=2, threads=1)
    assert "\n" not in str(err.value)


def test_find_run_follows_the_genotype_source_first_and_stays_inside_the_run(run, tmp_path):
    """The search record: model.pt's meta, else its genotype_source's summary.json, else the pipeline's; a plain
    run never reads its parent folder; TensorRT engines and plans are artifacts too."""
    from e2rnas.model_io import load_model, save_model

    loaded = load_model(run / "model.pt")
    pipe = tmp_path / "pipe"
    for d in ("train", "search", "export", "elsewhere"):
        (pipe / d).mkdir(parents=True)
    (pipe / "elsewhere" / "summary.json").write_text(json.dumps({"params_bound_m": 0.7}))
    (pipe / "search" / "summary.json").write_text(json.dumps({"exact_params_m": 0.1}))
    save_model(pipe / "train" / "model.pt", model=loaded.model, genotype=loaded.genotype, spec=loaded.spec,
               search={"genotype_source": str(pipe / "elsewhere")})
    files = find_run(pipe)
    assert files.search == {"params_bound_m": 0.7} and files.search_from == str(pipe / "elsewhere" / "summary.json")
    (pipe / "elsewhere" / "summary.json").unlink()  # then the pipeline's own search
    assert find_run(pipe).search == {"exact_params_m": 0.1}
    for name in ("model.fp16.engine", "model.int8.plan", "notes.txt"):
        (pipe / "export" / name).write_bytes(b"x")
    assert set(find_run(pipe).artifacts) == {"torch", "tensorrt-fp16", "tensorrt-int8"}
    # a plain train run next to other runs: the parent's search/, eval/ and export/ are not its own
    plain = tmp_path / "runs" / "r"
    plain.mkdir(parents=True)
    for d in ("search", "eval", "export"):
        (plain.parent / d).mkdir()
    (plain.parent / "search" / "summary.json").write_text(json.dumps({"params_bound_m": 9.0}))
    (plain.parent / "eval" / "eval.json").write_text("{}")
    (plain.parent / "export" / "model.onnx").write_bytes(b"x")
    save_model(plain / "model.pt", model=loaded.model, genotype=loaded.genotype, spec=loaded.spec)
    files = find_run(plain)
    assert files.search == {} and files.eval_json is None and set(files.artifacts) == {"torch"}


def test_search_records_flat_or_nested():
    from e2rnas.deploy_targets.budget import _search_record

    assert _search_record({"params_bound_m": 1.0}) == {"params_bound_m": 1.0}
    assert _search_record({"exact_params_m": 2.0, "x": 1}) == {"exact_params_m": 2.0, "x": 1}
    assert _search_record({"summary": {"params_bound_m": 1.0, "y": 2}}) == {"params_bound_m": 1.0, "y": 2}
    assert _search_record({"summary": {"exact_params_m": 3.0}}) == {"exact_params_m": 3.0}
    assert _search_record({"summary": {"other": 1}}) == {} and _search_record({"summary": [1]}) == {}


def test_a_table_without_a_batch_is_taken_at_the_checked_batch():
    from e2rnas.deploy_targets.budget import _table_latency

    search = {"lut_key": {"target": "cpu"}, "latency_bound_ms": 3.0, "expected_latency_ms": 2.0,
              "table_latency_ms": 2.5}
    notes: list[str] = []
    assert _table_latency(search, target="cpu", batch=4, notes=notes) == (3.0, 2.0, 2.5) and notes == []
    assert _table_latency({}, target="cpu", batch=1, notes=notes) == (None, None, None) and notes == []


def test_the_runners_engine_identity_notes_reach_the_check(run, monkeypatch):
    """A TensorRT runner says whether the engine's build GPU and TensorRT version were compared; check repeats it.
    (TensorRT cannot run here: the ONNX runner stands in, with the notes a TensorRTRunner.info() carries.)"""
    from e2rnas.deploy_targets.runners import OrtRunner

    said = "TensorRT version not compared: this install has no version metadata (built with 10.8.0.43)"
    info = OrtRunner.info
    monkeypatch.setattr(OrtRunner, "info", lambda self: {**info(self), "identity_notes": [said]})
    result = check(run, budget=Budget(max_latency_ms=1e4), target=CPU, **FAST)
    assert f"engine: {said}" in result["notes"]
    monkeypatch.setattr(OrtRunner, "info", info)
    assert not any(n.startswith("engine:") for n in check(run, budget=Budget(max_latency_ms=1e4), target=CPU,
                                                          **FAST)["notes"])
