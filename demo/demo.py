#!/usr/bin/env python
"""Draw a PointRend semantic segmentation model's predictions over images or a video.

    python demo/demo.py --config-file configs/demo_synthetic.yaml \
        --input img1.png img2.jpg some_folder/ "more/*.jpg" --output out/ \
        --opts MODEL.WEIGHTS output/demo_synthetic/model_final.pth
    python demo/demo.py --config-file configs/cityscapes_r50.yaml --video-input drive.mp4 \
        --output out/ --opts MODEL.WEIGHTS model.pth
    python demo/demo.py --config-file configs/demo_synthetic.yaml --input img1.png --output out/ \
        --exported demo.onnx   # a file of tools/export_model.py, run without the PyTorch model

Images: one overlay PNG per input, named after it, in the ``--output`` folder. Video: an .mp4
(``--output`` either names it or is the folder to write ``<video name>.mp4`` into). Runs on
CUDA when the config asks for it and it is there, else on CPU.
"""

import argparse
import os
from typing import List, Optional

import pointrend_sem  # noqa: F401  # isort: skip  (first: detectron2 imported quietly)
import cv2
import tqdm
from detectron2.data.detection_utils import read_image
from detectron2.utils.logger import setup_logger
from visualization import VisualizationDemo, add_model_arguments

from pointrend_sem.checkpoint import check_weights_file
from pointrend_sem.cpu_memory import apply_memory_argument
from pointrend_sem.engine import setup
from pointrend_sem.errors import (
    UserFileNotFoundError,
    UserValueError,
    main_with_one_line_errors,
)
from pointrend_sem.image_inputs import expand_image_inputs


def get_parser() -> argparse.ArgumentParser:
    """The command-line options."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--input",
        nargs="+",
        metavar="PATH",
        help="images, folders (their images, not recursive) or glob patterns ('dir/*.jpg')",
    )
    source.add_argument("--video-input", metavar="FILE", help="a video file")
    parser.add_argument(
        "--output",
        required=True,
        help="folder for the overlay PNGs or the video; for a video also an .mp4 file name",
    )
    parser.add_argument(
        "--alpha", type=float, default=0.5, help="opacity of the class colours (default 0.5)"
    )
    add_model_arguments(parser)
    return parser


def overlay_paths(inputs: List[str], output_dir: str) -> List[str]:
    """``output_dir/<input name>.png`` for each input.

    Raises:
        ValueError: two inputs share a name, so one overlay would overwrite the other.
    """
    outputs = [
        os.path.join(output_dir, os.path.splitext(os.path.basename(p))[0] + ".png") for p in inputs
    ]
    if len(set(outputs)) != len(outputs):
        clashes = sorted({o for o in outputs if outputs.count(o) > 1})
        raise UserValueError(
            f"Inputs with the same file name would overwrite {clashes}; give them in separate "
            "runs with different --output folders."
        )
    return outputs


def run_on_images(demo: VisualizationDemo, inputs: List[str], output_dir: str) -> List[str]:
    """Write one overlay PNG per input image into ``output_dir``; return their paths."""
    outputs = overlay_paths(inputs, output_dir)
    os.makedirs(output_dir, exist_ok=True)
    for path, out in zip(tqdm.tqdm(inputs, desc="images", unit="img"), outputs):
        _, vis = demo.run_on_image(read_image(path, format="BGR"))
        cv2.imwrite(out, vis.get_image()[:, :, ::-1])
    return outputs


def video_output_path(video_path: str, output: str) -> str:
    """``output`` if it names an .mp4 file, else ``output/<video name>.mp4``."""
    if output.lower().endswith(".mp4"):
        return output
    return os.path.join(output, os.path.splitext(os.path.basename(video_path))[0] + ".mp4")


def run_on_video(demo: VisualizationDemo, video_path: str, output: str) -> str:
    """Write the video with its predictions drawn over each frame; return the .mp4's path."""
    video = cv2.VideoCapture(video_path)
    if not video.isOpened():
        raise UserFileNotFoundError(f"Cannot open the video {video_path}")
    width = int(video.get(cv2.CAP_PROP_FRAME_WIDTH))
    height = int(video.get(cv2.CAP_PROP_FRAME_HEIGHT))
    fps = video.get(cv2.CAP_PROP_FPS) or 25.0
    num_frames = int(video.get(cv2.CAP_PROP_FRAME_COUNT)) or None
    out_path = video_output_path(video_path, output)
    os.makedirs(os.path.dirname(out_path) or ".", exist_ok=True)
    writer = cv2.VideoWriter(out_path, cv2.VideoWriter_fourcc(*"mp4v"), fps, (width, height))
    try:
        for frame in tqdm.tqdm(demo.run_on_video(video), total=num_frames, unit="frame"):
            writer.write(frame)
    finally:
        video.release()
        writer.release()
    return out_path


def main(argv: Optional[List[str]] = None) -> None:
    """Parse ``argv``, build the model and write the overlays."""
    args = get_parser().parse_args(argv)
    setup_logger(name="fvcore")
    setup_logger(name="pointrend_sem")
    logger = setup_logger()
    cfg = setup(args, log=False)
    apply_memory_argument(args, cfg.MODEL.DEVICE)
    check_weights_file(cfg.MODEL.WEIGHTS)
    inputs = (
        None if args.video_input else expand_image_inputs(args.input, "--input")
    )  # before the model
    demo = VisualizationDemo(cfg, alpha=args.alpha, exported=args.exported)
    if args.video_input:
        logger.info(f"Wrote {run_on_video(demo, args.video_input, args.output)}")
    else:
        outputs = run_on_images(demo, inputs, args.output)
        logger.info(f"Wrote {len(outputs)} overlays to {args.output}")


if __name__ == "__main__":
    main_with_one_line_errors(main)()
