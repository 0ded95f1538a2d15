"""The authors' E2RNAS search step, timed side by side with ours at config (a) on this machine. Prints a table.

    git clone https://github.com/yuezhixiong/NAS-Benchmark        # once, anywhere (not at run time of the tests)
    python benchmarks/authors_step.py --repo NAS-Benchmark         # 2 threads, 5 timed steps after 1 warm-up

Their code (``DARTS_LBJ/architect.py``, ``model_search.py``, ``operations.py``, ``utils.py``, the top-level
``min_norm_solvers.py``) is copied to a temporary folder and ported to torch 2.x with the smallest textual changes:
``.data[0]`` -> ``.item()``, the removed ``add_(scalar, tensor)`` signatures -> ``alpha=``, ``torch.dot`` of 2-D
gradients -> of their flattened views, ``print(logs)`` dropped, ``.cuda()`` the identity (CPU). Their step is
``Architect.step`` (unrolled; MGDA over acc, adv, nop, ood, flp with l2 normalisation) plus ``train_search.py``'s
weight step with the OoD term (``--ood_lambda 1``); ours is ``benchmarks/search_step.py``'s modes. Each runs in its
own process. The "unit" is each code's own supernet forward+backward at the same batch.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

FILES = {"DARTS_LBJ/architect.py": "architect.py", "DARTS_LBJ/model_search.py": "model_search.py",
         "DARTS_LBJ/operations.py": "operations.py", "DARTS_LBJ/utils.py": "utils.py",
         "DARTS_LBJ/genotypes.py": "genotypes.py", "min_norm_solvers.py": "min_norm_solvers.py"}
PATCHES = [
    (r"\.data\[0\]", ".item()"),
    (r"p\.data\.add_\(R, v\)", "p.data.add_(v, alpha=float(R))"),
    (r"p\.data\.sub_\(2\*R, v\)", "p.data.sub_(v, alpha=2 * float(R))"),
    (r"g\.data\.sub_\(eta, ig\.data\)", "g.data.sub_(ig.data, alpha=eta)"),
    (r"theta\.sub\(eta, moment\+dtheta\)", "theta.sub(moment + dtheta, alpha=eta)"),
    (r"torch\.dot\((vecs\[[a-z]\]\[k\]), (vecs\[[a-z]\]\[k\])\)", r"torch.dot(\1.flatten(), \2.flatten())"),
    (r"\n    print\(logs\)", "\n    pass"),
]


def port(repo: Path, dst: Path) -> None:
    for src, name in FILES.items():
        text = (repo / src).read_text()
        for pattern, repl in PATCHES:
            text = re.sub(pattern, repl, text)
        (dst / name).write_text(text)


def child_authors(threads: int, steps: int) -> dict:
    import types

    import torch
    import torch.nn.functional as F
    from torch import nn

    torch.Tensor.cuda = lambda self, *a, **k: self  # CPU: their .cuda() calls are the identity
    nn.Module.cuda = lambda self, *a, **k: self
    torch.set_num_threads(threads)
    from architect import Architect
    from model_search import Network

    n, s, k = 16, 32, 10
    torch.manual_seed(0)
    crit = nn.CrossEntropyLoss()
    model = Network(8, k, 5, crit)
    args = types.SimpleNamespace(momentum=0.9, weight_decay=3e-4, arch_learning_rate=3e-4, arch_weight_decay=1e-3,
                                 unrolled=True, adv_outer=True, adv_later=0, nop_outer=True, nop_later=0,
                                 ood_outer=True, flp_outer=True, MGDA=True, grad_norm="l2", constrain="abs",
                                 constrain_min=2.5, constrain_max=0, temperature="none")
    arch = Architect(model, args)
    opt = torch.optim.SGD(model.parameters(), 0.025, momentum=0.9, weight_decay=3e-4)
    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(n, 3, s, s, generator=g), torch.randint(0, k, (n,), generator=g)
    xv, yv = torch.rand(n, 3, s, s, generator=g), torch.randint(0, k, (n,), generator=g)
    xo = torch.rand(n, 3, s, s, generator=g)
    eps = torch.full((3, 1, 1), 2 / 255 / 0.25)
    lim = torch.full((3, 1, 1), 2.0)

    def step():
        arch.step(x, y, xv, yv, 0.025, opt, True, epoch=0, upper_limit=lim, lower_limit=-lim, epsilon=eps, tau=1,
                  ood_input=xo)
        opt.zero_grad()
        ood = model(xo)
        loss = crit(model(x), y) + F.kl_div(input=F.log_softmax(ood, dim=-1), target=torch.ones_like(ood) / k)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 5)
        opt.step()

    def unit():
        model.zero_grad(set_to_none=True)
        crit(model(x), y).backward()

    return _time(step, unit, steps)


def _time(step, unit, steps: int) -> dict:
    step()
    unit()
    ts, us = [], []
    for _ in range(steps):
        t = time.perf_counter()
        step()
        ts.append(time.perf_counter() - t)
        t = time.perf_counter()
        unit()
        us.append(time.perf_counter() - t)
    return {"step_s": statistics.median(ts), "unit_s": statistics.median(us)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repo", type=Path, help="a checkout of yuezhixiong/NAS-Benchmark")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        sys.path.insert(0, args.child)
        print(json.dumps(child_authors(args.threads, args.steps)))
        return
    if args.repo is None or not (args.repo / "DARTS_LBJ" / "architect.py").is_file():
        sys.exit("error: --repo must be a checkout of yuezhixiong/NAS-Benchmark (DARTS_LBJ/architect.py missing)")
    with tempfile.TemporaryDirectory() as tmp:
        port(args.repo, Path(tmp))
        out = subprocess.run([sys.executable, "-W", "ignore", __file__, "--child", tmp, "--threads",
                              str(args.threads), "--steps", str(args.steps)], capture_output=True, text=True,
                             cwd=tmp)
        if out.returncode:
            sys.exit(f"error: the authors' step failed:\n{out.stderr}")
        theirs = json.loads(out.stdout.strip().splitlines()[-1])
    here = Path(__file__).parent
    modes = ["supernet fwd+bwd (unit)", "E2RNAS paper preset (2nd order, central hvp)",
             "E2RNAS 2nd order central, clean-start FGSM (authors' example)",
             "E2RNAS 2nd order, forward hvp (fast option)"]
    out = subprocess.run([sys.executable, str(here / "search_step.py"), "--config", "a", "--steps", str(args.steps),
                          "--warmup", "1", "--modes", *modes], capture_output=True, text=True, check=True,
                         env={**os.environ, "OMP_NUM_THREADS": str(args.threads)})
    records = [json.loads(line) for line in out.stderr.splitlines() if line.startswith('{"config"')]
    ours = {r["mode"]: r["median_s"] for r in records}
    unit = ours.pop(modes[0])
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"Search step at config (a), {args.threads} threads (median of {args.steps})")
    for col in ("code", "step", "s/step", "x own unit", "x authors' step"):
        table.add_column(col)
    table.add_row("authors (DARTS_LBJ)", "architect.step + weight step", f"{theirs['step_s']:.2f}",
                  f"{theirs['step_s'] / theirs['unit_s']:.1f} (unit {theirs['unit_s']:.3f} s)", "1.00")
    for mode, sec in ours.items():
        table.add_row("e2rnas", mode, f"{sec:.2f}", f"{sec / unit:.1f} (unit {unit:.3f} s)",
                      f"{sec / theirs['step_s']:.2f}")
    Console(width=160).print(table)


if __name__ == "__main__":
    main()
