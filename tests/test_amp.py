"""Training precision (``--amp``): resolution, the CPU refusal, config.yaml recording, resuming old checkpoints.
The CUDA paths (TF32, bf16 autocast, fp16 with a GradScaler) run only under the ``gpu`` marker."""

from dataclasses import replace
from pathlib import Path

import pytest
import torch
import yaml
from typer.testing import CliRunner

from e2rnas.cli.app import app
from e2rnas.errors import E2RNASError
from e2rnas.space.genotypes import GENOTYPES
from e2rnas.train.amp import make_precision, resolve_amp
from e2rnas.train.trainer import TrainConfig, train

TINY = TrainConfig(dataset="digits", layers=3, C=4, epochs=1, batch_size=32, cutout=0, crop_pad=2, flip=False,
                   auxiliary=False, val_fraction=0.1, max_train_batches=2)
CPU = torch.device("cpu")


def test_resolution_on_cpu():
    assert resolve_amp("off", CPU) == "off" and resolve_amp("auto", CPU) == "off"
    for mode in ("tf32", "bf16", "fp16"):
        with pytest.raises(E2RNASError, match="CUDA only"):
            resolve_amp(mode, CPU)
    with pytest.raises(E2RNASError, match="choose"):
        resolve_amp("fp8", CPU)
    with pytest.raises(E2RNASError, match="amp must be one of"):
        TrainConfig(amp="half")


def test_cpu_refuses_amp_in_one_line(tmp_path):
    result = CliRunner().invoke(app, ["train", "DARTS_V2", "--device", "cpu", "--amp", "bf16", "--epochs", "1",
                                      "--out", str(tmp_path / "t")])
    assert isinstance(result.exception, E2RNASError)  # main() prints it as one line, exit 2
    assert "--amp bf16 runs on CUDA only" in str(result.exception) and "\n" not in str(result.exception)
    assert not (tmp_path / "t" / "checkpoint.pt").exists()


def test_config_records_the_resolved_mode(tmp_path):
    train(replace(TINY, amp="auto"), genotype=GENOTYPES["DARTS_V2"], out_dir=tmp_path,
          progress=False)
    assert yaml.safe_load((tmp_path / "config.yaml").read_text())["amp"] == "off"  # auto on a CPU
    ckpt = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    assert ckpt["config"]["amp"] == "off" and "scaler" not in ckpt


def test_a_checkpoint_from_before_amp_resumes(tmp_path):
    cut = replace(TINY, epochs=2)

    def stop(rec):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(cut, genotype=GENOTYPES["DARTS_V2"], out_dir=tmp_path, progress=False, callback=stop)
    path = Path(tmp_path / "checkpoint.pt")
    ckpt = torch.load(path, weights_only=True)
    del ckpt["config"]["amp"]
    torch.save(ckpt, path)
    summary = train(cut, genotype=GENOTYPES["DARTS_V2"], out_dir=tmp_path, resume=True, progress=False)
    assert summary["epochs"] == 2


def test_fp32_precision_steps_like_plain_backward():
    torch.manual_seed(0)
    a, b = torch.nn.Linear(4, 2), torch.nn.Linear(4, 2)
    b.load_state_dict(a.state_dict())
    x = torch.randn(8, 4)
    opt_a, opt_b = torch.optim.SGD(a.parameters(), lr=0.1), torch.optim.SGD(b.parameters(), lr=0.1)
    prec = make_precision("off", CPU)
    with prec.tf32(), prec.autocast():
        loss = a(x).square().mean()
    prec.backward_step(loss, opt_a, a.parameters(), 5.0)
    b(x).square().mean().backward()
    torch.nn.utils.clip_grad_norm_(b.parameters(), 5.0)
    opt_b.step()
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters(), strict=True))


@pytest.mark.gpu
@pytest.mark.parametrize("mode", ["tf32", "bf16", "fp16"])
def test_cuda_modes_train_and_record(tmp_path, mode):
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    if mode == "bf16" and not torch.cuda.is_bf16_supported():
        pytest.skip("this GPU has no bf16")
    flags = torch.backends.cudnn.allow_tf32
    cfg = replace(TINY, device="cuda", amp=mode)
    summary = train(cfg, genotype=GENOTYPES["DARTS_V2"], out_dir=tmp_path, progress=False)
    assert summary["test_acc"] >= 0 and torch.backends.cudnn.allow_tf32 == flags  # TF32 flags put back
    assert yaml.safe_load((tmp_path / "config.yaml").read_text())["amp"] == mode
    assert ("scaler" in torch.load(tmp_path / "checkpoint.pt", weights_only=True)) == (mode == "fp16")
