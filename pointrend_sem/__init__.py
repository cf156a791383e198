"""pointrend-sem: PointRend semantic segmentation as a detectron2 project.

Importing this package registers its backbone, heads, meta-architecture and datasets.
"""

from . import data  # noqa: F401  (registers datasets)
from . import modeling  # noqa: F401  (registers model parts)
from .config import add_pointrend_sem_config

__all__ = ["add_pointrend_sem_config"]
__version__ = "0.1.0"
