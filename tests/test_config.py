"""One typed configuration: flag-name keys (old names as aliases), numbers as numbers, one-line errors naming the key
and the file, --print-config, resumed runs keep their settings, flag aliases, help without type noise."""

from __future__ import annotations

import subprocess

import pytest
import yaml
from _cli_process import run_cli

from e2rnas.cli._config import build_config, config_yaml
from e2rnas.cli.app import hoist_global_options
from e2rnas.errors import E2RNASError
from e2rnas.search.runner import SearchConfig
from e2rnas.train.trainer import TrainConfig


def _e2rnas(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    return run_cli(args, module="e2rnas.cli", timeout=timeout)


def test_yaml_keys_are_flag_names_and_old_names_still_work(tmp_path):
    new = tmp_path / "new.yaml"
    new.write_text("search:\n  channels: 12\n  deploy_channels: 24\n  macs_bound: 8\n  arch_lr: 3e-4\n"
                   "  pdarts_layers: [3, 4, 5]\n")
    cfg = build_config(SearchConfig, preset="embedded-default", section="search", config_file=new)
    # YAML 1.1 reads 3e-4 as a string: it must still be the number 0.0003
    assert (cfg.C, cfg.deploy_C, cfg.flops_bound, cfg.a_lr, cfg.pdarts_layers) == (12, 24, 8.0, 3e-4, (3, 4, 5))
    assert isinstance(cfg.a_lr, float)
    old = tmp_path / "old.yaml"
    old.write_text("C: 12\ndeploy_C: 24\nflops_bound: 8\na_lr: 0.0003\npdarts_layers: [3, 4, 5]\n")
    assert build_config(SearchConfig, preset="embedded-default", section="search", config_file=old) == cfg


@pytest.mark.parametrize("text, fragment", [
    ("search:\n  channels: twelve\n", "channels: Input should be a valid integer"),
    ("search:\n  epochs: 2.5\n", "epochs: Input should be a valid integer"),
    ("search:\n  chanels: 3\n", "unknown setting(s) chanels (did you mean channels?)"),
    ("search:\n  download: maybe\n", "download: Input should be a valid boolean"),
])
def test_a_bad_value_is_one_line_naming_the_file_and_key(tmp_path, text, fragment):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(E2RNASError) as info:
        build_config(SearchConfig, preset="embedded-default", section="search", config_file=path)
    message = str(info.value)
    assert message.startswith(str(path)) and fragment in message and "\n" not in message


def test_a_bad_flag_names_the_flag():
    with pytest.raises(E2RNASError, match=r"^--epochs: Input should be a valid integer"):
        build_config(SearchConfig, preset="embedded-default", section="search", overrides={"epochs": "x"})


def test_print_config_is_a_valid_config_file(tmp_path):
    proc = _e2rnas("search", "--print-config", "--preset", "paper", "--macs-bound", "300", "--channels", "12",
                   "--device", "cpu")
    assert proc.returncode == 0, proc.stderr
    data = yaml.safe_load(proc.stdout)["search"]
    assert data["macs_bound"] == 300.0 and data["channels"] == 12 and data["hvp"] == "central"
    assert "C" not in data and "flops_bound" not in data
    path = tmp_path / "resolved.yaml"
    path.write_text(proc.stdout)
    again = build_config(SearchConfig, preset="embedded-default", section="search", config_file=path)
    assert config_yaml(again, section="search") == proc.stdout  # the printed file reproduces the settings


def test_train_print_config_and_old_flops_flag_alias():
    proc = _e2rnas("train", "DARTS_V2", "--print-config", "--epochs", "7", "--device", "cpu")
    assert proc.returncode == 0, proc.stderr
    assert yaml.safe_load(proc.stdout)["train"]["epochs"] == 7
    old = _e2rnas("search", "--print-config", "--flops-bound", "11", "--device", "cpu")
    assert old.returncode == 0 and yaml.safe_load(old.stdout)["search"]["macs_bound"] == 11.0
    both = _e2rnas("search", "--print-config", "--flops-bound", "11", "--macs-bound", "12")
    assert both.returncode == 2 and "disagree" in both.stderr


def test_a_resumed_run_keeps_its_own_settings(tmp_path):
    run_config = tmp_path / "config.yaml"
    cfg = build_config(TrainConfig, preset="embedded-default", section="train", overrides={"epochs": 4})
    run_config.write_text(config_yaml(cfg, section="train"))
    # the run's own settings win over another preset, and a flag that repeats them is fine
    same = build_config(TrainConfig, preset="paper", section="train", run_config=run_config,
                        overrides={"epochs": 4})
    assert same == cfg
    with pytest.raises(E2RNASError, match=r"--epochs 9 conflicts with the run's config.yaml \(epochs: 4\)"):
        build_config(TrainConfig, preset="embedded-default", section="train", run_config=run_config,
                     overrides={"epochs": 9})


def test_search_resume_refuses_a_conflicting_flag(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    cfg = build_config(SearchConfig, preset="embedded-default", section="search", overrides={"epochs": 5})
    (out / "config.yaml").write_text(yaml.safe_dump({"search": cfg.__dict__ | {"objectives": list(cfg.objectives),
                                                                                "pdarts_layers": [3, 5, 5],
                                                                                "pdarts_keep": [8, 5, 3],
                                                                                "pdarts_skip_dropout": [0, .3, .6]}}))
    proc = _e2rnas("search", "--out", str(out), "--resume", "--epochs", "7")
    assert proc.returncode == 2 and "--epochs 7 conflicts with the run's config.yaml (epochs: 5)" in proc.stderr


def test_device_auto_is_the_default_and_a_missing_gpu_is_one_line():
    import torch

    cfg = build_config(SearchConfig, preset="embedded-default", section="search")
    assert cfg.device == ("cuda" if torch.cuda.is_available() else "cpu")
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    proc = _e2rnas("search", "--device", "cuda", "--print-config")
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "no CUDA GPU" in proc.stderr


def test_eval_attack_preset_and_its_old_name():
    proc = _e2rnas("eval", "missing.pt", "--attack-preset", "paper", "--preset", "robustbench")
    assert proc.returncode == 2 and "disagree" in proc.stderr


def test_help_lists_the_workflow_in_order_without_bool_placeholders():
    import os

    def help_of(*command: str) -> str:
        proc = run_cli([*command, "--help"], module="e2rnas.cli", env=os.environ | {"COLUMNS": "200"})
        assert proc.returncode == 0, proc.stderr
        return proc.stdout

    top = help_of()
    commands = top[top.index("Commands"):]
    order = [commands.find(f"│ {c} ") for c in ("run", "search", "train", "eval", "export", "bench", "check")]
    assert all(i > 0 for i in order) and order == sorted(order), top
    assert "--install-completion" in top
    for command in ("search", "train", "eval", "export", "bench", "check", "run"):
        out = help_of(command)
        assert "<bool>" not in out and "--help" in out, command
    search = help_of("search")
    assert "[embedded-default: 6; paper: 50]" in search  # --epochs in each preset
    assert "--flops-bound" not in search and "--macs-bound" in search  # the old name works but is hidden


def test_logging_options_work_after_the_command(tmp_path):
    assert hoist_global_options(["search", "-v", "--log-file", "x.log", "--epochs", "1"]) == \
        ["-v", "--log-file", "x.log", "search", "--epochs", "1"]
    log = tmp_path / "e2rnas.log"
    proc = _e2rnas("search", "--epochs", "1", "--warmup-epochs", "0", "--max-steps-per-epoch", "1", "--layers", "3",
                   "--channels", "4", "--out", str(tmp_path / "s"), "--json", "-q", "--log-file", str(log))
    assert proc.returncode == 0, proc.stderr
    text = log.read_text()
    assert "search epoch 1/1" in text and "INFO" in text  # the file gets everything, -q only quiets the console
    assert "search epoch" not in proc.stderr


def test_ood_none_drops_the_presets_ood_set_for_the_cli_and_the_pipeline():
    from e2rnas.config import without_ood

    opts, notes, drop = without_ood({"ood_dataset": "none", "epochs": 5})
    assert drop and len(notes) == 2 and opts["ll_ood"] is False and "ood" not in opts["objectives"]
    cfg = build_config(SearchConfig, preset="embedded-default", section="search", overrides=opts, drop_ood=drop)
    assert cfg.ood_dataset is None and cfg.epochs == 5 and "ood" not in cfg.objectives
    assert without_ood({"ood_dataset": "svhn"}) == ({"ood_dataset": "svhn"}, [], False)
