"""The results' description of the run, the inference fields and the printed table."""

import statistics
import time
from typing import Any, Callable, Dict, List, Tuple, Union

import torch
from tabulate import tabulate

from .measure import latency_fields, memory_method
from .references import agreement

# (key, label, format) of the table's rows, in order; rows whose key is missing from the results
# are left out. A format is a str.format pattern for results[key] or a function of all results.
ROWS: List[Tuple[str, str, Union[str, Callable[[Dict[str, Any]], str]]]] = [
    ("config", "config", "{}"),
    ("opts", "config overrides", "{}"),
    ("weights", "weights", "{}"),
    ("device", "device", "{}"),
    ("device_name", "device name", "{}"),
    ("precision", "inference precision (TEST.PRECISION)", "{}"),
    ("inference", "ours: inference module", "{}"),
    ("height", "resolution (H x W)", lambda r: f"{r['height']}x{r['width']}"),
    ("batch_size", "batch size", "{}"),
    ("threads", "torch threads", "{}"),
    ("runs", "timed runs (+ warm-up)", lambda r: f"{r['runs']} (+ {r['warmup']})"),
    ("memory_reuse", "host memory of ours", "{}"),
    ("latency_median_ms", "inference latency, median (ms)", "{:.1f}"),
    ("latency_min_ms", "inference latency, min (ms)", "{:.1f}"),
    ("latency_max_ms", "inference latency, max (ms)", "{:.1f}"),
    ("images_per_s", "inference throughput (images/s)", "{:.3f}"),
    ("peak_memory_mib", "peak memory (MiB)", "{:.0f}"),
    ("memory_method", "memory measured as", "{}"),
    ("page_faults_per_pass", "minor page faults per timed pass, median", "{:.0f}"),
    ("other_memory_reuse", "host memory of ours, other setting", "{}"),
    ("other_memory_latency_median_ms", "other setting: latency, median (ms)", "{:.1f}"),
    ("other_memory_latency_min_ms", "other setting: latency, min (ms)", "{:.1f}"),
    ("other_memory_latency_max_ms", "other setting: latency, max (ms)", "{:.1f}"),
    ("other_memory_peak_memory_mib", "other setting: peak memory (MiB)", "{:.0f}"),
    ("other_memory_page_faults_per_pass", "other setting: minor page faults per pass", "{:.0f}"),
    ("point_head_ms", "point head, point_logits (ms)", "{:.1f}"),
    ("point_selection_ms", "point selection (ms)", "{:.1f}"),
    ("point_share", "point head + selection share of inference", "{:.1%}"),
    ("reference", "reference", "{}"),
    ("reference_memory_reuse", "host memory of the reference", "{}"),
    ("reference_latency_median_ms", "reference latency, median (ms)", "{:.1f}"),
    ("reference_latency_min_ms", "reference latency, min (ms)", "{:.1f}"),
    ("reference_latency_max_ms", "reference latency, max (ms)", "{:.1f}"),
    ("reference_peak_memory_mib", "reference peak memory (MiB)", "{:.0f}"),
    ("reference_page_faults_per_pass", "reference minor page faults per pass, median", "{:.0f}"),
    ("time_ratio", "time ratio ours / reference (medians)", "{:.3f}"),
    ("eager_bf16", "side by side: eager bf16", "{}"),
    ("agreement", "pixels with the same class as the reference", "{:.6f}"),
    ("ceiling_fp32_matmul_gflops", "ceiling fp32, matmul (GFLOP/s)", "{:.0f}"),
    ("ceiling_fp32_conv_gflops", "ceiling fp32, 3x3 conv (GFLOP/s)", "{:.0f}"),
    ("ceiling_bf16_matmul_gflops", "ceiling bf16, matmul (GFLOP/s)", "{:.0f}"),
    ("ceiling_bf16_conv_gflops", "ceiling bf16, 3x3 conv (GFLOP/s)", "{:.0f}"),
    ("ceiling_bf16_skipped", "ceiling bf16", "{}"),
    ("gflop", "ours: GFLOP per pass (2 per multiply-add)", "{:.1f}"),
    ("achieved_gflops", "ours: achieved GFLOP/s", "{:.0f}"),
    ("ceiling_fraction", "ours: fraction of its precision's conv ceiling", "{:.1%}"),
    ("reference_gflop", "reference: GFLOP per pass", "{:.1f}"),
    ("reference_achieved_gflops", "reference: achieved GFLOP/s", "{:.0f}"),
    ("reference_ceiling_fraction", "reference: fraction of the fp32 conv ceiling", "{:.1%}"),
    ("train_crop", "training crop (H x W)", "{}"),
    ("train_precision", "training precision (SOLVER.AMP.ENABLED)", "{}"),
    (
        "train_grad_scaler",
        "training gradient scaler",
        lambda r: "torch.amp.GradScaler" if r["train_grad_scaler"] else "none",
    ),
    ("train_iter_median_ms", "training iteration, median (ms)", "{:.1f}"),
    ("train_iter_min_ms", "training iteration, min (ms)", "{:.1f}"),
    ("train_iter_max_ms", "training iteration, max (ms)", "{:.1f}"),
    ("loader_status", "train data loader", "{}"),
    ("loader_workers", "data loader workers", "{}"),
    ("loader_images_per_s", "data loader throughput (images/s)", "{:.1f}"),
    (
        "pipeline_samples",
        "input pipeline: samples (H x W), one worker",
        lambda r: f"{r['pipeline_samples']} ({r['pipeline_image']})",
    ),
    ("pipeline_crop", "input pipeline: crops (H x W)", "{}"),
    ("pipeline_images_per_s", "input pipeline, ours (images/s)", "{:.2f}"),
    ("pipeline_reference", "input pipeline reference", "{}"),
    ("pipeline_reference_crop", "input pipeline reference: crops (H x W)", "{}"),
    ("pipeline_reference_images_per_s", "input pipeline, reference (images/s)", "{:.2f}"),
    ("pipeline_speed_ratio", "input pipeline speed ratio ours / reference (images/s)", "{:.3f}"),
    ("pipeline_same_labels", "input pipeline: samples with the reference's label crop", "{:.0%}"),
]


