#!/usr/bin/env python
"""Plot a training run's curves from detectron2's metrics.json into one PNG.

    python tools/plot_metrics.py output/demo_synthetic/metrics.json --output curves.png

Three panels over iterations: the losses (``total_loss`` and every ``loss_*``), the learning
rate, and the evaluations' mIoU and mean boundary IoU (every ``<prefix>/mIoU`` and
``<prefix>/mBoundaryIoU``: the refined ``sem_seg``, the ``coarse_sem_seg`` head, ...). A run
that was resumed writes some iterations twice: the value written last is kept.
"""

import argparse
import json
import logging
import math
import os
import re
from typing import Dict, List, Optional, Tuple

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from pointrend_sem.errors import UserFileNotFoundError, UserValueError, main_with_one_line_errors

FIGSIZE = (16.0, 4.5)  # inches
DPI = 100
EVAL_KEY = re.compile(r"^(?P<prefix>.+)/m(?P<metric>BoundaryIoU|IoU)$")

_EVAL_STYLES = {
    "refined": {"linestyle": "-", "marker": "o"},
    "coarse": {"linestyle": "--", "marker": "s", "fillstyle": "none"},
    "other": {"linestyle": ":", "marker": "^"},
}

# key -> {iteration: value}
Metrics = Dict[str, Dict[int, float]]

logger = logging.getLogger(__name__)


def read_metrics(path: str) -> Metrics:
    """Every numeric value of a metrics.json by key and iteration.

    Each line is one JSON object with an "iteration". When a key appears again at an iteration
    it already has (a resumed run rewrites the iterations after its checkpoint), the later line
    wins. Lines that are not JSON objects with an "iteration" (such as a line cut short by a
    killed run) are skipped with a warning.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: ``path`` is not a text file, or none of its lines is a JSON object with an
            "iteration" (the error names the file and what to give instead).
    """
    if not os.path.isfile(path):
        raise UserFileNotFoundError(
            f"Metrics file {path} does not exist; a training run writes OUTPUT_DIR/metrics.json."
        )
    metrics: Metrics = {}
    rows = 0
    try:
        with open(path, encoding="utf-8") as f:
            for number, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:
                    logger.warning(f"{path}:{number}: not JSON, skipped")
                    continue
                if not isinstance(row, dict) or "iteration" not in row:
                    logger.warning(f"{path}:{number}: no iteration, skipped")
                    continue
                rows += 1
                for key, value in row.items():
                    if key != "iteration" and _is_number(value):
                        metrics.setdefault(key, {})[int(row["iteration"])] = float(value)
    except UnicodeDecodeError:
        raise UserValueError(
            f"{path} is not a text file; give the metrics.json of a training run "
            "(OUTPUT_DIR/metrics.json)."
        ) from None
    if not rows:
        raise UserValueError(
            f'{path} holds no metrics: none of its lines is a JSON object with an "iteration". '
            "Give the metrics.json of a training run (OUTPUT_DIR/metrics.json) once it has "
            "logged (every LOG_PERIOD iterations)."
        )
    return metrics


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def series(metrics: Metrics, key: str) -> Tuple[List[int], List[float]]:
    """(iterations, values) of ``key``, in iteration order."""
    points = sorted(metrics.get(key, {}).items())
    return [i for i, _ in points], [v for _, v in points]


def loss_keys(metrics: Metrics) -> List[str]:
    """``total_loss`` (when present) then the ``loss_*`` keys, sorted."""
    losses = sorted(k for k in metrics if k.startswith("loss_"))
    return (["total_loss"] if "total_loss" in metrics else []) + losses


def eval_keys(metrics: Metrics) -> List[str]:
    """The ``<prefix>/mIoU`` and ``<prefix>/mBoundaryIoU`` keys; the refined ``sem_seg`` first,
    and within a prefix mIoU before boundary IoU."""

    def order(key: str):
        match = EVAL_KEY.match(key)
        return match["prefix"] != "sem_seg", match["prefix"], match["metric"] != "IoU"

    return sorted((k for k in metrics if EVAL_KEY.match(k)), key=order)


