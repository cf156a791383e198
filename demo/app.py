#!/usr/bin/env python
"""Serve a browser demo of a PointRend semantic segmentation model (Gradio), on this machine.

    python demo/app.py --config-file configs/demo_synthetic.yaml \
        --opts MODEL.WEIGHTS output/demo_synthetic/model_final.pth
    # then open the address it prints, http://127.0.0.1:7860 by default

The page: drop, paste or upload an image (or pick an example); it shows the prediction drawn
over the image next to the coarse head's, the points re-predicted at each subdivision step over
that step's uncertainty, each class's share of the pixels, the image size and the time taken,
and offers the precisions this machine runs, test-time augmentation and the overlay's opacity.
Scripts call its ``class_map`` endpoint with ``gradio_client`` (docs/demo.md).

Offline: no analytics, no share link, no fonts or scripts from elsewhere. The model options are
those of ``demo/demo.py`` (``--config-file``, ``--exported``, ``--opts MODEL.WEIGHTS ...``: a
file, a published checkpoint or its URL).
"""

import argparse
import logging
import os
from typing import List, Optional

import pointrend_sem  # noqa: F401  # isort: skip  (first: detectron2 imported quietly)
import torch
from app_model import AppModel
from app_page import CSS, THEME, build_page
from detectron2.data import DatasetCatalog
from detectron2.utils.logger import setup_logger
from visualization import add_model_arguments

from pointrend_sem.checkpoint import check_weights_file
from pointrend_sem.cpu_memory import apply_memory_argument
from pointrend_sem.engine import setup
from pointrend_sem.errors import UserError, UserValueError, main_with_one_line_errors, one_line
from pointrend_sem.image_inputs import expand_image_inputs

# the page shows the coarse prediction next to the refined one
FORCED_OPTS = ["MODEL.POINTREND_SEM.OUTPUT_COARSE", True]
NUM_EXAMPLES = 6  # examples taken from the config's test dataset
MAX_FILE_SIZE = "100mb"  # uploads above this are refused by Gradio, with a message in the page

logger = logging.getLogger("pointrend_sem.app")


def get_parser() -> argparse.ArgumentParser:
    """The command-line options."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to serve on (default 127.0.0.1: this machine only; 0.0.0.0: every "
        "network interface, see docs/demo.md)",
    )
    parser.add_argument("--port", type=int, default=7860, help="port (default 7860)")
    parser.add_argument(
        "--examples",
        nargs="+",
        metavar="PATH",
        help="example images: files, folders or glob patterns (default: the first "
        f"{NUM_EXAMPLES} images of the config's test dataset, when it is there)",
    )
    parser.add_argument(
        "--max-megapixels",
        type=float,
        default=12.0,
        help="the largest image taken, in millions of pixels (default 12); larger uploads get "
        "a message. The model's scores at the image's size take classes x pixels x 4 bytes",
    )
    add_model_arguments(parser)
    return parser


def dataset_examples(cfg, count: int = NUM_EXAMPLES) -> List[str]:
    """The first ``count`` images of the config's first test dataset; none when it is not
    there (said in the log)."""
    if not len(cfg.DATASETS.TEST):
        return []
    name = cfg.DATASETS.TEST[0]
    try:
        dicts = DatasetCatalog.get(name)
    except (UserError, KeyError, OSError) as e:
        logger.info(f"No examples from {name} ({one_line(e)}); give some with --examples.")
        return []
    return [d["file_name"] for d in dicts[:count]]


def describe(config_file: str, weights: str, exported: Optional[str], model: AppModel) -> str:
    """The page's line about the model: config, weights, classes, device."""
    if exported:
        source, device = f"`{exported}` (exported)", model.demo.predictor.device
    else:
        source = f"`{weights}`" if weights else "random (`MODEL.WEIGHTS` empty)"
        device = model.demo.predictor.model.device
    return (
        f"`{config_file}` · weights {source} · {len(model.class_names)} classes · "
        f"{device}, {torch.get_num_threads()} threads"
    )


def build_app(args):
    """The page (a ``gr.Blocks``) of the model that ``args`` choose, not launched yet."""
    os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"  # read by Gradio when it would send some
    args.opts = list(args.opts) + FORCED_OPTS
    cfg = setup(args, log=False)
    apply_memory_argument(args, cfg.MODEL.DEVICE)
    if not args.exported:
        check_weights_file(cfg.MODEL.WEIGHTS)
    if args.max_megapixels <= 0:
        raise UserValueError(f"--max-megapixels {args.max_megapixels}: give a positive number.")
    examples = (
        expand_image_inputs(args.examples, "--examples") if args.examples else dataset_examples(cfg)
    )
    model = AppModel(cfg, exported=args.exported)
    header = describe(args.config_file, cfg.MODEL.WEIGHTS, args.exported, model)
    return build_page(model, examples, int(args.max_megapixels * 1e6), header)


def launch(page, host: str, port: int, block: bool = True):
    """Serve ``page`` on ``host:port`` through Gradio's queue (one prediction at a time),
    offline: no share link, no analytics, no monitoring endpoint, no installable app, no
    server-side rendering (which would need Node). ``block``: return only when stopped.

    Raises:
        UserValueError: the port cannot be used (taken, or not allowed).
    """
    page.queue(default_concurrency_limit=1)
    try:
        return page.launch(
            server_name=host,
            server_port=port,
            share=False,
            prevent_thread_lock=not block,
            max_file_size=MAX_FILE_SIZE,
            footer_links=["api", "settings"],
            enable_monitoring=False,
            ssr_mode=False,
            pwa=False,
            mcp_server=False,
            theme=THEME,
            css=CSS,
        )
    except OSError as e:
        raise UserValueError(
            f"Cannot serve on {host}:{port} ({one_line(e)}): choose another --port."
        ) from None


def main(argv: Optional[List[str]] = None) -> None:
    """Parse ``argv``, build the model and serve the page until stopped (Ctrl+C)."""
    args = get_parser().parse_args(argv)
    setup_logger(name="fvcore")
    setup_logger(name="pointrend_sem")
    setup_logger()
    launch(build_app(args), args.host, args.port)


if __name__ == "__main__":
    main_with_one_line_errors(main)()
