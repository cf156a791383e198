"""pointrend-sem: PointRend semantic segmentation as a detectron2 project.

Importing this package registers its backbone, heads, meta-architecture and datasets.

Without detectron2 or without PyTorch (a deployment machine), the package still imports, for the
parts that do not need them: :mod:`pointrend_sem.export.runner` (runs an exported model; an
``.onnx`` file needs neither) and :mod:`pointrend_sem.errors`; anything else says that it needs
them.
"""

from .errors import UserError, main_with_one_line_errors

__version__ = "0.1.0"

try:
    import detectron2  # noqa: F401
    import torch  # noqa: F401
except ModuleNotFoundError as e:
    if e.name not in ("torch", "detectron2"):
        raise
    _MISSING = e.name
else:
    _MISSING = None

if _MISSING is None:
    from .console import known_import_warnings_silenced

    # the first import of detectron2's modules (and fvcore's) happens here, without the
    # deprecation warnings they raise at import (pointrend_sem.console)
    with known_import_warnings_silenced():
        from . import data  # noqa: F401  (registers datasets)
        from . import modeling  # noqa: F401  (registers model parts)
        from .config import add_pointrend_sem_config

    __all__ = ["add_pointrend_sem_config", "UserError", "main_with_one_line_errors"]
else:

    def __getattr__(name: str):
        raise ImportError(
            f"pointrend_sem.{name} needs PyTorch and detectron2, and {_MISSING} is not installed "
            "(README.md, 'Installation'); without them, only pointrend_sem.export.runner runs "
            "(exported models)."
        )