def _empty(ax, message: str) -> None:
    ax.text(0.5, 0.5, message, ha="center", va="center", transform=ax.transAxes, color="gray")


def plot_losses(ax, metrics: Metrics) -> None:
    """Every loss over iterations, log scale."""
    keys = loss_keys(metrics)
    if not keys:
        _empty(ax, "no losses in this file")
        return
    for key in keys:
        ax.plot(*series(metrics, key), label=key, linewidth=2.0 if key == "total_loss" else 1.2)
    if all(v > 0 for key in keys for v in metrics[key].values()):
        ax.set_yscale("log")
    ax.set_ylabel("loss")
    ax.legend(fontsize=8)


def plot_lr(ax, metrics: Metrics) -> None:
    """The learning rate over iterations."""
    if "lr" not in metrics:
        _empty(ax, "no learning rate in this file")
        return
    ax.plot(*series(metrics, "lr"), color="tab:purple")
    ax.set_ylabel("learning rate")
    ax.ticklabel_format(axis="y", style="sci", scilimits=(-2, 2))


def _eval_style(prefix: str) -> Dict:
    if prefix == "sem_seg":
        return _EVAL_STYLES["refined"]
    return _EVAL_STYLES["coarse" if "coarse" in prefix else "other"]


def plot_evaluations(ax, metrics: Metrics) -> None:
    """mIoU and mean boundary IoU of every evaluated prediction over iterations: solid for the
    refined prediction (round markers), dashed for the coarse head (hollow squares), dotted for
    others (triangles); a marker per evaluation."""
    keys = eval_keys(metrics)
    if not keys:
        _empty(ax, "no evaluation in this file")
        return
    colors = {"IoU": "tab:blue", "BoundaryIoU": "tab:orange"}
    for key in keys:
        match = EVAL_KEY.match(key)
        iterations, values = series(metrics, key)
        ax.plot(
            iterations,
            values,
            color=colors[match["metric"]],
            markersize=5,
            label=f"{key} ({values[-1]:.2f})",
            **_eval_style(match["prefix"]),
        )
    ax.set_ylabel("%")
    ax.legend(fontsize=8, title="last value in ()", title_fontsize=8)


def plot_metrics(metrics: Metrics, title: str = "", dpi: int = DPI) -> Figure:
    """The three panels (losses, learning rate, evaluations) as a figure of
    ``FIGSIZE * dpi`` pixels."""
    fig = Figure(figsize=FIGSIZE, dpi=dpi)
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 3, sharex=True)
    for ax, plot, name in zip(
        axes,
        (plot_losses, plot_lr, plot_evaluations),
        ("losses", "learning rate", "mIoU and mean boundary IoU"),
    ):
        plot(ax, metrics)
        ax.set_title(name)
        ax.set_xlabel("iteration")
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    fig.subplots_adjust(left=0.065, right=0.985, bottom=0.13, top=0.85, wspace=0.25)
    return fig


def get_parser() -> argparse.ArgumentParser:
    """The command-line options."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("metrics", help="a metrics.json (OUTPUT_DIR/metrics.json)")
    parser.add_argument("--output", required=True, help="the PNG to write")
    parser.add_argument("--dpi", type=int, default=DPI, help=f"resolution (default {DPI})")
    return parser


def main(argv: Optional[List[str]] = None) -> None:
    """Parse ``argv``, read the metrics and write the PNG."""
    args = get_parser().parse_args(argv)
    fig = plot_metrics(read_metrics(args.metrics), title=args.metrics, dpi=args.dpi)
    os.makedirs(os.path.dirname(args.output) or ".", exist_ok=True)
    fig.savefig(args.output, dpi=args.dpi)
    logger.info(f"Wrote {args.output}")


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    main_with_one_line_errors(main)()
