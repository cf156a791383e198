"""A synthetic semantic segmentation dataset, generated deterministically on first use.

Images show textured shapes with sharp (rectangles, triangles) and curved (ellipses, rings)
boundaries over a textured background; some regions are marked ignore (255). Files are cached
under ``$DETECTRON2_DATASETS/synthetic_shapes/{images,labels}/{train,val}/``.
"""

import fcntl
import os
import shutil
from typing import Dict, List

import cv2
import numpy as np
from detectron2.data import DatasetCatalog, MetadataCatalog

from .paths import datasets_root

SYNTHETIC_CLASSES = ["background", "ellipse", "rectangle", "triangle", "ring"]
SYNTHETIC_COLORS = [[40, 40, 40], [230, 80, 60], [60, 170, 80], [70, 110, 230], [230, 200, 50]]
# split -> (number of images, seed)
SYNTHETIC_SPLITS = {"train": (240, 0), "val": (40, 1)}
IMAGE_SIZE = 128
IGNORE_LABEL = 255
_VERSION = "1"  # bump when the generator changes, so caches are regenerated


def _texture(rng: np.random.Generator, kind: int, size: int, base_hue: int) -> np.ndarray:
    """An RGB texture (size, size, 3) uint8 of one class: its hue band and its pattern."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    angle = rng.uniform(0, np.pi)
    period = rng.uniform(5, 12)
    phase = xx * np.cos(angle) + yy * np.sin(angle)
    if kind == 0:  # smooth gradient
        pattern = 0.5 + 0.5 * np.sin(phase / (size / 2))
    elif kind == 1:  # stripes
        pattern = 0.5 + 0.5 * np.sign(np.sin(2 * np.pi * phase / period))
    elif kind == 2:  # checkerboard
        pattern = ((xx // (period / 2) + yy // (period / 2)) % 2).astype(np.float32)
    elif kind == 3:  # blotchy noise
        noise = rng.random((size // 8, size // 8)).astype(np.float32)
        pattern = cv2.resize(noise, (size, size), interpolation=cv2.INTER_CUBIC)
    else:  # concentric waves
        pattern = 0.5 + 0.5 * np.sin(np.hypot(xx - size / 2, yy - size / 2) / period * 2 * np.pi)
    hsv = np.empty((size, size, 3), np.uint8)
    hsv[..., 0] = (base_hue + rng.integers(-8, 9)) % 180
    hsv[..., 1] = np.clip(120 + 100 * pattern, 0, 255)
    hsv[..., 2] = np.clip(90 + 140 * pattern * rng.uniform(0.6, 1.0), 0, 255)
    image = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB).astype(np.int16)
    image += rng.normal(0, 8, image.shape).astype(np.int16)
    return np.clip(image, 0, 255).astype(np.uint8)


def _shape_mask(rng: np.random.Generator, class_id: int, size: int) -> np.ndarray:
    """A (size, size) bool mask of one randomly placed shape of ``class_id``."""
    mask = np.zeros((size, size), np.uint8)
    cx, cy = rng.integers(size // 6, size - size // 6, 2)
    radius = int(rng.integers(size // 10, size // 4))
    angle = float(rng.uniform(0, 180))
    if class_id == 1:  # ellipse
        axes = (radius, int(radius * rng.uniform(0.4, 1.0)))
        cv2.ellipse(mask, (int(cx), int(cy)), axes, angle, 0, 360, 1, -1)
    elif class_id == 2:  # rotated rectangle
        w, h = radius * 2, int(radius * 2 * rng.uniform(0.4, 1.0))
        box = cv2.boxPoints(((float(cx), float(cy)), (w, h), angle)).astype(np.int32)
        cv2.fillPoly(mask, [box], 1)
    elif class_id == 3:  # triangle
        angles = np.deg2rad(angle + np.array([0, 120, 240]) + rng.uniform(-25, 25, 3))
        pts = np.stack([cx + radius * np.cos(angles), cy + radius * np.sin(angles)], 1)
        cv2.fillPoly(mask, [pts.astype(np.int32)], 1)
    else:  # ring
        cv2.circle(mask, (int(cx), int(cy)), radius, 1, -1)
        cv2.circle(mask, (int(cx), int(cy)), max(2, int(radius * rng.uniform(0.4, 0.7))), 0, -1)
    return mask.astype(bool)


def render_sample(seed: int, size: int = IMAGE_SIZE):
    """One image and its label, a pure function of ``seed``.

    Returns:
        image: (size, size, 3) uint8 RGB.
        label: (size, size) uint8, class ids in [0, 5) and 255 for ignore.
    """
    rng = np.random.default_rng(seed)
    hues = [100, 0, 60, 120, 28]  # one hue band per class (OpenCV hue, 0..180)
    image = _texture(rng, 0, size, hues[0])
    label = np.zeros((size, size), np.uint8)
    for _ in range(int(rng.integers(2, 6))):
        class_id = int(rng.integers(1, len(SYNTHETIC_CLASSES)))
        mask = _shape_mask(rng, class_id, size)
        texture = _texture(rng, class_id, size, hues[class_id])
        image[mask] = texture[mask]
        label[mask] = class_id
    if rng.random() < 0.3:  # an unlabeled patch, as annotators leave them
        x0, y0 = rng.integers(0, size - size // 5, 2)
        side = int(rng.integers(size // 10, size // 5))
        label[y0 : y0 + side, x0 : x0 + side] = IGNORE_LABEL
    return image, label


def generate_split(directory: str, split: str, num_images: int, seed: int, size: int) -> None:
    """Write ``images/<split>/NNNN.png`` and ``labels/<split>/NNNN.png`` under ``directory``."""
    os.makedirs(os.path.join(directory, "images", split), exist_ok=True)
    os.makedirs(os.path.join(directory, "labels", split), exist_ok=True)
    for i in range(num_images):
        image, label = render_sample(seed * 1_000_003 + i, size)
        cv2.imwrite(os.path.join(directory, "images", split, f"{i:04d}.png"), image[:, :, ::-1])
        cv2.imwrite(os.path.join(directory, "labels", split, f"{i:04d}.png"), label)


def ensure_synthetic_split(root: str, split: str) -> str:
    """Generate the split under ``root/synthetic_shapes`` unless cached; return that folder.

    Safe when several processes call it at once (a file lock serializes them), and an
    interrupted generation is redone: the split counts as cached only once its marker exists.
    """
    target = os.path.join(root, "synthetic_shapes")
    marker = os.path.join(target, f".{split}_v{_VERSION}")
    if os.path.exists(marker):
        return target
    os.makedirs(target, exist_ok=True)
    with open(os.path.join(target, ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if os.path.exists(marker):
            return target
        num_images, seed = SYNTHETIC_SPLITS[split]
        for sub in ("images", "labels"):
            shutil.rmtree(os.path.join(target, sub, split), ignore_errors=True)
        generate_split(target, split, num_images, seed, IMAGE_SIZE)
        open(marker, "w").close()
    return target


def load_synthetic_split(split: str) -> List[Dict]:
    """Dataset dicts of one split, generating the files on first use."""
    folder = ensure_synthetic_split(datasets_root(), split)
    num_images = SYNTHETIC_SPLITS[split][0]
    return [
        {
            "file_name": os.path.join(folder, "images", split, f"{i:04d}.png"),
            "sem_seg_file_name": os.path.join(folder, "labels", split, f"{i:04d}.png"),
            "height": IMAGE_SIZE,
            "width": IMAGE_SIZE,
        }
        for i in range(num_images)
    ]


def register_synthetic() -> None:
    for split in SYNTHETIC_SPLITS:
        name = f"synthetic_shapes_sem_seg_{split}"
        DatasetCatalog.register(name, lambda split=split: load_synthetic_split(split))
        MetadataCatalog.get(name).set(
            stuff_classes=SYNTHETIC_CLASSES,
            stuff_colors=SYNTHETIC_COLORS,
            ignore_label=IGNORE_LABEL,
            evaluator_type="sem_seg",
        )


register_synthetic()
