"""PASCAL VOC 2012 + SBD: prepare script, loaders, metadata and errors, on tiny generated files
in the official layouts (VOC's palette PNGs, SBD's GTcls .mat files)."""

import os
import re
import sys

import numpy as np
import pytest
import scipy.sparse
from conftest import REPO_ROOT, load_script, run_command, tiny_train_net
from detectron2.data import DatasetCatalog, MetadataCatalog
from PIL import Image
from scipy.io import savemat

from pointrend_sem.data import read_label
from pointrend_sem.data.datasets.voc import VOC_CLASSES, voc_palette

PREPARE_SCRIPT = os.path.join(REPO_ROOT, "datasets", "prepare_voc.py")
PREPARE_COMMAND = "python datasets/prepare_voc.py"
H, W = 20, 24
VOC_TRAIN = ["2007_000032", "2007_000039"]
VOC_VAL = ["2007_000033", "2007_000042"]
SBD_TRAIN = ["2007_000039", "2008_000002", "2007_000033"]  # one in VOC train, one in VOC val
SBD_VAL = ["2008_000003", "2007_000032"]
TRAINAUG = ["2007_000032", "2007_000039", "2008_000002", "2008_000003"]
# class of each VOC-labelled image; every SBD label is "car" (7), so the two can be told apart
VOC_CLASS_OF = {"2007_000032": 1, "2007_000039": 15, "2007_000033": 1, "2007_000042": 12}
SBD_CLASS = 7


prepare_voc = load_script(PREPARE_SCRIPT)