def format_table(results: Dict[str, Any]) -> str:
    """The results as a two-column (quantity, value) table, followed by the side-by-side table
    of ``--exported`` (:func:`format_side_by_side`) when there is one."""
    rows = [
        (label, fmt(results) if callable(fmt) else fmt.format(results[key]))
        for key, label, fmt in ROWS
        if key in results
    ]
    table = tabulate(rows, headers=["quantity", "value"], tablefmt="pipe")
    if results.get("side_by_side"):
        table += "\n\n" + format_side_by_side(results["side_by_side"])
    return table


def format_side_by_side(rows: List[Dict[str, Any]]) -> str:
    """One line per contender (:func:`.exported.side_by_side`): latency median (min-max), time
    relative to ours and to the reference, pixels with our class."""
    with_reference = "time_vs_reference" in rows[0]
    headers = ["contender", "latency median (min-max), ms", "time / ours"]
    headers += ["time / reference"] if with_reference else []
    headers += ["same class as ours"]
    lines = []
    for row in rows:
        line = [
            row["contender"],
            f"{row['latency_median_ms']:.1f} ({row['latency_min_ms']:.1f}-"
            f"{row['latency_max_ms']:.1f})",
            f"{row['time_vs_ours']:.3f}",
        ]
        line += [f"{row['time_vs_reference']:.3f}"] if with_reference else []
        line += [f"{row['same_class_as_ours']:.4%}"]
        lines.append(line)
    return tabulate(lines, headers=headers, tablefmt="pipe")


def describe_run(args, cfg) -> Dict[str, Any]:
    """What is measured, where: the first fields of the results."""
    return {
        "config": args.config_file,
        "opts": " ".join(args.opts),
        "weights": args.weights or "random",
        "device": cfg.MODEL.DEVICE,
        "height": args.height,
        "width": args.width,
        "batch_size": args.batch_size,
        "threads": torch.get_num_threads(),
        "runs": args.runs,
        "warmup": args.warmup,
        "torch_version": torch.__version__,
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "memory_method": memory_method(cfg.MODEL.DEVICE),
    }


def inference_fields(records: Dict[str, Dict[str, Any]], batch_size: int) -> Dict[str, Any]:
    """Latency, throughput and memory of ours (and of ours in the other allocator setting,
    "other_memory_*"), and with a reference its latency, memory, the time ratio and the
    agreement, from :func:`.measure.time_alternating`'s records."""
    ours = records["ours"]
    fields = latency_fields("", ours["seconds"])
    fields["images_per_s"] = batch_size * 1000.0 / fields["latency_median_ms"]
    fields["peak_memory_mib"] = max(ours["peak_mib"])
    fields["page_faults_per_pass"] = statistics.median(ours["page_faults"])
    if "ours_other_memory" in records:
        other = records["ours_other_memory"]
        fields.update(latency_fields("other_memory_", other["seconds"]))
        fields["other_memory_peak_memory_mib"] = max(other["peak_mib"])
        fields["other_memory_page_faults_per_pass"] = statistics.median(other["page_faults"])
    if "reference" in records:
        theirs = records["reference"]
        fields.update(latency_fields("reference_", theirs["seconds"]))
        fields["reference_peak_memory_mib"] = max(theirs["peak_mib"])
        fields["reference_page_faults_per_pass"] = statistics.median(theirs["page_faults"])
        fields["time_ratio"] = fields["latency_median_ms"] / fields["reference_latency_median_ms"]
        fields["agreement"] = agreement(ours["labels"], theirs["labels"])
    return fields
