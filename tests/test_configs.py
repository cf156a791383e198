import glob
import os

import detectron2
import pytest
import torch
from conftest import CONFIG_DIR, load_config
from detectron2.config import get_cfg
from detectron2.modeling import build_model

USER_CONFIGS = sorted(
    os.path.basename(p)
    for p in glob.glob(os.path.join(CONFIG_DIR, "*.yaml"))
    if not os.path.basename(p).startswith("Base-")
)


def test_every_recipe_has_a_config():
    for dataset in ("cityscapes", "ade20k", "voc"):
        for depth in ("r50", "r101"):
            assert f"{dataset}_{depth}.yaml" in USER_CONFIGS


@pytest.mark.parametrize("name", USER_CONFIGS)
def test_config_builds_a_model(name):
    cfg = load_config(name)
    model = build_model(cfg)
    assert model.sem_seg_head.coarse_sem_seg_head.predictor.out_channels == (
        cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES
    )
    assert sum(p.numel() for p in model.parameters()) > 0


def test_mmseg_recipe_architecture():
    cfg = load_config("cityscapes_r50.yaml")
    model = build_model(cfg)
    stem = model.backbone.bottom_up.stem
    assert [stem.conv1.out_channels, stem.conv2.out_channels, stem.conv3.out_channels] == [
        32,
        32,
        64,
    ]
    assert stem.conv1.stride == (2, 2) and stem.conv1.kernel_size == (3, 3)
    block = model.backbone.bottom_up.res3[0]
    assert block.conv1.stride == (1, 1) and block.conv2.stride == (2, 2)  # stride in the 3x3
    assert isinstance(block.conv1.norm, torch.nn.SyncBatchNorm)
    assert model.backbone.output_shape()["p2"].channels == 256
    assert "p6" not in model.backbone.output_shape()
    head = model.sem_seg_head
    assert isinstance(head.coarse_sem_seg_head.p2[0].norm, torch.nn.SyncBatchNorm)
    assert head.coarse_sem_seg_head.predictor.in_channels == 128
    point_head = head.point_head
    assert [fc.out_channels for fc in point_head.fc_layers] == [256, 256, 256]
    assert point_head.fc2.in_channels == 256 + 19  # coarse prediction at each layer
    assert point_head.predictor.in_channels == 256 + 19
    assert (head.train_num_points, head.oversample_ratio, head.importance_sample_ratio) == (
        2048,
        3,
        0.75,
    )
    assert (head.subdivision_steps, head.subdivision_num_points) == (2, 8196)


def test_detectron2_recipe_architecture():
    cfg = load_config("cityscapes_r101_detectron2.yaml")
    model = build_model(cfg)
    stem = model.backbone.bottom_up.stem
    assert stem.conv1.kernel_size == (7, 7)
    block = model.backbone.bottom_up.res3[0]
    assert block.conv1.stride == (2, 2)  # stride in the 1x1
    assert isinstance(model.sem_seg_head.coarse_sem_seg_head.p2[0].norm, torch.nn.GroupNorm)
    point_head = model.sem_seg_head.point_head
    assert point_head.fc2.in_channels == 256 and point_head.predictor.in_channels == 256
    assert model.sem_seg_head.subdivision_num_points == 8192


def test_schedules_follow_the_published_recipes():
    expected = {
        "cityscapes": ((512, 1024), 80000, 8),
        "ade20k": ((512, 512), 160000, 16),
        "voc": ((512, 512), 40000, 16),
    }
    for dataset, (crop, iters, batch) in expected.items():
        cfg = load_config(f"{dataset}_r50.yaml")
        assert tuple(cfg.INPUT.CROP.SIZE) == crop
        assert (cfg.SOLVER.MAX_ITER, cfg.SOLVER.IMS_PER_BATCH) == (iters, batch)
        assert (cfg.SOLVER.BASE_LR, cfg.SOLVER.MOMENTUM, cfg.SOLVER.WEIGHT_DECAY) == (
            0.01,
            0.9,
            0.0005,
        )
        assert cfg.SOLVER.LR_SCHEDULER_NAME == "WarmupPolyLR"
        assert (cfg.SOLVER.WARMUP_ITERS, cfg.SOLVER.WARMUP_FACTOR) == (200, 0.1)
        assert (cfg.SOLVER.POLY_LR_POWER, cfg.SOLVER.BASE_LR_END) == (0.9, 1e-4)
        assert tuple(cfg.INPUT.RANDOM_RESIZE.RATIO_RANGE) == (0.5, 2.0)
        assert cfg.INPUT.CROP.SINGLE_CATEGORY_MAX_AREA == 0.75
        assert cfg.INPUT.PHOTOMETRIC_DISTORTION.ENABLED
        assert cfg.MODEL.SEM_SEG_HEAD.IGNORE_VALUE == 255


def test_coexists_with_detectron2_point_rend():
    from detectron2.modeling import SEM_SEG_HEADS_REGISTRY
    from detectron2.projects.point_rend import add_pointrend_config

    import pointrend_sem

    cfg = get_cfg()
    add_pointrend_config(cfg)
    pointrend_sem.add_pointrend_sem_config(cfg)
    assert cfg.MODEL.POINT_HEAD.NUM_CLASSES == 80  # detectron2's keys are untouched
    assert "PointRendSemSegHead" in SEM_SEG_HEADS_REGISTRY
    assert "PointRendSemHead" in SEM_SEG_HEADS_REGISTRY


def test_detectron2_pointrend_yaml_keeps_its_own_schedule():
    """Our config function only adds keys: detectron2's PointRend semantic recipe, loaded after
    both config functions, trains with its own multi-step schedule."""
    from detectron2.projects.point_rend import add_pointrend_config

    import pointrend_sem

    plain = get_cfg()
    add_pointrend_config(plain)
    both = plain.clone()
    pointrend_sem.add_pointrend_sem_config(both)
    flat = dict(flatten(plain))
    changed = [k for k, v in flatten(both) if k in flat and flat[k] != v]
    assert changed == []

    yaml_path = os.path.join(
        os.path.dirname(os.path.dirname(detectron2.__file__)),
        "projects/PointRend/configs/SemanticSegmentation",
        "pointrend_semantic_R_101_FPN_1x_cityscapes.yaml",
    )
    if not os.path.isfile(yaml_path):
        pytest.skip("detectron2 is not installed from a source tree with its projects")
    both.merge_from_file(yaml_path)
    assert both.SOLVER.LR_SCHEDULER_NAME == "WarmupMultiStepLR"
    assert both.SOLVER.BASE_LR_END == get_cfg().SOLVER.BASE_LR_END
    assert tuple(both.SOLVER.STEPS) == (40000, 55000)


def flatten(node, prefix=""):
    """(dotted key, value) of every leaf of a CfgNode."""
    for key, value in node.items():
        if isinstance(value, dict):
            yield from flatten(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value
