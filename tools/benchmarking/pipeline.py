"""The training input pipeline's throughput per data-loader worker, ours next to mmsegmentation's.

Both pipelines map the same synthetic samples (image PNG + uint8 label PNG, written to a temporary
folder) from file names to the tensors a training step takes, one sample at a time in this
process, as one data-loader worker does (one thread: ``torch.set_num_threads(1)``, as PyTorch sets
in its workers, and ``cv2.setNumThreads(1)``, so that one worker is one core):

* ours: the config's :class:`SemSegDatasetMapper` (``Trainer.build_train_loader``'s mapper):
  image read, label read and check, the config's augmentations (for the Cityscapes recipe:
  random resize, crop with the single-category area rule, flip, photometric distortion), tensors;
* mmsegmentation 1.2.2's train pipeline with the same transforms and parameters, taken from our
  config, built through its registry: ``LoadImageFromFile``, ``LoadAnnotations``,
  ``RandomResize(scale, ratio_range, keep_ratio=True)``, ``RandomCrop(crop_size,
  cat_max_ratio)``, ``RandomFlip(0.5)``, ``PhotoMetricDistortion``, ``PackSegInputs``.

They alternate (ours, theirs, ours, ...) over the samples, after one untimed call each. Before
each call NumPy's and Python's random states are seeded from (seed, sample), the same for both.
Both draw the resize ratio, the crop offsets and the flip with the same NumPy calls in the same
order, so each sample gets the same geometry on both sides ("pipeline_same_labels": the samples
whose label crops are identical) and only the photometric draws differ: the work compared is the
same.
"""

import os
import random
import statistics
import sys
import tempfile
import time
import warnings
from typing import Any, Callable, Dict, List, Tuple

import cv2
import numpy as np
import torch
from tqdm import tqdm

from pointrend_sem.data import SemSegDatasetMapper

Pipeline = Callable[[Dict[str, Any]], Tuple[torch.Tensor, torch.Tensor]]


