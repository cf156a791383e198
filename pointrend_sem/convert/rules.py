"""Renaming a whole checkpoint: a ResNet backbone under a prefix, the rest by regex rules."""

import re
from typing import Callable, List, Optional, Tuple

from .resnet import BACKBONE_PREFIX, rename_resnet_key

Rules = List[Tuple[re.Pattern, Callable[[re.Match], str]]]


def rename_with_rules(key: str, source_backbone_prefix: str, rules: Rules) -> Optional[str]:
    """``key`` in this project's naming, or None when nothing places it.

    Keys under ``source_backbone_prefix`` are mmcv-style ResNet keys; any other key is renamed
    by the first rule whose pattern matches it.
    """
    if key.startswith(source_backbone_prefix):
        renamed = rename_resnet_key(key[len(source_backbone_prefix) :], "mmcv")
        return None if renamed is None else BACKBONE_PREFIX + renamed
    for pattern, build in rules:
        match = pattern.match(key)
        if match:
            return build(match)
    return None
