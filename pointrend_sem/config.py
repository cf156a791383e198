"""Config keys of pointrend-sem.

``add_pointrend_sem_config`` only adds keys; it never changes the value of a key detectron2
already has, so it can be combined with ``detectron2.projects.point_rend.add_pointrend_config``
(or DeepLab's) in one process and their YAMLs load as they would without it. The head's keys
live under ``MODEL.POINTREND_SEM``; the others extend the section they belong to
(``MODEL.FPN``, ``MODEL``, ``INPUT``, ``TEST``) or are DeepLab's (``add_deeplab_config``).

Keys this package no longer has are registered as renamed (:data:`REMOVED_KEYS`): a config that
sets one stops with yacs' error naming what replaces it (one line from our commands,
:mod:`pointrend_sem.errors`) instead of "Non-existent config key".
"""

from detectron2.config import CfgNode as CN
from detectron2.projects.deeplab import add_deeplab_config

# Removed keys: (what replaces the key, what to do), for yacs' renamed-key error
REMOVED_KEYS = {
    "MODEL.KEEP_FREED_MEMORY": (
        "the command-line flag --keep-freed-memory",
        "an allocator setting is the process's, not the model's: delete the key from the config "
        "and pass --keep-freed-memory to train_net.py or the tool (CPU only, off by default)",
    ),
}


