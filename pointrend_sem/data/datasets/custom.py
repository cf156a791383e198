"""Your own data: a folder of images and a folder of label maps, registered in detectron2.

Labels are 8-bit single-channel PNGs (mode L or P) that hold class *indices* (palette PNGs
are fine: their indices are read), with the same base names as the images; pixels that no
class covers hold the ignore value (255 by convention). Subfolders are matched too:
``images/a/b.jpg`` goes with ``labels/a/b.png``. Relative folders are taken under
``$DETECTRON2_DATASETS`` (default ``datasets``), like the built-in datasets. Check the label
files first with ``python tools/check_labels.py LABEL_DIR --num-classes N``.

From Python::

    from pointrend_sem.data.datasets.custom import register_sem_seg_folder

    register_sem_seg_folder("roads_train", "roads/images/train", "roads/labels/train",
                            ["road", "sidewalk", "car"], ignore_label=255)
    # train: DATASETS.TRAIN ("roads_train",) MODEL.SEM_SEG_HEAD.NUM_CLASSES 3

Without Python, a JSON or YAML file of one entry or a list of entries, read by
:func:`register_from_file` (``train_net.py --datasets-file roads.yaml``)::

    - name: roads_train
      image_dir: roads/images/train
      label_dir: roads/labels/train
      classes: [road, sidewalk, car]
      ignore_label: 255

Keys: ``name``, ``image_dir``, ``label_dir``, ``classes`` (required); ``colors`` (one
``[r, g, b]`` per class), ``ignore_label`` (255), ``image_ext`` (default: any of
``IMAGE_EXTS``, .jpg .jpeg .png .bmp .tif .tiff .webp, in any case), ``label_ext`` (.png)
(optional). The same in JSON: ``[{"name": "roads_train", "image_dir": ..., "classes": [...]}]``.
"""

import difflib
import json
import logging
import os
from collections import Counter
from typing import Dict, List, Optional, Sequence

import yaml
from detectron2.data import DatasetCatalog, MetadataCatalog

from ...errors import UserFileNotFoundError, UserValueError
from .paths import datasets_root
from .voc import voc_palette

logger = logging.getLogger(__name__)

REQUIRED_KEYS = ("name", "image_dir", "label_dir", "classes")
OPTIONAL_KEYS = ("colors", "ignore_label", "image_ext", "label_ext")
# the image extensions looked for when ``image_ext`` is not given (compared in lower case)
IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


def default_palette(num_classes: int) -> List[List[int]]:
    """A deterministic palette of ``num_classes`` distinct RGB colours: the PASCAL VOC colour
    map, in which every index below 2**24 gets its own colour (index 0 is black)."""
    return voc_palette(num_classes)


def _normalize_ext(ext: str) -> str:
    ext = ext.lower()
    return ext if ext.startswith(".") else "." + ext


def _resolve_dir(path: str) -> str:
    """``~`` and ``$VARS`` expanded; a relative folder is taken under ``$DETECTRON2_DATASETS``."""
    path = os.path.expandvars(os.path.expanduser(path))
    return path if os.path.isabs(path) else os.path.join(datasets_root(), path)


def _list_files(root: str, exts: Sequence[str], ext_key: str) -> Dict[str, str]:
    """{path relative to ``root`` without extension: full path} of the files whose extension,
    in lower case, is one of ``exts``.

    Raises:
        UserValueError: two files have the same name but for the extension (``a.jpg`` and
            ``a.png``, or ``a.png`` and ``a.PNG``); the error names both and ``ext_key``.
    """
    found = {}
    for folder, subfolders, files in os.walk(root):
        subfolders.sort()
        for file_name in sorted(files):
            stem, file_ext = os.path.splitext(file_name)
            if file_ext.lower() not in exts:
                continue
            key = os.path.relpath(os.path.join(folder, stem), root)
            path = os.path.join(folder, file_name)
            if key in found:
                choose = f", or set {ext_key} to the extension to use" if len(exts) > 1 else ""
                raise UserValueError(
                    f"{found[key]} and {path} have the same name but for the extension, so "
                    f"either could be meant (looked for {_describe(exts)}): keep one{choose}."
                )
            found[key] = path
    return found


def _describe(exts: Sequence[str]) -> str:
    """Extensions for a message: ".jpg .png (any case)"."""
    return " ".join(exts) + (" (any case)" if len(exts) > 1 else "")


def _extensions_in(root: str) -> str:
    """The extensions of the files under ``root``, most frequent first: "12 .gif, 1 .txt"."""
    counts = Counter(
        os.path.splitext(f)[1].lower() or "(none)" for _, _, files in os.walk(root) for f in files
    )
    return ", ".join(f"{n} {ext}" for ext, n in counts.most_common(5)) or "nothing"


