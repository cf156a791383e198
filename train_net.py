#!/usr/bin/env python
"""Train or evaluate PointRend semantic segmentation.

python train_net.py --config-file configs/demo_synthetic.yaml
python train_net.py --config-file configs/cityscapes_r50.yaml --num-gpus 4
python train_net.py --config-file configs/cityscapes_r50.yaml --eval-only MODEL.WEIGHTS m.pth
python train_net.py --config-file configs/demo_synthetic.yaml --eval-only --exported demo.onnx
"""

import os

import pointrend_sem  # noqa: F401  # isort: skip  (first: detectron2 imported quietly)
from detectron2.engine import default_argument_parser, hooks, launch

from pointrend_sem.checkpoint import (
    PointRendSemCheckpointer,
    check_weights_file,
    checkpoint_to_read,
    explain_unreadable_checkpoint,
)
from pointrend_sem.cpu_memory import add_memory_argument, apply_memory_argument
from pointrend_sem.data.datasets import check_dataset_ready, register_from_file
from pointrend_sem.engine import Trainer, merge_results, setup
from pointrend_sem.engine.stop_signals import parse_signals, stoppable_launch
from pointrend_sem.errors import UserValueError, main_with_one_line_errors


def main(args):
    if args.datasets_file:
        register_from_file(args.datasets_file)
    if args.exported and not args.eval_only:
        raise UserValueError("--exported evaluates an exported file: add --eval-only.")
    cfg = setup(args)
    apply_memory_argument(args, cfg.MODEL.DEVICE)
    needed = cfg.DATASETS.TEST if args.eval_only else cfg.DATASETS.TRAIN + cfg.DATASETS.TEST
    for dataset_name in needed:
        check_dataset_ready(dataset_name, cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES)
    if args.exported:
        from pointrend_sem.export.evaluation import evaluate_exported

        return evaluate_exported(cfg, args.exported)
    resuming = args.resume and os.path.isfile(os.path.join(cfg.OUTPUT_DIR, "last_checkpoint"))
    if not resuming:
        check_weights_file(cfg.MODEL.WEIGHTS)
    if args.eval_only:
        model = Trainer.build_model(cfg)
        checkpointer = PointRendSemCheckpointer(model, save_dir=cfg.OUTPUT_DIR, strict_fit=True)
        with explain_unreadable_checkpoint(
            *checkpoint_to_read(checkpointer, cfg.MODEL.WEIGHTS, args.resume)
        ):
            checkpointer.resume_or_load(cfg.MODEL.WEIGHTS, resume=args.resume)
        results = Trainer.test(cfg, model)
        if cfg.TEST.AUG.ENABLED:
            merge_results(results, Trainer.test_with_TTA(cfg, model))
        return results
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=args.resume)
    if cfg.TEST.AUG.ENABLED:
        trainer.register_hooks(
            [hooks.EvalHook(0, lambda: trainer.test_with_TTA(cfg, trainer.model))]
        )
    return trainer.train()


def argument_parser():
    parser = default_argument_parser()
    parser.add_argument(
        "--datasets-file",
        default="",
        help="JSON/YAML file registering your own image/label folders (datasets/README.md)",
    )
    parser.add_argument(
        "--exported",
        default="",
        metavar="PATH",
        help="with --eval-only: evaluate this file of tools/export_model.py (run by "
        "pointrend_sem.export.runner) instead of the PyTorch model",
    )
    add_memory_argument(parser)
    return parser


def launch_main(args):
    """``main`` in the processes of detectron2's ``launch()``. Training stopped by a signal exits
    with status 75 after saving a checkpoint (docs/cluster.md), in every process."""
    num_processes = args.num_gpus * args.num_machines
    training_processes = num_processes > 1 and not args.eval_only
    signals = setup(args, log=False).SOLVER.CHECKPOINT_ON_SIGNALS if training_processes else ()
    with stoppable_launch(parse_signals(signals), num_processes):
        launch(
            main,
            args.num_gpus,
            num_machines=args.num_machines,
            machine_rank=args.machine_rank,
            dist_url=args.dist_url,
            args=(args,),
        )


if __name__ == "__main__":
    # A user error (missing file, unknown key, ...) ends with one line "error: ..." on stderr,
    # also when raised in a process that launch() started; other errors keep their traceback.
    main_with_one_line_errors(launch_main)(argument_parser().parse_args())
