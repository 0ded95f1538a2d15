"""Measure a latency lookup table (``e2rnas.space.latency_table.LatencyTable``) on a deploy target.

What is timed, and why (``docs/latency-table.md``):

- **Ops, in context.** Every non-``none`` op at every distinct (C, stride, input size) the deploy network's cells
  use, built with ``OPS[op](C, stride, True)`` (eval mode, seeded random weights), exported to ONNX and timed with
  the same ``OrtRunner`` session settings and threads as ``e2rnas bench`` on that target, so table and bench agree.
  Each op is wrapped between two 1x1 max-pools (a copy each). Inside a network ONNX Runtime keeps tensors in its
  blocked NCHWc layout from op to op; an op exported alone pays a layout reorder on its input and output instead,
  which costs a pooling op as much as the pooling itself. The wrapper moves those reorders outside the op, as in
  the network (FactorizedReduce still pays its own: its Slice needs plain NCHW inside a network too).
- **Call overhead.** A graph's time includes ONNX Runtime's per-``run()`` cost (binding, output fetch, thread
  wake-up), a few microseconds that a whole network pays once, not once per op. The wrapper with nothing inside
  is timed per input geometry and subtracted. An op whose graph is that empty wrapper (a stride-1 skip) costs 0.
- **Rounds.** All graphs are timed round-robin, ``rounds`` times, and each keeps the median of its per-round
  medians: a burst of load from another process shifts one round of every graph, not all rounds of a few ops.
- **Fixed part and in-network factors.** Reference networks (each op on every edge, plus seeded random
  genotypes) are exported whole and timed, and fitted as ``T = fixed + sum over ops of op_scale[op] x the op's
  kept edges``: ``fixed_ms`` is normalisation, stem, pre-processing convs, node sums, concats, classifier and the
  one call overhead; ``op_scale`` absorbs what the wrapper does not reproduce (``fit_fixed_and_scales``). It is
  near 1 at the embedded deploy shape, lower where channel counts leave ORT's NCHWc layout (C=36 and 72).

Local ONNX Runtime targets are implemented (``cpu``; a CUDA GPU through ORT's CUDA provider, via the bench's
``open_runner``, untested here: no GPU); TensorRT-only and remote (Jetson over SSH) targets raise.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import random
import statistics
import tempfile
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from e2rnas.errors import E2RNASError
from e2rnas.space.cost import CostModel, DeployShape
from e2rnas.space.genotypes import STEPS, Genotype
from e2rnas.space.latency_table import LatencyTable, LatencyTableError

if TYPE_CHECKING:
    from e2rnas.deploy_targets.profiles import Target

DEFAULT_RUNS = 200  # timed calls per graph per round
DEFAULT_WARMUP = 20  # untimed calls per graph per round
DEFAULT_ROUNDS = 5
DEFAULT_RANDOM_REFERENCES = 7
RIDGE = 1e-4  # pull of the common factor on each op's factor, relative to the best-exercised op's evidence
OPSET = 17  # TorchScript exporter: about 0.05 s per op graph, against seconds for dynamo (same ORT kernels)

Progress = Callable[[str, int, int], None]  # (what, done, total)


def measure_latency_table(*, shape: DeployShape, target: str | Target = "cpu", batch: int = 1,
                          threads: int | None = None, runs: int = DEFAULT_RUNS, warmup: int = DEFAULT_WARMUP,
                          rounds: int = DEFAULT_ROUNDS, random_references: int = DEFAULT_RANDOM_REFERENCES,
                          seed: int = 0, on_progress: Progress | None = None) -> LatencyTable:
    """Time every op geometry of ``shape``'s deploy network and fit the fixed part on reference networks.

    ``target`` is a target name or ``Target``; ``threads`` defaults to what ``e2rnas bench`` uses there;
    ``on_progress(stage, done, total)`` is called after each export and each timed graph."""
    from e2rnas.deploy_targets.bench import resolve_threads
    from e2rnas.space.ops import PRIMITIVES

    t = _local_ort_target(target)
    _check_shape(shape)
    if batch < 1 or runs < 1 or rounds < 1 or warmup < 0 or random_references < 0:
        raise E2RNASError(f"batch, runs and rounds must be >= 1, warmup and references >= 0 (got batch {batch}, "
                          f"runs {runs}, rounds {rounds}, warmup {warmup}, references {random_references})")
    threads = resolve_threads(t, threads)
    ops = [op for op in PRIMITIVES if op != "none"]
    refs = reference_genotypes(ops, random_references=random_references, seed=seed)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="e2rnas-lut-") as tmp:
        graphs, free = export_graphs(shape=shape, ops=ops, references=refs, batch=batch, folder=Path(tmp),
                                     seed=seed, on_progress=on_progress)
        times = time_round_robin(graphs, batch=batch, threads=threads, runs=runs, warmup=warmup, rounds=rounds,
                                 on_progress=on_progress, target=t)
    overhead = {k[1:]: ms for k, ms in times.items() if k[0] == "overhead"}
    in_context = {k: ms for k, ms in times.items() if k[0] not in ("overhead", "net")}
    table_ops = {k: max(0.0, ms - overhead[k[1:]]) for k, ms in in_context.items()} | dict.fromkeys(free, 0.0)
    table_ops = dict(sorted(table_ops.items(), key=lambda kv: (kv[0][1], kv[0][2], kv[0][3], ops.index(kv[0][0]))))
    measured = {name: times[("net", name)] for name in refs}
    by_op = {name: sums_by_op(g, shape=shape, ops=table_ops) for name, g in refs.items()}
    fixed, scales, fit = fit_fixed_and_scales(measured, by_op, typical=[n for n in refs if n.startswith("random")])
    measurement = {
        "runs": runs, "warmup": warmup, "rounds": rounds, "statistic": "median over rounds of the per-round p50",
        "exporter": "torchscript", "opset": OPSET, "seed": seed, "seconds": round(time.perf_counter() - started, 2),
        "overhead": [{"C": C, "stride": st, "size": z, "ms": ms} for (C, st, z), ms in sorted(overhead.items())],
        "in_context": [{"op": k[0], "C": k[1], "stride": k[2], "size": k[3], "ms": ms} for k, ms in in_context.items()],
        "references": [{"name": n, "genotype": g.to_dict(), "measured_ms": measured[n], "ops_ms": by_op[n]}
                       for n, g in refs.items()],
        "fit": fit,
    }
    return _table(t, shape, batch, threads, fixed=fixed, ops=table_ops, scales=scales, env=_environment(threads),
                  measurement=measurement)


def sums_by_op(genotype: Genotype, *, shape: DeployShape,
               ops: dict[tuple[str, int, int, int], float]) -> dict[str, float]:
    """Per op, the summed unscaled table entries of ``genotype``'s kept edges in ``shape``'s deploy network."""
    out: dict[str, float] = {}
    for slot in CostModel(shape).slots:
        for op, inp in genotype.reduce if slot.reduction else genotype.normal:
            out[op] = out.get(op, 0.0) + ops[(op, slot.C, *slot.edge_geometry(inp))]
    return out


def op_geometries(shape: DeployShape) -> list[tuple[int, int, int]]:
    """Distinct (C, stride, input size) of the edges of ``shape``'s deploy network (``CostModel`` slots)."""
    return sorted({(s.C, *s.edge_geometry(src)) for s in CostModel(shape).slots for src in range(1 + STEPS)})


