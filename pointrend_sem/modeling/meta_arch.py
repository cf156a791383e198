"""Semantic segmentor that lets PointRend spend its points inside each image."""

from typing import Dict, List, Optional, Tuple

import torch
from detectron2.config import configurable
from detectron2.modeling import META_ARCH_REGISTRY, SemanticSegmentor
from detectron2.structures import ImageList
from torch.nn import functional as F

from .conv_norm_folding import fold_norms_in_inference


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


def sliding_windows(height: int, width: int, crop_size, stride) -> List[Tuple[int, int, int, int]]:
    """Windows (y1, y2, x1, x2) covering an image, mmsegmentation's ``slide`` layout: a grid
    every ``stride`` pixels, the last window of each row/column moved back inside the image.
    A dimension smaller than the crop gets one window of the image's size."""
    crop_h, crop_w = crop_size
    stride_h, stride_w = stride
    rows = max(height - crop_h + stride_h - 1, 0) // stride_h + 1
    cols = max(width - crop_w + stride_w - 1, 0) // stride_w + 1
    windows = []
    for row in range(rows):
        for col in range(cols):
            y2, x2 = min(row * stride_h + crop_h, height), min(col * stride_w + crop_w, width)
            windows.append((max(y2 - crop_h, 0), y2, max(x2 - crop_w, 0), x2))
    return windows


