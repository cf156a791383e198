#!/usr/bin/env python
"""pointrend-sem: PointRend semantic segmentation as a detectron2 project.

detectron2 itself is on no package index: install it from its official source first
(see README.md, "Installation").
"""

from setuptools import find_packages, setup

setup(
    name="pointrend-sem",
    version="0.1.0",
    description="PointRend semantic segmentation (Kirillov et al., CVPR 2020) for detectron2",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.9",
    packages=find_packages(include=["pointrend_sem", "pointrend_sem.*"]),
    install_requires=[
        "torch>=1.13",
        "torchvision",
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
        "dev": [
            "pytest",
            "pytest-timeout",
            "pytest-xdist",
            "black",
            "isort",
            "flake8",
            # tools/export_model.py --format onnx and its tests (tests/test_export.py)
            "onnx",
            "onnxscript",
            "onnxruntime",
        ],
    },
)
