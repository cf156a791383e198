"""What the evaluation logs say: TTA metrics under their own names, the refinement table with
the dataset named. Fake evaluations, no training."""

import logging
from collections import OrderedDict

import pytest
from conftest import load_config
from detectron2.modeling import build_model

from pointrend_sem.engine import TTA_SUFFIX, Trainer, merge_results
from pointrend_sem.engine import trainer as trainer_module
from pointrend_sem.engine.trainer import log_refinement_gain

VAL = "synthetic_shapes_sem_seg_val"


def metrics(miou, boundary):
    return {"mIoU": miou, "mBoundaryIoU": boundary, "IoU-a": 1.0}


def evaluation(offset=0.0):
    """What an evaluator returns for a refined and a coarse prediction."""
    return OrderedDict(
        [
            ("sem_seg", metrics(80.0 + offset, 60.0 + offset)),
            ("coarse_sem_seg", metrics(78.5 + offset, 55.0 + offset)),
        ]
    )


@pytest.fixture
def logs():
    """The messages logged at INFO by detectron2 and this package during the test."""
    records = []
    handler = logging.Handler(logging.INFO)
    handler.emit = lambda record: records.append(record.getMessage())
    loggers = [logging.getLogger(name) for name in ("detectron2", "pointrend_sem")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
    yield records
    for logger, level in zip(loggers, levels):
        logger.removeHandler(handler)
        logger.setLevel(level)


def refinement_table(records):
    tables = [r for r in records if r.startswith("What point refinement buys")]
    assert len(tables) == 1, records
    return tables[0]


def test_refinement_table_names_the_only_dataset(logs):
    log_refinement_gain(evaluation(), [VAL])
    table = refinement_table(logs)
    assert f"| {VAL} | mIoU " in table and "+1.50" in table
    assert f"| {VAL} | mBoundaryIoU " in table and "+5.00" in table


def test_refinement_table_of_several_datasets_and_of_tta(logs):
    log_refinement_gain({"a_val": evaluation(), "b_val": evaluation(10.0)}, ["a_val", "b_val"])
    table = refinement_table(logs)
    assert "| a_val " in table and "| b_val " in table and "90.00" in table
    logs.clear()
    tta = OrderedDict((k + TTA_SUFFIX, v) for k, v in evaluation().items())
    log_refinement_gain(tta, [VAL], suffix=TTA_SUFFIX)
    assert "(with test-time augmentation)" in refinement_table(logs)
    logs.clear()
    log_refinement_gain({"sem_seg": metrics(1.0, 1.0)}, [VAL])  # no coarse head: no table
    assert not any(r.startswith("What point refinement buys") for r in logs)


class FakeEvaluatorTrainer(Trainer):
    @classmethod
    def build_evaluator(cls, cfg, dataset_name, output_folder=None):
        return dataset_name  # what the fake inference_on_dataset below receives


@pytest.fixture
def fake_inference(monkeypatch):
    """inference_on_dataset returning evaluation() per dataset (+10 for the second), no data."""
    offsets = {VAL: 0.0, "other_val": 10.0}
    monkeypatch.setattr(trainer_module, "build_detection_test_loader", lambda *a, **k: None)
    monkeypatch.setattr(
        trainer_module,
        "inference_on_dataset",
        lambda model, loader, name: evaluation(offsets[name]),
    )


def copypaste_tasks(records):
    return [r.split("Task: ")[1] for r in records if r.startswith("copypaste: Task: ")]


def test_tta_results_and_copypaste_lines_say_tta(logs, fake_inference):
    cfg = load_config(opts=["DATASETS.TEST", (VAL,)])
    results = FakeEvaluatorTrainer.test_with_TTA(cfg, build_model(cfg))
    assert list(results) == ["sem_seg_TTA", "coarse_sem_seg_TTA"]
    assert results["sem_seg_TTA"]["mIoU"] == 80.0
    assert copypaste_tasks(logs) == ["sem_seg_TTA", "coarse_sem_seg_TTA"]
    assert f"Evaluation results for {VAL} with test-time augmentation in csv format:" in logs
    assert f"| {VAL} | mIoU " in refinement_table(logs)
    merged = merge_results(evaluation(), results)  # as train_net.py --eval-only does
    assert list(merged) == ["sem_seg", "coarse_sem_seg", "sem_seg_TTA", "coarse_sem_seg_TTA"]


def test_tta_results_of_several_datasets_keep_them_apart(logs, fake_inference):
    cfg = load_config(opts=["DATASETS.TEST", (VAL, "other_val")])
    results = FakeEvaluatorTrainer.test_with_TTA(cfg, build_model(cfg))
    assert list(results) == [VAL, "other_val"]
    assert list(results["other_val"]) == ["sem_seg_TTA", "coarse_sem_seg_TTA"]
    assert results["other_val"]["sem_seg_TTA"]["mIoU"] == 90.0
    assert copypaste_tasks(logs) == ["sem_seg_TTA", "coarse_sem_seg_TTA"] * 2
    merged = merge_results({VAL: evaluation(), "other_val": evaluation(10.0)}, results)
    assert list(merged["other_val"]) == [
        "sem_seg",
        "coarse_sem_seg",
        "sem_seg_TTA",
        "coarse_sem_seg_TTA",
    ]
    assert merged["other_val"]["sem_seg"]["mIoU"] == merged["other_val"]["sem_seg_TTA"]["mIoU"]
