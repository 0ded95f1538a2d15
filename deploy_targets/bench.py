"""``bench``: every artifact (torch ``model.pt``, ONNX, TensorRT engine) measured on one target.

Per artifact: file size, accuracy / PGD accuracy / OoD AUPR re-measured *on the artifact* through
``e2rnas.evaluation.evaluate.evaluate`` (so int8 or fp16 drift shows; adversarial examples are made on the torch
source model and transferred when the artifact has no gradients), and latency statistics per batch size. The
environment the numbers came from is recorded with them.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from e2rnas.deploy_targets.cpu_features import cpu_features
from e2rnas.deploy_targets.profiles import Target
from e2rnas.errors import E2RNASError

FORMAT = "e2rnas.bench/1"
METRICS = ("latency", "accuracy", "robustness", "ood")
_EVAL_METRICS = {"accuracy": "accuracy", "robustness": "robustness", "ood": "ood"}
_OOD_FOR = {"digits": "digits-ood", "cifar10": "svhn", "cifar100": "svhn"}


# ------------------------------------------------------------------------------------------ artifact facts
def onnx_metadata(path: Path) -> dict[str, Any]:
    """``metadata_props`` (JSON values decoded) and the graph input, without loading external weights."""
    import onnx

    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # onnx raises DecodeError and friends for foreign files
        raise E2RNASError(f"{path} is not a readable ONNX file ({type(exc).__name__})") from exc
    meta: dict[str, Any] = {}
    for p in model.metadata_props:
        try:
            meta[p.key] = json.loads(p.value)
        except json.JSONDecodeError:
            meta[p.key] = p.value
    inp = model.graph.input[0]
    dims = [d.dim_value if d.HasField("dim_value") else None for d in inp.type.tensor_type.shape.dim]
    meta["_input_name"], meta["_input_dims"] = inp.name, dims
    return meta


def artifact_facts(path: Path) -> dict[str, Any]:
    """What an artifact says about itself: input name and C, H, W, data set, search bounds."""
    from e2rnas.deploy_targets.runners import artifact_backend

    backend = artifact_backend(path)
    facts: dict[str, Any] = {"input_name": "images", "input_shape": None, "data": {}, "search": {}}
    if backend == "torch":
        from e2rnas.model_io import read_model_file

        blob = read_model_file(path)
        size = int(blob["network"]["input_size"])
        facts.update(input_shape=(3, size, size), data=dict(blob.get("data") or {}),
                     search=dict(blob.get("search") or {}), num_classes=blob["network"]["num_classes"])
        return facts
    onnx_path = path
    if backend == "tensorrt":  # the export's sidecar names the ONNX file the engine was built from
        sidecar = path.with_suffix(".json")
        onnx_path = None
        if sidecar.is_file():
            try:
                ref = json.loads(sidecar.read_text()).get("onnx")
                onnx_path = Path(ref) if ref and Path(ref).is_file() else None
            except (json.JSONDecodeError, AttributeError):
                onnx_path = None
        if onnx_path is None:
            return facts
    meta = onnx_metadata(onnx_path)
    dims = meta["_input_dims"]
    facts["input_name"] = meta["_input_name"]
    if len(dims) == 4 and all(dims[1:]):
        facts["input_shape"] = tuple(dims[1:])
    elif meta.get("input_size"):
        facts["input_shape"] = (3, int(meta["input_size"]), int(meta["input_size"]))
    facts["data"] = {"dataset": meta.get("dataset")} if meta.get("dataset") else {}
    facts["search"] = meta.get("search") or {}
    facts["precision"] = meta.get("precision")
    if meta.get("int8_scheme"):
        facts["int8_scheme"] = meta["int8_scheme"]
    return facts


def _safe_facts(path: Path) -> dict[str, Any]:
    """An unreadable artifact becomes a failed row of the table, not the end of the whole bench."""
    try:
        return artifact_facts(path)
    except E2RNASError as exc:
        return {"error": str(exc).splitlines()[0], "data": {}}


def find_source_model(artifact: Path, explicit: Path | None = None) -> Path | None:
    """The torch model an artifact was exported from: ``--source-model``, else a model.pt next to or above it
    (a pipeline run keeps it in RUN/train/model.pt beside RUN/export)."""
    if explicit is not None:
        if not Path(explicit).is_file():
            raise E2RNASError(f"--source-model not found: {explicit}")
        return Path(explicit)
    if artifact.suffix == ".pt":
        return artifact
    d = artifact.resolve().parent
    for cand in (d / "model.pt", d.parent / "model.pt", d.parent / "train" / "model.pt"):
        if cand.is_file():
            return cand
    return None


def resolve_threads(target: Target, threads: int | None) -> int | None:
    from e2rnas.deploy_targets.env import physical_cores

    if threads is not None and threads < 1:
        raise E2RNASError("--threads must be >= 1")
    local_cpu = target.device == "cpu" and not target.remote  # a remote device counts its own cores
    return threads or target.threads or (physical_cores() if local_cpu else None)


# ----------------------------------------------------------------------------------------------- data/eval
@dataclasses.dataclass(frozen=True)
class EvalData:
    test: Any  # ImageSet or None
    ood: Any  # ImageSet or None
    protocol: Any  # e2rnas.evaluation.evaluate.EvalProtocol or None
    info: dict[str, Any]


def load_eval_data(*, metrics: Sequence[str], data_meta: dict[str, Any], image_size: int | None,
                   dataset: str | None = None, ood_dataset: str | None = None, data_dir: str | Path | None = None,
                   max_samples: int | None = None, seed: int = 0) -> EvalData:
    """Test and OoD images for the metrics asked for (none for latency alone); data sets default to what the
    model recorded (``model.pt`` meta, else the ONNX metadata), the protocol to the paper's (PGD-10, eps 2/255)."""
    wanted = [m for m in metrics if m in _EVAL_METRICS]
    if not wanted:
        return EvalData(None, None, None, {})
    from e2rnas.evaluation.evaluate import eval_data, protocol_from

    if "ood" in wanted and not (ood_dataset or data_meta.get("ood_dataset")):
        spec = (dataset or data_meta.get("dataset") or "").partition(":")[0]
        ood_dataset = _OOD_FOR.get(spec)
        if ood_dataset is None:
            raise E2RNASError(f"no OoD data set known for {spec or 'this model'}: pass --ood-dataset or drop ood "
                              "from --metrics")
    if "ood" not in wanted:
        ood_dataset = "none"
    data = eval_data(data_meta, dataset=dataset, ood_dataset=ood_dataset, data_dir=data_dir, image_size=image_size)
    protocol = protocol_from("paper", max_samples=max_samples, seed=seed)
    info = {**data.specs, "test_images": min(len(data.test), max_samples or len(data.test)),
            "ood_images": min(len(data.ood), max_samples or len(data.ood)) if data.ood is not None else 0,
            "protocol": protocol.as_dict()}
    return EvalData(data.test, data.ood, protocol, info)


