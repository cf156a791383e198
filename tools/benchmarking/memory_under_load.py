"""Resident memory of a :class:`~pointrend_sem.predictor.SemSegPredictor` fed many images of
varying sizes (``tools/benchmark.py --memory-under-load N``), under several allocator settings.

Each setting runs in a fresh Python process (this file run as a script), so that nothing one
setting does to the allocator leaks into the next; the processes run one after the other. A
process builds the predictor of the config (``MODEL.WEIGHTS ""``: random weights, nothing
downloaded), then predicts N seeded random BGR images, each of a seeded random size between
200 x 200 and 700 x 900 (the same images in every setting), and reads its resident set size
(``VmRSS``) and its peak (``VmHWM``) from ``/proc/self/status`` after every ``--every`` images.
Seconds per image count the prediction, and what a setting adds after it, not the making of the
image.

The settings (:data:`SETTINGS`):

* ``default``: the library as it is: glibc's allocator untouched, and after each prediction the
  inference module hands the free memory back (``malloc_trim(0)``, see
  :func:`pointrend_sem.cpu_memory.return_freed_memory`);
* ``untrimmed``: the same without that hand-back (the inference module's call replaced by a
  no-op in the benchmark's process), to show what it buys;
* ``keep``: ``--keep-freed-memory`` (:func:`pointrend_sem.cpu_memory.keep_freed_memory`);
* ``jemalloc``: jemalloc preloaded into the process (``LD_PRELOAD``), when Debian's
  ``libjemalloc2`` is installed.
"""

import argparse
import json
import os
import subprocess
import sys
import time
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

# (description, environment added to the process) of each setting
SETTINGS: Dict[str, Any] = {
    "default": (
        "library default: glibc untouched, freed memory returned after a pass on new sizes",
        {},
    ),
    "untrimmed": ("glibc untouched, nothing returned", {}),
    "keep": ("--keep-freed-memory", {}),
    "jemalloc": (
        "LD_PRELOAD jemalloc",
        {"LD_PRELOAD": "/usr/lib/x86_64-linux-gnu/libjemalloc.so.2"},
    ),
}
JEMALLOC = "/usr/lib/x86_64-linux-gnu/libjemalloc.so.2"
SMALLEST, LARGEST = (200, 200), (700, 900)  # (H, W) bounds of the random images


def available_settings() -> List[str]:
    """The settings this machine can run (jemalloc only where it is installed)."""
    return [name for name in SETTINGS if name != "jemalloc" or os.path.isfile(JEMALLOC)]


def random_images(count: int, seed: int):
    """``count`` seeded random (H, W, 3) uint8 images of random sizes between :data:`SMALLEST`
    and :data:`LARGEST`, one at a time."""
    rng = np.random.default_rng(seed)
    for _ in range(count):
        height = int(rng.integers(SMALLEST[0], LARGEST[0] + 1))
        width = int(rng.integers(SMALLEST[1], LARGEST[1] + 1))
        yield rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)


def status_mib() -> Dict[str, float]:
    """This process's resident set size now ("rss") and its peak ("peak"), in MiB, from
    ``/proc/self/status`` (VmRSS, VmHWM)."""
    fields = {}
    with open("/proc/self/status") as f:
        for line in f:
            name, _, value = line.partition(":")
            if name in ("VmRSS", "VmHWM"):
                fields["rss" if name == "VmRSS" else "peak"] = int(value.split()[0]) / 1024
    return fields


def run_setting(
    setting: str, config_file: str, count: int, every: int, seed: int, threads: int, opts
) -> Dict[str, Any]:
    """In this process: the memory curve of one setting (see the module doc). Returns
    "curve" (a list of {"images", "rss", "peak"}, MiB; images 0 is after the predictor was
    made) and "seconds" (the time of each image)."""
    import torch
    from tqdm import tqdm

    from pointrend_sem import cpu_memory
    from pointrend_sem.engine import setup
    from pointrend_sem.predictor import SemSegPredictor

    if threads:
        torch.set_num_threads(threads)
    if setting == "keep":
        cpu_memory.apply_memory_argument(argparse.Namespace(keep_freed_memory=True), "cpu")
    if setting == "untrimmed":
        from pointrend_sem.inference import builder

        builder.return_freed_memory = lambda: False
    args = argparse.Namespace(
        config_file=config_file, opts=[*opts, "MODEL.WEIGHTS", "", "MODEL.DEVICE", "cpu"]
    )
    predictor = SemSegPredictor(setup(args, log=False))
    curve = [{"images": 0, **status_mib()}]
    seconds = []
    images = random_images(count, seed)
    for index in tqdm(range(1, count + 1), desc=setting, file=sys.stderr):
        image = next(images)
        start = time.perf_counter()
        predictor(image)
        seconds.append(time.perf_counter() - start)
        del image
        if index % every == 0 or index == count:
            curve.append({"images": index, **status_mib()})
            point = curve[-1]
            tqdm.write(
                f"{setting}: after {index} images RSS {point['rss']:.0f} MiB, "
                f"peak {point['peak']:.0f} MiB",
                file=sys.stderr,
            )
    return {"curve": curve, "seconds": seconds}


