"""Placing another codebase's tensors under this project's keys, and checking them against a model.

Every converter is a list of rename rules given to :func:`place_state_dict`; a converted state
dict is checked against the model it is for with :func:`check_state_dict`. Both raise
:class:`ConversionError`, which lists every key at fault at once.
"""

import re
from collections import OrderedDict
from typing import Callable, List, Mapping, Optional, Sequence, Tuple

import torch

# this project's key prefixes: the ResNet under the FPN, the coarse head, the point head
BACKBONE_PREFIX = "backbone.bottom_up."
COARSE = "sem_seg_head.coarse_sem_seg_head."
POINT = "sem_seg_head.point_head."
# what DistributedDataParallel puts before every key of a model saved through it
DDP_PREFIX = "module."
# BN's counter of batches: a buffer that detectron2's norms may have and inference never reads
BN_COUNTER = "num_batches_tracked"

# (pattern, target builder): the builder gets the pattern's match and returns the key in this
# project's naming, or None when the key matches but has no place
Rule = Tuple[re.Pattern, Callable[[re.Match], Optional[str]]]
Rules = Sequence[Rule]
StateDict = Mapping[str, torch.Tensor]


class ConversionError(KeyError, ValueError):
    """A state dict that cannot be placed or does not fit a model; ``problems`` names each key at
    fault. It is a KeyError (keys missing, unknown or without a place) and a ValueError (shapes)
    at once, so that one error can list both kinds."""

    def __init__(self, summary: str, problems: Sequence[str]):
        super().__init__(summary, list(problems))
        self.summary = summary
        self.problems = list(problems)

    def __str__(self) -> str:
        return "\n  ".join([f"{self.summary}:", *self.problems])


def strip_ddp_prefix(state_dict: StateDict) -> "OrderedDict[str, torch.Tensor]":
    """``state_dict`` without the ``module.`` that starts every key of a model saved inside
    DistributedDataParallel; unchanged unless every key starts with it."""
    if state_dict and all(key.startswith(DDP_PREFIX) for key in state_dict):
        return OrderedDict((key[len(DDP_PREFIX) :], value) for key, value in state_dict.items())
    return OrderedDict(state_dict)


def rename(key: str, rules: Rules) -> Optional[str]:
    """``key`` renamed by the first rule whose pattern matches it (``re.match``); None when no
    pattern matches or that rule's builder returns None."""
    for pattern, build in rules:
        match = pattern.match(key)
        if match:
            return build(match)
    return None


def under(prefix: str, rules: Rules) -> Rule:
    """One rule for every key that starts with ``prefix``: the rest of the key renamed by
    ``rules`` (for a model nested in the source, e.g. a ResNet under ``backbone.``)."""
    return re.compile(re.escape(prefix) + "(.+)$"), lambda match: rename(match[1], rules)


def fpn_conv_key(match: re.Match) -> str:
    """Rule builder for an FPN conv or its norm, from the pattern's named groups: ``level`` (0 at
    stride 4), ``lateral`` (matched for a lateral conv, else an output conv), ``norm`` (matched
    for the conv's norm) and ``param``."""
    groups = match.groupdict()
    name = "fpn_lateral" if groups.get("lateral") else "fpn_output"
    norm = "norm." if groups.get("norm") else ""
    return f"backbone.{name}{int(groups['level']) + 2}.{norm}{groups['param']}"


def scale_head_key(match: re.Match) -> str:
    """Rule builder for a conv of the Semantic-FPN coarse head or its norm, from the pattern's
    named groups: ``level`` (0 at stride 4), ``index`` (the conv's place in its scale head),
    ``norm`` (matched for the conv's norm) and ``param``."""
    groups = match.groupdict()
    norm = "norm." if groups.get("norm") else ""
    return f"{COARSE}p{int(groups['level']) + 2}.{groups['index']}.{norm}{groups['param']}"


def place_state_dict(
    state_dict: StateDict,
    rules: Rules,
    *,
    source: str,
    drop: Optional[re.Pattern] = None,
    check_source: Optional[Callable[[StateDict], List[str]]] = None,
) -> "OrderedDict[str, torch.Tensor]":
    """Every tensor of ``state_dict`` under its key in this project's naming.

    A ``module.`` before every key (a model saved inside DistributedDataParallel) is removed first
    (:func:`strip_ddp_prefix`), then each key is renamed by :func:`rename`.

    Args:
        state_dict: the source's parameters and buffers.
        rules: the source's rename rules.
        source: the source's name, for the error message.
        drop: keys it matches (``re.search``) are left out: tensors that this project does not
            keep (e.g. an ImageNet classifier).
        check_source: returns what keeps the (``module.``-free) source from being converted that
            key-by-key renaming cannot see (e.g. a layer with a tensor missing), one line per
            problem naming the source key.

    Returns:
        OrderedDict in this project's keys, in the source's order.

    Raises:
        ConversionError: naming every key that no rule places or that two keys are placed at,
            and every problem ``check_source`` finds.
    """
    state = strip_ddp_prefix(state_dict)
    problems = list(check_source(state)) if check_source is not None else []
    placed: "OrderedDict[str, torch.Tensor]" = OrderedDict()
    placed_from = {}
    for key, value in state.items():
        if drop is not None and drop.search(key):
            continue
        new_key = rename(key, rules)
        if new_key is None:
            problems.append(f"{key}: no place for it")
        elif new_key in placed:
            problems.append(f"{key}: placed at {new_key}, which {placed_from[new_key]} fills")
        else:
            placed[new_key], placed_from[new_key] = value, key
    if problems:
        raise ConversionError(f"cannot convert the {source} state dict", problems)
    return placed


def check_state_dict(
    state_dict: StateDict,
    model_state: StateDict,
    *,
    required_prefix: str = "",
    optional_suffixes: Tuple[str, ...] = (),
) -> None:
    """Check ``state_dict`` as the weights of a model whose ``state_dict()`` is ``model_state``.

    Args:
        state_dict: converted tensors in this project's keys.
        model_state: the model's parameters and buffers (only their keys and shapes are read, so
            a model built on the "meta" device will do).
        required_prefix: only the model keys that start with it must be filled (e.g.
            ``backbone.bottom_up.`` for an ImageNet backbone); default: all.
        optional_suffixes: model keys that end with one of them may stay unfilled (e.g.
            ``("num_batches_tracked",)`` for a source without BN counters).

    Raises:
        ConversionError: listing every model key left unfilled ("missing"), every key the model
            does not have ("not in the model") and every key whose shape differs (both shapes).
    """
    missing = [
        f"{key}: missing"
        for key in model_state
        if key.startswith(required_prefix)
        and not key.endswith(optional_suffixes)
        and key not in state_dict
    ]
    unexpected = [f"{key}: not in the model" for key in state_dict if key not in model_state]
    misshaped = [
        f"{key}: shape {tuple(value.shape)} but the model has {tuple(model_state[key].shape)}"
        for key, value in state_dict.items()
        if key in model_state and tuple(value.shape) != tuple(model_state[key].shape)
    ]
    if missing or unexpected or misshaped:
        raise ConversionError(
            f"the state dict does not fit the model ({len(missing)} missing, "
            f"{len(unexpected)} not in the model, {len(misshaped)} of another shape)",
            missing + unexpected + misshaped,
        )