def export_graphs(*, shape: DeployShape, ops: Sequence[str], references: dict[str, Genotype], batch: int,
                  folder: Path, seed: int = 0,
                  on_progress: Progress | None = None) -> tuple[dict[Any, Path], set[tuple[str, int, int, int]]]:
    """ONNX files to time: ``("overhead", C, stride, size)``, ``(op, C, stride, size)`` and ``("net", name)``; and the
    op geometries that export to nothing (their graph is the empty wrapper)."""
    import torch

    geometries = op_geometries(shape)
    graphs: dict[Any, Path] = {}
    free: set[tuple[str, int, int, int]] = set()
    total = len(geometries) * (1 + len(ops)) + len(references)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for C, stride, size in geometries:
            x_shape = (batch, C, size, size)
            empty_wrapper = in_context_module(torch.nn.Identity(), after_stride=stride)
            graphs[("overhead", C, stride, size)] = _export_module(empty_wrapper, x_shape, folder)
            _progress(on_progress, "export", len(graphs) + len(free), total)
            empty = _node_types(graphs[("overhead", C, stride, size)])
            for op in ops:
                path = export_op(op, C=C, stride=stride, size=size, batch=batch, folder=folder)
                if _node_types(path) == empty:
                    free.add((op, C, stride, size))
                else:
                    graphs[(op, C, stride, size)] = path
                _progress(on_progress, "export", len(graphs) + len(free), total)
        for name, g in references.items():
            graphs[("net", name)] = export_network(g, shape=shape, folder=folder)
            _progress(on_progress, "export", len(graphs) + len(free), total)
    return graphs, free


