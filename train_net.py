#!/usr/bin/env python
"""Train or evaluate PointRend semantic segmentation.

python train_net.py --config-file configs/demo_synthetic.yaml
python train_net.py --config-file configs/cityscapes_r50.yaml --num-gpus 4
python train_net.py --config-file configs/cityscapes_r50.yaml --eval-only MODEL.WEIGHTS m.pth
"""

from detectron2.checkpoint import DetectionCheckpointer
from detectron2.engine import default_argument_parser, launch

from pointrend_sem.engine import Trainer, setup


def main(args):
    cfg = setup(args)
    if args.eval_only:
        model = Trainer.build_model(cfg)
        DetectionCheckpointer(model, save_dir=cfg.OUTPUT_DIR).resume_or_load(
            cfg.MODEL.WEIGHTS, resume=args.resume
        )
        return Trainer.test(cfg, model)
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=args.resume)
    return trainer.train()


if __name__ == "__main__":
    args = default_argument_parser().parse_args()
    launch(
        main,
        args.num_gpus,
        num_machines=args.num_machines,
        machine_rank=args.machine_rank,
        dist_url=args.dist_url,
        args=(args,),
    )
