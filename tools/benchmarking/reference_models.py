"""The reference implementations this project is compared with, built for side-by-side runs
(parity tests, ``tools/benchmark.py --compare``):
mmsegmentation's PointRend (``CascadeEncoderDecoder`` + ``FPNHead`` + ``PointHead``) and
detectron2's ``projects/PointRend`` semantic model. An instrument, not part of the runtime
package: ``pointrend_sem`` never imports it.

mmsegmentation installs from PyPI (``pip install mmsegmentation==1.2.2 mmengine mmcv-lite==2.1.0
--no-deps`` plus their pure-Python requirements); mmcv-lite lacks the compiled ``mmcv.ops``,
of which PointRend's forward pass needs only ``point_sample``, a thin ``grid_sample`` wrapper:
:func:`install_mmcv_ops_shim` provides it (and nothing else) before mmseg is imported.
"""

import os
import sys
import types
from typing import Dict, List

import torch
from torch.nn import functional as F

MMSEG_MEAN = [123.675, 116.28, 103.53]  # RGB, as mmsegmentation's data preprocessor
MMSEG_STD = [58.395, 57.12, 57.375]


def _mmcv_point_sample(input, points, align_corners=False, **kwargs):
    """mmcv's ``point_sample``: (N, C, H, W) features at (N, P, 2) [0, 1] points -> (N, C, P)."""
    add_dim = points.dim() == 3
    if add_dim:
        points = points.unsqueeze(2)
    output = F.grid_sample(input, 2.0 * points - 1.0, align_corners=align_corners, **kwargs)
    return output.squeeze(3) if add_dim else output


def install_mmcv_ops_shim() -> None:
    """Make ``import mmcv.ops`` work without mmcv's compiled extension.

    Only ``point_sample`` is real; any other operator raises ModuleNotFoundError when imported
    (mmseg's optional imports expect that) or NotImplementedError when called.
    """
    try:
        import mmcv.ops  # noqa: F401

        return  # a full mmcv is installed
    except ImportError:
        pass
    shim = types.ModuleType("mmcv.ops")
    shim.point_sample = _mmcv_point_sample

    def unavailable(name):
        def op(*args, **kwargs):
            raise NotImplementedError(f"mmcv.ops.{name} needs mmcv's compiled extension")

        return op

    shim.sigmoid_focal_loss = unavailable("sigmoid_focal_loss")

    def __getattr__(name):
        if name.startswith("__"):
            raise AttributeError(name)
        raise ModuleNotFoundError(f"mmcv.ops.{name} needs mmcv's compiled extension")

    shim.__getattr__ = __getattr__
    sys.modules["mmcv.ops"] = shim
    import mmcv

    mmcv.ops = shim


def randomize_norms(model: torch.nn.Module, seed: int) -> None:
    """Random affine parameters and running statistics for every BN/GN/FrozenBN layer, so that
    normalization layers do not all compute the identity."""
    gen = torch.Generator().manual_seed(seed)
    for module in model.modules():
        name = type(module).__name__
        if "Norm" not in name and "BatchNorm" not in name:
            continue
        for attr in ("weight", "bias", "running_mean", "running_var"):
            tensor = getattr(module, attr, None)
            if not isinstance(tensor, torch.Tensor):
                continue
            values = torch.rand(tensor.shape, generator=gen)
            values = 0.5 + values if attr in ("weight", "running_var") else values - 0.5
            with torch.no_grad():
                tensor.copy_(values)


def mmseg_pointrend_config(
    depth: int = 50, num_classes: int = 19, norm: str = "BN", subdivision_num_points: int = 8196
) -> Dict:
    """mmsegmentation's PointRend model config (configs/_base_/models/pointrend_r50.py)."""
    norm_cfg = dict(type=norm, requires_grad=True)
    loss = dict(type="CrossEntropyLoss", use_sigmoid=False, loss_weight=1.0)
    return dict(
        type="CascadeEncoderDecoder",
        num_stages=2,
        data_preprocessor=dict(
            type="SegDataPreProcessor", mean=MMSEG_MEAN, std=MMSEG_STD, bgr_to_rgb=True
        ),
        backbone=dict(
            type="ResNetV1c",
            depth=depth,
            num_stages=4,
            out_indices=(0, 1, 2, 3),
            dilations=(1, 1, 1, 1),
            strides=(1, 2, 2, 2),
            norm_cfg=norm_cfg,
            norm_eval=False,
            style="pytorch",
            contract_dilation=True,
        ),
        neck=dict(
            type="FPN",
            in_channels=[64, 128, 256, 512] if depth < 50 else [256, 512, 1024, 2048],
            out_channels=256,
            num_outs=4,
        ),
        decode_head=[
            dict(
                type="FPNHead",
                in_channels=[256, 256, 256, 256],
                in_index=[0, 1, 2, 3],
                feature_strides=[4, 8, 16, 32],
                channels=128,
                dropout_ratio=-1,
                num_classes=num_classes,
                norm_cfg=norm_cfg,
                align_corners=False,
                loss_decode=loss,
            ),
            dict(
                type="PointHead",
                in_channels=[256],
                in_index=[0],
                channels=256,
                num_fcs=3,
                coarse_pred_each_layer=True,
                dropout_ratio=-1,
                num_classes=num_classes,
                align_corners=False,
                loss_decode=loss,
            ),
        ],
        train_cfg=dict(num_points=2048, oversample_ratio=3, importance_sample_ratio=0.75),
        test_cfg=dict(
            mode="whole",
            subdivision_steps=2,
            subdivision_num_points=subdivision_num_points,
            scale_factor=2,
        ),
    )


