import pytest
import torch
from conftest import load_config

from pointrend_sem.engine import Trainer


def mmseg_lr(it, base=0.01, warmup=200, start=0.1, total=80000, power=0.9, eta_min=1e-4):
    """mmsegmentation's LinearLR(start_factor, end=warmup) + PolyLR(eta_min, begin=warmup)."""
    if it < warmup:
        return base * (start + (1 - start) * it / warmup)
    return (base - eta_min) * (1 - (it - warmup) / (total - warmup)) ** power + eta_min


def test_poly_schedule_matches_mmsegmentation():
    cfg = load_config("cityscapes_r50.yaml")
    param = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([param], lr=cfg.SOLVER.BASE_LR)
    scheduler = Trainer.build_lr_scheduler(cfg, optimizer)
    checkpoints = {0, 1, 100, 199, 200, 201, 5000, 40000, 79998, 79999}
    for it in range(80000):
        if it in checkpoints:
            assert optimizer.param_groups[0]["lr"] == pytest.approx(mmseg_lr(it), rel=1e-9)
        scheduler.step()


def test_other_schedulers_still_come_from_detectron2():
    cfg = load_config("cityscapes_r101_detectron2.yaml")
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=cfg.SOLVER.BASE_LR)
    scheduler = Trainer.build_lr_scheduler(cfg, optimizer)
    for _ in range(40001):
        scheduler.step()
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.001)


def test_deeplab_constant_ending_holds_the_lr():
    opts = ["SOLVER.POLY_LR_CONSTANT_ENDING", "0.05", "SOLVER.MAX_ITER", "4000"]
    cfg = load_config("cityscapes_r50.yaml", opts)
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=cfg.SOLVER.BASE_LR)
    scheduler = Trainer.build_lr_scheduler(cfg, optimizer)
    lrs = []
    for _ in range(cfg.SOLVER.MAX_ITER):
        lrs.append(optimizer.param_groups[0]["lr"])
        scheduler.step()
    assert lrs[2000] == pytest.approx(mmseg_lr(2000, total=4000), rel=1e-9)  # not reached yet
    assert lrs[-1] == pytest.approx(0.01 * 0.05) and min(lrs) == pytest.approx(0.01 * 0.05)
