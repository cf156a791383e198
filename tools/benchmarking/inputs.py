"""The benchmark image, and detectron2-style model inputs and outputs."""

from typing import Any, Dict, List

import numpy as np
import torch


def random_image(height: int, width: int, seed: int) -> torch.Tensor:
    """A seeded random (3, H, W) uint8 RGB image."""
    rng = np.random.default_rng(seed)
    return torch.from_numpy(rng.integers(0, 256, (3, height, width), dtype=np.uint8))


def in_format(image_rgb: torch.Tensor, input_format: str) -> torch.Tensor:
    """The (3, H, W) RGB image in a model's INPUT.FORMAT ("RGB" or "BGR")."""
    return image_rgb.flip(0).contiguous() if input_format == "BGR" else image_rgb


def detectron2_inputs(image: torch.Tensor, batch_size: int) -> List[Dict[str, Any]]:
    """detectron2 model inputs: the (3, H, W) image ``batch_size`` times, output at its size."""
    height, width = image.shape[-2:]
    return [{"image": image, "height": height, "width": width} for _ in range(batch_size)]


def sem_seg_labels(outputs: List[Dict[str, torch.Tensor]]) -> List[torch.Tensor]:
    """Class ids (H, W) of detectron2-style outputs with "sem_seg" (C, H, W) logits."""
    return [output["sem_seg"].argmax(0) for output in outputs]
