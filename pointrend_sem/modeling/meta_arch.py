"""Semantic segmentor that lets PointRend spend its points inside each image.

Shape shorthand in this module: N: images in a batch, C: classes predicted (logits per pixel;
1 for a one-logit binary model, whose outputs have max(C, 2) = 2 channels, see
:mod:`.binary`), H_i x W_i: image i as given to the model, H x W: the padded batch tensor,
h x w: a logits grid over the padded batch (any stride), H_out x W_out: the size an image's
outputs are returned at.
"""

from typing import Dict, List, Optional, Sequence, Tuple

import torch
from detectron2.config import configurable
from detectron2.modeling import META_ARCH_REGISTRY, SemanticSegmentor
from detectron2.structures import ImageList
from torch.nn import functional as F

from .binary import as_two_channels
from .subdivision_trace import SubdivisionTrace

# TEST.OUTPUT_RESIZE values, see postprocess_logits
OUTPUT_RESIZES = ("via_input", "direct")


def postprocess_logits(
    logits: torch.Tensor,
    padded_size,
    image_size,
    output_height: int,
    output_width: int,
    direct: bool = False,
) -> torch.Tensor:
    """Bring logits predicted over a padded batch back to one image's original size.

    Args:
        logits: (C, h, w) logits covering the padded input of size ``padded_size`` at any stride.
        padded_size: (H, W) of the padded batch tensor.
        image_size: (H_i, W_i) of this image inside the padded tensor, at its top left.
        output_height, output_width: H_out, W_out, the size to return (the image's original
            size).
        direct: False ("via_input", detectron2 and mmsegmentation): resize the logits to the
            padded input, crop the image, resize that to the output size (skipping resizes to
            the size a tensor already has). True ("direct", sssegmentation): crop the cells
            covering the image (all of them when the image is not padded; rounded up
            otherwise) and resize them to the output size in one bilinear step.

    Returns:
        (C, H_out, W_out) logits.
    """
    logits = logits.unsqueeze(0)
    if direct:
        rows = -(-image_size[0] * logits.shape[-2] // padded_size[0])
        cols = -(-image_size[1] * logits.shape[-1] // padded_size[1])
        logits = logits[:, :, :rows, :cols]
    else:
        if tuple(logits.shape[-2:]) != tuple(padded_size):
            logits = F.interpolate(logits, size=padded_size, mode="bilinear", align_corners=False)
        logits = logits[:, :, : image_size[0], : image_size[1]]
    if tuple(logits.shape[-2:]) != (output_height, output_width):
        logits = F.interpolate(
            logits, size=(output_height, output_width), mode="bilinear", align_corners=False
        )
    return logits[0]


def sliding_windows(height: int, width: int, crop_size, stride) -> List[Tuple[int, int, int, int]]:
    """Windows (y1, y2, x1, x2) covering an image, mmsegmentation's ``slide`` layout: a grid
    every ``stride`` pixels, the last window of each row/column moved back inside the image.
    A dimension smaller than the crop gets one window of the image's size."""
    crop_h, crop_w = crop_size
    stride_h, stride_w = stride
    rows = max(height - crop_h + stride_h - 1, 0) // stride_h + 1
    cols = max(width - crop_w + stride_w - 1, 0) // stride_w + 1
    windows = []
    for row in range(rows):
        for col in range(cols):
            y2, x2 = min(row * stride_h + crop_h, height), min(col * stride_w + crop_w, width)
            windows.append((max(y2 - crop_h, 0), y2, max(x2 - crop_w, 0), x2))
    return windows


def padded_batch_size(
    image_sizes: Sequence[Tuple[int, int]], size_divisibility: int, padding_constraints=None
) -> Tuple[int, int]:
    """(H, W) of a batch of images of ``image_sizes`` (H_i, W_i), as detectron2's
    ``ImageList.from_tensors`` pads them: the largest size, square ``padding_constraints
    ["square_size"]`` if given, rounded up to ``size_divisibility`` (or to ``padding_constraints
    ["size_divisibility"]``). In Python ints, so that a traced graph (export) pads to constants
    where ``from_tensors``'s tensor arithmetic would make data-dependent sizes."""
    height = max(size[0] for size in image_sizes)
    width = max(size[1] for size in image_sizes)
    constraints = padding_constraints or {}
    if constraints.get("square_size", 0) > 0:
        height = width = constraints["square_size"]
    stride = constraints.get("size_divisibility", size_divisibility)
    if stride > 1:
        height, width = -(-height // stride) * stride, -(-width // stride) * stride
    return height, width


# INPUT.TRAIN_PADDING values: to the batch's largest image, or to the crop size (image at the
# top left, or centred)
TRAIN_PADDINGS = ("batch", "crop_size", "crop_size_centered")


def train_crop_padding_from_config(cfg) -> Optional[Tuple[Tuple[int, int], bool]]:
    """``((crop_h, crop_w), centered)`` of ``INPUT.TRAIN_PADDING``'s crop modes; None for
    "batch" (detectron2's padding to the largest image of the batch).

    Raises:
        ValueError: for an unknown mode, or a crop mode without an "absolute" INPUT.CROP.
    """
    mode, crop = cfg.INPUT.TRAIN_PADDING, cfg.INPUT.CROP
    if mode not in TRAIN_PADDINGS:
        raise ValueError(f"INPUT.TRAIN_PADDING is {mode!r}; choose one of {list(TRAIN_PADDINGS)}.")
    if mode == "batch":
        return None
    if not (crop.ENABLED and crop.TYPE == "absolute"):
        raise ValueError(
            f"INPUT.TRAIN_PADDING {mode!r} pads to INPUT.CROP.SIZE, which needs INPUT.CROP.ENABLED "
            f"True and INPUT.CROP.TYPE 'absolute' (got {crop.ENABLED}, {crop.TYPE!r}); set "
            "INPUT.TRAIN_PADDING 'batch' to pad to the largest image of each batch instead."
        )
    return (int(crop.SIZE[0]), int(crop.SIZE[1])), mode == "crop_size_centered"


def pad_to_size(tensor: torch.Tensor, size, value: float, centered: bool) -> torch.Tensor:
    """Pad a (..., H_i, W_i) tensor with ``value`` to (..., H, W), ``size`` = (H, W) >= (H_i, W_i).

    The image stays at the top left (mmsegmentation's ``stack_batch``), or is centred with
    ``(H - H_i) // 2`` rows above and ``(W - W_i) // 2`` columns left of it (sssegmentation's
    ``Padding``).
    """
    extra_h, extra_w = size[0] - tensor.shape[-2], size[1] - tensor.shape[-1]
    top, left = (extra_h // 2, extra_w // 2) if centered else (0, 0)
    if extra_h == 0 and extra_w == 0:
        return tensor
    return F.pad(tensor, (left, extra_w - left, top, extra_h - top), value=value)


@META_ARCH_REGISTRY.register()
class PointRendSemanticSegmentor(SemanticSegmentor):
    """detectron2's :class:`SemanticSegmentor` with additions for PointRend heads:

    * one inference entry, :meth:`predict`, which ``forward`` in eval mode, test-time
      augmentation, the predictor and the tools call;
    * at inference the head learns which part of the padded batch each image covers, so
      subdivision points are not wasted on padding (a batch of differently sized images gives
      each image its full point budget);
    * predictions at any output stride are resized to the padded input before cropping, so a
      SUBDIVISION_STEPS that does not reach stride 1 still yields the input's size (or, with
      ``TEST.OUTPUT_RESIZE`` "direct", resized to the original size in one step, as
      sssegmentation does);
    * optional sliding-window inference (``TEST.SLIDING_WINDOW``);
    * with ``MODEL.POINTREND_SEM.OUTPUT_COARSE`` it also returns the coarse prediction;
    * training batches can be padded to the crop size as mmsegmentation and sssegmentation
      pad them (``INPUT.TRAIN_PADDING``).

    Training and inference prepare images the same way: :meth:`normalize_images`, then
    :meth:`pad_images` (channels-last with ``MODEL.CHANNELS_LAST``).

    This is the plain model: fp32, eager, what training runs and CUDA runs as it is. The
    inference speed-ups (``TEST.PRECISION``, ``MODEL.FOLD_NORMS``, oneDNN fusion) are applied to
    a copy of it by :func:`pointrend_sem.inference.build_inference_model`.
    """

    @configurable
    def __init__(
        self,
        *,
        output_coarse: bool = False,
        sliding_window: Optional[Tuple[Tuple[int, int], Tuple[int, int]]] = None,
        channels_last: bool = False,
        output_resize: str = "via_input",
        train_crop_padding: Optional[Tuple[Tuple[int, int], bool]] = None,
        **kwargs,
    ):
        """
        Args:
            output_coarse: also return "coarse_sem_seg".
            sliding_window: ((crop_h, crop_w), (stride_h, stride_w)), or None for whole-image
                inference.
            channels_last: keep conv weights (hence feature maps) and the padded input batch, in
                training and in inference, in channels-last (NHWC) memory layout, which oneDNN
                (CPU) and cuDNN run faster; values are unchanged up to float rounding.
            output_resize: how logits come back to the original size, "via_input" or
                "direct" (``TEST.OUTPUT_RESIZE``, see :func:`postprocess_logits`).
            train_crop_padding: ((crop_h, crop_w), centered) to pad training images (with 0
                after normalization) and labels (with the ignore value) to the crop size, or
                None to pad to the largest image of the batch (``INPUT.TRAIN_PADDING``).
            kwargs: see :class:`SemanticSegmentor`.
        """
        super().__init__(**kwargs)
        self.output_coarse = output_coarse
        self.sliding_window = sliding_window
        self.train_crop_padding = train_crop_padding
        if output_resize not in OUTPUT_RESIZES:
            raise ValueError(
                f"TEST.OUTPUT_RESIZE must be one of {OUTPUT_RESIZES}, got {output_resize!r}."
            )
        self.output_resize = output_resize
        self.channels_last = channels_last
        if channels_last:
            self.to(memory_format=torch.channels_last)

    @classmethod
    def from_config(cls, cfg):
        ret = super().from_config(cfg)
        ret["output_coarse"] = cfg.MODEL.POINTREND_SEM.OUTPUT_COARSE
        ret["channels_last"] = cfg.MODEL.CHANNELS_LAST
        ret["train_crop_padding"] = train_crop_padding_from_config(cfg)
        ret["output_resize"] = cfg.TEST.OUTPUT_RESIZE
        window = cfg.TEST.SLIDING_WINDOW
        if window.ENABLED:
            ret["sliding_window"] = (tuple(window.CROP_SIZE), tuple(window.STRIDE))
        return ret

    def normalize_images(self, images: Sequence[torch.Tensor]) -> List[torch.Tensor]:
        """Images in the input format (``INPUT.FORMAT``, values 0-255), each (3, H_i, W_i) of
        any dtype on any device -> float (3, H_i, W_i) on the model's device, normalized with
        ``pixel_mean`` and ``pixel_std``."""
        return [(image.to(self.device) - self.pixel_mean) / self.pixel_std for image in images]

    def pad_images(self, images: List[torch.Tensor]) -> ImageList:
        """Normalized (3, H_i, W_i) images padded with 0 at the bottom/right into one
        (N, 3, H, W) ImageList (H, W: the largest image's size rounded up to the backbone's
        size divisibility, :func:`padded_batch_size`), in channels-last memory layout when
        ``channels_last``."""
        sizes = [(int(image.shape[-2]), int(image.shape[-1])) for image in images]
        height, width = padded_batch_size(
            sizes, self.backbone.size_divisibility, self.backbone.padding_constraints
        )
        tensor = torch.stack(
            [F.pad(image, (0, width - w, 0, height - h)) for image, (h, w) in zip(images, sizes)]
        )
        if self.channels_last:
            tensor = tensor.contiguous(memory_format=torch.channels_last)
        return ImageList(tensor, sizes)

    def training_losses(self, batched_inputs: List[Dict]) -> Dict[str, torch.Tensor]:
        """Losses of a training batch. Normalized images and labels are padded bottom/right to
        the largest of the batch (detectron2), or to the crop size (``train_crop_padding``),
        then to the backbone's size divisibility.

        Args:
            batched_inputs: dicts with "image" (3, H_i, W_i) and "sem_seg" (H_i, W_i) labels.

        Returns:
            dict of scalar losses.
        """
        images = self.normalize_images([x["image"] for x in batched_inputs])
        targets = [x["sem_seg"].to(self.device) for x in batched_inputs]
        ignore_value = self.sem_seg_head.ignore_value
        if self.train_crop_padding is not None:
            (crop_h, crop_w), centered = self.train_crop_padding
            size = (
                max([crop_h] + [image.shape[-2] for image in images]),
                max([crop_w] + [image.shape[-1] for image in images]),
            )
            images = [pad_to_size(image, size, 0.0, centered) for image in images]
            targets = [pad_to_size(target, size, ignore_value, centered) for target in targets]
        tensor = self.pad_images(images).tensor
        targets = ImageList.from_tensors(
            targets,
            self.backbone.size_divisibility,
            ignore_value,
            self.backbone.padding_constraints,
        ).tensor
        _, losses = self.sem_seg_head(self.backbone(tensor), targets)
        return losses

    def forward(self, batched_inputs: List[Dict]):
        """
        Args:
            batched_inputs: dicts with "image" (3, H_i, W_i) in the input format, "sem_seg"
                (H_i, W_i) long labels for training, and optionally "height", "width" (the
                output size H_out x W_out, default H_i x W_i).

        Returns:
            training: dict of losses.
            inference: :meth:`predict`'s outputs.
        """
        if self.training:
            return self.training_losses(batched_inputs)
        images = [x["image"] for x in batched_inputs]
        output_sizes = [
            (x.get("height", image.shape[-2]), x.get("width", image.shape[-1]))
            for x, image in zip(batched_inputs, images)
        ]
        return self.predict(images, output_sizes)

    def predict(
        self,
        images: Sequence[torch.Tensor],
        output_sizes: Optional[Sequence[Tuple[int, int]]] = None,
        trace: Optional[SubdivisionTrace] = None,
    ) -> List[Dict[str, torch.Tensor]]:
        """The model's inference: ``forward`` in eval mode, and the inference module
        (:mod:`pointrend_sem.inference`) that the predictor, the evaluator, test-time
        augmentation and the tools run, come here.

        Images are normalized (:meth:`normalize_images`) and predicted as one padded batch
        (:meth:`pad_images`), or each from sliding windows when ``sliding_window`` is set.
        Call it in eval mode; it does not change autograd's mode (wrap it in
        ``torch.no_grad()``).

        Args:
            images: N images in the input format (``INPUT.FORMAT``, values 0-255, not
                normalized), each (3, H_i, W_i), any dtype, on any device.
            output_sizes: (H_out, W_out) to return each image's outputs at (e.g. the size of the
                original image before a test resize); default (H_i, W_i).
            trace: an empty :class:`SubdivisionTrace` to record the subdivision steps of the
                batch in (whole-image inference only).

        Returns:
            per image, "sem_seg": (max(C, 2), H_out, W_out) logits, and "coarse_sem_seg"
            likewise when ``output_coarse``. A one-logit (binary) model returns two channels,
            (0, foreground logit), so that argmax gives 1 = foreground (:mod:`.binary`).

        Raises:
            ValueError: ``output_sizes`` does not give one size per image; a ``trace`` that is
                not empty, or with sliding-window inference.
        """
        if output_sizes is None:
            output_sizes = [tuple(image.shape[-2:]) for image in images]
        elif len(output_sizes) != len(images):
            raise ValueError(
                f"predict got {len(images)} images but {len(output_sizes)} output sizes."
            )
        if trace is not None and (trace.steps or self.sliding_window is not None):
            raise ValueError(
                "A SubdivisionTrace records one whole-image prediction: pass a new one, and set "
                "TEST.SLIDING_WINDOW.ENABLED False to trace a sliding-window model."
            )
        if self.sliding_window is None:
            # the padded batch is the one copy of the normalized images kept during the pass
            batch = self.pad_images(self.normalize_images(images))
            predictions = self._predict_whole(batch, output_sizes, trace)
        else:
            normalized = self.normalize_images(images)
            predictions = [
                self._predict_sliding(image, size) for image, size in zip(normalized, output_sizes)
            ]
        return [
            {key: as_two_channels(logits, dim=0) for key, logits in prediction.items()}
            for prediction in predictions
        ]

    def _predict_whole(
        self,
        batch: ImageList,
        output_sizes: Optional[Sequence[Tuple[int, int]]] = None,
        trace: Optional[SubdivisionTrace] = None,
    ) -> List[Dict[str, torch.Tensor]]:
        """Logits of normalized images batched with padding: :meth:`predict`'s whole-image
        inference.

        Args:
            batch: normalized (3, H_i, W_i) images padded into one (N, 3, H, W) batch
                (:meth:`pad_images`).
            output_sizes: (H_out, W_out) to return each image's logits at (by
                :func:`postprocess_logits` with ``output_resize``); default (H_i, W_i).
            trace: see :meth:`predict`; its ``padded_size`` and ``image_sizes`` are set here.

        Returns:
            per image, "sem_seg" (and "coarse_sem_seg" when ``output_coarse``):
            (C, H_out, W_out).
        """
        features = self.backbone(batch.tensor)
        padded_size = tuple(batch.tensor.shape[-2:])
        image_sizes = [tuple(size) for size in batch.image_sizes]
        valid_fraction = None  # decided on Python ints: a traced graph (export) has no branch
        if any(size != padded_size for size in image_sizes):
            sizes = torch.tensor(image_sizes, dtype=torch.float32, device=self.device)
            padded = torch.tensor(padded_size, dtype=torch.float32, device=self.device)
            valid_fraction = sizes / padded
        if trace is not None:
            trace.padded_size = padded_size
            trace.image_sizes = image_sizes
        refined, coarse = self.sem_seg_head.inference(features, valid_fraction, trace)
        direct = self.output_resize == "direct"
        outputs = []
        for i, size in enumerate(image_sizes):
            out_size = size if output_sizes is None else output_sizes[i]
            heads = {"sem_seg": refined[i]}
            if self.output_coarse:
                heads["coarse_sem_seg"] = coarse[i]
            outputs.append(
                {
                    key: postprocess_logits(logits, padded_size, size, *out_size, direct=direct)
                    for key, logits in heads.items()
                }
            )
        return outputs

    def _predict_sliding(
        self, image: torch.Tensor, output_size: Tuple[int, int]
    ) -> Dict[str, torch.Tensor]:
        """Logits of one normalized (3, H_i, W_i) image from overlapping windows (each a
        whole-image inference, :meth:`_predict_whole`), averaged where they overlap, then
        resized (bilinear) to ``output_size`` (H_out, W_out): :meth:`predict`'s sliding-window
        inference.

        Returns:
            "sem_seg" (and "coarse_sem_seg" when ``output_coarse``): (C, H_out, W_out).
        """
        (crop_size, stride), (height, width) = self.sliding_window, image.shape[-2:]
        windows = sliding_windows(height, width, crop_size, stride)
        sums: Dict[str, torch.Tensor] = {}
        count = image.new_zeros((height, width))
        for y1, y2, x1, x2 in windows:
            (logits,) = self._predict_whole(self.pad_images([image[:, y1:y2, x1:x2]]))
            for key, value in logits.items():
                if key not in sums:
                    sums[key] = value.new_zeros((value.shape[0], height, width))
                sums[key][:, y1:y2, x1:x2] += value
            count[y1:y2, x1:x2] += 1
        outputs = {}
        for key, total in sums.items():
            mean = total / count
            if tuple(mean.shape[-2:]) != tuple(output_size):
                mean = F.interpolate(
                    mean[None], size=tuple(output_size), mode="bilinear", align_corners=False
                )[0]
            outputs[key] = mean
        return outputs
