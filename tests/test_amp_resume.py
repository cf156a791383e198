"""Resuming across SOLVER.AMP.ENABLED: a checkpoint saved without AMP (no gradient scaler state)
resumes with AMP, and one saved with AMP resumes without it."""

import logging
import warnings

import pytest
import torch
from conftest import TINY_MODEL, load_config
from detectron2.engine import AMPTrainer, SimpleTrainer
from torch import nn

from pointrend_sem.capabilities import PrecisionSupport
from pointrend_sem.engine import Trainer
from pointrend_sem.engine import amp as amp_module
from pointrend_sem.engine.amp import CPUAMPTrainer, ResumableAMPTrainer, build_step_trainer

# what a CUDA AMP run's checkpoint holds for its GradScaler (torch.amp.GradScaler.state_dict())
SCALER_STATE = {
    "scale": 1024.0,
    "growth_factor": 2.0,
    "backoff_factor": 0.5,
    "growth_interval": 2000,
    "_growth_tracker": 7,
}


def parts():
    """A model, data loader and optimizer for a step trainer."""
    model = nn.Linear(4, 2)
    return model, [torch.zeros(1, 4)], torch.optim.SGD(model.parameters(), lr=0.1)


def quietly(build, *args, **kwargs):
    """``build(*args, **kwargs)`` without the GradScaler's warning that CUDA is absent (it
    disables itself on a machine without CUDA)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*GradScaler.*CUDA is not available")
        return build(*args, **kwargs)


def state_without_scaler(iteration=5):
    trainer = SimpleTrainer(*parts())
    trainer.iter = iteration
    return trainer.state_dict()


def test_detectron2_amp_trainer_needs_the_scaler_state():
    """The failure ResumableAMPTrainer exists for."""
    with pytest.raises(KeyError, match="grad_scaler"):
        quietly(AMPTrainer, *parts()).load_state_dict(state_without_scaler())


def test_resumable_amp_trainer_loads_a_state_without_scaler_and_says_so(caplog):
    trainer = quietly(ResumableAMPTrainer, *parts())
    with caplog.at_level(logging.INFO, logger="pointrend_sem.engine.amp"):
        trainer.load_state_dict(state_without_scaler(iteration=5))
    assert trainer.iter == 5
    lines = [r.getMessage() for r in caplog.records if "gradient scaler" in r.getMessage()]
    assert len(lines) == 1 and "starts afresh" in lines[0]


def test_resumable_amp_trainer_still_loads_its_scaler_state(caplog):
    trainer = quietly(ResumableAMPTrainer, *parts())
    state = dict(state_without_scaler(), grad_scaler={})
    loaded = []
    trainer.grad_scaler.load_state_dict = loaded.append  # disabled without CUDA: would ignore it
    with caplog.at_level(logging.INFO, logger="pointrend_sem.engine.amp"):
        trainer.load_state_dict(state)
    assert loaded == [{}]
    assert not [r for r in caplog.records if "gradient scaler" in r.getMessage()]


@pytest.mark.parametrize("step_trainer", [SimpleTrainer, CPUAMPTrainer])
def test_a_scaler_state_is_ignored_without_amp_or_on_cpu(step_trainer):
    trainer = step_trainer(*parts())
    trainer.load_state_dict(dict(state_without_scaler(iteration=3), grad_scaler=SCALER_STATE))
    assert trainer.iter == 3


def test_step_trainer_by_amp_and_device(monkeypatch):
    """Without AMP detectron2's SimpleTrainer; with AMP bf16 autocast on CPU, and on CUDA
    detectron2's AMPTrainer, resumable, with torch.amp's gradient scaler."""
    native = PrecisionSupport(True, True, "reported native by the test")
    monkeypatch.setattr(amp_module, "precision_support", lambda dtype, device: native)
    model, data_loader, optimizer = parts()
    plain = build_step_trainer(model, data_loader, optimizer, amp=False)
    assert type(plain) is SimpleTrainer and plain.model is model
    cpu = build_step_trainer(model, data_loader, optimizer, amp=True)
    assert type(cpu) is CPUAMPTrainer and cpu.precision == torch.bfloat16
    monkeypatch.setattr(amp_module, "on_cpu", lambda model: False)  # as for a CUDA model
    cuda = quietly(build_step_trainer, model, data_loader, optimizer, amp=True)
    assert type(cuda) is ResumableAMPTrainer and isinstance(cuda, AMPTrainer)
    assert type(cuda.grad_scaler) is torch.amp.GradScaler
    assert (cuda.model, cuda.data_loader, cuda.optimizer) == (model, data_loader, optimizer)


def tiny_cfg(output_dir, max_iter, amp):
    opts = [*TINY_MODEL, "SOLVER.MAX_ITER", str(max_iter), "DATASETS.TEST", "()"]
    opts += ["SOLVER.AMP.ENABLED", str(amp), "OUTPUT_DIR", str(output_dir)]
    return load_config("demo_synthetic.yaml", opts)


def resumed(cfg):
    trainer = quietly(Trainer, cfg)
    trainer.resume_or_load(resume=True)
    return trainer


@pytest.mark.slow
def test_trainer_resumes_across_amp_on_and_off(tmp_path, monkeypatch, caplog):
    """Train 2 iterations without AMP; resume with AMP to 3 (bf16 on CPU); resume from that
    checkpoint, given a CUDA run's scaler state, without AMP to 4; and resume the first
    checkpoint with the CUDA AMP trainer (not run: it needs CUDA)."""
    monkeypatch.setenv("DETECTRON2_DATASETS", str(tmp_path / "datasets"))
    # this CPU may lack bf16 units (check_cpu_amp refuses it there): the test needs the resume,
    # not the speed
    native = PrecisionSupport(True, True, "reported native by the test")
    monkeypatch.setattr(amp_module, "precision_support", lambda dtype, device: native)
    out = tmp_path / "output"

    Trainer(tiny_cfg(out, 2, amp=False)).train()
    no_amp_checkpoint = torch.load(out / "model_final.pth", weights_only=False)
    assert "grad_scaler" not in no_amp_checkpoint["trainer"]["_trainer"]

    with_amp = resumed(tiny_cfg(out, 3, amp=True))
    assert type(with_amp._trainer) is CPUAMPTrainer and with_amp.start_iter == 2
    with_amp.train()

    path = out / "model_final.pth"
    checkpoint = torch.load(path, weights_only=False)
    assert checkpoint["iteration"] == 2
    checkpoint["trainer"]["_trainer"]["grad_scaler"] = SCALER_STATE  # as a CUDA AMP run saves
    torch.save(checkpoint, path)
    without_amp = resumed(tiny_cfg(out, 4, amp=False))
    assert type(without_amp._trainer) is SimpleTrainer and without_amp.start_iter == 3
    without_amp.train()
    assert torch.load(path, weights_only=False)["iteration"] == 3

    torch.save(no_amp_checkpoint, path)
    monkeypatch.setattr(amp_module, "on_cpu", lambda model: False)  # keep the CUDA AMP trainer
    with caplog.at_level(logging.INFO, logger="pointrend_sem.engine.amp"):
        cuda_amp = resumed(tiny_cfg(out, 3, amp=True))
    assert type(cuda_amp._trainer) is ResumableAMPTrainer and cuda_amp.start_iter == 2
    assert any("starts afresh" in r.getMessage() for r in caplog.records)
