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


@BACKBONE_REGISTRY.register()
def build_pointrend_resnet_fpn_backbone(cfg, input_shape: ShapeSpec) -> Backbone:
    """ResNet (see :func:`build_resnet`) + FPN with outputs p2..p5 and no extra p6 level,
    as mmsegmentation's FPN with ``num_outs=4``."""
    return FPN(
        bottom_up=build_resnet(cfg, input_shape),
        in_features=cfg.MODEL.FPN.IN_FEATURES,
        out_channels=cfg.MODEL.FPN.OUT_CHANNELS,
        norm=cfg.MODEL.FPN.NORM,
        top_block=None,
        fuse_type=cfg.MODEL.FPN.FUSE_TYPE,
    )