def data_meta_of(facts: Sequence[dict[str, Any]], sources: Sequence[Path | None]) -> dict[str, Any]:
    """The richest data record among the artifacts and their torch source models (model.pt knows the OoD set)."""
    from e2rnas.model_io import read_model_file

    for src in dict.fromkeys(s for s in sources if s is not None):
        data = read_model_file(src).get("data") or {}
        if data.get("dataset"):
            return dict(data)
    return next((dict(f["data"]) for f in facts if f.get("data", {}).get("dataset")), {})


def _load_attack_model(source: Path | None) -> Any:
    if source is None:
        return None
    from e2rnas.model_io import load_model

    return load_model(source).model


def evaluate_artifact(predictor: Any, *, data: EvalData, metrics: Sequence[str], attack_model: Any) -> dict[str, Any]:
    """accuracy / PGD / AUPR of ``predictor`` via ``e2rnas.evaluation.evaluate`` (transfer attack from
    ``attack_model`` when the predictor is not a torch model), under the names bench and check report."""
    from e2rnas.evaluation.evaluate import evaluate

    wanted = tuple(_EVAL_METRICS[m] for m in metrics if m in _EVAL_METRICS)
    if not wanted:
        return {"notes": []}
    out = evaluate(predictor, test=data.test, ood=data.ood if "ood" in wanted else None, protocol=data.protocol,
                   attack_model=attack_model, metrics=wanted)
    ood = out.get("ood") or {}
    return {"accuracy": out.get("clean_acc"), "fgsm_accuracy": out.get("fgsm_acc"),
            "pgd_accuracy": out.get("pgd_acc"), "aupr_out": ood.get("aupr_out"), "aupr_in": ood.get("aupr_in"),
            "auroc": ood.get("auroc"), "fpr95": ood.get("fpr95"), "attack": out.get("attack"),
            "samples": out.get("samples"), "notes": list(out.get("notes") or [])}


