#!/usr/bin/env python
"""Make the labels of detectron2's ``cityscapes_fine_sem_seg_{train,val,test}`` from the archives.

Unzip ``leftImg8bit_trainvaltest.zip`` and ``gtFine_trainvaltest.zip``
(https://www.cityscapes-dataset.com/downloads/) into ``DIR/cityscapes/``, then run::

    python datasets/prepare_cityscapes.py [--root DIR] [--workers N]

For every ``gtFine/<split>/<city>/<name>_gtFine_polygons.json`` this draws, with the public
``cityscapesscripts`` (``json2labelImg`` in "trainIds" encoding), the
``<name>_gtFine_labelTrainIds.png`` next to it: the 19 classes as 0..18, the rest 255. ``DIR``
defaults to ``$DETECTRON2_DATASETS`` (itself ``datasets`` by default).

Runs are idempotent: a label that exists is never redrawn (labels appear atomically, so an
interrupted run leaves no half file), and a second run draws nothing and says so.
"""

import glob
import os
import sys
from typing import Dict, List, Optional, Sequence, Tuple

from cityscapesscripts.preparation.json2labelImg import json2labelImg
from preparation import prepare, run_in_pool

SPLITS = ("train", "val", "test")
IMAGE_SUFFIX = "_leftImg8bit.png"
POLYGONS_SUFFIX = "_gtFine_polygons.json"
TRAIN_IDS_SUFFIX = "_gtFine_labelTrainIds.png"


def train_ids_path(polygons_json: str) -> str:
    """``<name>_gtFine_polygons.json`` -> ``<name>_gtFine_labelTrainIds.png``, same folder."""
    if not polygons_json.endswith(POLYGONS_SUFFIX):
        raise ValueError(f"not a Cityscapes polygon file: {polygons_json}")
    return polygons_json[: -len(POLYGONS_SUFFIX)] + TRAIN_IDS_SUFFIX


def make_train_ids_label(polygons_json: str) -> bool:
    """Draw the trainId label of one polygon file unless it exists; True when it was drawn.

    Raises:
        RuntimeError: when ``cityscapesscripts`` rejects the file (it would otherwise exit the
            process, e.g. on an unknown label name).
    """
    dst = train_ids_path(polygons_json)
    if os.path.exists(dst):
        return False
    tmp = os.path.join(os.path.dirname(dst), f".tmp-{os.getpid()}-{os.path.basename(dst)}")
    try:
        json2labelImg(polygons_json, tmp, "trainIds")
        os.replace(tmp, dst)
    except SystemExit as e:
        raise RuntimeError(f"cityscapesscripts could not draw {polygons_json}") from e
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return True


def list_polygon_files(cityscapes_root: str, split: str) -> List[str]:
    """The ``*_gtFine_polygons.json`` of one split, sorted."""
    pattern = os.path.join(cityscapes_root, "gtFine", split, "*", "*" + POLYGONS_SUFFIX)
    return sorted(glob.glob(pattern))


def count_files(cityscapes_root: str) -> Dict[str, Tuple[int, int]]:
    """``split -> (number of leftImg8bit images, number of labelTrainIds files)``."""

    def count(folder: str, split: str, suffix: str) -> int:
        return len(glob.glob(os.path.join(cityscapes_root, folder, split, "*", "*" + suffix)))

    return {
        split: (count("leftImg8bit", split, IMAGE_SUFFIX), count("gtFine", split, TRAIN_IDS_SUFFIX))
        for split in SPLITS
    }


def run(cityscapes_root: str, workers: int) -> int:
    """Draw every trainId label of ``cityscapes_root`` not drawn yet; return how many were."""
    written = 0
    for split in SPLITS:
        jobs = [
            f
            for f in list_polygon_files(cityscapes_root, split)
            if not os.path.exists(train_ids_path(f))
        ]
        if not jobs:
            continue
        written += sum(run_in_pool(make_train_ids_label, jobs, workers, desc=split))
    return written


def draw_missing(cityscapes_root: str, workers: int) -> str:
    """Draw what :func:`run` draws; say what was done."""
    written = run(cityscapes_root, workers)
    labels = f"*{TRAIN_IDS_SUFFIX} labels under {cityscapes_root}/gtFine"
    return f"Drew {written} {labels}." if written else f"Nothing to do: all {labels} exist."


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Draw the labels, then print the number of images and labels per split."""
    fix = "unzip gtFine_trainvaltest.zip there."
    return prepare(argv, __doc__, "cityscapes", "gtFine", fix, draw_missing, count_files)


if __name__ == "__main__":
    sys.exit(main())