def fit_fixed_and_scales(measured: dict[str, float], by_op: dict[str, dict[str, float]], *,
                         typical: Sequence[str] = ()) -> tuple[float, dict[str, float], dict[str, Any]]:
    """``measured = fixed + sum over ops of scale[op] x by_op[name][op]`` over the reference networks.

    The per-op factors come from least squares over all references: each one-op network pins its op's factor
    down; a small ridge pulls each toward the common factor (Theil-Sen slope of the summed ops: robust to one
    reference timed in a burst of load), which only matters for an op the references barely exercise (the
    stride-2 skip). They absorb what the wrapper cannot reproduce, which depends on the op: pools and convolutions
    whose channels are not a multiple of ORT's NCHWc block stay in plain NCHW inside a network, and ORT fuses a
    node's sum into a preceding convolution. With too few references, or a factor outside [0.1, 3], the common
    factor is used for every op.

    The offset is the median over the ``typical`` references (random genotypes; all when empty) of what the ops
    leave unexplained. The one-op networks are atypical: ORT merges the identical ReLUs (and pools) that read one
    tensor, and with every edge the same op more of them merge than in a derived genotype."""
    names = list(measured)
    ops = [op for op in dict.fromkeys(op for n in names for op in by_op[n]) if any(by_op[n].get(op) for n in names)]
    X = np.array([[by_op[n].get(op, 0.0) for op in ops] for n in names])
    y = np.array([measured[n] for n in names])
    common = _theil_sen(X.sum(axis=1), y)
    scales, method = dict.fromkeys(ops, common), "one Theil-Sen factor for all ops"
    if len(names) > len(ops) + 1:
        # ridge toward the common factor: an op the references barely exercise keeps about the common factor
        weight = RIDGE * float((X**2).sum(axis=0).max())
        A = np.r_[np.c_[np.ones(len(names)), X], np.c_[np.zeros(len(ops)), np.sqrt(weight) * np.eye(len(ops))]]
        b = np.r_[y, np.full(len(ops), np.sqrt(weight) * common)]
        coef = np.linalg.lstsq(A, b, rcond=None)[0]
        if all(0.1 <= c <= 3 for c in coef[1:]):
            scales, method = {op: float(c) for op, c in zip(ops, coef[1:], strict=True)}, "least squares per op"
    offset_from = [n for n in typical if n in measured] or names

    def offset(sc: dict[str, float]) -> tuple[float, dict[str, float]]:
        expl = {n: sum(sc[op] * v for op, v in by_op[n].items() if op in sc) for n in names}
        return statistics.median(measured[n] - expl[n] for n in offset_from), expl

    fixed, explained = offset(scales)
    if fixed <= 0 and method != "one Theil-Sen factor for all ops":
        # a noisy measurement (few runs, a loaded machine) can tilt per-op factors until the stem costs nothing
        scales, method = dict.fromkeys(ops, common), "one Theil-Sen factor for all ops (per-op fit gave fixed <= 0)"
        fixed, explained = offset(scales)
    if fixed < 0:
        method += "; fixed part clamped at 0"
        fixed = 0.0
    residuals = {n: measured[n] - fixed - explained[n] for n in names}
    worst = max(residuals, key=lambda n: abs(residuals[n]) / measured[n])
    return fixed, scales, {
        "method": method, "fixed_ms": fixed, "op_scale": scales, "offset_from": offset_from,
        "rms_residual_ms": float(np.sqrt(np.mean([r * r for r in residuals.values()]))),
        "max_abs_residual_pct": abs(residuals[worst]) / measured[worst] * 100, "worst_reference": worst}


