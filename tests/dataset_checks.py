"""Checks shared by the tests of the benchmark datasets (ADE20K, Cityscapes): what their
preparation scripts wrote, and their metadata."""

import os

import numpy as np
from conftest import REPO_ROOT
from detectron2.data import MetadataCatalog
from PIL import Image


def label_file_states(folders, suffix: str = "") -> dict:
    """{path: (mtime_ns, pixels)} of the label images in ``folders`` whose names end in
    ``suffix``: what a preparation script wrote, to see what a second run rewrites."""
    out = {}
    for folder in folders:
        for name in sorted(os.listdir(folder)):
            if name.endswith(suffix):
                path = os.path.join(folder, name)
                out[path] = (os.stat(path).st_mtime_ns, np.asarray(Image.open(path)))
    return out


def check_dataset_metadata(meta, num_classes: int, evaluator_type: str, prepare_command: str):
    """What the metadata of every registered split of a benchmark dataset carries."""
    assert len(meta.stuff_classes) == len(meta.stuff_colors) == num_classes
    assert all(len(c) == 3 and all(0 <= v <= 255 for v in c) for c in meta.stuff_colors)
    assert meta.ignore_label == 255
    assert meta.evaluator_type == evaluator_type
    assert meta.prepare_command == prepare_command
    assert os.path.isfile(os.path.join(REPO_ROOT, prepare_command.split()[-1]))


def check_metadata_addition_keeps_values(add_metadata, module, splits_attr: str, monkeypatch):
    """``add_metadata`` runs twice without raising and keeps a value already set; returns the
    metadata of the test split it completed."""
    add_metadata()  # a second call (a second import) must not raise
    name = f"pointrend_sem_test_{splits_attr.lower()}_keeps_values"
    MetadataCatalog.get(name).set(stuff_colors=[[1, 2, 3]])
    monkeypatch.setattr(module, splits_attr, (name,))
    add_metadata()
    assert MetadataCatalog.get(name).stuff_colors == [[1, 2, 3]]
    return MetadataCatalog.get(name)


def assert_files_unchanged(before: dict, after: dict) -> None:
    """Two :func:`label_file_states` of the same folders are the same: no file was added,
    removed or rewritten."""
    assert before.keys() == after.keys()
    for path, (mtime, pixels) in before.items():
        assert after[path][0] == mtime and np.array_equal(after[path][1], pixels), path
