"""Checkpoint converters: other codebases' weights renamed into this project's model keys.

Each converter (:mod:`.mmseg`, :mod:`.sssegmentation`, :mod:`.resnet`) is a list of rename rules
given to :func:`place_state_dict`; :func:`check_state_dict` checks the result against a model.
"""

from .placement import ConversionError, check_state_dict, place_state_dict, strip_ddp_prefix

__all__ = ["ConversionError", "check_state_dict", "place_state_dict", "strip_ddp_prefix"]
