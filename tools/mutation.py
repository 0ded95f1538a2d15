"""Mutation testing of the core modules with mutmut 3, one module at a time (docs/testing.md).

    .venv/bin/python tools/mutation.py mgda            # one module
    .venv/bin/python tools/mutation.py all             # every module in MODULES, one after the other
    .venv/bin/python tools/mutation.py mgda --keep     # reuse earlier results (mutmut then re-runs only what changed)
    .venv/bin/python tools/mutation.py budget --survivors   # new tests: re-run only the last run's survivors

Why a staging directory: mutmut 3 copies the sources into ``mutants/`` and names each mutant after the file's path
(``e2rnas/space/cost.py`` -> ``e2rnas.space.cost``); its trampoline applies a mutant only when that name equals the
running module's ``__name__``. The installed package maps ``e2rnas.deploy_targets`` to the top-level ``deploy_targets/``
folder (also ``export/``, ``cli/``), so ``deploy_targets/budget.py`` would be mutated as ``deploy_targets.budget``
but imported as ``e2rnas.deploy_targets.budget`` and its mutants silently never run. Here the package is staged
flat, as installed (``build/mutation/MODULE/e2rnas/deploy_targets/...``), with the tests and a pyproject whose
``[tool.mutmut]`` is the repository's plus this module's ``only_mutate`` and test selection. ``mutants/e2rnas``
then comes first on ``sys.path`` and every ``e2rnas.*`` import, the mapped subpackages included, is the mutated copy
(the editable install's finder is consulted only after the path).

Each module gets the fast tests that check it (MODULES); mutmut runs, per mutant, only those of them that call the
mutated function, with ``--max-children 1`` and one torch thread (a 2-core machine is shared).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parents[1]
STAGE = ROOT / "build" / "mutation"

#: module -> (source file in the flat layout, fast test selection: files or node ids)
MODULES: dict[str, tuple[str, list[str]]] = {
    "mgda": ("e2rnas/search/mgda.py", ["tests/test_mgda.py"]),
    "objectives": ("e2rnas/search/objectives.py", ["tests/test_objectives.py"]),
    "cost": ("e2rnas/space/cost.py", ["tests/test_cost.py"]),
    "ood_metrics": ("e2rnas/evaluation/ood_metrics.py", ["tests/test_ood_metrics.py"]),
    "budget": ("e2rnas/deploy_targets/budget.py", ["tests/test_budget_unit.py", "tests/test_budget_check.py"]),
    "derive": ("e2rnas/search/derive.py", ["tests/test_derive.py"]),
    "bilevel": ("e2rnas/search/bilevel.py", ["tests/test_bilevel.py", "tests/test_bilevel_step.py"]),
    "attacks": ("e2rnas/evaluation/attacks.py", ["tests/test_attacks.py"]),
    "latency_table": ("e2rnas/space/latency_table.py", ["tests/test_latency_table_unit.py"]),
    "_io": ("e2rnas/_io.py", ["tests/test_io.py"]),
    "edge_batch": ("e2rnas/space/edge_batch.py", ["tests/test_edge_batch.py"]),
}
#: modules whose tests need more than the default marker selection: budget's remote branch runs against the real
#: loopback OpenSSH server of tests/_sshd.py (skipped where sshd is missing)
MARKERS = {"budget": "not slow and not gpu and not trt"}
#: the installed package layout (pyproject [tool.setuptools] package-dir), flattened
PACKAGE_DIRS = {"e2rnas": "e2rnas", "export": "e2rnas/export", "cli": "e2rnas/cli",
                "deploy_targets": "e2rnas/deploy_targets"}
#: mutmut's end states, as `mutmut results --all true` prints them
STATES = ("killed", "survived", "no tests", "timeout", "suspicious", "skipped", "segfault", "not checked",
          "caught by type check")


def _toml_value(value: object) -> str:
    return json.dumps(value)  # lists of strings, strings, booleans and numbers read the same in TOML


def stage(module: str, *, keep: bool) -> Path:
    """Copy the package (flat) and the tests into build/mutation/MODULE, with a pyproject for this module."""
    source, tests = MODULES[module]
    work = STAGE / module
    if not keep and work.exists():
        shutil.rmtree(work)  # mutmut keeps a survivor's verdict when only the tests change: start clean
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for src, dst in PACKAGE_DIRS.items():
        target = work / dst
        if target.exists():
            shutil.rmtree(target)
        shutil.copytree(ROOT / src, target, ignore=ignore)  # "e2rnas" comes first: the others go inside it
    for name in ("tests",):
        if (work / name).exists():
            shutil.rmtree(work / name)
        shutil.copytree(ROOT / name, work / name, ignore=ignore)
    # mutmut copies tests/ and pyproject.toml into mutants/ once; drop the old copies so that edited tests count
    for stale in ("mutants/tests", "mutants/pyproject.toml"):
        path = work / stale
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    settings = dict(project["tool"]["mutmut"])
    settings["only_mutate"] = [source]
    settings["pytest_add_cli_args_test_selection"] = tests
    if module in MARKERS:
        args = list(settings["pytest_add_cli_args"])
        args[args.index("-m") + 1] = MARKERS[module]
        settings["pytest_add_cli_args"] = args
    lines = ["[tool.mutmut]"] + [f"{k} = {_toml_value(v)}" for k, v in settings.items()]
    pytest_ini = project["tool"]["pytest"]["ini_options"]
    lines += ["", "[tool.pytest.ini_options]"] + [f"{k} = {_toml_value(v)}" for k, v in pytest_ini.items()]
    (work / "pyproject.toml").write_text("\n".join(lines) + "\n")
    return work


def counts(work: Path) -> dict[str, int]:
    out = subprocess.run([sys.executable, "-m", "mutmut", "results", "--all", "true"], cwd=work, text=True,
                         capture_output=True, check=True).stdout
    found: dict[str, int] = {}
    for line in out.splitlines():
        m = re.match(r"\s*\S+__mutmut_\d+: (.+)$", line)
        if m:
            found[m.group(1).strip()] = found.get(m.group(1).strip(), 0) + 1
    return found


def survivors(work: Path) -> list[str]:
    out = subprocess.run([sys.executable, "-m", "mutmut", "results"], cwd=work, text=True, capture_output=True,
                         check=True).stdout
    return [line.split(":")[0].strip() for line in out.splitlines() if "__mutmut_" in line]


def run(module: str, *, keep: bool, survivors_only: bool = False, children: int = 1) -> dict[str, int]:
    """Mutate ``module`` and run its tests; ``survivors_only``: keep the last results and re-run only the mutants
    that survived them (the tests changed, the source did not: a killed mutant stays killed)."""
    names = survivors(STAGE / module) if survivors_only and (STAGE / module / "mutants").is_dir() else []
    work = stage(module, keep=keep or bool(names))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONDONTWRITEBYTECODE": "1"}
    subprocess.run([sys.executable, "-m", "mutmut", "run", "--max-children", str(children), *names], cwd=work,
                   env=env, check=True)
    found = counts(work)
    total = sum(found.values())
    killed = found.get("killed", 0) + found.get("timeout", 0)
    print(f"{module}: {found} -> {killed}/{total} killed ({100 * killed / max(total, 1):.1f} %)")
    for name in survivors(work):
        print("  survived:", name, f"(show: cd {work.relative_to(ROOT)} && mutmut show {name})")
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("modules", nargs="+", choices=[*MODULES, "all"])
    parser.add_argument("--keep", action="store_true", help="reuse the staged copy and earlier results")
    parser.add_argument("--survivors", action="store_true",
                        help="re-run only the previous run's survivors (after adding tests; the source unchanged)")
    parser.add_argument("--children", type=int, default=1, help="mutants run in parallel (default 1: a shared "
                        "2-core machine)")
    args = parser.parse_args()
    modules = list(MODULES) if "all" in args.modules else args.modules
    for module in modules:
        run(module, keep=args.keep, survivors_only=args.survivors, children=args.children)


if __name__ == "__main__":
    main()
