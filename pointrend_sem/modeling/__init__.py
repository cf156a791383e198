"""Model parts; importing this module registers them in detectron2's registries."""

from .backbone import SizeMatchedFPN, build_pointrend_resnet_fpn_backbone, build_resnet
from .binary import num_output_channels
from .coarse_head import (
    SizeMatchedSemSegFPNHead,
    build_coarse_head,
    check_coarse_head,
    subdivision_steps_for,
)
from .coarse_head_adapters import DeepLabV3CoarseHead, DeepLabV3PlusCoarseHead, FCNCoarseHead
from .meta_arch import PointRendSemanticSegmentor, postprocess_logits
from .point_head import SEM_SEG_POINT_HEAD_REGISTRY, MLPPointHead, build_point_head
from .point_sampling import (
    calculate_uncertainty,
    sample_training_points,
    select_uncertain_grid_points,
)
from .pointrend_head import PointRendSemHead, cross_entropy_with_ignore
from .subdivision_trace import SubdivisionStep, SubdivisionTrace, collect_subdivision

__all__ = [
    "SizeMatchedFPN",
    "SizeMatchedSemSegFPNHead",
    "build_coarse_head",
    "check_coarse_head",
    "subdivision_steps_for",
    "DeepLabV3CoarseHead",
    "DeepLabV3PlusCoarseHead",
    "FCNCoarseHead",
    "build_pointrend_resnet_fpn_backbone",
    "build_resnet",
    "num_output_channels",
    "PointRendSemanticSegmentor",
    "postprocess_logits",
    "SEM_SEG_POINT_HEAD_REGISTRY",
    "MLPPointHead",
    "build_point_head",
    "calculate_uncertainty",
    "sample_training_points",
    "select_uncertain_grid_points",
    "PointRendSemHead",
    "cross_entropy_with_ignore",
    "SubdivisionStep",
    "SubdivisionTrace",
    "collect_subdivision",
]
