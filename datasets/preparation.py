"""What the preparation scripts of this folder share: their command line (``--root``,
``--workers``) and a process pool with a progress bar.

The scripts run as ``python datasets/prepare_<name>.py``, so this folder is first on their
``sys.path`` and they import this file as ``preparation``.
"""

import argparse
import os
import sys
from multiprocessing import Pool
from typing import Callable, Dict, Iterable, Optional, Sequence, Tuple, TypeVar

from tqdm import tqdm

Job = TypeVar("Job")


def default_root() -> str:
    """``$DETECTRON2_DATASETS`` (default ``datasets``), with ``~`` expanded."""
    return os.path.expanduser(os.getenv("DETECTRON2_DATASETS", "datasets"))


def parse_args(
    description: str, holds: str, argv: Optional[Sequence[str]] = None
) -> argparse.Namespace:
    """``--root`` (the folder that ``holds`` the dataset's folder; default
    ``$DETECTRON2_DATASETS``, else ``datasets``) and ``--workers`` (processes; default: one per
    core, at most 8)."""
    parser = argparse.ArgumentParser(
        description=description, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--root",
        default=default_root(),
        help=f"datasets root holding {holds} (default: $DETECTRON2_DATASETS or 'datasets')",
    )
    parser.add_argument(
        "--workers", type=int, default=min(8, os.cpu_count() or 1), help="processes to use"
    )
    return parser.parse_args(argv)


def run_in_pool(
    convert: Callable[[Job], object],
    jobs: Sequence[Job],
    workers: int,
    desc: str,
    chunksize: int = 16,
) -> Iterable[object]:
    """``convert`` applied to every job by ``workers`` processes (at most one per job), with a
    tqdm progress bar named ``desc``; returns the results, in no particular order."""
    if not jobs:
        return []
    with Pool(max(1, min(workers, len(jobs)))) as pool:
        results = pool.imap_unordered(convert, jobs, chunksize=chunksize)
        return list(tqdm(results, total=len(jobs), desc=desc, unit="label"))


def prepare(
    argv: Optional[Sequence[str]],
    doc: str,
    name: str,
    needed: str,
    fix: str,
    convert: Callable[[str, int], str],
    count_files: Callable[[str], Dict[str, Tuple[int, int]]],
) -> int:
    """The ``main`` of a preparation script: parse the command line (:func:`parse_args`,
    described by the first paragraph of ``doc``); unless ``<--root>/name/needed`` is missing
    (then print ``No <it>: <fix>`` on stderr and return 1), print what ``convert(<--root>/name,
    workers)`` says it did, then ``<split>: <images> images, <labels> labels`` for each split of
    ``count_files(<--root>/name)``, and return 0."""
    args = parse_args(doc.split("\n\n")[0], f"{name}/", argv)
    folder = os.path.join(os.path.expanduser(args.root), name)
    if not os.path.exists(os.path.join(folder, needed)):
        print(f"No {folder}/{needed}: {fix}", file=sys.stderr)
        return 1
    print(convert(folder, max(1, args.workers)))
    for split, (images, labels) in count_files(folder).items():
        print(f"{split}: {images} images, {labels} labels")
    return 0