def write_samples(
    folder: str, num: int, height: int, width: int, num_classes: int, seed: int
) -> List[Tuple[str, str]]:
    """Write ``num`` seeded (image, label) PNG pairs of ``height`` x ``width`` into ``folder``.

    Labels: up to 8 of the ``num_classes`` trainIds in smooth irregular regions, with 255
    (ignore) along the bottom and in some regions, like Cityscapes' ego vehicle and void areas.
    Images: a colour per class, smooth shading and fine noise, so that PNG decoding and the
    resizes see natural-looking content.

    Returns:
        the (image file, label file) paths.
    """
    rng = np.random.default_rng(seed)
    pairs = []
    for index in range(num):
        classes = rng.choice(num_classes, size=min(num_classes, 8), replace=False)
        coarse_size = (max(height // 8, 1), max(width // 8, 1))
        fields = rng.random((len(classes) + 1, 4, 8)).astype(np.float32)
        region = np.stack(
            [cv2.resize(f, coarse_size[::-1], interpolation=cv2.INTER_CUBIC) for f in fields]
        ).argmax(0)
        label = np.append(classes, 255).astype(np.uint8)[region]
        label = cv2.resize(label, (width, height), interpolation=cv2.INTER_NEAREST)
        label[height - height // 8 :] = 255
        palette = rng.integers(0, 256, (256, 3), dtype=np.uint8)
        shading = cv2.resize(rng.random((4, 8), np.float32), (width, height)) * 60 - 30
        noise = rng.integers(-2, 3, (height, width, 1))
        image = palette[label] + (shading[:, :, None] + noise).astype(np.int64)
        image = np.clip(image, 0, 255).astype(np.uint8)
        image_file = os.path.join(folder, f"sample{index}_leftImg8bit.png")
        label_file = os.path.join(folder, f"sample{index}_gtFine_labelTrainIds.png")
        cv2.imwrite(image_file, image)
        cv2.imwrite(label_file, label)
        pairs.append((image_file, label_file))
    return pairs


def our_pipeline(cfg) -> Pipeline:
    """Our training mapper of ``cfg``, as a function of an (image, label) record returning the
    (3, H, W) image and the (H, W) label."""
    mapper = SemSegDatasetMapper(cfg, is_train=True)

    def run(record: Dict[str, Any]) -> Tuple[torch.Tensor, torch.Tensor]:
        out = mapper(record)
        return out["image"], out["sem_seg"]

    return run


def mmseg_transforms(cfg) -> List[Dict[str, Any]]:
    """mmsegmentation's train pipeline config with our ``cfg``'s transforms and parameters.

    Raises:
        SystemExit: ``cfg`` has no mmsegmentation-style resize (INPUT.RANDOM_RESIZE) or no
            absolute crop.
    """
    inp = cfg.INPUT
    if not inp.RANDOM_RESIZE.ENABLED or not (inp.CROP.ENABLED and inp.CROP.TYPE == "absolute"):
        raise SystemExit(
            "--pipeline compares with mmsegmentation's pipeline and needs its recipe: "
            "INPUT.RANDOM_RESIZE.ENABLED True and an 'absolute' INPUT.CROP (e.g. "
            "configs/cityscapes_r50.yaml)."
        )
    transforms = [
        dict(type="LoadImageFromFile"),
        dict(type="LoadAnnotations"),
        dict(
            type="RandomResize",
            scale=tuple(inp.RANDOM_RESIZE.SCALE),
            ratio_range=tuple(inp.RANDOM_RESIZE.RATIO_RANGE),
            keep_ratio=True,
        ),
        dict(
            type="RandomCrop",
            crop_size=tuple(inp.CROP.SIZE),
            cat_max_ratio=inp.CROP.SINGLE_CATEGORY_MAX_AREA,
            ignore_index=cfg.MODEL.SEM_SEG_HEAD.IGNORE_VALUE,
        ),
    ]
    if inp.RANDOM_FLIP != "none":
        transforms.append(dict(type="RandomFlip", prob=0.5, direction=inp.RANDOM_FLIP))
    if inp.PHOTOMETRIC_DISTORTION.ENABLED:
        pd = inp.PHOTOMETRIC_DISTORTION
        transforms.append(
            dict(
                type="PhotoMetricDistortion",
                brightness_delta=pd.BRIGHTNESS_DELTA,
                contrast_range=tuple(pd.CONTRAST_RANGE),
                saturation_range=tuple(pd.SATURATION_RANGE),
                hue_delta=pd.HUE_DELTA,
            )
        )
    transforms.append(dict(type="PackSegInputs"))
    return transforms


def mmseg_pipeline(cfg) -> Pipeline:
    """mmsegmentation's train pipeline (:func:`mmseg_transforms`) through its registry, as a
    function of an (image, label) record returning the (3, H, W) image and the (H, W) label."""
    from .reference_models import install_mmcv_ops_shim

    install_mmcv_ops_shim()
    from mmengine.dataset import Compose
    from mmseg.utils import register_all_modules

    with warnings.catch_warnings():  # mmcv-lite lacks mmcv.cnn's compiled attention: not used
        warnings.simplefilter("ignore", UserWarning)
        register_all_modules(init_default_scope=True)
    pipeline = Compose(mmseg_transforms(cfg))

    def run(record: Dict[str, Any]) -> Tuple[torch.Tensor, torch.Tensor]:
        out = pipeline(record)
        return out["inputs"], out["data_samples"].gt_sem_seg.data[0]

    return run


def _sample_record(name: str, image_file: str, label_file: str, height: int, width: int) -> Dict:
    """The dataset dict each pipeline's dataset gives its pipeline for one sample."""
    if name == "ours":  # detectron2's Cityscapes dicts
        return {
            "file_name": image_file,
            "sem_seg_file_name": label_file,
            "height": height,
            "width": width,
        }
    # mmseg's BaseSegDataset.get_data_info
    return {
        "img_path": image_file,
        "seg_map_path": label_file,
        "reduce_zero_label": False,
        "seg_fields": [],
    }


def _one_thread():
    """Pin torch and OpenCV to one thread; returns a function restoring the previous counts."""
    torch_threads, cv2_threads = torch.get_num_threads(), cv2.getNumThreads()
    torch.set_num_threads(1)
    cv2.setNumThreads(1)

    def restore():
        torch.set_num_threads(torch_threads)
        cv2.setNumThreads(cv2_threads)

    return restore


def time_pipelines(
    pipelines: Dict[str, Pipeline], pairs: List[Tuple[str, str]], height: int, width: int, seed: int
) -> Tuple[Dict[str, Dict[str, Any]], int]:
    """Call the pipelines in turn on each of the ``height`` x ``width`` samples ``pairs``, after
    one untimed call each on the first sample; NumPy and ``random`` seeded alike before each call.

    Returns:
        per pipeline name: "seconds" (one per call) and "crops" (the sorted distinct "HxW" of the
        images it returned); and the number of samples whose labels all pipelines returned equal.

    Raises:
        RuntimeError: a pipeline returned an image and a label of different sizes.
    """
    records = {name: {"seconds": [], "crops": set()} for name in pipelines}

    def call(name: str, index: int) -> Tuple[float, torch.Tensor]:
        np.random.seed([seed, index])
        random.seed(f"{seed}-{index}")
        sample = _sample_record(name, *pairs[index], height, width)
        start = time.perf_counter()
        image, label = pipelines[name](sample)
        seconds = time.perf_counter() - start
        if tuple(image.shape[-2:]) != tuple(label.shape[-2:]):
            raise RuntimeError(
                f"{name}'s pipeline gave a {tuple(image.shape)} image with a "
                f"{tuple(label.shape)} label."
            )
        records[name]["crops"].add("x".join(map(str, image.shape[-2:])))
        return seconds, label

    same_labels = 0
    restore = _one_thread()
    try:
        for name in pipelines:
            call(name, 0)
        for index in tqdm(range(len(pairs)), desc="input pipeline", file=sys.stderr):
            labels = []
            for name in pipelines:
                seconds, label = call(name, index)
                records[name]["seconds"].append(seconds)
                labels.append(label)
            same_labels += all(torch.equal(labels[0], label) for label in labels[1:])
    finally:
        restore()
    for record in records.values():
        record["crops"] = sorted(record["crops"])
    return records, same_labels


def mmseg_available() -> bool:
    """Whether mmsegmentation (and mmcv, mmengine) can be imported."""
    try:
        import mmcv  # noqa: F401
        import mmengine  # noqa: F401
        import mmseg  # noqa: F401
    except ImportError:
        return False
    return True


def measure_pipeline(cfg, num_samples: int, height: int, width: int, seed: int) -> Dict[str, Any]:
    """Images/s of our training pipeline for ``cfg`` and of mmsegmentation's with the same
    transforms (when mmsegmentation is installed) on ``num_samples`` synthetic samples of
    ``height`` x ``width``, one worker (one thread) each; see the module's docstring.

    Returns:
        "pipeline_*" fields: images/s and median ms per sample of each, the crops they gave,
        their speed ratio (ours / mmsegmentation's images/s: > 1 is faster), the fraction of
        samples whose label crops are identical in both, and every timing.
    """
    if num_samples < 1:
        raise SystemExit("--pipeline-samples must be >= 1.")
    pipelines = {"ours": our_pipeline(cfg)}
    fields: Dict[str, Any] = {
        "pipeline_samples": num_samples,
        "pipeline_image": f"{height}x{width}",
    }
    if mmseg_available():
        pipelines["mmseg"] = mmseg_pipeline(cfg)
        fields["pipeline_reference"] = "mmsegmentation"
    else:
        fields["pipeline_reference"] = "unavailable: mmsegmentation is not installed"
    with tempfile.TemporaryDirectory(prefix="pipeline_benchmark_") as folder:
        pairs = write_samples(
            folder, num_samples, height, width, cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES, seed
        )
        records, same_labels = time_pipelines(pipelines, pairs, height, width, seed)
    for name, record in records.items():
        prefix = "pipeline_" if name == "ours" else "pipeline_reference_"
        seconds = record["seconds"]
        fields[f"{prefix}crop"] = ", ".join(record["crops"])
        fields[f"{prefix}images_per_s"] = len(seconds) / sum(seconds)
        fields[f"{prefix}median_ms"] = 1000.0 * statistics.median(seconds)
        fields[f"{prefix}runs_ms"] = [1000.0 * s for s in seconds]
    if "mmseg" in records:
        fields["pipeline_speed_ratio"] = (
            fields["pipeline_images_per_s"] / fields["pipeline_reference_images_per_s"]
        )
        fields["pipeline_same_labels"] = same_labels / num_samples
    return fields
