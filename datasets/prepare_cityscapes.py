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

import argparse
import glob
import os
import sys
from multiprocessing import Pool
from typing import Dict, List, Optional, Sequence, Tuple

from cityscapesscripts.preparation.json2labelImg import json2labelImg
from tqdm import tqdm

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
        with Pool(workers) as pool:
            results = pool.imap_unordered(make_train_ids_label, jobs, chunksize=16)
            written += sum(tqdm(results, total=len(jobs), desc=split, unit="label"))
    return written


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--root",
        default=os.path.expanduser(os.getenv("DETECTRON2_DATASETS", "datasets")),
        help="datasets root holding cityscapes/ (default: $DETECTRON2_DATASETS or 'datasets')",
    )
    parser.add_argument(
        "--workers", type=int, default=min(8, os.cpu_count() or 1), help="processes to use"
    )
    return parser.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Draw the labels, then print the number of images and labels per split."""
    args = parse_args(argv)
    cityscapes_root = os.path.join(os.path.expanduser(args.root), "cityscapes")
    if not os.path.isdir(os.path.join(cityscapes_root, "gtFine")):
        print(f"No {cityscapes_root}/gtFine: unzip gtFine_trainvaltest.zip there.", file=sys.stderr)
        return 1
    written = run(cityscapes_root, max(1, args.workers))
    if written:
        print(f"Drew {written} *{TRAIN_IDS_SUFFIX} labels under {cityscapes_root}/gtFine.")
    else:
        print(
            f"Nothing to do: every *{TRAIN_IDS_SUFFIX} label under {cityscapes_root}/gtFine exists."
        )
    for split, (images, labels) in count_files(cityscapes_root).items():
        print(f"{split}: {images} images, {labels} labels")
    return 0


if __name__ == "__main__":
    sys.exit(main())
