"""pointrend-sem: PointRend semantic segmentation as a detectron2 project.

Importing this package registers its backbone, heads, meta-architecture and datasets.
"""

from . import data  # noqa: F401  (registers datasets)
from . import modeling  # noqa: F401  (registers model parts)
from .config import add_pointrend_sem_config
from .errors import UserError, main_with_one_line_errors

__all__ = ["add_pointrend_sem_config", "UserError", "main_with_one_line_errors"]
__version__ = "0.1.0"