def _theil_sen(x: Any, y: Any) -> float:
    """Median of pairwise slopes between points at least 5 % apart in x; 1 without spread or outside [0.5, 1.5]."""
    spread = 0.05 * float(np.mean(x)) if len(x) else 0.0
    slopes = [(y[j] - y[i]) / (x[j] - x[i]) for i in range(len(x)) for j in range(i + 1, len(x))
              if abs(x[j] - x[i]) > spread]
    slope = statistics.median(slopes) if len(slopes) >= 3 else 1.0
    return float(slope) if 0.5 <= slope <= 1.5 else 1.0


def reference_genotypes(ops: Sequence[str], *, random_references: int = DEFAULT_RANDOM_REFERENCES,
                        seed: int = 0) -> dict[str, Genotype]:
    """One network per op on every edge (the widest spread of summed op time), plus seeded random genotypes
    whose nodes pick two distinct inputs, as the derivation does."""
    chain = tuple(j for i in range(STEPS) for j in (i, i + 1))  # node k reads k-2 and k-1: both cell inputs used
    concat = tuple(range(2, 2 + STEPS))
    out = {f"all {op}": Genotype(tuple((op, j) for j in chain), concat, tuple((op, j) for j in chain), concat)
           for op in ops}
    rng = random.Random(f"e2rnas-lut-{seed}")
    for r in range(random_references):
        cells = [tuple((rng.choice(list(ops)), j) for i in range(STEPS) for j in sorted(rng.sample(range(2 + i), 2)))
                 for _ in range(2)]
        out[f"random {r}"] = Genotype(cells[0], concat, cells[1], concat)
    return out


def time_round_robin(graphs: dict[Any, Path], *, batch: int, threads: int | None, runs: int, warmup: int,
                     rounds: int, on_progress: Progress | None = None, target: Target | None = None
                     ) -> dict[Any, float]:
    """Median over ``rounds`` of each graph's per-round p50 (ms), every session open for the whole measurement.

    Sessions come from ``open_runner`` on ``target`` (the bench's runner, with the target's execution providers:
    CPU, or CUDA on a GPU host, where a silent CPU fall-back is an error); a plain CPU session without one."""
    from e2rnas.deploy_targets.runners import OrtRunner, open_runner

    def runner(path: Path) -> Any:
        return OrtRunner(path, threads=threads) if target is None else open_runner(path, target=target,
                                                                                   threads=threads)

    per_round: dict[Any, list[float]] = {k: [] for k in graphs}
    with contextlib.ExitStack() as stack:
        runners = {k: stack.enter_context(runner(p)) for k, p in graphs.items()}
        done, total = 0, rounds * len(runners)
        for _ in range(rounds):
            for k, runner in runners.items():
                per_round[k].append(runner.measure(batch, warmup=warmup, runs=runs).p50_ms)
                done += 1
                _progress(on_progress, "time", done, total)
    return {k: statistics.median(v) for k, v in per_round.items()}


# ------------------------------------------------------------------------------------------------ helpers
def _local_ort_target(target: str | Target) -> Target:
    """A target this machine runs with ONNX Runtime (its CPU, or its CUDA GPU through the CUDA provider)."""
    from e2rnas.deploy_targets.profiles import Target, get_target

    t = target if isinstance(target, Target) else get_target(target)
    if t.remote or "onnxruntime" not in t.backends:
        raise LatencyTableError(f"latency tables are not implemented for target {t.name} yet (remote and "
                                "TensorRT-only targets); measure one with --target cpu or a local GPU target that "
                                "runs ONNX Runtime")
    if t.device == "cuda":
        import onnxruntime as ort

        if "CUDAExecutionProvider" not in ort.get_available_providers():
            from e2rnas.deploy_targets.env import onnxruntime_install_problem

            fix = onnxruntime_install_problem() or ("run `e2rnas lut` on the GPU host with onnxruntime-gpu in place "
                                                    "of onnxruntime (docs/deploy-sources.md)")
            raise LatencyTableError(f"target {t.name} times ops with ONNX Runtime's CUDA provider, which this "
                                    f"machine lacks (providers: {', '.join(ort.get_available_providers())}); {fix}")
    return t


