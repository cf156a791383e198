#!/usr/bin/env python
"""Make the labels of detectron2's ``ade20k_sem_seg_{train,val}`` from the official archive.

Unzip ``ADEChallengeData2016.zip`` (the SceneParsing benchmark, http://sceneparsing.csail.mit.edu)
under the datasets root, then run::

    python datasets/prepare_ade20k.py [--root DIR] [--workers N]

Input: ``DIR/ADEChallengeData2016/{images,annotations}/{training,validation}/``, labels 0
("other") and 1..150. Output: ``DIR/ADEChallengeData2016/annotations_detectron2/<split>/``, the
same PNGs with 0 -> 255 (ignored) and k -> k - 1, as detectron2 reads them. ``DIR`` defaults to
``$DETECTRON2_DATASETS`` (itself ``datasets`` by default).

The shift is applied exactly once: the official files are never modified, an output that exists
is never rewritten (outputs appear atomically, so an interrupted run leaves no half file), and a
second run converts nothing and says so.
"""

import glob
import os
import sys
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image
from preparation import prepare, run_in_pool

SPLITS = ("training", "validation")
NUM_CLASSES = 150
IGNORE_LABEL = 255


def convert_ade20k_label(label: np.ndarray) -> np.ndarray:
    """Shift one official ADE20K label map to detectron2's convention.

    Args:
        label: (H, W) integer array, 0 for "other" and 1..150 for the classes.

    Returns:
        (H, W) uint8: 255 where ``label`` is 0, ``label - 1`` elsewhere (0..149).

    Raises:
        ValueError: on a value above 150, e.g. the 255 of a map that was already converted;
            converting twice fails instead of shifting the classes again.
    """
    if label.ndim != 2:
        raise ValueError(f"expected an (H, W) label map, got shape {label.shape}")
    if label.size and (label.min() < 0 or label.max() > NUM_CLASSES):
        raise ValueError(
            f"ADE20K labels are 0..{NUM_CLASSES}, found {label.min()}..{label.max()}: "
            "not an official annotation (already converted?)"
        )
    shifted = label.astype(np.int32) - 1
    return np.where(label == 0, IGNORE_LABEL, shifted).astype(np.uint8)


def convert_file(paths: Tuple[str, str]) -> bool:
    """Convert the official annotation ``src`` into ``dst`` unless ``dst`` exists.

    Returns True when ``dst`` was written. ``dst`` appears atomically (written under a hidden
    temporary name, then renamed).
    """
    src, dst = paths
    if os.path.exists(dst):
        return False
    try:
        converted = convert_ade20k_label(np.asarray(Image.open(src)))
    except ValueError as e:
        raise ValueError(f"{src}: {e}") from e
    tmp = os.path.join(os.path.dirname(dst), f".tmp-{os.getpid()}-{os.path.basename(dst)}")
    try:
        Image.fromarray(converted).save(tmp)
        os.replace(tmp, dst)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return True


def list_jobs(ade_root: str, split: str) -> List[Tuple[str, str]]:
    """``(official annotation, converted annotation)`` pairs of one split, sorted."""
    src_dir = os.path.join(ade_root, "annotations", split)
    dst_dir = os.path.join(ade_root, "annotations_detectron2", split)
    return [
        (src, os.path.join(dst_dir, os.path.basename(src)))
        for src in sorted(glob.glob(os.path.join(src_dir, "*.png")))
    ]


def count_files(ade_root: str) -> Dict[str, Tuple[int, int]]:
    """``split -> (number of images, number of converted annotations)``."""
    return {
        split: (
            len(glob.glob(os.path.join(ade_root, "images", split, "*.jpg"))),
            len(glob.glob(os.path.join(ade_root, "annotations_detectron2", split, "*.png"))),
        )
        for split in SPLITS
    }


def run(ade_root: str, workers: int) -> int:
    """Convert every annotation of ``ade_root`` not converted yet; return how many were."""
    written = 0
    for split in SPLITS:
        jobs = [job for job in list_jobs(ade_root, split) if not os.path.exists(job[1])]
        if not jobs:
            continue
        os.makedirs(os.path.dirname(jobs[0][1]), exist_ok=True)
        written += sum(run_in_pool(convert_file, jobs, workers, desc=split, chunksize=32))
    return written


def convert_missing(ade_root: str, workers: int) -> str:
    """Convert what :func:`run` converts; say what was done."""
    written = run(ade_root, workers)
    destination = f"{ade_root}/annotations_detectron2"
    if written:
        return f"Converted {written} annotations into {destination}."
    return f"Nothing to do: every annotation is already in {destination}."


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Convert, then print the number of images and labels per split."""
    fix = "unzip ADEChallengeData2016.zip there."
    name = "ADEChallengeData2016"
    return prepare(argv, __doc__, name, "annotations", fix, convert_missing, count_files)


if __name__ == "__main__":
    sys.exit(main())
