#!/usr/bin/env python
"""Prepare PASCAL VOC 2012 + SBD for the ``voc_2012_sem_seg_{train,val,trainaug}`` datasets.

    python datasets/prepare_voc.py [--root DIR] [--workers N]

Expects under ``--root`` (default ``$DETECTRON2_DATASETS``, else ``datasets``) VOC 2012
(VOCtrainval_11-May-2012.tar) and SBD (benchmark.tgz from
https://www2.eecs.berkeley.edu/Research/Projects/CS/vision/grouping/semantic_contours/,
its ``benchmark_RELEASE/dataset`` moved to ``VOCdevkit/VOCaug/dataset``, as mmsegmentation
documents)::

    VOCdevkit/VOC2012/{JPEGImages,SegmentationClass,ImageSets/Segmentation/{train,val}.txt}
    VOCdevkit/VOCaug/dataset/{cls/*.mat,train.txt,val.txt}

and writes::

    VOCdevkit/VOC2012/SegmentationClassAug/<id>.png        every SBD label: class ids 0..20
    VOCdevkit/VOC2012/ImageSets/Segmentation/trainaug.txt  SBD train + val + VOC train - VOC val

Labels already converted are kept, so running it again only checks. It ends with the images per
split (on the full data: train 1,464, val 1,449, trainaug 10,582).
"""

import os
import sys
from typing import Dict, Iterable, List, Optional, Tuple

import numpy as np
from PIL import Image
from preparation import parse_args, run_in_pool
from scipy.io import loadmat

VOC_DIR = os.path.join("VOCdevkit", "VOC2012")
SBD_DIR = os.path.join("VOCdevkit", "VOCaug", "dataset")
SPLIT_DIR = os.path.join(VOC_DIR, "ImageSets", "Segmentation")
SBD_LABEL_DIR = os.path.join(VOC_DIR, "SegmentationClassAug")
EXPECTED_COUNTS = {"train": 1464, "val": 1449, "trainaug": 10582}


def read_ids(path: str) -> List[str]:
    """Image ids listed one per line in ``path``."""
    with open(path) as f:
        return [line.strip() for line in f if line.strip()]


def write_ids(path: str, ids: Iterable[str]) -> bool:
    """Write ``ids`` one per line to ``path``; return False when the file already said so."""
    text = "".join(f"{i}\n" for i in ids)
    if os.path.isfile(path):
        with open(path) as f:
            if f.read() == text:
                return False
    with open(path, "w") as f:
        f.write(text)
    return True


def convert_sbd_mat(mat_path: str) -> np.ndarray:
    """The (H, W) uint8 class-id map of one SBD ``cls/<id>.mat`` (its ``GTcls.Segmentation``)."""
    segmentation = loadmat(mat_path)["GTcls"]["Segmentation"][0, 0]
    if segmentation.ndim != 2:
        raise ValueError(f"{mat_path}: GTcls.Segmentation has shape {segmentation.shape}, not HxW")
    return segmentation.astype(np.uint8)


def trainaug_ids(
    sbd_train: Iterable[str],
    sbd_val: Iterable[str],
    voc_train: Iterable[str],
    voc_val: Iterable[str],
) -> List[str]:
    """(SBD train | SBD val | VOC train) - VOC val, sorted."""
    return sorted((set(sbd_train) | set(sbd_val) | set(voc_train)) - set(voc_val))


def save_label(label: np.ndarray, png_path: str) -> None:
    """Write a class-id map as a single-channel PNG, atomically (no partial file is left)."""
    tmp_path = png_path + ".tmp"
    Image.fromarray(label).save(tmp_path, format="PNG")
    os.replace(tmp_path, png_path)


def _convert_job(job: Tuple[str, str]) -> None:
    mat_path, png_path = job
    save_label(convert_sbd_mat(mat_path), png_path)


def pending_conversions(cls_dir: str, out_dir: str) -> Tuple[List[Tuple[str, str]], int]:
    """(.mat, .png) pairs of ``cls_dir`` whose PNG in ``out_dir`` is missing; number skipped."""
    names = sorted(n[: -len(".mat")] for n in os.listdir(cls_dir) if n.endswith(".mat"))
    jobs = [(os.path.join(cls_dir, f"{n}.mat"), os.path.join(out_dir, f"{n}.png")) for n in names]
    pending = [job for job in jobs if not os.path.isfile(job[1])]
    return pending, len(jobs) - len(pending)


def convert_all(jobs: List[Tuple[str, str]], workers: int) -> None:
    """Convert the (.mat, .png) pairs with a process pool and a progress bar."""
    run_in_pool(_convert_job, jobs, workers, desc="SBD .mat -> PNG")


def check_inputs(root: str) -> None:
    """Raise FileNotFoundError naming the first VOC 2012 or SBD input missing under ``root``."""
    voc = "VOC 2012 (VOCtrainval_11-May-2012.tar)"
    sbd = "SBD (benchmark.tgz's benchmark_RELEASE/dataset as VOCdevkit/VOCaug/dataset)"
    required = [
        (os.path.join(root, SPLIT_DIR, "train.txt"), voc),
        (os.path.join(root, SPLIT_DIR, "val.txt"), voc),
        (os.path.join(root, SBD_DIR, "cls"), sbd),
        (os.path.join(root, SBD_DIR, "train.txt"), sbd),
        (os.path.join(root, SBD_DIR, "val.txt"), sbd),
    ]
    for path, source in required:
        if not os.path.exists(path):
            raise FileNotFoundError(
                f"{path} does not exist: extract {source} under --root (now {root!r}, default "
                "$DETECTRON2_DATASETS), see `python datasets/prepare_voc.py --help` for the layout."
            )


def split_counts(root: str) -> Dict[str, int]:
    """Number of images listed for each split under ``root``."""
    return {s: len(read_ids(os.path.join(root, SPLIT_DIR, f"{s}.txt"))) for s in EXPECTED_COUNTS}


def main(argv: Optional[List[str]] = None) -> None:
    """Convert SBD's labels, write trainaug.txt and print the images per split."""
    args = parse_args(__doc__, "VOCdevkit/", argv)
    try:
        check_inputs(args.root)
    except FileNotFoundError as e:
        sys.exit(f"error: {e}")

    out_dir = os.path.join(args.root, SBD_LABEL_DIR)
    os.makedirs(out_dir, exist_ok=True)
    jobs, skipped = pending_conversions(os.path.join(args.root, SBD_DIR, "cls"), out_dir)
    print(f"{out_dir}: converting {len(jobs)} SBD labels, skipping {skipped} already converted")
    convert_all(jobs, args.workers)

    ids = trainaug_ids(
        sbd_train=read_ids(os.path.join(args.root, SBD_DIR, "train.txt")),
        sbd_val=read_ids(os.path.join(args.root, SBD_DIR, "val.txt")),
        voc_train=read_ids(os.path.join(args.root, SPLIT_DIR, "train.txt")),
        voc_val=read_ids(os.path.join(args.root, SPLIT_DIR, "val.txt")),
    )
    list_path = os.path.join(args.root, SPLIT_DIR, "trainaug.txt")
    written = write_ids(list_path, ids)
    print(f"{list_path}: {'written' if written else 'already up to date, skipped'}")

    counts = split_counts(args.root)
    print(
        "images per split: "
        + ", ".join(f"{s} {n:,}" for s, n in counts.items())
        + " (full VOC 2012 + SBD: "
        + ", ".join(f"{s} {n:,}" for s, n in EXPECTED_COUNTS.items())
        + ")"
    )


if __name__ == "__main__":
    main()