@META_ARCH_REGISTRY.register()
class PointRendSemanticSegmentor(SemanticSegmentor):
    """detectron2's :class:`SemanticSegmentor` with additions for PointRend heads:

    * at inference the head learns which part of the padded batch each image covers, so
      subdivision points are not wasted on padding (a batch of differently sized images gives
      each image its full point budget);
    * predictions at any output stride are resized to the padded input before cropping, so a
      SUBDIVISION_STEPS that does not reach stride 1 still yields the input's size;
    * optional sliding-window inference (``TEST.SLIDING_WINDOW``);
    * with ``MODEL.POINTREND_SEM.OUTPUT_COARSE`` it also returns the coarse prediction.
    """

    @configurable
    def __init__(
        self,
        *,
        output_coarse: bool = False,
        sliding_window: Optional[Tuple[Tuple[int, int], Tuple[int, int]]] = None,
        channels_last: bool = False,
        fold_norms: bool = False,
        **kwargs,
    ):
        """
        Args:
            output_coarse: also return "coarse_sem_seg".
            sliding_window: ((crop_h, crop_w), (stride_h, stride_w)), or None for whole-image
                inference.
            channels_last: keep conv weights and feature maps in channels-last (NHWC) memory
                layout, which oneDNN (CPU) and cuDNN run faster; values are unchanged up to
                float rounding.
            fold_norms: in inference, fold batch norms into the preceding convolutions
                (:mod:`.conv_norm_folding`); values are unchanged up to float rounding.
            kwargs: see :class:`SemanticSegmentor`.
        """
        super().__init__(**kwargs)
        self.output_coarse = output_coarse
        self.sliding_window = sliding_window
        self.channels_last = channels_last
        if channels_last:
            self.to(memory_format=torch.channels_last)
        if fold_norms:
            fold_norms_in_inference(self)

    @classmethod
    def from_config(cls, cfg):
        ret = super().from_config(cfg)
        ret["output_coarse"] = cfg.MODEL.POINTREND_SEM.OUTPUT_COARSE
        ret["channels_last"] = cfg.MODEL.CHANNELS_LAST
        ret["fold_norms"] = cfg.MODEL.FOLD_NORMS
        window = cfg.TEST.SLIDING_WINDOW
        if window.ENABLED:
            ret["sliding_window"] = (tuple(window.CROP_SIZE), tuple(window.STRIDE))
        return ret

    def normalize_images(self, batched_inputs: List[Dict]) -> List[torch.Tensor]:
        """Each input's "image" on the model's device, normalized: (3, H_i, W_i) float."""
        return [
            (x["image"].to(self.device) - self.pixel_mean) / self.pixel_std for x in batched_inputs
        ]

    def pad_images(self, images: List[torch.Tensor]) -> ImageList:
        """Normalized images padded into one (N, 3, H_pad, W_pad) ImageList."""
        return ImageList.from_tensors(
            images,
            self.backbone.size_divisibility,
            padding_constraints=self.backbone.padding_constraints,
        )

    def preprocess_image(self, batched_inputs: List[Dict]) -> ImageList:
        """Normalize and pad the images of a batch into one (N, 3, H_pad, W_pad) ImageList."""
        return self.pad_images(self.normalize_images(batched_inputs))

    def forward(self, batched_inputs: List[Dict]):
        """
        Args:
            batched_inputs: dicts with "image" (3, H, W) in the input format, "sem_seg" (H, W)
                long labels for training, and optionally "height", "width" (output size).

        Returns:
            training: dict of losses.
            inference: one dict per image with "sem_seg" (C, height, width) logits, and
            "coarse_sem_seg" likewise when ``output_coarse``. A one-class (binary) model
            returns two channels, (0, foreground logit), so that argmax gives 1 = foreground.
        """
        if self.training:
            return super().forward(batched_inputs)
        images = self.normalize_images(batched_inputs)
        if self.sliding_window is None:
            predictions = self.predict_images(images)
        else:
            predictions = [self.predict_sliding(image) for image in images]

        results = []
        for inputs, image, logits in zip(batched_inputs, images, predictions):
            height = inputs.get("height", image.shape[-2])
            width = inputs.get("width", image.shape[-1])
            result = {}
            for key, value in logits.items():
                if value.shape[0] == 1:  # binary model: (background 0, foreground logit)
                    value = torch.cat([torch.zeros_like(value), value])
                if tuple(value.shape[-2:]) != (height, width):
                    value = F.interpolate(
                        value[None], size=(height, width), mode="bilinear", align_corners=False
                    )[0]
                result[key] = value
            results.append(result)
        return results

    def predict_images(self, images: List[torch.Tensor]) -> List[Dict[str, torch.Tensor]]:
        """Logits of normalized images, each (3, H_i, W_i), batched with padding.

        Returns:
            per image, "sem_seg" (and "coarse_sem_seg" when ``output_coarse``): (C, H_i, W_i).
        """
        batch = self.pad_images(images)
        tensor = batch.tensor
        if self.channels_last:
            tensor = tensor.contiguous(memory_format=torch.channels_last)
        features = self.backbone(tensor)
        padded_size = tuple(tensor.shape[-2:])
        sizes = torch.tensor(batch.image_sizes, dtype=torch.float32, device=self.device)
        valid_fraction = sizes / torch.tensor(padded_size, dtype=torch.float32, device=self.device)
        refined, coarse = self.sem_seg_head.inference(features, valid_fraction)
        outputs = []
        for i, size in enumerate(batch.image_sizes):
            out = {"sem_seg": postprocess_logits(refined[i], padded_size, size, *size)}
            if self.output_coarse:
                out["coarse_sem_seg"] = postprocess_logits(coarse[i], padded_size, size, *size)
            outputs.append(out)
        return outputs

    def predict_sliding(self, image: torch.Tensor) -> Dict[str, torch.Tensor]:
        """Logits of one normalized (3, H, W) image from overlapping windows, averaged where
        they overlap; each window is a whole-image PointRend inference."""
        (crop_size, stride), (height, width) = self.sliding_window, image.shape[-2:]
        windows = sliding_windows(height, width, crop_size, stride)
        sums: Dict[str, torch.Tensor] = {}
        count = image.new_zeros((height, width))
        for y1, y2, x1, x2 in windows:
            (logits,) = self.predict_images([image[:, y1:y2, x1:x2]])
            for key, value in logits.items():
                if key not in sums:
                    sums[key] = value.new_zeros((value.shape[0], height, width))
                sums[key][:, y1:y2, x1:x2] += value
            count[y1:y2, x1:x2] += 1
        return {key: total / count for key, total in sums.items()}
