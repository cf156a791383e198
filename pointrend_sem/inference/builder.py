"""The inference module: a plain model made fast for inference, explicitly, in one place.

:func:`build_inference_model` takes a model built by ``build_model`` (weights loaded) and the
config, and returns an :class:`InferenceModel`: an eval-only copy of it with every speed-up the
config asks for and the device can run, applied once:

1. batch norms folded into the convolutions before them (``MODEL.FOLD_NORMS``,
   :mod:`.norm_folding`);
2. the backbone and the coarse head cast to ``TEST.PRECISION``'s dtype (bf16, fp16), the
   point head left in fp32 (:mod:`.precision`);
3. on a CPU whose oneDNN runs it in that dtype, each convolution fused with the ReLU or residual
   sum after it (:mod:`.onednn_fusion`).

The model's memory layout (``MODEL.CHANNELS_LAST``) is kept. The copy holds its own weights:
training, a checkpoint load or ``.to()`` on the model leaves it as it was, so it is rebuilt
when the weights change (each evaluation during training builds one). The model itself stays
the plain detectron2 model that training runs and the reference every speed-up is tested
against.

Everything that predicts uses it: :class:`~pointrend_sem.predictor.SemSegPredictor`, the
evaluator (``--eval-only`` and evaluation during training), test-time augmentation, the
benchmark, the demo, ``tools/visualize_points.py`` and export (which traces it).
"""

import copy
import functools
import logging
from typing import Dict, List

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from ..capabilities import DTYPE_NAMES, fused_conv_runs
from ..cpu_memory import return_freed_memory
from .norm_folding import fold_norms_
from .onednn_fusion import fuse_relu_convs_
from .precision import (
    CastInputBackbone,
    Float32CoarseHead,
    fp32_math,
    point_sample_as_float,
    resolve_precision,
)

logger = logging.getLogger(__name__)


@functools.lru_cache(maxsize=None)
def _log_unfused(dtype: torch.dtype) -> None:
    logger.info(
        f"oneDNN's fused convolution does not run in {DTYPE_NAMES[dtype]} here: inference runs "
        "plain convolutions and ReLUs (the same outputs, one more pass over memory)."
    )


class InferenceModel(nn.Module):
    """An eval-only copy of a :class:`~pointrend_sem.modeling.PointRendSemanticSegmentor` with
    its inference speed-ups applied (see the module doc). Called like the model in eval mode
    (``inference_model(batched_inputs)``, :meth:`predict`), under ``torch.no_grad()`` and the
    fp32 mode of its precision (:func:`.precision.fp32_math`); on a CPU a call on images of new
    sizes ends by handing freed memory back to the system (:meth:`_return_freed_memory`).

    Attributes:
        model: the rewritten copy (a ``PointRendSemanticSegmentor``, in eval mode).
        precision: ``TEST.PRECISION`` as given ("fp32", "tf32", "bf16", "fp16", "auto").
        dtype: the dtype the backbone and coarse head run in.
        folded_norms, fused_convs: how many norms were folded, convolutions fused.
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        precision: str = "fp32",
        fold_norms: bool = True,
        fuse_convs: bool = True,
    ):
        """
        Args:
            model: the plain model (unwrapped from DistributedDataParallel if wrapped); it is
                copied, not changed.
            precision: ``TEST.PRECISION``; refused in one line (``UserValueError``) where the
                model's device cannot run it.
            fold_norms: fold batch norms (``MODEL.FOLD_NORMS``).
            fuse_convs: fuse convolutions with their ReLU / residual sum where oneDNN runs that
                (a CPU only; needs ``fold_norms``).
        """
        super().__init__()
        if isinstance(model, DistributedDataParallel):
            model = model.module
        device = model.device
        reduced = resolve_precision(precision, device)
        self.precision = precision
        self.dtype = reduced or torch.float32
        self._last_shapes = None  # of the images of the last pass (_return_freed_memory)
        with torch.no_grad():
            self.model = copy.deepcopy(model).eval()
            for param in self.model.parameters():
                param.requires_grad_(False)
            self.folded_norms = fold_norms_(self.model) if fold_norms else 0
            self.fused_convs = 0
            head = self.model.sem_seg_head
            if reduced is not None:
                self.model.backbone = CastInputBackbone(self.model.backbone.to(reduced), reduced)
                head.coarse_sem_seg_head = Float32CoarseHead(head.coarse_sem_seg_head.to(reduced))
                head.sample_point_features = point_sample_as_float
            if fuse_convs and fold_norms and device.type == "cpu":
                if fused_conv_runs(self.dtype):
                    self.fused_convs = fuse_relu_convs_(self.model.backbone)
                    self.fused_convs += fuse_relu_convs_(head.coarse_sem_seg_head)
                else:
                    _log_unfused(self.dtype)
        super().train(False)

    def train(self, mode: bool = True) -> "InferenceModel":
        """Stays in eval mode: an inference module has no training mode (detectron2's
        ``inference_context`` may call ``train()`` on it)."""
        return self

    @property
    def device(self) -> torch.device:
        return self.model.device

    def describe(self) -> str:
        """One line: what this module runs."""
        return (
            f"inference in {DTYPE_NAMES[self.dtype]} (TEST.PRECISION {self.precision}), "
            f"{self.folded_norms} norms folded, {self.fused_convs} convolutions fused"
        )

    def forward(self, batched_inputs: List[Dict]) -> List[Dict[str, torch.Tensor]]:
        """The model's ``forward`` in eval mode: ``batched_inputs`` as detectron2's data loaders
        give them; returns per image "sem_seg" (and "coarse_sem_seg") logits."""
        with torch.no_grad(), fp32_math(self.precision, self.device):
            outputs = self.model(batched_inputs)
        self._return_freed_memory([x["image"] for x in batched_inputs])
        return outputs

    def predict(self, images, output_sizes=None, trace=None) -> List[Dict[str, torch.Tensor]]:
        """The model's :meth:`~pointrend_sem.modeling.PointRendSemanticSegmentor.predict`: the
        same arguments (images (3, H_i, W_i) in the input format, optional output sizes and
        :class:`~pointrend_sem.modeling.SubdivisionTrace`), the same outputs."""
        with torch.no_grad(), fp32_math(self.precision, self.device):
            outputs = self.model.predict(images, output_sizes, trace)
        self._return_freed_memory(images)
        return outputs

    def _return_freed_memory(self, images) -> None:
        """On a CPU, after a pass on images of other sizes than the pass before, hand what glibc
        holds free back to the system: feature maps of a new size leave holes in its heaps that
        it does not trim on its own, and with varying sizes resident memory would keep growing
        (:func:`pointrend_sem.cpu_memory.return_freed_memory`; no allocator setting changes).
        Passes at the size of the one before reuse those holes and trim nothing."""
        shapes = tuple(tuple(image.shape) for image in images)
        if self.device.type == "cpu" and shapes != self._last_shapes:
            return_freed_memory()
        self._last_shapes = shapes


def build_inference_model(model: nn.Module, cfg, **overrides) -> InferenceModel:
    """The :class:`InferenceModel` of ``model`` for ``cfg``: ``TEST.PRECISION`` and
    ``MODEL.FOLD_NORMS``; ``overrides`` replace those (``precision=...``, ``fold_norms=...``,
    ``fuse_convs=...``). Build it after the weights are loaded, and again after they change."""
    options = {"precision": cfg.TEST.PRECISION, "fold_norms": cfg.MODEL.FOLD_NORMS}
    options.update(overrides)
    inference_model = InferenceModel(model, **options)
    logger.debug(inference_model.describe())
    return inference_model