def measure_settings(
    config_file: str,
    count: int,
    settings: Sequence[str],
    *,
    every: int = 10,
    seed: int = 0,
    threads: Optional[int] = None,
    opts: Sequence[str] = (),
) -> Dict[str, Dict[str, Any]]:
    """:func:`run_setting` of each setting in a fresh process of its own, one after the other;
    returns its results by setting. Progress bars go to stderr."""
    results = {}
    for setting in settings:
        env = {**os.environ, **SETTINGS[setting][1]}
        command = [sys.executable, os.path.abspath(__file__), setting, config_file]
        command += ["--images", str(count), "--every", str(every), "--seed", str(seed)]
        command += ["--threads", str(threads or 0), "--opts", *opts]
        proc = subprocess.run(command, env=env, stdout=subprocess.PIPE, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"memory under load, setting {setting}: exit {proc.returncode}")
        results[setting] = json.loads(proc.stdout.strip().splitlines()[-1])
    return results


def summary(result: Dict[str, Any], early: int = 20) -> Dict[str, float]:
    """RSS after ``early`` images (the nearest point of the curve at or after it) and after the
    last, their ratio, the peak, and the median seconds per image (MiB, s)."""
    curve = result["curve"]
    first = next((p for p in curve if p["images"] >= early), curve[-1])
    seconds = sorted(result["seconds"])
    return {
        "early_images": first["images"],
        "rss_early": first["rss"],
        "images": curve[-1]["images"],
        "rss_last": curve[-1]["rss"],
        "ratio": curve[-1]["rss"] / first["rss"],
        "peak": curve[-1]["peak"],
        "s_per_image": seconds[len(seconds) // 2],
        "mean_s_per_image": sum(seconds) / len(seconds),
    }


def format_report(results: Dict[str, Dict[str, Any]]) -> str:
    """The curves (RSS and peak, MiB, per setting) and the summary table, as text."""
    from tabulate import tabulate

    settings = list(results)
    points = [p["images"] for p in results[settings[0]]["curve"]]
    rows = [
        [n]
        + [
            f"{results[s]['curve'][i]['rss']:.0f} / {results[s]['curve'][i]['peak']:.0f}"
            for s in settings
        ]
        for i, n in enumerate(points)
    ]
    curve = tabulate(rows, headers=["images", *(f"{s}: RSS / peak (MiB)" for s in settings)])
    sums = {s: summary(results[s]) for s in settings}
    base = sums[settings[0]]["mean_s_per_image"]
    table = tabulate(
        [
            [
                s,
                SETTINGS[s][0],
                f"{sums[s]['rss_early']:.0f}",
                f"{sums[s]['rss_last']:.0f}",
                f"{sums[s]['ratio']:.2f}",
                f"{sums[s]['peak']:.0f}",
                f"{sums[s]['mean_s_per_image']:.3f}",
                f"{sums[s]['mean_s_per_image'] / base:.3f}",
            ]
            for s in settings
        ],
        headers=[
            "setting",
            "what",
            f"RSS after {sums[settings[0]]['early_images']} (MiB)",
            f"RSS after {sums[settings[0]]['images']} (MiB)",
            "ratio",
            "peak (MiB)",
            "s/image (mean)",
            f"time / {settings[0]}",
        ],
    )
    return f"{curve}\n\n{table}"


def main(argv: Optional[List[str]] = None) -> None:
    """One setting in this process (what :func:`measure_settings` runs); prints JSON."""
    parser = argparse.ArgumentParser(description=run_setting.__doc__)
    parser.add_argument("setting", choices=list(SETTINGS))
    parser.add_argument("config_file")
    parser.add_argument("--images", type=int, default=120)
    parser.add_argument("--every", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--opts", nargs=argparse.REMAINDER, default=[])
    args = parser.parse_args(argv)
    result = run_setting(
        args.setting, args.config_file, args.images, args.every, args.seed, args.threads, args.opts
    )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