def build_mmseg_pointrend(**kwargs) -> torch.nn.Module:
    """mmsegmentation's PointRend in eval mode; ``kwargs`` go to :func:`mmseg_pointrend_config`."""
    install_mmcv_ops_shim()
    from mmengine.config import ConfigDict
    from mmseg.registry import MODELS
    from mmseg.utils import register_all_modules

    register_all_modules(init_default_scope=True)
    return MODELS.build(ConfigDict(mmseg_pointrend_config(**kwargs))).eval()


@torch.no_grad()
def mmseg_logits(model: torch.nn.Module, images: List[torch.Tensor]) -> List[torch.Tensor]:
    """mmsegmentation's whole-image inference on RGB images, each (3, H, W) 0..255, copied to
    the model's device.

    Returns:
        per image, (C, H, W) logits at the image's size (before argmax), on the model's device.
    """
    device = next(model.parameters()).device
    outputs = []
    for image in images:
        image = image.to(device)
        mean = torch.tensor(MMSEG_MEAN, device=image.device).view(3, 1, 1)
        std = torch.tensor(MMSEG_STD, device=image.device).view(3, 1, 1)
        size = tuple(image.shape[-2:])
        meta = dict(img_shape=size, ori_shape=size, pad_shape=size)
        inputs = ((image.float() - mean) / std)[None]
        outputs.append(model.encode_decode(inputs, [meta])[0])
    return outputs


DETECTRON2_POINTREND_CONFIG = os.path.join(
    "projects/PointRend/configs/SemanticSegmentation",
    "pointrend_semantic_R_101_FPN_1x_cityscapes.yaml",
)


def detectron2_pointrend_config(detectron2_root: str, opts=()):
    """detectron2's own PointRend semantic config (its Cityscapes recipe) with ``opts``.

    Args:
        detectron2_root: a detectron2 source checkout (its project configs are not installed).
        opts: overrides, e.g. ``["MODEL.RESNETS.DEPTH", 50]``.
    """
    from detectron2.config import get_cfg
    from detectron2.projects.point_rend import add_pointrend_config

    cfg = get_cfg()
    add_pointrend_config(cfg)
    cfg.merge_from_file(os.path.join(detectron2_root, DETECTRON2_POINTREND_CONFIG))
    cfg.merge_from_list(list(opts))
    return cfg


def build_detectron2_pointrend(detectron2_root: str, opts=()) -> torch.nn.Module:
    """detectron2's ``PointRendSemSegHead`` model in eval mode (random weights)."""
    from detectron2.modeling import build_model

    return build_model(detectron2_pointrend_config(detectron2_root, opts)).eval()


@torch.no_grad()
def mmseg_predict_files(
    model: torch.nn.Module, files: List[str], scale: tuple
) -> List[torch.Tensor]:
    """mmsegmentation's own test path on image files: its ``LoadImageFromFile`` (OpenCV, BGR)
    -> ``Resize(scale=scale, keep_ratio=True)`` (``mmcv.imrescale``) -> ``PackSegInputs`` ->
    the model's ``data_preprocessor`` -> ``predict`` (``model.test_step``), one image per batch.

    Args:
        model: from :func:`build_mmseg_pointrend`.
        files: image files.
        scale: (long, short) test scale, e.g. (2048, 512) for ADE20K.

    Returns:
        per file, the (H, W) predicted class ids at the file's size.
    """
    from mmengine.dataset import Compose, pseudo_collate

    pipeline = Compose(
        [
            dict(type="LoadImageFromFile"),
            dict(type="Resize", scale=tuple(scale), keep_ratio=True),
            dict(type="PackSegInputs"),
        ]
    )
    return [
        model.test_step(pseudo_collate([pipeline(dict(img_path=f))]))[0].pred_sem_seg.data[0]
        for f in files
    ]