# ------------------------------------------------------------------------------------------------ measuring
def measure_artifact(path: Path, *, target: Target, batch_sizes: Sequence[int], metrics: Sequence[str],
                     warmup: int, runs: int | None, duration: float | None, threads: int | None,
                     data: EvalData, source_model: Path | None, ssh: Any = None,
                     facts: dict[str, Any] | None = None) -> dict[str, Any]:
    """One row of the bench table. Failures of this artifact become its status, not an exception."""
    from e2rnas.deploy_targets.runners import artifact_backend, artifact_format, open_runner

    facts = facts or artifact_facts(path)
    row: dict[str, Any] = {"artifact": str(path), "format": artifact_format(path), "backend": artifact_backend(path),
                           "size_mb": path.stat().st_size / 1e6, "status": "ok", "error": None, "metrics": {},
                           "latency": {}, "runner": None, "source_model": str(source_model) if source_model else None}
    t0 = time.perf_counter()
    try:
        if facts.get("error"):
            raise E2RNASError(facts["error"])
        if target.remote:
            row.update(_measure_remote(path, target=target, batch_sizes=batch_sizes, warmup=warmup, runs=runs,
                                       duration=duration, threads=threads, facts=facts, ssh=ssh))
            if any(m in _EVAL_METRICS for m in metrics):
                row["metrics"] = {"notes": ["accuracy/robustness/ood are not measured on remote targets; "
                                            "bench the same artifact with --target cpu or cuda"]}
        else:
            attack_model = _load_attack_model(source_model) if "robustness" in metrics else None
            with open_runner(path, target=target, threads=threads) as runner, torch_threads(threads):
                row["runner"] = runner.info()
                if "latency" in metrics:  # before the evaluation, so that peak memory is the runner's own
                    for b in batch_sizes:
                        if not runner.accepts_batch(b):
                            row["latency"][str(b)] = {"skipped": f"artifact takes batch {runner.fixed_batch}"
                                                      if runner.fixed_batch else f"max batch {runner.max_batch}"}
                            continue
                        stats = runner.measure(b, warmup=warmup, runs=runs, duration=duration)
                        row["latency"][str(b)] = stats.as_dict()
                if data.test is not None:
                    row["metrics"] = evaluate_artifact(as_predictor(runner), data=data, metrics=metrics,
                                                       attack_model=attack_model)
    except E2RNASError as exc:
        row.update(status="error", error=str(exc).splitlines()[0])
    except Exception as exc:  # a broken artifact must not hide the other rows
        row.update(status="error", error=f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")
    if facts.get("int8_scheme"):
        row["int8_scheme"] = facts["int8_scheme"]
    row["warnings"] = list(row.get("warnings") or []) + latency_warnings(row["latency"])
    row["seconds"] = round(time.perf_counter() - t0, 2)
    return row


def latency_warnings(latency: dict[str, Any]) -> list[str]:
    """``LatencyStats.noise_warning()`` of each measured batch size (remote rows come back as plain dicts)."""
    from dataclasses import fields

    from e2rnas.deploy_targets.runners import LatencyStats

    names = {f.name for f in fields(LatencyStats)}
    out = []
    for stats in latency.values():
        try:
            warning = LatencyStats(**{k: v for k, v in stats.items() if k in names}).noise_warning()
        except (TypeError, ZeroDivisionError):  # a skipped batch or a runner that records fewer fields
            continue
        if warning:
            out.append(warning)
    return out


@contextlib.contextmanager
def torch_threads(threads: int | None) -> Iterator[None]:
    """torch's CPU threads for the attack model too: one thread setting for the whole measurement (torch's
    default on a shared machine can oversubscribe the cores and make attacks many times slower)."""
    import torch

    before = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def as_predictor(runner: Any) -> Any:
    """The torch runner is evaluated as a ``TorchPredictor`` so that its attack is white-box."""
    if runner.name != "torch":
        return runner
    from e2rnas.predict import TorchPredictor

    return TorchPredictor(runner.module, runner.device)


def _measure_remote(path: Path, *, target: Target, batch_sizes: Sequence[int], warmup: int, runs: int | None,
                    duration: float | None, threads: int | None, facts: dict[str, Any], ssh: Any) -> dict[str, Any]:
    from e2rnas.deploy_targets.remote import artifact_plan, remote_backend, run_remote

    if ssh is None:
        raise E2RNASError(f"target {target.name} is reached over SSH: pass --host user@address")
    shape = facts.get("input_shape")
    if shape is None:
        raise E2RNASError(f"{path.name}: input shape unknown (no ONNX beside the engine); keep the export's .json")
    backend = remote_backend(target.backends, artifact_plan(path), path.name)
    res = run_remote(path, ssh_config=ssh, batch_sizes=batch_sizes, warmup=warmup, runs=runs, duration=duration,
                     backend=backend, providers=target.ort_providers, threads=threads, precision=target.precision,
                     workspace_mb=target.workspace_mb, cuda_graph=target.cuda_graph,
                     input_name=facts.get("input_name") or "images", input_shape=shape, trtexec=target.trtexec)
    latency: dict[str, Any] = {str(r["batch"]): r for r in res.get("results", [])}
    latency.update({b: {"skipped": reason} for b, reason in (res.get("errors") or {}).items()})
    device = res.get("device") or {}
    warnings = [res["precision_note"]] if res.get("precision_note") else []
    if target.power_mode and device.get("power_mode") and device["power_mode"] != target.power_mode:
        warnings.append(f"device power mode {device['power_mode']} differs from the profile's {target.power_mode}")
    out = {"latency": latency, "runner": {"runner": res.get("backend"), "providers": res.get("providers"),
                                         "tensorrt": res.get("tensorrt")},
           "environment": remote_environment(device),
           "remote": {k: res.get(k) for k in ("host", "port", "remote_dir", "remote_dir_removed", "device",
                                               "artifact")}, "warnings": warnings}
    if res.get("built_precision") and path.suffix == ".onnx":  # compiled to TensorRT on the device
        out.update(format=f"tensorrt-{res['built_precision']}", compiled_from=path.name,
                   built_precision=res["built_precision"])
    return out


def remote_environment(device: dict[str, Any]) -> dict[str, Any]:
    """The device's own environment (what the row's numbers came from), in the names ``environment()`` uses."""
    keys = ("hostname", "model", "machine", "cpu", "cpu_count", "l4t", "jetpack", "tensorrt", "cuda", "gpu",
            "gpu_uuid", "compute_capability", "driver", "python", "numpy", "onnxruntime", "power_mode",
            "power_mode_id")
    return {"where": "remote device", **{k: device.get(k) for k in keys if device.get(k) is not None}}


def bench(artifacts: Sequence[str | Path], *, target: Target, batch_sizes: Sequence[int] = (1,),
          metrics: Sequence[str] = ("latency",), warmup: int = 10, runs: int | None = None,
          duration: float | None = None, threads: int | None = None, dataset: str | None = None,
          ood_dataset: str | None = None, data_dir: str | Path | None = None, max_samples: int | None = None,
          source_model: str | Path | None = None, ssh: Any = None, seed: int = 0,
          on_row: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Measure each artifact on ``target``; the result is what ``bench.json`` holds."""
    from e2rnas.deploy_targets.env import environment

    paths = [Path(a) for a in artifacts]
    if not paths:
        raise E2RNASError("give at least one artifact (model.pt, .onnx, .engine)")
    for p in paths:
        if not p.is_file():
            raise E2RNASError(f"artifact not found: {p}")
    bad = [m for m in metrics if m not in METRICS]
    if bad or not metrics:
        raise E2RNASError(f"unknown metric(s) {', '.join(bad)}; choose from {', '.join(METRICS)}")
    if any(b < 1 for b in batch_sizes) or not batch_sizes:
        raise E2RNASError("batch sizes must be positive integers, e.g. --batch 1,8,64")
    if runs is not None and duration is not None:
        raise E2RNASError("give --runs or --duration, not both")
    threads = resolve_threads(target, threads)
    facts = [_safe_facts(p) for p in paths]
    sizes = {f["input_shape"][1] for f in facts if f.get("input_shape")}
    if len(sizes) > 1 and any(m in _EVAL_METRICS for m in metrics):
        raise E2RNASError(f"artifacts take different image sizes {sorted(sizes)}: bench them separately")
    explicit = Path(source_model) if source_model else None
    sources = [find_source_model(p, explicit) for p in paths]
    data = EvalData(None, None, None, {})
    if not target.remote:
        data = load_eval_data(metrics=metrics, data_meta=data_meta_of(facts, sources),
                              image_size=next(iter(sizes), None), dataset=dataset, ood_dataset=ood_dataset,
                              data_dir=data_dir, max_samples=max_samples, seed=seed)
    rows: list[dict[str, Any]] = []
    for p, f, src in zip(paths, facts, sources, strict=True):
        row = measure_artifact(p, target=target, batch_sizes=batch_sizes, metrics=metrics, warmup=warmup, runs=runs,
                               duration=duration, threads=threads, data=data, source_model=src, ssh=ssh, facts=f)
        rows.append(row)
        if on_row is not None:
            on_row(row)
    local_cpu = target.device == "cpu" and not target.remote
    notes = int8_notes(rows, export_summaries(paths), where=target.name, cpu=cpu_features() if local_cpu else None)
    env = environment(threads=threads)
    if target.remote:  # the numbers came from the device: its environment first, this host's kept apart
        device_env = next((r["environment"] for r in rows if r.get("environment")), {"where": "remote device "
                                                                                      "(unreachable)"})
        env = {**device_env, "host": env}
    return {"format": FORMAT, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "target": target.as_dict(),
            "environment": env, "settings": {
                "batch_sizes": list(batch_sizes), "metrics": list(metrics), "warmup": warmup, "runs": runs,
                "duration": duration, "threads": threads, "max_samples": max_samples, "seed": seed,
                "host": getattr(ssh, "host", None)},
            "data": data.info, "rows": rows, "notes": notes}


# ------------------------------------------------------------------------------------------------ int8 notes
def export_summaries(paths: Sequence[Path]) -> dict[str, dict[str, Any]]:
    """The readable ``export.json`` beside each artifact: it records the artifacts export refused to write."""
    out: dict[str, dict[str, Any]] = {}
    for d in dict.fromkeys(Path(p).resolve().parent for p in paths):
        try:
            data = json.loads((d / "export.json").read_text())
        except (OSError, json.JSONDecodeError):
            continue
        if isinstance(data, dict):
            out[str(d)] = data
    return out


def int8_notes(rows: Sequence[dict[str, Any]], summaries: dict[str, dict[str, Any]], *, where: str = "this CPU",
               cpu: dict[str, Any] | None = None) -> list[str]:
    """One line per int8 finding: refused at export, slower than fp32 at the same batch, or an S8S8 file on an
    x86 CPU without VNNI (where ORT's int8 kernels can saturate; docs/int8-cpu.md)."""
    notes = []
    for folder, summary in summaries.items():
        for r in summary.get("results") or []:
            if (r.get("format"), r.get("precision"), r.get("status")) == ("onnx", "int8", "failed"):
                reason = (r.get("details") or {}).get("reason") or "failed validation"
                if "--int8-scheme" not in reason:
                    reason += "; try --int8-scheme u8u8 or u8s8-reduce-range (docs/int8-cpu.md)"
                notes.append(f"INT8 was refused at export ({folder}/export.json): {reason}")
    ok = [r for r in rows if r.get("status") == "ok"]
    for q in (r for r in ok if r.get("format") == "onnx-int8"):
        folder = Path(q["artifact"]).parent
        fp32 = [r for r in ok if r.get("format") == "onnx"]
        ref = next((r for r in fp32 if Path(r["artifact"]).parent == folder), fp32[0] if fp32 else None)
        slower = _slower_batches(q, ref) if ref is not None else []
        if slower:
            why = ("S8S8 on x86: ONNX Runtime leaves some convolutions in float (DequantizeLinear -> Conv -> "
                   "QuantizeLinear); re-export with --int8-scheme u8s8 (VNNI) or auto"
                   if q.get("int8_scheme") == "s8s8" and (cpu or {}).get("arch", "x86_64") == "x86_64" else
                   "quantise/dequantise and per-operator overhead outweigh the int8 arithmetic at this size (small "
                   "tensors, batch 1); int8 pays off with VNNI and more work per call")
            notes.append(f"{Path(q['artifact']).name} measured slower than {Path(ref['artifact']).name} on {where} at "
                         f"{', '.join(slower)}: {why}; fp32 is the faster artifact here")
        saturating = q.get("int8_scheme") in ("s8s8", "u8s8")  # U8S8 kernels: VPMADDUBSW without VNNI
        if saturating and cpu and cpu.get("arch") == "x86_64" and cpu.get("vnni") is False:
            notes.append(f"{Path(q['artifact']).name} is {q['int8_scheme'].upper()}, which can saturate on this x86 "
                         f"{cpu.get('isa')} CPU without VNNI: re-export here with --int8-scheme auto (or u8u8)")
    return notes


def _slower_batches(q: dict[str, Any], ref: dict[str, Any]) -> list[str]:
    """The batches both rows measured where ``q``'s p50 is above ``ref``'s, as "batch B (p50 X vs Y ms)"."""
    out = []
    for b, stats in (q.get("latency") or {}).items():
        mine, theirs = stats.get("p50_ms"), ((ref.get("latency") or {}).get(b) or {}).get("p50_ms")
        if mine is not None and theirs is not None and mine > theirs:
            out.append(f"batch {b} (p50 {mine:.3g} vs {theirs:.3g} ms)")
    return out