def voc_label(class_id):
    """VOC-style label: background left, the class right, a 255 boundary between them."""
    label = np.zeros((H, W), np.uint8)
    label[:, W // 2 :] = class_id
    label[:, W // 2 - 1] = 255
    return label


def sbd_label():
    label = np.zeros((H, W), np.uint8)
    label[H // 2 :, :] = SBD_CLASS
    return label


def write_palette_png(path, label):
    image = Image.fromarray(label)
    image.putpalette([c for rgb in voc_palette() for c in rgb])  # "L" becomes "P"
    image.save(path)


def write_sbd_mat(path, segmentation):
    """A .mat in SBD's structure: GTcls with Boundaries (cell of sparse), Segmentation,
    CategoriesPresent."""
    boundaries = np.empty((20, 1), dtype=object)
    for i in range(20):
        boundaries[i, 0] = scipy.sparse.csc_matrix(segmentation.shape, dtype=bool)
    present = np.unique(segmentation[segmentation > 0]).astype(np.uint8)[:, None]
    gt = {"Boundaries": boundaries, "Segmentation": segmentation, "CategoriesPresent": present}
    savemat(path, {"GTcls": gt})


def write_ids(path, ids):
    with open(path, "w") as f:
        f.write("".join(f"{i}\n" for i in ids))


def make_voc_fixture(root):
    """VOC 2012 and SBD (VOCaug) in their official layouts under ``root``, not yet prepared."""
    voc = root / "VOCdevkit" / "VOC2012"
    sbd = root / "VOCdevkit" / "VOCaug" / "dataset"
    for folder in (voc / "JPEGImages", voc / "SegmentationClass", sbd / "cls"):
        folder.mkdir(parents=True)
    (voc / "ImageSets" / "Segmentation").mkdir(parents=True)
    rng = np.random.default_rng(0)
    for image_id in sorted(set(VOC_TRAIN + VOC_VAL + SBD_TRAIN + SBD_VAL)):
        image = rng.integers(0, 256, (H, W, 3), dtype=np.uint8)
        Image.fromarray(image).save(voc / "JPEGImages" / f"{image_id}.jpg")
    for image_id, class_id in VOC_CLASS_OF.items():
        write_palette_png(voc / "SegmentationClass" / f"{image_id}.png", voc_label(class_id))
    for image_id in SBD_TRAIN + SBD_VAL:
        write_sbd_mat(sbd / "cls" / f"{image_id}.mat", sbd_label())
    write_ids(voc / "ImageSets" / "Segmentation" / "train.txt", VOC_TRAIN)
    write_ids(voc / "ImageSets" / "Segmentation" / "val.txt", VOC_VAL)
    write_ids(sbd / "train.txt", SBD_TRAIN)
    write_ids(sbd / "val.txt", SBD_VAL)
    return root


def run_prepare(*args, env=None):
    proc = run_command([sys.executable, PREPARE_SCRIPT, "--workers", "2", *args], env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """(root, stdout) of a fixture prepared once by the script."""
    root = make_voc_fixture(tmp_path_factory.mktemp("voc"))
    return root, run_prepare("--root", str(root)).stdout


@pytest.fixture
def voc_env(prepared, monkeypatch):
    monkeypatch.setenv("DETECTRON2_DATASETS", str(prepared[0]))
    return prepared[0] / "VOCdevkit" / "VOC2012"


def test_convert_sbd_mat_gives_the_class_map(tmp_path):
    segmentation = np.arange(H * W, dtype=np.int64).reshape(H, W) % 21
    write_sbd_mat(tmp_path / "x.mat", segmentation.astype(np.uint8))
    converted = prepare_voc.convert_sbd_mat(str(tmp_path / "x.mat"))
    assert converted.dtype == np.uint8 and converted.shape == (H, W)
    assert np.array_equal(converted, segmentation)


def test_trainaug_is_the_union_minus_voc_val():
    ids = prepare_voc.trainaug_ids(["b", "a", "v1"], ["c", "a"], ["t", "b"], ["v1", "v2"])
    assert ids == ["a", "b", "c", "t"]
    assert prepare_voc.trainaug_ids(SBD_TRAIN, SBD_VAL, VOC_TRAIN, VOC_VAL) == TRAINAUG


def test_prepare_script_converts_sbd_and_writes_trainaug(prepared):
    root, stdout = prepared
    voc = root / "VOCdevkit" / "VOC2012"
    for image_id in SBD_TRAIN + SBD_VAL:
        with Image.open(voc / "SegmentationClassAug" / f"{image_id}.png") as png:
            assert png.mode == "L"
            assert np.array_equal(np.asarray(png), sbd_label())
    listed = (voc / "ImageSets" / "Segmentation" / "trainaug.txt").read_text().split()
    assert listed == TRAINAUG
    assert "converting 5" in stdout
    assert "train 2, val 2, trainaug 4" in stdout


def test_prepare_script_is_idempotent_and_defaults_to_the_env_root(prepared):
    root, _ = prepared
    outputs = sorted((root / "VOCdevkit" / "VOC2012" / "SegmentationClassAug").iterdir())
    outputs.append(root / "VOCdevkit" / "VOC2012" / "ImageSets" / "Segmentation" / "trainaug.txt")
    before = [p.stat().st_mtime_ns for p in outputs]
    stdout = run_prepare(env=dict(os.environ, DETECTRON2_DATASETS=str(root))).stdout
    assert "converting 0 SBD labels, skipping 5 already converted" in stdout
    assert "already up to date, skipped" in stdout
    assert "train 2, val 2, trainaug 4" in stdout
    assert [p.stat().st_mtime_ns for p in outputs] == before


def test_prepare_script_names_missing_sbd(tmp_path):
    make_voc_fixture(tmp_path)
    (tmp_path / "VOCdevkit" / "VOCaug" / "dataset" / "cls").rename(tmp_path / "elsewhere")
    with pytest.raises(SystemExit) as err:
        prepare_voc.main(["--root", str(tmp_path)])
    message = str(err.value.code)
    assert os.path.join(str(tmp_path), "VOCdevkit", "VOCaug", "dataset", "cls") in message
    assert "SBD" in message and "DETECTRON2_DATASETS" in message


@pytest.mark.parametrize(
    "split, ids", [("train", VOC_TRAIN), ("val", VOC_VAL), ("trainaug", TRAINAUG)]
)
def test_loaders_list_every_image_of_the_split(voc_env, split, ids):
    records = DatasetCatalog.get(f"voc_2012_sem_seg_{split}")
    assert [r["image_id"] for r in records] == ids
    for r in records:
        assert set(r) == {"file_name", "sem_seg_file_name", "image_id"}
        assert r["file_name"] == str(voc_env / "JPEGImages" / f"{r['image_id']}.jpg")
        assert os.path.isfile(r["sem_seg_file_name"])


def test_trainaug_prefers_voc_labels(voc_env):
    records = {r["image_id"]: r for r in DatasetCatalog.get("voc_2012_sem_seg_trainaug")}
    for image_id, record in records.items():
        folder = "SegmentationClass" if image_id in VOC_TRAIN else "SegmentationClassAug"
        assert record["sem_seg_file_name"] == str(voc_env / folder / f"{image_id}.png")
    # in VOC train and SBD train: VOC's label (person + boundary), not SBD's (car)
    assert np.array_equal(read_label(records["2007_000039"]["sem_seg_file_name"]), voc_label(15))
    assert np.array_equal(read_label(records["2008_000002"]["sem_seg_file_name"]), sbd_label())


def test_labels_are_read_as_class_indices(voc_env):
    record = DatasetCatalog.get("voc_2012_sem_seg_val")[0]
    with Image.open(record["sem_seg_file_name"]) as png:
        assert png.mode == "P"
    label = read_label(record["sem_seg_file_name"])
    assert label.shape == (H, W)
    assert np.array_equal(label, voc_label(1))  # aeroplane is index 1, not (128, 0, 0)


@pytest.mark.parametrize("split", ["train", "val", "trainaug"])
def test_metadata(split):
    meta = MetadataCatalog.get(f"voc_2012_sem_seg_{split}")
    assert meta.stuff_classes == VOC_CLASSES and len(meta.stuff_classes) == 21
    assert meta.stuff_classes[1] == "aeroplane" and meta.stuff_classes[20] == "tvmonitor"
    assert len(meta.stuff_colors) == 21 and meta.stuff_colors[0] == [0, 0, 0]
    assert tuple(meta.stuff_colors[1]) == (128, 0, 0)
    assert tuple(meta.stuff_colors[15]) == (192, 128, 128)  # person
    assert meta.ignore_label == 255 and meta.evaluator_type == "sem_seg"
    assert meta.prepare_command == PREPARE_COMMAND
    assert meta.image_root.endswith(os.path.join("VOCdevkit", "VOC2012", "JPEGImages"))
    label_dir = "SegmentationClassAug" if split == "trainaug" else "SegmentationClass"
    assert meta.sem_seg_root.endswith(os.path.join("VOCdevkit", "VOC2012", label_dir))


def test_palette_is_vocs():
    palette = voc_palette()
    assert len(palette) == 256 and palette[255] == [224, 224, 192]


def assert_names_path_env_and_command(message, path):
    assert str(path) in message
    assert "DETECTRON2_DATASETS" in message and PREPARE_COMMAND in message


def test_missing_root_is_named(tmp_path, monkeypatch):
    monkeypatch.setenv("DETECTRON2_DATASETS", str(tmp_path))
    with pytest.raises(FileNotFoundError) as err:
        DatasetCatalog.get("voc_2012_sem_seg_val")
    assert_names_path_env_and_command(str(err.value), tmp_path / "VOCdevkit" / "VOC2012")


def test_missing_split_list_is_named(tmp_path, monkeypatch):
    monkeypatch.setenv("DETECTRON2_DATASETS", str(make_voc_fixture(tmp_path)))
    with pytest.raises(FileNotFoundError) as err:
        DatasetCatalog.get("voc_2012_sem_seg_trainaug")  # not prepared yet
    list_path = tmp_path / "VOCdevkit" / "VOC2012" / "ImageSets" / "Segmentation" / "trainaug.txt"
    assert_names_path_env_and_command(str(err.value), list_path)


@pytest.mark.parametrize(
    "folder, name, split",
    [
        ("JPEGImages", f"{VOC_VAL[1]}.jpg", "val"),  # a missing image
        ("SegmentationClass", f"{VOC_TRAIN[0]}.png", "train"),  # a missing label
    ],
)
def test_missing_file_is_named(tmp_path, monkeypatch, folder, name, split):
    monkeypatch.setenv("DETECTRON2_DATASETS", str(make_voc_fixture(tmp_path)))
    missing = tmp_path / "VOCdevkit" / "VOC2012" / folder / name
    missing.unlink()
    with pytest.raises(FileNotFoundError, match=re.escape(str(missing))):
        DatasetCatalog.get(f"voc_2012_sem_seg_{split}")


@pytest.mark.slow
def test_train_net_trains_and_evaluates_on_voc(prepared, tmp_path):
    """The VOC recipe through train_net.py, with a small model (conftest.TINY_MODEL)."""
    root, _ = prepared
    output = tiny_train_net("configs/voc_r50.yaml", root, tmp_path / "out")
    assert "voc_2012_sem_seg_val" in output
    assert "IoU-aeroplane" in output and "IoU-tvmonitor" in output
