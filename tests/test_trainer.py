"""The Trainer's seams with detectron2: the adapter builds what DefaultTrainer builds, metric
writers built once and writing every LOG_PERIOD iterations, checkpoints written atomically."""

import json

from conftest import TINY_MODEL, load_config
from detectron2.engine import DefaultTrainer

from pointrend_sem.checkpoint import AtomicWritesPathManager, PointRendSemCheckpointer
from pointrend_sem.engine import Trainer
from pointrend_sem.engine.defaults import DefaultTrainerWithHooks


class WriterCountingTrainer(Trainer):
    """Trainer that records each list of metric writers it builds."""

    def build_writers(self):
        writers = super().build_writers()
        self.built_writers = getattr(self, "built_writers", []) + [writers]
        return writers


def test_writers_built_once_write_every_log_period_and_checkpoints_are_atomic(
    tmp_path, monkeypatch
):
    monkeypatch.setenv("DETECTRON2_DATASETS", str(tmp_path / "datasets"))
    output_dir = tmp_path / "output"
    opts = [*TINY_MODEL, "SOLVER.MAX_ITER", "5", "LOG_PERIOD", "2", "DATASETS.TEST", "()"]
    cfg = load_config("demo_synthetic.yaml", [*opts, "OUTPUT_DIR", str(output_dir)])
    trainer = WriterCountingTrainer(cfg)
    assert len(trainer.built_writers) == 1
    assert isinstance(trainer.checkpointer.path_manager, AtomicWritesPathManager)
    trainer.train()

    with open(output_dir / "metrics.json") as f:
        iterations = [json.loads(line)["iteration"] for line in f]
    assert iterations == [1, 3, 4]  # every 2nd iteration, and the last one
    assert len(list(output_dir.glob("events.out.tfevents.*"))) == 1
    assert (output_dir / "last_checkpoint").read_text() == "model_final.pth"
    assert sorted(p.name for p in output_dir.glob("*.pth*")) == ["model_final.pth"]


def test_the_adapter_builds_what_default_trainer_builds(tmp_path, monkeypatch):
    """DefaultTrainerWithHooks.__init__ follows DefaultTrainer.__init__: the same attributes, of
    the same types (with the default hooks), so that an upgrade of detectron2 that changes its
    constructor fails here."""
    monkeypatch.setenv("DETECTRON2_DATASETS", str(tmp_path / "datasets"))
    opts = [*TINY_MODEL, "SOLVER.MAX_ITER", "2", "DATASETS.TEST", "()"]
    built = {}
    for base in (DefaultTrainer, DefaultTrainerWithHooks):
        hooks = ("build_train_loader", "build_lr_scheduler")  # the recipe's loader and schedule
        overrides = {name: getattr(Trainer, name).__func__ for name in hooks}
        cfg = load_config(
            "demo_synthetic.yaml", [*opts, "OUTPUT_DIR", str(tmp_path / base.__name__)]
        )
        trainer = type("Tiny" + base.__name__, (base,), overrides)(cfg)
        built[base] = {name: type(value) for name, value in vars(trainer).items()}
    assert built[DefaultTrainerWithHooks] == built[DefaultTrainer]

    ours = Trainer(
        load_config("demo_synthetic.yaml", [*opts, "OUTPUT_DIR", str(tmp_path / "ours")])
    )
    assert type(ours.checkpointer) is PointRendSemCheckpointer
    assert set(vars(ours)) == set(built[DefaultTrainer]) | {"_metric_writers"}
