"""Test-time augmentation for semantic segmentation: multi-scale + horizontal flip.

detectron2's own TTA covers R-CNN models only. This wrapper runs the model (PointRend
subdivision included) on every scale and flip of an image and averages the class
probabilities at the original resolution, as mmsegmentation's ``SegTTAModel`` does.
"""

from typing import Dict, List, Sequence, Tuple

import numpy as np
import torch
from detectron2.data import transforms as T
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from .data.augmentations import build_test_resize
from .inference import InferenceModel, build_inference_model

OUTPUT_KEYS = ("sem_seg", "coarse_sem_seg")


class SemanticSegmentorWithTTA(nn.Module):
    """Wrap a semantic segmentor with multi-scale + flip test-time augmentation.

    Input dicts carry the image at its ORIGINAL size (the TTA test loader does not resize);
    scale r resizes it with the test rule at ``r`` times the base size: short side
    ``r * MIN_SIZE_TEST``, long side at most ``r * MAX_SIZE_TEST``, with the recipe's resize
    (``INPUT.RESIZE_BACKEND``):

    * "opencv": mmsegmentation 0.x's ``MultiScaleFlipAug(img_scale, img_ratios)`` +
      ``Resize(keep_ratio=True)``, which produced its published ms+flip numbers: the target
      ``(int(MAX_SIZE_TEST * r), int(MIN_SIZE_TEST * r))``, then ``mmcv.imrescale`` (OpenCV
      bilinear, mmcv's rounding of the new size);
    * "detectron2": ``ResizeShortestEdge(int(r * MIN_SIZE_TEST + 0.5),
      int(r * MAX_SIZE_TEST + 0.5))`` (PIL, detectron2's rounding).

    The views of one scale are predicted as one batch by the wrapped model's
    :meth:`~pointrend_sem.modeling.PointRendSemanticSegmentor.predict`, which resizes the logits
    back to the original size (``TEST.OUTPUT_RESIZE``); their softmax probabilities are flipped
    back and averaged.

    Output: one dict per image with "sem_seg" (C, H, W) — the mean class probabilities over all
    augmented views, at the original size — and "coarse_sem_seg" likewise when the wrapped
    model returns it.
    """

    def __init__(
        self,
        model: nn.Module,
        scale_ratios: Sequence[float],
        flip: bool,
        min_size: int,
        max_size: int,
        resize_backend: str = "detectron2",
    ):
        """
        Args:
            model: an :class:`~pointrend_sem.inference.InferenceModel`, a
                :class:`~pointrend_sem.modeling.PointRendSemanticSegmentor`, or a module with
                their ``predict(images, output_sizes)`` returning, per image, "sem_seg"
                (C, H_out, W_out) logits; taken out of DistributedDataParallel.
            scale_ratios: e.g. (0.5, 0.75, 1.0, 1.25, 1.5, 1.75).
            flip: also run each scale on the horizontally flipped image.
            min_size, max_size: the base test size (INPUT.MIN_SIZE_TEST / MAX_SIZE_TEST).
            resize_backend: "detectron2" or "opencv" (INPUT.RESIZE_BACKEND).
        """
        super().__init__()
        if isinstance(model, DistributedDataParallel):
            model = model.module
        self.model = model
        self.scale_ratios = tuple(scale_ratios)
        self.flip = flip
        self.min_size = min_size
        self.max_size = max_size
        self.resize_backend = resize_backend
        build_test_resize(min_size, max_size, resize_backend)  # refuses an unknown backend

    @classmethod
    def from_config(cls, cfg, model: nn.Module) -> "SemanticSegmentorWithTTA":
        """TTA of ``cfg`` (``TEST.AUG``) over the inference module of ``model`` (built here from
        the plain model, :mod:`pointrend_sem.inference`; an inference module is used as it is)."""
        if not isinstance(model, InferenceModel):
            model = build_inference_model(model, cfg)
        return cls(
            model,
            cfg.TEST.AUG.SCALE_RATIOS,
            cfg.TEST.AUG.FLIP,
            cfg.INPUT.MIN_SIZE_TEST,
            cfg.INPUT.MAX_SIZE_TEST,
            cfg.INPUT.RESIZE_BACKEND,
        )

    def resize_of(self, ratio: float) -> T.Augmentation:
        """The resize of the view at scale ``ratio`` (see the class docstring)."""
        if self.resize_backend == "opencv":
            short, long = int(self.min_size * ratio), int(self.max_size * ratio)
        else:
            short, long = int(self.min_size * ratio + 0.5), int(self.max_size * ratio + 0.5)
        return build_test_resize(short, long, self.resize_backend)

    def _views(self, inputs: Dict) -> List[List[Tuple[Dict, bool]]]:
        """Augmented inputs of one image with their flip flag, grouped by scale (a group is
        run as one batch)."""
        image = inputs["image"]
        height = inputs.get("height", image.shape[1])
        width = inputs.get("width", image.shape[2])
        groups = []
        hwc = np.ascontiguousarray(image.permute(1, 2, 0).cpu().numpy())
        for ratio in self.scale_ratios:
            resized = self.resize_of(ratio).get_transform(hwc).apply_image(hwc)
            scaled = torch.as_tensor(resized.transpose(2, 0, 1).copy())
            group = [({"image": scaled, "height": height, "width": width}, False)]
            if self.flip:
                group.append(({"image": scaled.flip(-1), "height": height, "width": width}, True))
            groups.append(group)
        return groups

    @torch.no_grad()
    def forward(self, batched_inputs: List[Dict]) -> List[Dict]:
        """
        Args:
            batched_inputs: dicts with "image" (3, H, W) at the original size in the input
                format, and optionally "height", "width" (the output size, default H, W).

        Returns:
            per image, the mean probabilities described in the class docstring.
        """
        results = []
        for inputs in batched_inputs:
            sums: Dict[str, torch.Tensor] = {}
            count = 0
            for group in self._views(inputs):
                outputs = self.model.predict(
                    [view["image"] for view, _ in group],
                    [(view["height"], view["width"]) for view, _ in group],
                )
                for (_, flipped), output in zip(group, outputs):
                    for key in OUTPUT_KEYS:
                        if key not in output:
                            continue
                        probs = output[key].softmax(dim=0)
                        if flipped:
                            probs = probs.flip(-1)
                        sums[key] = sums[key] + probs if key in sums else probs
                    count += 1
            results.append({key: total / count for key, total in sums.items()})
        return results
