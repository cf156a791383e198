#!/usr/bin/env python
"""pointrend-sem: PointRend semantic segmentation as a detectron2 project.

detectron2 itself is on no package index: install it from its official source first
(see README.md, "Installation").
"""

import os

from setuptools import find_packages, setup

HERE = os.path.dirname(os.path.abspath(__file__))


def requirements(path: str) -> list:
    """The requirements listed in ``path`` (one per line; ``#`` starts a comment)."""
    with open(os.path.join(HERE, path), encoding="utf-8") as f:
        return [line.split("#")[0].strip() for line in f if line.split("#")[0].strip()]


setup(
    name="pointrend-sem",
    version="0.1.0",
    description="PointRend semantic segmentation (Kirillov et al., CVPR 2020) for detectron2",
    long_description=open(os.path.join(HERE, "README.md"), encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.9",
    packages=find_packages(include=["pointrend_sem", "pointrend_sem.*"]),
    install_requires=[
        "torch>=2.8",  # the newest API the code calls: see tests/test_requirements.py, docs/gpu.md
        "torchvision>=0.23",  # the release paired with torch 2.8
        "fvcore>=0.1.5,<0.1.6",
        "iopath>=0.1.7,<0.1.10",
        "numpy",
        "Pillow",
        "opencv-python-headless",
        "scipy",
        "cityscapesscripts",
        "matplotlib",
        "pyyaml",
        "tqdm",
    ],
    extras_require={
        "dev": requirements("dev/requirements.txt"),
        # the browser demo, demo/app.py (docs/demo.md): its line of the dev extra
        "app": [r for r in requirements("dev/requirements.txt") if r.startswith("gradio")],
    },
)
