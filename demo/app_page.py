"""The page of the browser demo (``demo/app.py``), in Gradio: the image input and its examples,
the options, the results, and the ``class_map`` API endpoint for scripts.

Both events run through Gradio's queue, one at a time (one model); each browser session gets
its own result. A bad upload (not an image, empty, too large) gets its one-line message in the
page (``gr.Error``), and through the API as the client's error; the server keeps answering.
"""

import os
from typing import List, Optional

import gradio as gr
from app_drawing import (
    class_map_png,
    class_shares,
    display_scale,
    draw_step,
    legend_html,
    overlay,
    step_caption,
    summary,
)
from app_model import AppModel, read_upload
from gradio import FileData
from gradio.processing_utils import save_bytes_to_cache

from pointrend_sem.errors import UserError, one_line

TITLE = "PointRend semantic segmentation"
# system fonts only (no font files fetched), compact legend swatches
CSS = """
.legend td { padding: 2px 10px; }
.legend .swatch { display: inline-block; width: 1em; height: 1em; margin-right: 6px;
                  vertical-align: middle; border: 1px solid #888; }
"""
THEME = gr.themes.Default(
    font=["ui-sans-serif", "system-ui", "sans-serif"],
    font_mono=["ui-monospace", "Consolas", "monospace"],
)
EMPTY_MESSAGE = "Upload an image (or pick an example): its segmentation appears here."
CACHE_CLEANUP = (3600, 3600)  # every hour, uploads and results older than an hour are deleted


def _upload(payload: Optional[dict], max_pixels: int):
    """The uploaded image of a file payload (BGR) and its name; a user error as ``gr.Error``."""
    if not payload:
        raise gr.Error("Upload an image first (drop it, paste it or click the image box).")
    name = payload.get("orig_name") or os.path.basename(payload.get("path") or "the upload")
    try:
        return read_upload(payload.get("path"), name, max_pixels), name
    except UserError as e:
        raise gr.Error(one_line(e)) from None


def _run(call, *args):
    """``call(*args)``, a user error (an option this machine cannot run) as ``gr.Error``."""
    try:
        return call(*args)
    except UserError as e:
        raise gr.Error(one_line(e)) from None


def build_page(model: AppModel, examples: List[str], max_pixels: int, header: str) -> gr.Blocks:
    """The page of ``model``.

    Args:
        examples: image files shown as examples under the input.
        max_pixels: the largest image taken (:func:`~app_model.read_upload`).
        header: markdown under the title (the model, the device).
    """
    metadata = model.demo.metadata
    names, colors = list(metadata.stuff_classes), metadata.stuff_colors

    def save_class_map(labels, name: str) -> str:
        """The class-id PNG of ``labels`` in Gradio's cache (deleted with it), named after the
        upload ``name``; its path."""
        stem = os.path.splitext(name)[0] or "image"
        png = class_map_png(labels)
        return save_bytes_to_cache(png, f"{stem}_class_ids.png", file_output.GRADIO_CACHE)

    def segment(payload, precision, tta, opacity, progress=gr.Progress()):
        if not payload:  # cleared, or the button without an image
            return EMPTY_MESSAGE, None, None, "", [], None
        progress(0.0, desc="reading the image")
        image_bgr, name = _upload(payload, max_pixels)
        progress(0.2, desc="predicting")
        analysis = _run(model.analyze, image_bgr, precision or "", bool(tta))
        progress(0.8, desc="drawing")
        image_rgb = image_bgr[:, :, ::-1]
        height, width = image_rgb.shape[:2]
        scale = display_scale(height, width)
        alpha = float(opacity)
        refined = overlay(model.demo, image_rgb, analysis.refined, alpha, scale)
        coarse = None
        if analysis.coarse is not None:
            coarse = overlay(model.demo, image_rgb, analysis.coarse, alpha, scale)
        steps = [
            (draw_step(image_rgb, u, p, scale), step_caption(k, u, p))
            for k, (u, p) in enumerate(analysis.steps, start=1)
        ]
        options = (
            "exported graph" if model.exported else f"{precision}, TTA {'on' if tta else 'off'}"
        )
        return (
            summary(height, width, analysis, options),
            coarse,
            refined,
            legend_html(class_shares(analysis.refined, len(names)), names, colors),
            steps,
            save_class_map(analysis.refined, name),
        )

    def class_map(image: FileData, precision: str = "", tta: bool = False) -> tuple[FileData, list]:
        """The class id of each pixel of an image, as a PNG of the image's size (8 bits, 16 for
        more than 256 classes), and the class names (index = class id). precision: one of the
        page's (default: the config's); tta: multi-scale + flip test-time augmentation."""
        image_bgr, name = _upload(image, max_pixels)
        labels = _run(model.class_map, image_bgr, precision, bool(tta))
        return FileData(path=save_class_map(labels, name)), names

    with gr.Blocks(title=TITLE, analytics_enabled=False, delete_cache=CACHE_CLEANUP) as page:
        gr.Markdown(f"## {TITLE}\n{header}")
        with gr.Row():
            with gr.Column(scale=2, min_width=320):
                image = gr.Image(
                    label="image: drop, paste or click to upload",
                    type="filepath",
                    image_mode=None,
                    sources=["upload", "clipboard"],
                    elem_id="input-image",
                )
                precision = gr.Radio(
                    choices=model.precisions,
                    value=model.default_precision if model.precisions else None,
                    label="precision (those this machine runs)",
                    visible=bool(model.precisions),
                )
                tta = gr.Checkbox(
                    value=False,
                    label=f"test-time augmentation ({model.tta_description()})",
                    visible=not model.exported,
                )
                opacity = gr.Slider(
                    0.0, 1.0, value=model.demo.alpha, step=0.05, label="overlay opacity"
                )
                run = gr.Button("Segment", variant="primary", elem_id="segment")
                example_row = (
                    gr.Examples(examples, inputs=image, label="examples") if examples else None
                )
            with gr.Column(scale=5):
                facts = gr.Markdown(EMPTY_MESSAGE, elem_id="facts")
                with gr.Row():
                    coarse = gr.Image(
                        label="coarse head (before refinement)",
                        interactive=False,
                        elem_id="coarse",
                        visible=not model.exported,
                    )
                    refined = gr.Image(
                        label="refined by PointRend", interactive=False, elem_id="refined"
                    )
                legend = gr.HTML(elem_id="legend")
                steps = gr.Gallery(
                    label="points re-predicted at each subdivision step, over its uncertainty "
                    "(bright: uncertain)",
                    columns=3,
                    height="auto",
                    object_fit="contain",
                    elem_id="steps",
                    visible=not model.exported,
                )
                file_output = gr.File(
                    label="class ids (PNG, the image's size)", elem_id="class-map"
                )
        event = dict(
            fn=segment,
            inputs=[image, precision, tta, opacity],
            outputs=[facts, coarse, refined, legend, steps, file_output],
            preprocess=False,  # the upload is read and checked by read_upload, not by Gradio
            api_visibility="private",
            concurrency_id="model",
        )
        # an upload, a paste, a clear, the button; an example once it is in the image box
        # (image.change would fire twice when an image replaces another)
        gr.on([image.input, run.click], **event)
        if example_row is not None:
            example_row.load_input_event.then(**event)
        gr.api(class_map, api_name="class_map", concurrency_id="model")
    return page
