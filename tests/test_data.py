import os

import numpy as np
import pytest
import torch
from conftest import load_config
from detectron2.data import transforms as T
from PIL import Image

from pointrend_sem.data import (
    PhotometricDistortion,
    RandomScaledResize,
    SemSegDatasetMapper,
    build_train_augmentations,
    read_label,
)
from pointrend_sem.data.datasets.synthetic import SYNTHETIC_CLASSES, render_sample


@pytest.mark.parametrize("h, w", [(1024, 2048), (2048, 1024), (375, 500)])
def test_random_scaled_resize_keeps_ratio_like_mmseg(h, w):
    np.random.seed(0)
    aug = RandomScaledResize((2048, 512), (1.0, 1.0))
    t = aug.get_transform(np.zeros((h, w, 3), np.uint8))
    factor = min(2048 / max(h, w), 512 / min(h, w))
    assert (t.new_h, t.new_w) == (int(h * factor + 0.5), int(w * factor + 0.5))


def test_photometric_distortion_changes_image_only():
    np.random.seed(1)
    image = np.random.randint(0, 256, (32, 32, 3), np.uint8)
    label = np.random.randint(0, 5, (32, 32)).astype(np.uint8)
    changed = False
    for _ in range(5):
        aug_input = T.AugInput(image.copy(), sem_seg=label.copy())
        T.AugmentationList([PhotometricDistortion()])(aug_input)
        assert np.array_equal(aug_input.sem_seg, label)
        assert aug_input.image.dtype == np.uint8 and aug_input.image.shape == image.shape
        changed |= not np.array_equal(aug_input.image, image)
    assert changed


def test_train_augmentations_of_the_recipe():
    augs = build_train_augmentations(load_config("cityscapes_r50.yaml"))
    kinds = [type(a).__name__ for a in augs]
    assert kinds == [
        "RandomScaledResize",
        "RandomCrop_CategoryAreaConstraint",
        "RandomFlip",
        "PhotometricDistortion",
    ]


def write_pair(tmp_path, image_size=(40, 50), label_size=None, label_mode="L", values=None):
    h, w = image_size
    image_file = str(tmp_path / "image.png")
    label_file = str(tmp_path / "label.png")
    Image.fromarray(np.random.randint(0, 256, (h, w, 3), np.uint8)).save(image_file)
    lh, lw = label_size or image_size
    label = np.zeros((lh, lw), np.uint8) if values is None else values
    if label_mode == "P":
        img = Image.fromarray(label, mode="L").convert("P")
        img.putpalette([0, 0, 0, 128, 0, 0, 0, 128, 0] + [0] * (253 * 3))
        img.save(label_file)
    elif label_mode == "RGB":
        Image.fromarray(np.stack([label] * 3, -1)).save(label_file)
    else:
        Image.fromarray(label).save(label_file)
    return {"file_name": image_file, "sem_seg_file_name": label_file}


def demo_mapper(is_train=True):
    return SemSegDatasetMapper(load_config("demo_synthetic.yaml"), is_train=is_train)


def test_mapper_transforms_image_and_label_together(tmp_path):
    label = np.zeros((40, 50), np.uint8)
    label[:, 25:] = 3
    record = write_pair(tmp_path, values=label)
    out = demo_mapper()(record)
    assert out["image"].shape[1:] == out["sem_seg"].shape
    assert out["sem_seg"].dtype == torch.long
    assert set(out["sem_seg"].unique().tolist()) <= {0, 3}
    assert (out["height"], out["width"]) == (40, 50)


def test_palette_labels_are_read_as_indices(tmp_path):
    values = np.full((4, 4), 2, np.uint8)
    values[0, 0] = 255
    record = write_pair(tmp_path, image_size=(4, 4), label_mode="P", values=values)
    assert Image.open(record["sem_seg_file_name"]).mode == "P"
    assert np.array_equal(read_label(record["sem_seg_file_name"]), values)


def test_mapper_rejects_size_mismatch_naming_both_files(tmp_path):
    record = write_pair(tmp_path, image_size=(40, 50), label_size=(40, 51))
    with pytest.raises(ValueError) as err:
        demo_mapper()(record)
    assert "image.png" in str(err.value) and "label.png" in str(err.value)


def test_mapper_rejects_rgb_labels(tmp_path):
    record = write_pair(tmp_path, label_mode="RGB")
    with pytest.raises(ValueError, match="single-channel"):
        demo_mapper()(record)


def test_mapper_rejects_out_of_range_labels(tmp_path):
    values = np.zeros((40, 50), np.uint8)
    values[0, :3] = [7, 9, 255]
    record = write_pair(tmp_path, values=values)
    with pytest.raises(ValueError, match=r"\[7, 9\].*label.png|label.png.*\[7, 9\]"):
        demo_mapper()(record)


def test_mapper_names_a_corrupt_image(tmp_path):
    record = write_pair(tmp_path)
    with open(record["file_name"], "wb") as f:
        f.write(b"not a png")
    with pytest.raises(ValueError, match="image.png"):
        demo_mapper()(record)


def test_test_mapper_returns_no_label(tmp_path):
    out = demo_mapper(is_train=False)(write_pair(tmp_path))
    assert "sem_seg" not in out and "sem_seg_file_name" not in out


def test_synthetic_samples_are_deterministic_and_varied():
    image_a, label_a = render_sample(7)
    image_b, label_b = render_sample(7)
    assert np.array_equal(image_a, image_b) and np.array_equal(label_a, label_b)
    seen = set()
    ignored = 0
    for seed in range(40):
        _, label = render_sample(seed)
        seen |= set(np.unique(label).tolist())
        ignored += int((label == 255).any())
    assert seen == set(range(len(SYNTHETIC_CLASSES))) | {255}
    assert 0 < ignored < 40


def test_synthetic_dataset_is_generated_once(tmp_path, monkeypatch):
    from detectron2.data import DatasetCatalog

    monkeypatch.setenv("DETECTRON2_DATASETS", str(tmp_path))
    records = DatasetCatalog.get("synthetic_shapes_sem_seg_val")
    assert len(records) == 40 and all(os.path.isfile(r["file_name"]) for r in records)
    first = os.path.getmtime(records[0]["sem_seg_file_name"])
    DatasetCatalog.get("synthetic_shapes_sem_seg_val")
    assert os.path.getmtime(records[0]["sem_seg_file_name"]) == first
    label = np.asarray(Image.open(records[0]["sem_seg_file_name"]))
    assert np.array_equal(label, render_sample(1 * 1_000_003 + 0)[1])
