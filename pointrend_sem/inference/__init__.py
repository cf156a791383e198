"""The inference layer: one eval-only module, built from a plain model and the config, that runs
every inference speed-up (:mod:`.builder`)."""

from .builder import InferenceModel, build_inference_model
from .precision import PRECISIONS, fp32_math, resolve_precision

__all__ = [
    "InferenceModel",
    "build_inference_model",
    "PRECISIONS",
    "fp32_math",
    "resolve_precision",
]
