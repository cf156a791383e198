#!/usr/bin/env python
"""Check a folder of semantic segmentation label maps before training on it.

    python tools/check_labels.py datasets/roads/labels/train --num-classes 3
    python tools/check_labels.py LABEL_DIR --class-names-file classes.txt --ignore-label 255

Reports, naming the files and the fix, what most often goes wrong with one's own labels:
colour-coded RGB/RGBA files instead of class indices (palette PNGs are fine: their indices are
read), values at or above the class count other than the ignore value, an ignore value that is
a class index, 16-bit files, files that are all ignore; then a table of pixels per class.
``--class-names-file``: one name per line, or a JSON list. Exit status: 0 when no problem was
found, 1 when some were, 2 for bad arguments (a missing or unreadable class names file: one
line ``error: ...``).
"""

import argparse
import json
import multiprocessing
import os
import sys
from collections import defaultdict
from functools import partial
from typing import Dict, List, Optional, Sequence

import numpy as np
from PIL import Image
from tabulate import tabulate
from tqdm import tqdm

from pointrend_sem.errors import UserFileNotFoundError, UserValueError, main_with_one_line_errors

# problem kinds in inspect_label's "problems"
UNREADABLE = "unreadable"
COLOR = "color"
WIDE = "16bit"
OUT_OF_RANGE = "out_of_range"
ALL_IGNORE = "all_ignore"

SINGLE_CHANNEL_MODES = ("1", "L", "P", "I", "I;16", "I;16B", "I;16L", "I;16N", "F")
WIDE_MODES = ("I", "I;16", "I;16B", "I;16L", "I;16N", "F")
MAX_COLORS = 256  # colours kept per colour-coded file; more suggests anti-aliasing or JPEG
MAX_EXAMPLES = 5  # example files listed per problem value


def _value_counts(values: np.ndarray) -> Dict[int, int]:
    """{value: pixels} of an integer array."""
    if values.dtype in (np.uint8, np.uint16, np.bool_):
        counts = np.bincount(values.ravel())
        present = np.flatnonzero(counts)
        return {int(v): int(counts[v]) for v in present}
    unique, counts = np.unique(values.astype(np.int64), return_counts=True)
    return {int(v): int(c) for v, c in zip(unique, counts)}


def _color_summary(pixels: np.ndarray) -> Dict:
    """Colours of an (H, W, C) uint8 array: the most frequent ones, their number, greyness."""
    channels = pixels.shape[2]
    packed = np.zeros(pixels.shape[:2], np.uint32)
    for c in range(channels):
        packed = (packed << 8) | pixels[:, :, c]
    unique, counts = np.unique(packed, return_counts=True)
    order = np.argsort(-counts, kind="stable")[:MAX_COLORS]
    colors = [
        [
            [int(unique[i] >> (8 * (channels - 1 - c))) & 255 for c in range(channels)],
            int(counts[i]),
        ]
        for i in order
    ]
    grey = channels >= 3 and bool(
        np.array_equal(pixels[:, :, 0], pixels[:, :, 1])
        and np.array_equal(pixels[:, :, 0], pixels[:, :, 2])
    )
    return {"colors": colors, "num_colors": int(len(unique)), "grey": grey}


def inspect_label(path: str, num_classes: int, ignore_label: int = 255) -> Dict:
    """Inspect one label file; a pure function of the file's content.

    Returns:
        dict with "path", "mode" (PIL mode, None if unreadable), "problems" (a list of
        "unreadable", "color", "16bit", "out_of_range", "all_ignore"), and as they apply:
        "error" (why unreadable); for colour-coded files "colors" ([[r, g, b(, a)], pixels]
        most frequent first, at most 256), "num_colors", "grey" (all colour channels
        equal); for single-channel files "counts" ({value: pixels}) and "bad_values" (values
        >= num_classes that are not ``ignore_label``, sorted).
    """
    result = {"path": path, "mode": None, "problems": []}
    try:
        with Image.open(path) as image:
            image.load()
            result["mode"] = image.mode
            pixels = np.asarray(image)
    except (OSError, SyntaxError, ValueError) as e:
        result.update(problems=[UNREADABLE], error=str(e))
        return result
    if result["mode"] not in SINGLE_CHANNEL_MODES:
        result["problems"].append(COLOR)
        result.update(_color_summary(pixels.reshape(pixels.shape[0], pixels.shape[1], -1)))
        return result
    eight_bits_suffice = num_classes <= 256 and ignore_label <= 255
    if result["mode"] in WIDE_MODES and eight_bits_suffice:
        result["problems"].append(WIDE)
    counts = _value_counts(pixels)
    bad = sorted(v for v in counts if (v >= num_classes or v < 0) and v != ignore_label)
    result.update(counts=counts, bad_values=bad)
    if bad:
        result["problems"].append(OUT_OF_RANGE)
    if set(counts) == {ignore_label}:
        result["problems"].append(ALL_IGNORE)
    return result


