"""PointRend on your own coarse head (README, "PointRend on any coarse head"): register it, name
it in the config, train and evaluate. python examples/custom_coarse_head.py [KEY VALUE ...]"""

from detectron2.engine import default_argument_parser
from detectron2.layers import Conv2d
from detectron2.modeling import SEM_SEG_HEADS_REGISTRY
from torch import nn
from torch.nn import functional as F

from pointrend_sem.engine import Trainer, setup


@SEM_SEG_HEADS_REGISTRY.register()
class ConvHead(nn.Module):
    """A 3x3 conv on the FPN map p3, then a 1x1 classifier: logits at p3's stride, 8."""

    def __init__(self, cfg, input_shape):
        super().__init__()
        dim, p3 = cfg.MODEL.SEM_SEG_HEAD.CONVS_DIM, input_shape["p3"]
        self.common_stride = p3.stride  # the contract: the stride s of the logits
        self.conv = Conv2d(p3.channels, dim, 3, padding=1, activation=F.relu)
        self.predictor = Conv2d(dim, cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES, 1)

    def layers(self, features):  # the contract: (N, NUM_CLASSES, H / s, W / s) logits
        return self.predictor(self.conv(features["p3"]))


def main(argv=None):
    args = default_argument_parser().parse_args(argv)
    args.config_file = args.config_file or "configs/demo_synthetic.yaml"
    steps = ["MODEL.POINTREND_SEM.SUBDIVISION_STEPS", "-1"]  # from the head's stride: 3, 8 -> 1
    args.opts = ["MODEL.POINTREND_SEM.COARSE_HEAD_NAME", "ConvHead", *steps, *args.opts]
    trainer = Trainer(setup(args))
    trainer.resume_or_load(resume=False)
    return trainer.train()


if __name__ == "__main__":
    main()
