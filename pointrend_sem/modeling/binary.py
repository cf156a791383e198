"""The one-logit (binary) mode: every rule for a model with ``MODEL.SEM_SEG_HEAD.NUM_CLASSES`` 1.

Such a model predicts one logit per pixel, the foreground's: foreground where it is > 0. Its
labels are 0 (background), 1 (foreground) and the ignore value, as for a two-class model; its
dataset's metadata names two classes. The rules, and who applies them:

* uncertainty of a logit z: ``-|z|``, the margin to the decision boundary
  (:func:`one_logit_uncertainty`; :func:`.point_sampling.calculate_uncertainty`);
* loss: binary cross-entropy with target ``label == 1``, summed over the non-ignored pixels
  (:func:`one_logit_loss_sum`; :func:`.pointrend_head.cross_entropy_with_ignore`);
* outputs: two channels ``(0, z)``, so that the argmax is the mask (1 = foreground) and a softmax
  gives ``(1 - sigmoid(z), sigmoid(z))`` (:func:`as_two_channels`;
  :meth:`.meta_arch.PointRendSemanticSegmentor.predict`);
* number of output channels and of label values: ``max(C, 2)`` (:func:`num_output_channels`).

Shape shorthand in this module: N: images, C: classes predicted (logits per pixel; 1 in this
mode), "...": any further dimensions (pixels H x W, or points P).
"""

import torch
from torch.nn import functional as F


def is_one_logit(logits: torch.Tensor, dim: int = 1) -> bool:
    """Whether ``logits`` hold one logit (C == 1) along the class dimension ``dim``."""
    return logits.shape[dim] == 1


def num_output_channels(num_classes: int) -> int:
    """Channels of the model's outputs, and number of label values (ignore value apart), for
    a model predicting ``num_classes`` logits: ``max(num_classes, 2)``."""
    return max(num_classes, 2)


def one_logit_uncertainty(logits: torch.Tensor) -> torch.Tensor:
    """(N, 1, ...) foreground logits -> (N, 1, ...) uncertainty ``-|z|``, highest (0) on the
    decision boundary."""
    return -logits.abs()


def one_logit_loss_sum(
    logits: torch.Tensor, targets: torch.Tensor, ignore_value: int
) -> torch.Tensor:
    """Binary cross-entropy of (N, 1, ...) foreground logits against (N, ...) long labels
    (target ``label == 1``), summed over the labels that are not ``ignore_value``; a scalar."""
    valid = targets != ignore_value
    per_pixel = F.binary_cross_entropy_with_logits(
        logits[:, 0], (targets == 1).to(logits.dtype), reduction="none"
    )
    return (per_pixel * valid).sum()


def as_two_channels(logits: torch.Tensor, dim: int = 1) -> torch.Tensor:
    """``(0, z)`` along ``dim`` for one-logit ``logits`` (e.g. (1, H, W) -> (2, H, W) with
    ``dim=0``); logits of several classes are returned unchanged."""
    if not is_one_logit(logits, dim):
        return logits
    return torch.cat([torch.zeros_like(logits), logits], dim=dim)