def load_sem_seg_folder(
    image_dir: str,
    label_dir: str,
    image_ext: Optional[str] = None,
    label_ext: str = ".png",
    name: str = "",
) -> List[Dict]:
    """Dataset dicts (``file_name``, ``sem_seg_file_name``) of images and their label maps.

    Images are the files of ``image_dir`` (subfolders included) whose extension is ``image_ext``
    or, when it is None, any of ``IMAGE_EXTS``; extensions are compared in lower case. Every
    image must have a label with the same relative path and base name; labels without an image
    are skipped. ``name`` (the dataset's) is used in the messages.

    Raises:
        FileNotFoundError: a folder does not exist, or images have no label (the error names
            them and the label files it looked for).
        ValueError: no image was found (the error names the folder, the extensions looked for,
            those it holds and the ``image_ext`` key), or two images or labels differ only by
            their extension.
    """
    image_exts = IMAGE_EXTS if image_ext is None else (_normalize_ext(image_ext),)
    label_ext = _normalize_ext(label_ext)
    for kind, folder in (("image", image_dir), ("label", label_dir)):
        if not os.path.isdir(folder):
            raise UserFileNotFoundError(f"The {kind} folder {folder} does not exist.")
    images = _list_files(image_dir, image_exts, "image_ext")
    if not images:
        dataset = f"Dataset {name} is empty" if name else "No image found"
        raise UserValueError(
            f"{dataset}: no file in {image_dir} ends in {_describe(image_exts)}; it holds "
            f"{_extensions_in(image_dir)}. Set image_ext (a --datasets-file key, or the argument "
            "of register_sem_seg_folder) to your images' extension, or fix image_dir."
        )
    labels = _list_files(label_dir, (label_ext,), "label_ext")
    missing = [key for key in images if key not in labels]
    if missing:
        examples = ", ".join(
            f"{images[key]} (no {os.path.join(label_dir, key + label_ext)})" for key in missing[:5]
        )
        more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
        hint = "" if labels else f" There are no {label_ext} files at all: is label_ext right?"
        raise UserFileNotFoundError(
            f"{len(missing)} of {len(images)} images in {image_dir} have no label in "
            f"{label_dir}: {examples}{more}. Add the labels or remove those images.{hint}"
        )
    if len(labels) > len(images):
        logger.warning(
            f"{len(labels) - len(images)} labels in {label_dir} have no image in {image_dir}; "
            "they are not used."
        )
    return [{"file_name": images[key], "sem_seg_file_name": labels[key]} for key in images]


def _check_ignore_label(name: str, class_names: Sequence[str], ignore_label: int) -> None:
    if not isinstance(ignore_label, int) or isinstance(ignore_label, bool):
        raise UserValueError(f"Dataset {name}: ignore_label={ignore_label!r} is not an integer.")
    num_classes = len(class_names)
    if ignore_label >= num_classes:
        return
    if ignore_label < 0:
        problem = f"ignore_label={ignore_label} is negative, which no label file can hold"
    else:
        problem = (
            f"ignore_label={ignore_label} collides with class index {ignore_label} "
            f"({class_names[ignore_label]!r}) of 0..{num_classes - 1}"
        )
    usual = 255 if num_classes <= 255 else 65535
    raise UserValueError(
        f"Dataset {name}: {problem}. Pixels equal to ignore_label are left out of training and "
        f"evaluation, so it must be a value >= {num_classes} that no class uses: set "
        f"ignore_label={usual} (the convention) and write {usual} for unlabeled pixels in the "
        "labels."
    )


def _check_colors(name: str, class_names: Sequence[str], colors: Sequence) -> List[List[int]]:
    if len(colors) != len(class_names):
        raise UserValueError(
            f"Dataset {name}: {len(colors)} colors for {len(class_names)} classes; give one "
            "[r, g, b] per class, or no colors for a generated palette."
        )
    for color in colors:
        if len(color) != 3 or not all(isinstance(c, int) and 0 <= c <= 255 for c in color):
            raise UserValueError(
                f"Dataset {name}: color {color!r} is not [r, g, b] with integers in 0..255."
            )
    return [list(color) for color in colors]


def _check_classes(name: str, class_names: Sequence[str]) -> None:
    if isinstance(class_names, str) or not class_names:
        raise UserValueError(f"Dataset {name}: class_names must be a non-empty list of names.")
    if not all(isinstance(c, str) for c in class_names):
        raise UserValueError(
            f"Dataset {name}: class names {list(class_names)} are not all strings."
        )
    repeated = sorted(c for c, n in Counter(class_names).items() if n > 1)
    if repeated:
        raise UserValueError(f"Dataset {name}: class names {repeated} appear more than once.")


def _checked_args(
    name: str, class_names: Sequence[str], colors: Optional[Sequence], ignore_label: int
) -> List[List[int]]:
    """Validate a registration's arguments; return its colors (a palette when not given)."""
    if not isinstance(name, str) or not name:
        raise UserValueError(f"Dataset name {name!r} is not a non-empty string.")
    _check_classes(name, class_names)
    _check_ignore_label(name, class_names, ignore_label)
    if colors is None:
        return default_palette(len(class_names))
    return _check_colors(name, class_names, colors)


