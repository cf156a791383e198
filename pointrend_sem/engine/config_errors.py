"""What yacs' errors while merging a config file or command line mean for the user:
:func:`explain_config_errors` turns them into :class:`~pointrend_sem.errors.UserError` s that name
the key and the fix."""

import contextlib
import difflib
import re
from typing import Iterator, Optional

import yaml

from ..errors import UserError, UserFileNotFoundError, UserKeyError, UserValueError


def _all_keys(node, prefix: str = ""):
    for key, value in node.items():
        if isinstance(value, dict):
            yield from _all_keys(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}"


_TYPE_MISMATCH = re.compile(
    r"Type mismatch \((?P<expected>.+?) vs\. (?P<given>.+?)\) with values \((?P<default>.*) vs\. "
    r"(?P<value>.*)\) for config key: (?P<key>\S+)$",
    re.DOTALL,
)


def _type_name(type_repr: str) -> str:
    """A type as yacs writes it, by name: int for "<class 'int'>", "group of keys" for a
    CfgNode."""
    if "CfgNode" in type_repr:
        return "group of keys"
    match = re.fullmatch(r"<class '(?:[\w.]+\.)?(\w+)'>", type_repr)
    return match[1] if match else type_repr


def _config_error(cfg, source: str, error: Exception) -> Optional[UserError]:
    """What a yacs error raised while merging ``source`` means for the user, as a UserError; None
    when it is not one of the mistakes a config file or command line can make."""
    message = str(error.args[0]) if error.args else ""
    if isinstance(error, (KeyError, AssertionError)) and message.startswith(
        ("Non-existent config key: ", "Non-existent key: ")
    ):
        key = message.split(": ", 1)[1]
        close = difflib.get_close_matches(key, list(_all_keys(cfg)), n=3, cutoff=0.6)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        return UserKeyError(
            f"Unknown config key {key} in {source}.{hint} Keys are defined by detectron2's "
            "config/defaults.py and pointrend_sem/config.py."
        )
    mismatch = _TYPE_MISMATCH.match(message) if isinstance(error, ValueError) else None
    if mismatch and _type_name(mismatch["expected"]) == "group of keys":
        return UserValueError(
            f"Config key {mismatch['key']} in {source} is a group of keys, not a value; set "
            f"one of its keys ({mismatch['key']}.<KEY> VALUE)."
        )
    if mismatch:
        return UserValueError(
            f"Config key {mismatch['key']} in {source} takes a value of type "
            f"{_type_name(mismatch['expected'])}, like its default {mismatch['default']}, not "
            f"{_type_name(mismatch['given'])} {mismatch['value']!r}; fix the value."
        )
    if isinstance(error, AssertionError) and message.startswith("Override list has odd length"):
        return UserValueError(
            f"The config overrides on {source} must be KEY VALUE pairs, but their number is odd: "
            "a key has no value (write a list as '[1, 2]' and an empty value as \"\")."
        )
    if isinstance(error, yaml.YAMLError):
        return UserValueError(
            f"Config file {source} is not valid YAML: {' '.join(str(error).split())}"
        )
    if isinstance(error, FileNotFoundError) and error.filename:
        return UserFileNotFoundError(
            f"Config file {source} inherits from {error.filename} (_BASE_), which does not "
            "exist; _BASE_ is relative to the folder of the file that names it."
        )
    return None


@contextlib.contextmanager
def explain_config_errors(cfg, source: str) -> Iterator[None]:
    """Turn yacs' errors for a config file or override list ``source`` (unknown keys, values of
    the wrong type, an override without a value, YAML syntax, a missing ``_BASE_``) into
    :class:`UserError` s that name the key and the fix (an unknown key: with similar keys)."""
    try:
        yield
    except (KeyError, AssertionError, ValueError, yaml.YAMLError, FileNotFoundError) as e:
        user_error = None if isinstance(e, UserError) else _config_error(cfg, source, e)
        if user_error is None:
            raise
        raise user_error from None
