"""Errors in what a user gave (a file, a folder, a config key, a dataset entry), and the handler
that ends a command on them with one line instead of a traceback.

The checks of this package raise :class:`UserError` subclasses that are also the built-in
exception they stand for (``UserFileNotFoundError`` is a ``FileNotFoundError``, ...), so code
that catches the built-in keeps working. Each message names the file or key and the fix.

Commands wrap their ``main`` with :func:`main_with_one_line_errors`: a ``UserError`` (or yacs'
error for a config key registered as renamed, which names the key and its replacement) then ends
the program with exit status 1 and ``error: <message>`` on stderr, also when it was raised in a
DataLoader worker or in a process of detectron2's ``launch()``; any other exception keeps its
traceback. ``POINTREND_SEM_DEBUG=1`` brings the traceback back for user errors too.
"""

import contextlib
import functools
import os
import re
import sys
from typing import Callable, Iterator, Optional, TypeVar

DEBUG_ENV = "POINTREND_SEM_DEBUG"

T = TypeVar("T")

# the last line of a traceback that a user error raised in another process (a DataLoader worker,
# a process started by detectron2's launch()) leaves in the message of the error re-raised here
_QUOTED_USER_ERROR = re.compile(r"^pointrend_sem\.errors\.User\w*Error: (?P<message>.+)$")
# yacs' KeyError for a config key registered as renamed (CfgNode.raise_key_rename_error)
_RENAMED_KEY = re.compile(r"^Key \S+ was renamed to .+; please update your config\.")


class UserError(Exception):
    """A mistake in the user's input, explained by the message (which names the file or key and
    the fix). Raise one of the subclasses below, which are also the matching built-in error."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class UserFileNotFoundError(UserError, FileNotFoundError):
    """A file or folder the user named (or a dataset needs) does not exist."""


class UserValueError(UserError, ValueError):
    """A file that cannot be read or holds wrong values, or a config value or entry that is
    wrong."""


class UserKeyError(UserError, KeyError):
    """An unknown name: a config key, a dataset name. ``str()`` is the message, unquoted."""


def debug_enabled() -> bool:
    """Whether ``POINTREND_SEM_DEBUG`` asks for tracebacks (set, and not "", "0" or "false")."""
    return os.environ.get(DEBUG_ENV, "").strip().lower() not in ("", "0", "false", "no")


def quoted_user_error(error: BaseException) -> Optional[str]:
    """The message of a :class:`UserError` raised in another process, when ``error`` quotes its
    traceback: torch re-raises a DataLoader worker's error, and ``torch.multiprocessing`` a
    process's error (detectron2's ``launch()`` with several processes), with the original
    traceback as the message. None otherwise."""
    lines = str(error).strip().splitlines()
    match = _QUOTED_USER_ERROR.match(lines[-1].strip()) if len(lines) > 1 else None
    return match["message"] if match else None


def renamed_key_error(error: BaseException) -> Optional[str]:
    """The message of yacs' error for a config key registered as renamed or removed
    (:data:`pointrend_sem.config.REMOVED_KEYS`); None for any other error."""
    message = str(error.args[0]) if isinstance(error, KeyError) and error.args else ""
    return message if _RENAMED_KEY.match(message) else None


def one_line(error: BaseException) -> str:
    """The message of ``error`` (of the user error it quotes, see :func:`quoted_user_error`) as
    one line."""
    message = quoted_user_error(error) or renamed_key_error(error) or str(error)
    return " ".join(message.split()) or type(error).__name__


@contextlib.contextmanager
def one_line_errors(exit_code: int = 1) -> Iterator[None]:
    """Inside the block, a :class:`UserError`, yacs' error for a renamed config key, or an error
    that quotes a user error raised in another process, ends the program
    (``SystemExit(exit_code)``) after printing ``error: <message>`` as one line on stderr. Other
    exceptions pass unchanged, and so do user errors when :func:`debug_enabled`."""
    try:
        yield
    except Exception as e:
        user_error = isinstance(e, UserError) or quoted_user_error(e) or renamed_key_error(e)
        if not user_error or debug_enabled():
            raise
        sys.stdout.flush()
        print(f"error: {one_line(e)}", file=sys.stderr, flush=True)
        raise SystemExit(exit_code) from None


def main_with_one_line_errors(main: Callable[..., T], exit_code: int = 1) -> Callable[..., T]:
    """``main`` wrapped in :func:`one_line_errors`; use it as a command's entry point::

    if __name__ == "__main__":
        sys.exit(main_with_one_line_errors(main)())
    """

    @functools.wraps(main)
    def wrapped(*args, **kwargs) -> T:
        with one_line_errors(exit_code):
            return main(*args, **kwargs)

    return wrapped