def find_label_files(label_dir: str, ext: str) -> List[str]:
    """Files under ``label_dir`` (recursively) whose name ends in ``ext``, sorted."""
    found = []
    for folder, subfolders, files in os.walk(label_dir):
        subfolders.sort()
        found += [os.path.join(folder, f) for f in sorted(files) if f.lower().endswith(ext)]
    return found


def inspect_all(files: Sequence[str], num_classes: int, ignore_label: int, workers: int):
    """inspect_label over ``files`` with a tqdm bar, in ``workers`` processes; in file order."""
    inspect = partial(inspect_label, num_classes=num_classes, ignore_label=ignore_label)
    progress = partial(tqdm, total=len(files), unit="file", desc="labels", disable=None)
    if workers <= 1 or len(files) < 2:
        results = list(progress(map(inspect, files)))
    else:
        chunksize = max(1, min(64, len(files) // (workers * 4)))
        with multiprocessing.Pool(workers) as pool:
            results = list(progress(pool.imap_unordered(inspect, files, chunksize=chunksize)))
    return sorted(results, key=lambda r: r["path"])


def _file_list(paths: Sequence[str], label_dir: str, limit: int = 10) -> str:
    names = [os.path.relpath(p, label_dir) for p in paths[:limit]]
    more = f" and {len(paths) - limit} more" if len(paths) > limit else ""
    return ", ".join(names) + more


def _format_color(color: Sequence[int]) -> str:
    return "(" + ", ".join(str(c) for c in color) + ")"


def report_color(results: List[Dict], label_dir: str, ignore_label: int) -> List[str]:
    """Lines about colour-coded files: which, their colours, how to convert them."""
    colored = [r for r in results if COLOR in r["problems"]]
    if not colored:
        return []
    lines = [
        f"PROBLEM: {len(colored)} label files are colour-coded ({_modes(colored)}), not class "
        f"indices: {_file_list([r['path'] for r in colored], label_dir)}.",
        "  Labels must hold one class index per pixel (mode L, or a palette PNG, mode P). Map "
        "each colour to its class index and save single-channel PNGs, e.g.",
        "    rgb = np.asarray(Image.open(f).convert('RGB'))",
        f"    out = np.full(rgb.shape[:2], {ignore_label}, np.uint8)  # unmatched colours: ignore",
        "    for index, colour in enumerate(CLASS_COLOURS): out[(rgb == colour).all(-1)] = index",
        "    Image.fromarray(out).save(f)",
    ]
    totals = defaultdict(int)
    for r in colored:
        for color, pixels in [] if r["grey"] else r["colors"]:
            totals[tuple(color[:3])] += pixels
    top = sorted(totals.items(), key=lambda item: -item[1])[:20]
    lines.append(
        "  Colours found, most pixels first: " + ", ".join(_format_color(c) for c, _ in top)
    )
    grey = [r["path"] for r in colored if r["grey"]]
    if grey:
        lines.append(
            f"  {len(grey)} of them are grey (all channels equal), so already indices: keep one "
            f"channel, Image.open(f).convert('L').save(f): {_file_list(grey, label_dir, 5)}."
        )
    noisy = [r["path"] for r in colored if r["num_colors"] > MAX_COLORS]
    if noisy:
        lines.append(
            f"  {len(noisy)} have over {MAX_COLORS} colours, as anti-aliased or JPEG-compressed "
            "renderings do; export the labels without smoothing: "
            f"{_file_list(noisy, label_dir, 5)}."
        )
    return lines


def _modes(results: List[Dict]) -> str:
    return "/".join(sorted({r["mode"] for r in results}))


def report_out_of_range(results: List[Dict], args, label_dir: str) -> List[str]:
    """Lines about values >= num_classes that are not the ignore value, with example files."""
    files_per_value, pixels_per_value = defaultdict(list), defaultdict(int)
    for r in results:
        for value in r.get("bad_values", []):
            files_per_value[value].append(r["path"])
            pixels_per_value[value] += r["counts"][value]
    if not files_per_value:
        return []
    lines = [
        f"PROBLEM: label values outside 0..{args.num_classes - 1} that are not the ignore value "
        f"{args.ignore_label}:"
    ]
    for value in sorted(files_per_value):
        files = files_per_value[value]
        lines.append(
            f"  value {value}: {pixels_per_value[value]} px in {len(files)} file(s), e.g. "
            f"{_file_list(files, label_dir, MAX_EXAMPLES)}"
        )
    lines.append(
        "  Fix: remap them to class indices or the ignore value (lut = np.full(256, "
        f"{args.ignore_label}, np.uint8); lut[old] = new; Image.fromarray(lut[label]).save(f)), "
        "or correct --num-classes / --ignore-label (MODEL.SEM_SEG_HEAD.NUM_CLASSES / "
        "IGNORE_VALUE)."
    )
    if args.num_classes in files_per_value:
        lines.append(
            f"  Value {args.num_classes} suggests 1-based labels (0 = unlabeled): subtract 1 and "
            f"map 0 to {args.ignore_label}, as detectron2's prepare_ade20k_sem_seg.py does."
        )
    return lines


def report_files(results: List[Dict], kind: str, label_dir: str, what: str, fix: str):
    """Lines about the files with problem ``kind``: ``what`` they are and the ``fix``."""
    paths = [r["path"] for r in results if kind in r["problems"]]
    if not paths:
        return []
    return [f"PROBLEM: {len(paths)} {what}: {_file_list(paths, label_dir)}.", f"  Fix: {fix}"]


def report_ignore_collision(num_classes: int, ignore_label: int, names) -> List[str]:
    """Lines about an ignore value that is also a class index."""
    if not 0 <= ignore_label < num_classes:
        return []
    name = f" ({names[ignore_label]!r})" if names else ""
    return [
        f"PROBLEM: the ignore value {ignore_label} is class index {ignore_label}{name} of "
        f"0..{num_classes - 1}: that class would never be trained or scored.",
        f"  Fix: use an ignore value >= {num_classes} (255 is the convention) in the label files, "
        "--ignore-label and the dataset's ignore_label.",
    ]


def summary_table(results: List[Dict], num_classes: int, ignore_label: int, names) -> str:
    """Pixels and files per class index, the ignore value and other values."""
    pixels, files = defaultdict(int), defaultdict(int)
    for r in results:
        for value, count in r.get("counts", {}).items():
            pixels[value] += count
            files[value] += 1
    total = max(1, sum(pixels.values()))
    rows = []
    for value in sorted(set(range(num_classes)) | set(pixels)):
        if value == ignore_label:
            name = "(ignore)"
        elif 0 <= value < num_classes:
            name = names[value] if names else ""
        else:
            name = "(not a class)"
        share = f"{100 * pixels[value] / total:.2f}"
        rows.append([value, name, pixels[value], share, files[value]])
    return tabulate(rows, headers=["value", "class", "pixels", "%", "files"], tablefmt="pipe")


def absent_classes(results: List[Dict], num_classes: int, names) -> List[str]:
    """Class indices (with their names) that no single-channel file contains."""
    present = set()
    for r in results:
        present.update(r.get("counts", {}))
    absent = [i for i in range(num_classes) if i not in present]
    return [f"{i} ({names[i]})" if names else str(i) for i in absent]


def build_report(results: List[Dict], args, names: Optional[List[str]]) -> List[str]:
    """The report's problem lines (empty when clean)."""
    label_dir = args.label_dir
    wide_fix = (
        "save them as 8-bit single-channel PNGs once their values are below 256, "
        "Image.fromarray(np.asarray(Image.open(f)).astype(np.uint8)).save(f); OpenCV's default "
        "imread and many tools silently reduce 16-bit files to 8 bits."
    )
    return [
        *report_ignore_collision(args.num_classes, args.ignore_label, names),
        *report_files(
            results, UNREADABLE, label_dir, what="files cannot be read", fix="re-export them."
        ),
        *report_color(results, label_dir, args.ignore_label),
        *report_files(
            results, WIDE, label_dir, what="label files are 16-bit (or wider)", fix=wide_fix
        ),
        *report_out_of_range(results, args, label_dir),
        *report_files(
            results,
            ALL_IGNORE,
            label_dir,
            what=f"label files are all ignore ({args.ignore_label})",
            fix="they teach and score nothing: check how they were converted, or drop them.",
        ),
    ]


def read_class_names(path: str) -> List[str]:
    """Class names from a JSON list or a text file with one name per line.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: it is not a JSON list (``.json``), not text, or it holds no name.
    """
    if not os.path.isfile(path):
        raise UserFileNotFoundError(f"Class names file {path} does not exist.")
    try:
        with open(path, encoding="utf-8") as f:
            if path.lower().endswith(".json"):
                names = json.load(f)
                if not isinstance(names, list):
                    raise ValueError("not a list")
                names = [str(name) for name in names]
            else:
                names = [line.strip() for line in f if line.strip()]
    except (ValueError, UnicodeDecodeError) as e:  # json.JSONDecodeError is a ValueError
        raise UserValueError(
            f"Cannot read class names from {path} ({e}); give a JSON list of names (.json) or a "
            "text file with one name per line."
        ) from None
    if not names:
        raise UserValueError(f"Class names file {path} holds no name; write one per line.")
    return names


def parse_args(argv=None):
    """The command line; ``--num-classes`` defaults to the number of class names."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("label_dir", help="folder of label files (searched recursively)")
    parser.add_argument("--num-classes", type=int, help="number of classes (indices 0..N-1)")
    parser.add_argument("--ignore-label", type=int, default=255, help="value of unlabeled pixels")
    parser.add_argument("--class-names-file", help="one class name per line, or a JSON list")
    parser.add_argument("--ext", default=".png", help="label file extension (default .png)")
    parser.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1))
    args = parser.parse_args(argv)
    if not os.path.isdir(args.label_dir):
        parser.error(f"{args.label_dir} is not a folder")
    args.names = read_class_names(args.class_names_file) if args.class_names_file else None
    if args.num_classes is None:
        if args.names is None:
            parser.error("give --num-classes or --class-names-file")
        args.num_classes = len(args.names)
    if args.names is not None and len(args.names) != args.num_classes:
        parser.error(f"{args.class_names_file} has {len(args.names)} names, not {args.num_classes}")
    return args


def main(argv=None) -> int:
    """Scan, print the report; return the exit status (0 clean, 1 problems found)."""
    args = parse_args(argv)
    files = find_label_files(args.label_dir, args.ext.lower())
    if not files:
        print(f"PROBLEM: no {args.ext} files under {args.label_dir} (see --ext).")
        return 1
    results = inspect_all(files, args.num_classes, args.ignore_label, args.workers)
    problems = build_report(results, args, args.names)
    palettes = sum(r["mode"] == "P" for r in results)
    print(
        f"Checked {len(files)} label files in {args.label_dir}: {args.num_classes} classes, "
        f"ignore value {args.ignore_label}."
    )
    if palettes:
        print(f"{palettes} are palette PNGs (mode P): fine, their indices are the class ids.")
    print("\n".join(problems) if problems else "No problems found.")
    print("\nPixels per label value (single-channel files):")
    print(summary_table(results, args.num_classes, args.ignore_label, args.names))
    absent = absent_classes(results, args.num_classes, args.names)
    if absent:
        print(f"Classes with no pixels (fine for a small split, else check): {', '.join(absent)}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main_with_one_line_errors(main, exit_code=2)())
