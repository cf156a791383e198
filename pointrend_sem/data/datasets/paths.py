"""Where datasets live."""

import os


def datasets_root() -> str:
    """``$DETECTRON2_DATASETS`` (default ``datasets``), with ``~`` expanded."""
    return os.path.expanduser(os.getenv("DETECTRON2_DATASETS", "datasets"))
