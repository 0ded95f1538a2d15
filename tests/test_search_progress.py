"""`e2rnas search` without a terminal: one plain progress line per epoch with step time, ETA and gamma."""

import re

import pytest
from _cli_process import run_cli


@pytest.mark.slow
def test_search_prints_progress_lines_when_piped(tmp_path):
    out = tmp_path / "s"
    proc = run_cli(["search", "--epochs", "2", "--warmup-epochs", "0", "--max-steps-per-epoch", "2", "--layers", "3",
                    "--channels", "4", "--batch-size", "16", "--out", out], module="e2rnas.cli", timeout=600)
    assert proc.returncode == 0, proc.stderr
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("search epoch")]
    assert [ln.split(":")[0] for ln in lines] == ["search epoch 1/2 step 2/2", "search epoch 2/2 step 2/2"], proc.stdout
    pattern = (r"search epoch 2/2 step 2/2: \d+\.\d\d s/step, about 0s left; gamma val \d\.\d\d ood \d\.\d\d "
               r"adv \d\.\d\d params \d\.\d\d flops \d\.\d\d; genotype \d\.\d{4} M params, \d+\.\d\d M MACs")
    assert re.fullmatch(pattern, lines[-1]), lines[-1]
    assert "run directory:" in proc.stdout.split("search epoch")[0]  # the header comes first
    import json

    from e2rnas.search.guards import search_notes
    from e2rnas.space.genotypes import Genotype

    summary = json.loads((out / "summary.json").read_text())
    assert summary["notes"] == search_notes(Genotype.from_dict(summary["genotype"]))
    assert all(f"note: {n}" in proc.stdout for n in summary["notes"])
    assert "deploy network: 8 cells C=16 16px 5 classes;" in proc.stdout  # the shape as text, not a dict
