"""The images a command-line option names: files, folders and glob patterns
(``demo/demo.py --input``, ``tools/export_model.py --check-images``)."""

import glob
import os
from typing import List, Sequence

from .errors import UserFileNotFoundError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")


def expand_image_inputs(patterns: Sequence[str], option: str) -> List[str]:
    """Image paths named by ``patterns``: files, folders (their image files, sorted) and glob
    patterns (their matches, sorted), in order and without repeats.

    Args:
        option: the command-line option that gave ``patterns``, named in the errors.

    Raises:
        UserFileNotFoundError: a pattern names nothing, or nothing is found at all.
    """
    paths: List[str] = []
    for pattern in patterns:
        pattern = os.path.expanduser(pattern)
        if os.path.isdir(pattern):
            found = sorted(
                os.path.join(pattern, name)
                for name in os.listdir(pattern)
                if name.lower().endswith(IMAGE_EXTENSIONS)
            )
        elif glob.has_magic(pattern):
            found = sorted(p for p in glob.glob(pattern) if os.path.isfile(p))
        elif os.path.isfile(pattern):
            found = [pattern]
        else:
            raise UserFileNotFoundError(f"{option} {pattern}: no such image, folder or glob match.")
        paths += [p for p in found if p not in paths]
    if not paths:
        raise UserFileNotFoundError(f"{option}: no image found in {list(patterns)}.")
    return paths
