"""ADE20K: label shift, datasets/prepare_ade20k.py, detectron2's loader and metadata, on a tiny
archive in the official layout."""

import os
import subprocess
import sys

import numpy as np
import pytest
from conftest import REPO_ROOT, load_script, run_command, tiny_train_net
from dataset_checks import (
    assert_files_unchanged,
    check_dataset_metadata,
    check_metadata_addition_keeps_values,
    label_file_states,
)
from detectron2.data import MetadataCatalog
from detectron2.data.datasets import load_sem_seg
from PIL import Image

from pointrend_sem.data.datasets import ade20k
from pointrend_sem.data.datasets.ade20k import (
    ADE20K_PREPARE_COMMAND,
    ADE20K_SPLITS,
    add_ade20k_metadata,
)

SCRIPT = os.path.join(REPO_ROOT, "datasets", "prepare_ade20k.py")
# split folder -> file name prefix, as in ADEChallengeData2016.zip
SPLITS = {"training": "ADE_train", "validation": "ADE_val"}
NUM_IMAGES = 2  # per split
H, W = 29, 37


prepare_ade20k = load_script(SCRIPT)


def official_label(seed: int) -> np.ndarray:
    """An (H, W) uint8 label as the archive has them: 0 ("other") and classes 1..150."""
    rng = np.random.default_rng(seed)
    label = rng.integers(1, 151, (H, W)).astype(np.uint8)
    label[: H // 3] = 0
    label[-1, -1], label[-1, 0] = 1, 150
    return label


def write_archive(root) -> str:
    """``root/ADEChallengeData2016/{images,annotations}/<split>/``; returns the ADE folder."""
    ade = root / "ADEChallengeData2016"
    for k, (split, prefix) in enumerate(SPLITS.items()):
        (ade / "images" / split).mkdir(parents=True)
        (ade / "annotations" / split).mkdir(parents=True)
        for i in range(1, NUM_IMAGES + 1):
            name = f"{prefix}_{i:08d}"
            image = np.random.default_rng(i).integers(0, 256, (H, W, 3), dtype=np.uint8)
            Image.fromarray(image).save(ade / "images" / split / f"{name}.jpg")
            label = official_label(10 * k + i)
            Image.fromarray(label).save(ade / "annotations" / split / f"{name}.png")
    return str(ade)


def run_script(root, *args) -> subprocess.CompletedProcess:
    return run_command(
        [sys.executable, SCRIPT, "--root", str(root), "--workers", "2", *args], check=True
    )


def converted_files(ade: str):
    """{path: (mtime_ns, pixels)} of every converted annotation."""
    return label_file_states([os.path.join(ade, "annotations_detectron2", s) for s in SPLITS])


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """The tiny archive after one run of the script: (root, ADE folder, the run's stdout)."""
    root = tmp_path_factory.mktemp("ade20k_root")
    ade = write_archive(root)
    return root, ade, run_script(root).stdout


def test_convert_shifts_classes_and_ignores_zero():
    label = np.array([[0, 1, 2], [75, 149, 150]], np.uint8)
    before = label.copy()
    out = prepare_ade20k.convert_ade20k_label(label)
    assert out.dtype == np.uint8
    assert out.tolist() == [[255, 0, 1], [74, 148, 149]]
    assert np.array_equal(label, before)  # pure: the input is untouched


def test_convert_accepts_wider_integer_types():
    label = np.array([[0, 150]], np.int32)
    assert prepare_ade20k.convert_ade20k_label(label).tolist() == [[255, 149]]


def test_convert_refuses_a_converted_label():
    once = prepare_ade20k.convert_ade20k_label(official_label(0))
    with pytest.raises(ValueError, match="already converted"):
        prepare_ade20k.convert_ade20k_label(once)


def test_convert_refuses_other_shapes():
    with pytest.raises(ValueError, match=r"\(H, W\)"):
        prepare_ade20k.convert_ade20k_label(np.zeros((2, 3, 3), np.uint8))


def test_convert_file_writes_once(tmp_path):
    src, dst = tmp_path / "a.png", tmp_path / "out" / "a.png"
    dst.parent.mkdir()
    Image.fromarray(official_label(1)).save(src)
    assert prepare_ade20k.convert_file((str(src), str(dst))) is True
    written = np.asarray(Image.open(dst))
    assert np.array_equal(written, prepare_ade20k.convert_ade20k_label(official_label(1)))
    assert prepare_ade20k.convert_file((str(src), str(dst))) is False
    assert np.array_equal(np.asarray(Image.open(dst)), written)
    assert sorted(os.listdir(dst.parent)) == ["a.png"]  # no temporary file left


def test_script_converts_every_split(prepared):
    root, ade, stdout = prepared
    for split in SPLITS:
        for name in os.listdir(os.path.join(ade, "annotations", split)):
            official = np.asarray(Image.open(os.path.join(ade, "annotations", split, name)))
            converted = np.asarray(
                Image.open(os.path.join(ade, "annotations_detectron2", split, name))
            )
            assert np.array_equal(converted, prepare_ade20k.convert_ade20k_label(official))
            assert (converted == 255).any() and converted[converted != 255].max() <= 149
    assert f"Converted {2 * NUM_IMAGES} annotations" in stdout
    assert f"training: {NUM_IMAGES} images, {NUM_IMAGES} labels" in stdout
    assert f"validation: {NUM_IMAGES} images, {NUM_IMAGES} labels" in stdout


def test_script_second_run_changes_nothing(prepared):
    root, ade, _ = prepared
    before = converted_files(ade)
    stdout = run_script(root).stdout
    assert "Nothing to do" in stdout
    assert f"training: {NUM_IMAGES} images, {NUM_IMAGES} labels" in stdout
    assert_files_unchanged(before, converted_files(ade))


def test_script_after_interruption_converts_only_the_missing_file(tmp_path):
    ade = write_archive(tmp_path)
    run_script(tmp_path)
    missing = os.path.join(ade, "annotations_detectron2", "validation", "ADE_val_00000002.png")
    os.remove(missing)
    before = converted_files(ade)
    assert "Converted 1 annotations" in run_script(tmp_path).stdout
    after = converted_files(ade)
    assert set(after) - set(before) == {missing}
    assert all(after[path][0] == mtime for path, (mtime, _) in before.items())


def test_script_reports_a_missing_archive(tmp_path, capsys):
    assert prepare_ade20k.main(["--root", str(tmp_path)]) == 1
    assert "ADEChallengeData2016.zip" in capsys.readouterr().err


def test_root_defaults_to_detectron2_datasets(monkeypatch, tmp_path):
    """The --root of every preparation script (datasets/preparation.py)."""
    preparation = load_script(os.path.join(REPO_ROOT, "datasets", "preparation.py"))
    monkeypatch.setenv("DETECTRON2_DATASETS", str(tmp_path))
    assert preparation.parse_args("", "ADEChallengeData2016/", []).root == str(tmp_path)
    monkeypatch.delenv("DETECTRON2_DATASETS")
    assert preparation.parse_args("", "ADEChallengeData2016/", []).root == "datasets"


def test_detectron2_loader_reads_the_prepared_splits(prepared):
    _, ade, _ = prepared
    for split in SPLITS:
        dicts = load_sem_seg(
            os.path.join(ade, "annotations_detectron2", split),
            os.path.join(ade, "images", split),
            gt_ext="png",
            image_ext="jpg",
        )
        assert len(dicts) == NUM_IMAGES
        for d in dicts:
            assert (
                os.path.splitext(os.path.basename(d["file_name"]))[0]
                == os.path.splitext(os.path.basename(d["sem_seg_file_name"]))[0]
            )
            label = np.asarray(Image.open(d["sem_seg_file_name"]))
            assert label.shape == (H, W)
            assert set(np.unique(label)) <= set(range(150)) | {255}


def test_registered_metadata():
    for name in ADE20K_SPLITS:
        meta = MetadataCatalog.get(name)
        check_dataset_metadata(meta, 150, "sem_seg", ADE20K_PREPARE_COMMAND)
        assert meta.stuff_classes[0] == "wall"
        assert meta.stuff_colors[0] == [120, 120, 120]  # "wall"
        assert meta.stuff_colors[2] == [6, 230, 230]  # "sky"


def test_metadata_addition_is_repeatable_and_keeps_existing_values(monkeypatch):
    meta = check_metadata_addition_keeps_values(
        add_ade20k_metadata, ade20k, "ADE20K_SPLITS", monkeypatch
    )
    assert meta.prepare_command == ADE20K_PREPARE_COMMAND


@pytest.mark.slow
def test_train_net_trains_and_evaluates_on_ade20k(prepared, tmp_path):
    """The ADE20K recipe through train_net.py on the prepared fixture, a small model."""
    root, _, _ = prepared
    output = tiny_train_net("configs/ade20k_r50.yaml", root, tmp_path / "out")
    assert "ade20k_sem_seg_val" in output
    assert "IoU-wall" in output and "IoU-flag" in output  # first and last of the 150 classes
