"""Semantic segmentor that lets PointRend spend its points inside each image."""

from typing import Dict, List

import torch
from detectron2.config import configurable
from detectron2.modeling import META_ARCH_REGISTRY, SemanticSegmentor
from detectron2.structures import ImageList
from torch.nn import functional as F


def postprocess_logits(
    logits: torch.Tensor, padded_size, image_size, output_height: int, output_width: int
) -> torch.Tensor:
    """Bring logits predicted over a padded batch back to one image's original size.

    Args:
        logits: (C, h, w) logits covering the padded input of size ``padded_size`` at any stride.
        padded_size: (H_pad, W_pad) of the padded batch tensor.
        image_size: (H_img, W_img) of this image inside the padded tensor.
        output_height, output_width: the size to return (the image's original size).

    Returns:
        (C, output_height, output_width) logits.
    """
    logits = logits.unsqueeze(0)
    if tuple(logits.shape[-2:]) != tuple(padded_size):
        logits = F.interpolate(logits, size=padded_size, mode="bilinear", align_corners=False)
    logits = logits[:, :, : image_size[0], : image_size[1]]
    if (output_height, output_width) != tuple(image_size):
        logits = F.interpolate(
            logits, size=(output_height, output_width), mode="bilinear", align_corners=False
        )
    return logits[0]


@META_ARCH_REGISTRY.register()
class PointRendSemanticSegmentor(SemanticSegmentor):
    """detectron2's :class:`SemanticSegmentor` with two additions for PointRend heads:

    * at inference the head learns which part of the padded batch each image covers, so
      subdivision points are not wasted on padding (a batch of differently sized images gives
      each image its full point budget);
    * predictions at any output stride are resized to the padded input before cropping, so a
      SUBDIVISION_STEPS that does not reach stride 1 still yields the input's size;
    * with ``MODEL.POINTREND_SEM.OUTPUT_COARSE`` it also returns the coarse prediction.
    """

    @configurable
    def __init__(self, *, output_coarse: bool = False, **kwargs):
        super().__init__(**kwargs)
        self.output_coarse = output_coarse

    @classmethod
    def from_config(cls, cfg):
        ret = super().from_config(cfg)
        ret["output_coarse"] = cfg.MODEL.POINTREND_SEM.OUTPUT_COARSE
        return ret

    def preprocess_image(self, batched_inputs: List[Dict]) -> ImageList:
        """Normalize and pad the images of a batch into one (N, 3, H_pad, W_pad) tensor."""
        images = [
            (x["image"].to(self.device) - self.pixel_mean) / self.pixel_std for x in batched_inputs
        ]
        return ImageList.from_tensors(
            images,
            self.backbone.size_divisibility,
            padding_constraints=self.backbone.padding_constraints,
        )

    def forward(self, batched_inputs: List[Dict]):
        """
        Args:
            batched_inputs: dicts with "image" (3, H, W) in the input format, "sem_seg" (H, W)
                long labels for training, and optionally "height", "width" (output size).

        Returns:
            training: dict of losses.
            inference: one dict per image with "sem_seg" (C, height, width) logits, and
            "coarse_sem_seg" likewise when ``output_coarse``.
        """
        if self.training:
            return super().forward(batched_inputs)
        images = self.preprocess_image(batched_inputs)
        features = self.backbone(images.tensor)
        padded_size = images.tensor.shape[-2:]
        sizes = torch.tensor(images.image_sizes, dtype=torch.float32, device=self.device)
        valid_fraction = sizes / torch.tensor(padded_size, dtype=torch.float32, device=self.device)
        refined, coarse = self.sem_seg_head.inference(features, valid_fraction)

        results = []
        for i, (inputs, image_size) in enumerate(zip(batched_inputs, images.image_sizes)):
            height = inputs.get("height", image_size[0])
            width = inputs.get("width", image_size[1])
            result = {
                "sem_seg": postprocess_logits(refined[i], padded_size, image_size, height, width)
            }
            if self.output_coarse:
                result["coarse_sem_seg"] = postprocess_logits(
                    coarse[i], padded_size, image_size, height, width
                )
            results.append(result)
        return results
