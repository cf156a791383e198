"""A quiet console: warnings that are not about the user's run are kept out of it.

fvcore and detectron2 call ``torch.jit.script`` while they are imported (fvcore's focal loss,
detectron2's layers), and torch 2.9+ answers each call with a ``FutureWarning`` that
``torch.jit.script`` is deprecated: two lines at the start of every command that the user can
do nothing about. :func:`known_import_warnings_silenced` hides exactly that warning (its
message, category and the module that raises it) while this package imports detectron2, so a
command whose first import is ``pointrend_sem`` starts quietly; the filter is not left installed,
so the user's own ``torch.jit.script`` calls still warn.
"""

import contextlib
import warnings
from typing import Iterator

# (message regex, category, module regex) of each known import-time warning
KNOWN_IMPORT_WARNINGS = [
    (r"`torch\.jit\.script` is deprecated", FutureWarning, r"torch\.jit\._script"),
]


@contextlib.contextmanager
def known_import_warnings_silenced() -> Iterator[None]:
    """Inside the block, the warnings of :data:`KNOWN_IMPORT_WARNINGS` are ignored; every
    other warning is shown as before."""
    with warnings.catch_warnings():
        for message, category, module in KNOWN_IMPORT_WARNINGS:
            warnings.filterwarnings("ignore", message=message, category=category, module=module)
        yield
