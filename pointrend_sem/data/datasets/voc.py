"""PASCAL VOC 2012 semantic segmentation, with SBD's extra labels ("trainaug").

Importing this module registers ``voc_2012_sem_seg_{train,val,trainaug}``. Files under
``$DETECTRON2_DATASETS`` (read when a split is loaded, not at import)::

    VOCdevkit/VOC2012/JPEGImages/<id>.jpg
    VOCdevkit/VOC2012/SegmentationClass/<id>.png      VOC's labels (train + val)
    VOCdevkit/VOC2012/SegmentationClassAug/<id>.png   SBD's labels, made by prepare_voc.py
    VOCdevkit/VOC2012/ImageSets/Segmentation/{train,val}.txt
    VOCdevkit/VOC2012/ImageSets/Segmentation/trainaug.txt                 made by prepare_voc.py

Labels are single-channel PNGs whose values (the palette indices of VOC's "P" PNGs) are the
class ids 0..20, with 255 (VOC's object boundaries) ignored. trainaug is SBD train + SBD val +
VOC train minus VOC val (10,582 images); its images in VOC train keep VOC's own label, the
others take SBD's.
"""

import os
from typing import Dict, Iterable, List, Optional, Set

from detectron2.data import DatasetCatalog, MetadataCatalog

from ...errors import UserFileNotFoundError
from .paths import datasets_root

VOC_CLASSES = [
    "background",
    "aeroplane",
    "bicycle",
    "bird",
    "boat",
    "bottle",
    "bus",
    "car",
    "cat",
    "chair",
    "cow",
    "diningtable",
    "dog",
    "horse",
    "motorbike",
    "person",
    "pottedplant",
    "sheep",
    "sofa",
    "train",
    "tvmonitor",
]
IGNORE_LABEL = 255
PREPARE_COMMAND = "python datasets/prepare_voc.py"
VOC_SPLITS = ("train", "val", "trainaug")
# Folders inside VOCdevkit/VOC2012.
IMAGE_DIR = "JPEGImages"
VOC_LABEL_DIR = "SegmentationClass"
SBD_LABEL_DIR = "SegmentationClassAug"
SPLIT_DIR = os.path.join("ImageSets", "Segmentation")


def voc_palette(num_colors: int = 256) -> List[List[int]]:
    """VOC's colour map: the RGB colour of each label index, as ``[r, g, b]`` lists.

    The bits of the index are dealt out in turn to red, green and blue, most significant
    colour bit first (class 1 is [128, 0, 0], index 255 is [224, 224, 192]).
    """
    palette = []
    for index in range(num_colors):
        rgb = [0, 0, 0]
        for bit in range(8):
            for channel in range(3):
                rgb[channel] |= ((index >> (3 * bit + channel)) & 1) << (7 - bit)
        palette.append(rgb)
    return palette


VOC_COLORS = voc_palette(len(VOC_CLASSES))


def voc_dir(root: Optional[str] = None) -> str:
    """``<root>/VOCdevkit/VOC2012``; ``root`` defaults to :func:`datasets_root`, read now."""
    return os.path.join(root if root is not None else datasets_root(), "VOCdevkit", "VOC2012")


def split_list_path(voc_root: str, split: str) -> str:
    """The image-id list of ``split`` inside ``voc_root`` (``VOCdevkit/VOC2012``)."""
    return os.path.join(voc_root, SPLIT_DIR, f"{split}.txt")


def _not_found(path: str) -> UserFileNotFoundError:
    return UserFileNotFoundError(
        f"PASCAL VOC 2012 expects {path}, which does not exist: put VOCdevkit/ (VOC 2012, and "
        f"SBD for trainaug) under $DETECTRON2_DATASETS (now {datasets_root()!r}) and run "
        f"`{PREPARE_COMMAND}`."
    )


def read_split_list(path: str) -> List[str]:
    """Image ids listed one per line in ``path``; a missing list raises FileNotFoundError."""
    if not os.path.isfile(path):
        raise _not_found(path)
    with open(path) as f:
        return [line.strip() for line in f if line.strip()]


def _record(voc_root: str, image_id: str, voc_label: bool) -> Dict:
    label_dir = VOC_LABEL_DIR if voc_label else SBD_LABEL_DIR
    return {
        "file_name": os.path.join(voc_root, IMAGE_DIR, f"{image_id}.jpg"),
        "sem_seg_file_name": os.path.join(voc_root, label_dir, f"{image_id}.png"),
        "image_id": image_id,
    }


def check_files_exist(records: Iterable[Dict], list_path: str) -> None:
    """Raise FileNotFoundError naming the first missing image or label of ``records``."""
    missing = [
        path
        for r in records
        for path in (r["file_name"], r["sem_seg_file_name"])
        if not os.path.isfile(path)
    ]
    if missing:
        raise UserFileNotFoundError(
            f"{len(missing)} file(s) of the images listed in {list_path} do not exist, e.g. "
            f"{missing[0]}; check the VOC 2012 / SBD extraction and run `{PREPARE_COMMAND}`."
        )


def _voc_label_ids(voc_root: str, split: str, ids: List[str]) -> Set[str]:
    """Ids of ``split`` labelled by VOC itself; in trainaug only those of VOC train are."""
    if split != "trainaug":
        return set(ids)
    return set(read_split_list(split_list_path(voc_root, "train")))


def load_voc_sem_seg(split: str, root: Optional[str] = None) -> List[Dict]:
    """Dataset dicts of one VOC 2012 split: "file_name", "sem_seg_file_name", "image_id".

    Args:
        split: "train", "val" or "trainaug".
        root: the datasets root; by default ``$DETECTRON2_DATASETS`` as it is now.

    Raises:
        FileNotFoundError: the VOC folder, the split list or a listed file is missing.
    """
    voc_root = voc_dir(root)
    if not os.path.isdir(voc_root):
        raise _not_found(voc_root)
    list_path = split_list_path(voc_root, split)
    ids = read_split_list(list_path)
    voc_label_ids = _voc_label_ids(voc_root, split, ids)
    records = [_record(voc_root, i, i in voc_label_ids) for i in ids]
    check_files_exist(records, list_path)
    return records


def register_voc() -> None:
    """Register the VOC 2012 splits in DatasetCatalog and MetadataCatalog.

    The loaders read ``$DETECTRON2_DATASETS`` when called; ``image_root`` and ``sem_seg_root``
    in the metadata are informative and use its value at registration. trainaug's
    ``sem_seg_root`` is SBD's folder; its images in VOC train take their labels from VOC's.
    """
    voc_root = voc_dir()
    for split in VOC_SPLITS:
        name = f"voc_2012_sem_seg_{split}"
        DatasetCatalog.register(name, lambda split=split: load_voc_sem_seg(split))
        label_dir = SBD_LABEL_DIR if split == "trainaug" else VOC_LABEL_DIR
        MetadataCatalog.get(name).set(
            stuff_classes=VOC_CLASSES,
            stuff_colors=VOC_COLORS,
            ignore_label=IGNORE_LABEL,
            evaluator_type="sem_seg",
            image_root=os.path.join(voc_root, IMAGE_DIR),
            sem_seg_root=os.path.join(voc_root, label_dir),
            prepare_command=PREPARE_COMMAND,
        )


register_voc()