def in_context_module(module: Any, *, after_stride: int = 1) -> Any:
    """``module`` between two 1x1 max-pools, so that it runs in the layout a network keeps it in (see above).

    The empty wrapper of a stride-2 geometry subsamples in its second pool, so that its output, like the op's,
    is at half resolution (its reorder and copy cost a quarter of the full-resolution ones)."""
    from torch import nn

    class _InContext(nn.Module):
        def __init__(self, inner: nn.Module):
            super().__init__()
            self.before, self.inner, self.after = nn.MaxPool2d(1), inner, nn.MaxPool2d(1, stride=after_stride)

        def forward(self, x: Any) -> Any:
            return self.after(self.inner(self.before(x)))

    return _InContext(module).eval()


def _check_shape(shape: DeployShape) -> None:
    from e2rnas.space.network import VARIANTS

    if shape.layers < 3 or shape.C < 1 or shape.num_classes < 1 or shape.input_size < 1:
        raise E2RNASError(f"a deploy network needs >= 3 cells and positive channels, classes and input size; got "
                          f"{shape.layers} cells, C={shape.C}, {shape.num_classes} classes, {shape.input_size}px")
    if shape.variant not in VARIANTS:
        raise E2RNASError(f"unknown network variant {shape.variant!r}; choose from {', '.join(VARIANTS)}")


def _export_module(module: Any, input_shape: tuple[int, ...], folder: Path) -> Path:
    """One module as ``images -> logits`` ONNX with a dynamic batch axis, like the deployed network's graph."""
    import torch

    from e2rnas.export._registry import INPUT_NAME, OUTPUT_NAME

    path = _new_path(folder)
    axes = {INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}}
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, (torch.rand(*input_shape),), str(path), dynamo=False, opset_version=OPSET,
                          input_names=[INPUT_NAME], output_names=[OUTPUT_NAME], dynamic_axes=axes,
                          do_constant_folding=True)
    return path


def export_op(op: str, *, C: int, stride: int, size: int, batch: int, folder: Path, in_context: bool = True) -> Path:
    """``OPS[op](C, stride, True)`` (eval, random weights) as ONNX in ``folder``, in the wrapper if ``in_context``."""
    from e2rnas.space.ops import OPS

    module = OPS[op](C, stride, True).eval()
    return _export_module(in_context_module(module) if in_context else module, (batch, C, size, size), folder)


def export_network(genotype: Genotype, *, shape: DeployShape, folder: Path) -> Path:
    """The deploy network of ``genotype`` (eval, random weights), exported whole as the references are."""
    from e2rnas.export.onnx_export import export_onnx
    from e2rnas.space.network import Network

    net = Network(genotype, shape.C, shape.layers, shape.num_classes, variant=shape.variant,
                  input_size=shape.input_size).eval()
    path = _new_path(folder)
    export_onnx(net, path, input_size=shape.input_size, opset=OPSET, exporter="torchscript")
    return path


def _new_path(folder: Path) -> Path:
    """A fresh file name in ``folder`` (callers may export their own files there too)."""
    fd, name = tempfile.mkstemp(prefix="lut-", suffix=".onnx", dir=folder)
    os.close(fd)
    return Path(name)


def _node_types(path: Path) -> list[str]:
    import onnx

    return [n.op_type for n in onnx.load(str(path)).graph.node]


def _progress(cb: Progress | None, what: str, done: int, total: int) -> None:
    if cb is not None:
        cb(what, done, total)


def _environment(threads: int | None) -> dict[str, Any]:
    import torch

    from e2rnas.deploy_targets.env import environment

    env = environment(threads=threads, gpu=False)
    env["cpu_capability"] = torch.backends.cpu.get_cpu_capability()
    env["date"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    return env


def _table(t: Any, shape: DeployShape, batch: int, threads: int | None, *, fixed: float, ops: dict,
           scales: dict[str, float], env: dict, measurement: dict) -> LatencyTable:
    from e2rnas.space.ops import PRIMITIVES

    runtime = "onnxruntime-cpu" if t.device == "cpu" else "onnxruntime-cuda"
    key = {"target": t.name, "runtime": runtime, "precision": "fp32", "batch": batch, "threads": threads,
           "deploy_shape": dataclasses.asdict(shape), "primitives": list(PRIMITIVES)}
    return LatencyTable(key=key, fixed_ms=fixed, ops=ops, op_scale=scales, environment=env, measurement=measurement)