def register_sem_seg_folder(
    name: str,
    image_dir: str,
    label_dir: str,
    class_names: Sequence[str],
    colors: Optional[Sequence[Sequence[int]]] = None,
    ignore_label: int = 255,
    image_ext: Optional[str] = None,
    label_ext: str = ".png",
) -> None:
    """Register a folder of images and single-channel PNG label maps as dataset ``name``.

    Args:
        name: the name to use in ``DATASETS.TRAIN`` / ``DATASETS.TEST``; must be new.
        image_dir, label_dir: the folders; relative ones are taken under
            ``$DETECTRON2_DATASETS``. Labels have the images' base names (subfolders kept).
        class_names: one name per class index 0..N-1 (``MODEL.SEM_SEG_HEAD.NUM_CLASSES`` = N).
        colors: one [r, g, b] per class for visualization; default a distinct palette.
        ignore_label: the label value of unlabeled pixels; must not be a class index.
        image_ext: the images' file extension; default any of ``IMAGE_EXTS`` (.jpg .jpeg .png
            .bmp .tif .tiff .webp), in any case (a name found with two of them is an error).
        label_ext: the labels' file extension.

    Metadata: ``stuff_classes``, ``stuff_colors``, ``ignore_label``, ``evaluator_type``
    ("sem_seg"), ``image_root``, ``sem_seg_root``. Folders are read when the dataset is
    loaded, not here; an image without a label, or no image at all, makes loading fail,
    naming the image or the folder.

    Raises:
        ValueError: the name is taken, ``ignore_label`` is a class index, or the classes or
            colors are malformed.
    """
    colors = _checked_args(name, class_names, colors, ignore_label)
    if name in DatasetCatalog.list():
        raise UserValueError(
            f"Dataset {name} is already registered; pick another name (detectron2 registers "
            "ade20k_sem_seg_*, cityscapes_fine_sem_seg_*, coco_* and more itself)."
        )
    image_dir, label_dir = _resolve_dir(image_dir), _resolve_dir(label_dir)
    DatasetCatalog.register(
        name,
        lambda: load_sem_seg_folder(image_dir, label_dir, image_ext, label_ext, name=name),
    )
    MetadataCatalog.get(name).set(
        stuff_classes=list(class_names),
        stuff_colors=colors,
        ignore_label=ignore_label,
        evaluator_type="sem_seg",
        image_root=image_dir,
        sem_seg_root=label_dir,
    )


def _read_entries(path: str) -> List[Dict]:
    """The entries of a datasets file: a list of mappings, or one mapping."""
    if not os.path.isfile(path):
        raise UserFileNotFoundError(
            f"Datasets file {path} does not exist; give the JSON or YAML file that lists your "
            "datasets (datasets/README.md)."
        )
    with open(path, encoding="utf-8") as f:
        try:
            if path.lower().endswith(".json"):
                content = json.load(f)
            else:
                content = yaml.safe_load(f)
        except (json.JSONDecodeError, yaml.YAMLError) as e:
            raise UserValueError(f"Cannot parse datasets file {path}: {e}") from e
    entries = [content] if isinstance(content, dict) else content
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        raise UserValueError(
            f"Datasets file {path} must hold one dataset entry or a list of them, each a "
            f"mapping with keys {list(REQUIRED_KEYS)}."
        )
    return entries


def _check_entry_keys(path: str, index: int, entry: Dict) -> None:
    allowed = REQUIRED_KEYS + OPTIONAL_KEYS
    where = f"Datasets file {path}, entry {index} ({entry.get('name', 'no name')})"
    for key in entry:
        if key not in allowed:
            close = difflib.get_close_matches(str(key), allowed, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise UserValueError(f"{where}: unknown key {key!r}{hint} Keys: {list(allowed)}.")
    missing = [key for key in REQUIRED_KEYS if key not in entry]
    if missing:
        raise UserValueError(f"{where}: missing {missing}; required keys: {list(REQUIRED_KEYS)}.")


def register_from_file(path: str) -> List[str]:
    """Register the datasets described in a JSON (``.json``) or YAML file; return their names.

    Each entry: ``{"name", "image_dir", "label_dir", "classes"}`` and optionally ``"colors"``,
    ``"ignore_label"`` (255), ``"image_ext"`` (any of ``IMAGE_EXTS``), ``"label_ext"``
    (".png"); see
    :func:`register_sem_seg_folder`. All entries are checked before any is registered.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: the file is malformed (unknown or missing keys, repeated names) or an entry
            is rejected by :func:`register_sem_seg_folder`.
    """
    entries = _read_entries(path)
    for index, entry in enumerate(entries):
        _check_entry_keys(path, index, entry)
        _checked_args(
            entry["name"], entry["classes"], entry.get("colors"), entry.get("ignore_label", 255)
        )
    names = [entry["name"] for entry in entries]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise UserValueError(f"Datasets file {path} names {repeated} more than once.")
    taken = [n for n in names if n in DatasetCatalog.list()]
    if taken:
        raise UserValueError(f"Datasets file {path}: {taken} are already registered; rename them.")
    for entry in entries:
        register_sem_seg_folder(
            entry["name"],
            entry["image_dir"],
            entry["label_dir"],
            entry["classes"],
            colors=entry.get("colors"),
            ignore_label=entry.get("ignore_label", 255),
            image_ext=entry.get("image_ext"),
            label_ext=entry.get("label_ext", ".png"),
        )
    return names