def add_pointrend_sem_config(cfg: CN) -> None:
    """Add every config key used by pointrend-sem to ``cfg`` (in place), and register the keys
    of :data:`REMOVED_KEYS` as renamed."""
    for key, (replacement, fix) in REMOVED_KEYS.items():
        if not cfg.key_is_renamed(key):
            cfg.register_renamed_key(key, replacement, fix)
    # DeepLab's keys: MODEL.RESNETS.STEM_TYPE ("basic" = MSRA 7x7 stem, "deeplab" = ResNetV1c's
    # deep stem of three 3x3 convs), RES4_DILATION / RES5_MULTI_GRID (dilated "D8" backbones) and
    # SOLVER.POLY_LR_POWER.
    add_deeplab_config(cfg)

    # Input padding of the FPN backbone: 0 = a multiple of its largest stride (detectron2);
    # 1 = none beyond the largest image of a batch (mmsegmentation's whole-image inference).
    cfg.MODEL.FPN.SIZE_DIVISIBILITY = 0
    # Activation after each FPN conv (lateral and output): "" (detectron2, mmsegmentation) or
    # "relu" (sssegmentation, whose FPN convs are conv + norm + ReLU).
    cfg.MODEL.FPN.ACTIVATION = ""

    # Run convolutions in channels-last (NHWC) memory layout: about 2x faster ResNet on CPU
    # (oneDNN) and faster on GPU; outputs equal up to float rounding.
    cfg.MODEL.CHANNELS_LAST = True
    # In inference, fold frozen / eval-mode batch norms into the preceding convolutions (one
    # pass less over each feature map); parameters and checkpoints are unchanged.
    cfg.MODEL.FOLD_NORMS = True

    # The FCN coarse head (FCNCoarseHead, mmsegmentation's FCNHead) on the one map of
    # MODEL.SEM_SEG_HEAD.IN_FEATURES: FCN_NUM_CONVS 3x3 convs of CONVS_DIM channels; with
    # FCN_CONCAT_INPUT the map is concatenated to their output and fused by one more 3x3 conv;
    # channel dropout FCN_DROPOUT before the classifier.
    cfg.MODEL.SEM_SEG_HEAD.FCN_NUM_CONVS = 2
    cfg.MODEL.SEM_SEG_HEAD.FCN_CONCAT_INPUT = True
    cfg.MODEL.SEM_SEG_HEAD.FCN_DROPOUT = 0.1

    cfg.MODEL.POINTREND_SEM = CN()
    # Name of the coarse head in SEM_SEG_HEADS_REGISTRY. It reads MODEL.SEM_SEG_HEAD.* and must
    # expose ``layers(features) -> (N, num_classes, H / s, W / s)`` logits and their stride
    # ``common_stride`` s (MODEL.SEM_SEG_HEAD.COMMON_STRIDE for detectron2's heads), checked when
    # the model is built (pointrend_sem/modeling/coarse_head.py). Besides the Semantic FPN heads:
    # "DeepLabV3PlusCoarseHead", "DeepLabV3CoarseHead" (detectron2's DeepLab heads with ASPP
    # pooling that adapts to the input size) and "FCNCoarseHead".
    cfg.MODEL.POINTREND_SEM.COARSE_HEAD_NAME = "SemSegFPNHead"
    # Name of the point head in SEM_SEG_POINT_HEAD_REGISTRY.
    cfg.MODEL.POINTREND_SEM.POINT_HEAD_NAME = "MLPPointHead"
    # Feature maps the point head samples its fine-grained features from, e.g. ["p2", "p3"].
    cfg.MODEL.POINTREND_SEM.IN_FEATURES = ["p2"]
    # Number of hidden 1x1 layers ("fully connected" over points) of the point head, and width.
    cfg.MODEL.POINTREND_SEM.NUM_FC = 3
    cfg.MODEL.POINTREND_SEM.FC_DIM = 256
    # If True, the coarse logits at each point are concatenated to the input of every hidden
    # layer and of the predictor (mmsegmentation's recipe); if False only to the first layer's
    # input (detectron2's recipe).
    cfg.MODEL.POINTREND_SEM.COARSE_PRED_EACH_LAYER = True
    # Training: number of points N per image at which the point loss is computed.
    cfg.MODEL.POINTREND_SEM.TRAIN_NUM_POINTS = 2048
    # Training: k, N * k uniformly random candidate points are drawn first.
    cfg.MODEL.POINTREND_SEM.OVERSAMPLE_RATIO = 3.0
    # Training: beta, beta * N of the points are the most uncertain candidates, the rest are
    # drawn uniformly at random.
    cfg.MODEL.POINTREND_SEM.IMPORTANCE_SAMPLE_RATIO = 0.75
    # Inference: number of x2 upsampling steps of adaptive subdivision (2 takes the stride-4
    # coarse prediction to full resolution); -1 derives them from the coarse head's stride s,
    # ceil(log2 s) steps to stride 1 (4 for a stride-16 DeepLabV3 head).
    cfg.MODEL.POINTREND_SEM.SUBDIVISION_STEPS = 2
    # Inference: number of most uncertain points re-predicted at each subdivision step.
    cfg.MODEL.POINTREND_SEM.SUBDIVISION_NUM_POINTS = 8196
    # Inference: if True, the padding that makes a batch's size divisible (FPN.SIZE_DIVISIBILITY,
    # the batch's largest image) gets subdivision points only after every cell of the images
    # themselves; False lets it compete for them, as detectron2's PointRend does (the same
    # outputs as detectron2's at sizes that are not a multiple of 32).
    cfg.MODEL.POINTREND_SEM.POINTS_OFF_PADDING = True
    # Loss weights of the coarse head's loss and of the point loss.
    cfg.MODEL.POINTREND_SEM.COARSE_LOSS_WEIGHT = 1.0
    cfg.MODEL.POINTREND_SEM.POINT_LOSS_WEIGHT = 1.0
    # How cross-entropy is averaged: True averages over non-ignored pixels (detectron2), False
    # over all pixels, ignored ones counting as zero (mmsegmentation's default).
    cfg.MODEL.POINTREND_SEM.LOSS_AVG_NON_IGNORE = True
    # If True, inference also returns the coarse head's prediction, bilinearly upsampled to the
    # image size, under the key "coarse_sem_seg", and evaluation reports its metrics next to the
    # refined prediction's (prefixed "coarse_").
    cfg.MODEL.POINTREND_SEM.OUTPUT_COARSE = False

    # Photometric distortion of training images (mmsegmentation's PhotoMetricDistortion): each of
    # brightness (+/- BRIGHTNESS_DELTA), contrast (x CONTRAST_RANGE), saturation
    # (x SATURATION_RANGE) and hue (+/- HUE_DELTA, OpenCV's 0..180 hue), each applied with
    # probability 0.5.
    cfg.INPUT.PHOTOMETRIC_DISTORTION = CN({"ENABLED": False})
    cfg.INPUT.PHOTOMETRIC_DISTORTION.BRIGHTNESS_DELTA = 32
    cfg.INPUT.PHOTOMETRIC_DISTORTION.CONTRAST_RANGE = (0.5, 1.5)
    cfg.INPUT.PHOTOMETRIC_DISTORTION.SATURATION_RANGE = (0.5, 1.5)
    cfg.INPUT.PHOTOMETRIC_DISTORTION.HUE_DELTA = 18
    # Random resize of training images keeping the aspect ratio (mmsegmentation's RandomResize):
    # a ratio r is drawn uniformly from RATIO_RANGE and the image is scaled by
    # min(r * max(SCALE) / long side, r * min(SCALE) / short side). Disabled: detectron2's
    # ResizeShortestEdge with INPUT.MIN_SIZE_TRAIN / MAX_SIZE_TRAIN is used instead.
    cfg.INPUT.RANDOM_RESIZE = CN({"ENABLED": False})
    cfg.INPUT.RANDOM_RESIZE.SCALE = (2048, 1024)
    cfg.INPUT.RANDOM_RESIZE.RATIO_RANGE = (0.5, 2.0)
    # How images are resized (test-time resize, RANDOM_RESIZE, each view of test-time
    # augmentation): "detectron2" = detectron2's ResizeShortestEdge / ResizeTransform (PIL
    # bilinear, antialiased when shrinking; labels PIL nearest; detectron2's size rounding);
    # "opencv" = cv2.INTER_LINEAR without antialiasing (labels cv2.INTER_NEAREST) and mmcv's size
    # rounding, int(side * factor + 0.5) with factor min(MAX_SIZE_TEST / long side,
    # MIN_SIZE_TEST / short side), as mmsegmentation's and sssegmentation's pipelines do.
    cfg.INPUT.RESIZE_BACKEND = "detectron2"
    # How inference brings the logits back to an image's original size (height, width):
    # "via_input" = resize them to the (padded) network input, crop the image, resize to the
    # original size (detectron2, mmsegmentation); "direct" = one bilinear resize of the logits
    # covering the image straight to the original size (sssegmentation; it never pads).
    cfg.TEST.OUTPUT_RESIZE = "via_input"
    # Precision of inference (CPU and CUDA): "fp32" (reproduces published numbers; IEEE fp32 on
    # a GPU too, TF32 off); "tf32" = fp32 with TF32 convolutions and matmuls (CUDA, compute
    # capability >= 8.0); "bf16" or "fp16" = the backbone and coarse head in that dtype, on a
    # copy whose weights are cast once (checkpoints and training weights stay fp32), point
    # selection, point head and the final logits in fp32; "auto" = bf16 where the device has bf16
    # units (a CPU with AMX or avx512_bf16, a GPU of compute capability >= 8.0), else fp32. A
    # precision the device cannot run is refused in one line (pointrend_sem/capabilities.py).
    cfg.TEST.PRECISION = "fp32"

    # Test-time augmentation (with TEST.AUG.ENABLED and TEST.AUG.FLIP, detectron2's keys): scale
    # ratios relative to the base test size (INPUT.MIN_SIZE_TEST / MAX_SIZE_TEST);
    # mmsegmentation's defaults. detectron2's TEST.AUG.MIN_SIZES / MAX_SIZE are not used.
    cfg.TEST.AUG.SCALE_RATIOS = (0.5, 0.75, 1.0, 1.25, 1.5, 1.75)
    # Sliding-window inference (mmsegmentation's mode="slide"): windows of CROP_SIZE (h, w) every
    # STRIDE (h, w) pixels over the resized test image, logits averaged where windows overlap.
    # Disabled: whole-image inference.
    cfg.TEST.SLIDING_WINDOW = CN({"ENABLED": False})
    cfg.TEST.SLIDING_WINDOW.CROP_SIZE = (512, 1024)
    cfg.TEST.SLIDING_WINDOW.STRIDE = (341, 683)

    # Training as each source trains.
    # How training images (normalized, so padding with 0 = the mean pixel) and their labels (with
    # MODEL.SEM_SEG_HEAD.IGNORE_VALUE) are padded into one batch: "batch" = bottom/right to the
    # largest image of the batch (detectron2); "crop_size" = bottom/right to INPUT.CROP.SIZE
    # (mmsegmentation's SegDataPreProcessor(size=crop_size)); "crop_size_centered" = centred in
    # INPUT.CROP.SIZE (sssegmentation's Padding). Then bottom/right to a multiple of
    # MODEL.FPN.SIZE_DIVISIBILITY. The crop modes need an "absolute" INPUT.CROP; a batch with an
    # image larger than the crop pads to that image instead.
    cfg.INPUT.TRAIN_PADDING = "batch"
    # Initialisation of the heads' layers (not the backbone or FPN): "detectron2" (coarse heads
    # as built: MSRA fill of the Semantic FPN and FCN heads, Xavier fill of the DeepLab heads;
    # point predictor N(0, 0.001)); "mmseg" (mmsegmentation 0.x, which trained the published
    # models: ConvModule's Kaiming = MSRA fill, coarse predictor N(0, 0.01), which needs a coarse
    # head whose classifier conv is ``predictor``, point predictor N(0, 0.001)); "sssegmentation"
    # (PyTorch's default initialisation of every layer).
    cfg.MODEL.POINTREND_SEM.HEAD_INIT = "detectron2"
    # Norm after each hidden layer of the point head ("" = none, or a detectron2 norm name such as
    # "BN", "SyncBN"), applied per channel over all points of the batch; with a norm the layers
    # have no bias (sssegmentation: Conv1d without bias + SyncBN + ReLU).
    cfg.MODEL.POINTREND_SEM.FC_NORM = ""

    # Iterations between writes of training metrics (console, metrics.json, TensorBoard).
    cfg.LOG_PERIOD = 20

    # Signals on which training finishes its iteration, saves a checkpoint and exits with status
    # 75, to be resumed exactly with --resume (docs/cluster.md). A second signal exits at once.
    # SLURM sends SIGTERM (or --signal's, often SIGUSR1) before killing a job; () = none.
    cfg.SOLVER.CHECKPOINT_ON_SIGNALS = ("SIGTERM", "SIGINT", "SIGUSR1")

    # The schedule is the recipe's (configs/Base-PointRend-Sem.yaml): SOLVER.LR_SCHEDULER_NAME
    # "WarmupPolyLR" is, after SOLVER.WARMUP_ITERS of linear warm-up from SOLVER.WARMUP_FACTOR,
    # lr = (BASE_LR - BASE_LR_END) * (1 - t / T) ** POLY_LR_POWER + BASE_LR_END over the remaining
    # T iterations (mmsegmentation's LinearLR + PolyLR); detectron2's schedulers otherwise. No
    # detectron2 default (LR_SCHEDULER_NAME, BASE_LR_END) is changed here.
