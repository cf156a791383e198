"""ResNet + FPN backbones of the published PointRend recipes.

mmsegmentation's recipe uses ResNetV1c: a deep stem of three 3x3 convs (32-32-64 channels), the
stride in the 3x3 conv of each bottleneck, BN/SyncBN; detectron2's uses the MSRA ResNet (7x7 stem,
stride in the 1x1 conv, frozen BN). Both are detectron2 ``ResNet``s; the stem is chosen by
``MODEL.RESNETS.STEM_TYPE`` ("deeplab" = deep stem, "basic" = 7x7 stem), the stride position by
``MODEL.RESNETS.STRIDE_IN_1X1``.
"""

from detectron2.layers import ShapeSpec
from detectron2.modeling import BACKBONE_REGISTRY, FPN, Backbone
from detectron2.modeling.backbone.resnet import build_resnet_backbone
from detectron2.projects.deeplab.resnet import DeepLabStem, build_resnet_deeplab_backbone
from torch.nn import functional as F


def build_resnet(cfg, input_shape: ShapeSpec) -> Backbone:
    """A detectron2 ResNet with the stem named by ``MODEL.RESNETS.STEM_TYPE``.

    Depth 50/101/152 use DeepLab's builder (which also provides dilated "D8" stages); depth 18/34
    (small demo models) use detectron2's builder with the stem swapped when a deep stem is asked.
    """
    resnets = cfg.MODEL.RESNETS
    if resnets.STEM_TYPE not in ("basic", "deeplab"):
        raise ValueError(
            f"MODEL.RESNETS.STEM_TYPE={resnets.STEM_TYPE!r} is unknown; use 'deeplab' "
            "(ResNetV1c deep stem) or 'basic' (MSRA 7x7 stem)."
        )
    if resnets.DEPTH >= 50:
        return build_resnet_deeplab_backbone(cfg, input_shape)
    resnet = build_resnet_backbone(cfg, input_shape)
    if resnets.STEM_TYPE == "deeplab":
        resnet.stem = DeepLabStem(input_shape.channels, resnets.STEM_OUT_CHANNELS, resnets.NORM)
        if cfg.MODEL.BACKBONE.FREEZE_AT >= 1:
            resnet.stem.freeze()
    return resnet


class SizeMatchedFPN(FPN):
    """detectron2's FPN whose top-down path upsamples each level to the size of the level below
    (nearest), as mmsegmentation's FPN does, instead of by a factor of 2. Identical on inputs
    whose sizes are multiples of the largest stride; also correct on any other size, so inputs
    need no padding (``size_divisibility`` sets how much the batch is padded).
    """

    def __init__(self, *args, fuse_type: str = "sum", size_divisibility: int = 0, **kwargs):
        """
        Args:
            fuse_type: "sum" or "avg" of the lateral and the top-down features, as
                :class:`FPN`'s.
            size_divisibility: pad batches to a multiple of this (0: the largest stride, as
                detectron2's FPN; 1: no padding beyond the largest image of a batch).
            args, kwargs: see :class:`FPN`.
        """
        super().__init__(*args, fuse_type=fuse_type, **kwargs)
        self.fuse_type = fuse_type
        # FPN's own size_divisibility is its largest stride
        self.pad_multiple = (
            size_divisibility if size_divisibility > 0 else super().size_divisibility
        )
        self.out_feature_names = list(self.output_shape())  # "p2", ..., high to low resolution

    @property
    def size_divisibility(self) -> int:
        return self.pad_multiple

    def forward(self, x):
        """
        Args:
            x: (N, 3, H, W) images.

        Returns:
            dict of "p2".."p5" feature maps, (N, C, ceil(H / s), ceil(W / s)) at stride s.
        """
        bottom_up = self.bottom_up(x)
        # each bottom-up map is dropped once its lateral conv has read it (the finest, res2, is
        # the largest map of the pass: it is not kept while p2 is computed)
        prev = self.lateral_convs[0](bottom_up.pop(self.in_features[-1]))
        results = [self.output_convs[0](prev)]
        levels = zip(self.in_features[-2::-1], self.lateral_convs[1:], self.output_convs[1:])
        for feature_name, lateral_conv, output_conv in levels:
            lateral = lateral_conv(bottom_up.pop(feature_name))
            prev = lateral + F.interpolate(prev, size=lateral.shape[-2:], mode="nearest")
            if self.fuse_type == "avg":
                prev = prev / 2
            results.insert(0, output_conv(prev))
        return dict(zip(self.out_feature_names, results))


@BACKBONE_REGISTRY.register()
def build_pointrend_resnet_fpn_backbone(cfg, input_shape: ShapeSpec) -> Backbone:
    """ResNet (see :func:`build_resnet`) + FPN with outputs p2..p5 and no extra p6 level,
    as mmsegmentation's FPN with ``num_outs=4`` (top-down by size, see
    :class:`SizeMatchedFPN`); ``MODEL.FPN.SIZE_DIVISIBILITY`` sets the input padding."""
    fpn = SizeMatchedFPN(
        bottom_up=build_resnet(cfg, input_shape),
        in_features=cfg.MODEL.FPN.IN_FEATURES,
        out_channels=cfg.MODEL.FPN.OUT_CHANNELS,
        norm=cfg.MODEL.FPN.NORM,
        top_block=None,
        fuse_type=cfg.MODEL.FPN.FUSE_TYPE,
        size_divisibility=cfg.MODEL.FPN.SIZE_DIVISIBILITY,
    )
    activation = cfg.MODEL.FPN.ACTIVATION
    if activation not in ("", "relu"):
        raise ValueError(f"MODEL.FPN.ACTIVATION={activation!r} is unknown; use '' or 'relu'.")
    if activation == "relu":  # sssegmentation's FPN: conv + norm + ReLU at every conv
        for conv in [*fpn.lateral_convs, *fpn.output_convs]:
            conv.activation = F.relu
    return fpn
