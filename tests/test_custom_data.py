import json
import os
import sys

import numpy as np
import pytest
from conftest import run_script
from detectron2.data import DatasetCatalog, MetadataCatalog
from PIL import Image

from pointrend_sem.data import read_label
from pointrend_sem.data.datasets.checks import check_dataset_ready
from pointrend_sem.data.datasets.custom import (
    IMAGE_EXTS,
    default_palette,
    load_sem_seg_folder,
    register_from_file,
    register_sem_seg_folder,
)
from tools.check_labels import inspect_label

CLASSES = ["road", "car", "tree"]
H, W = 16, 20


@pytest.fixture(autouse=True)
def _unregister_new_datasets():
    """Remove the datasets a test registered, so that names can be reused."""
    before = set(DatasetCatalog.list())
    yield
    for name in set(DatasetCatalog.list()) - before:
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)


def label_map(value_right: int = 2) -> np.ndarray:
    """A (H, W) uint8 label: class 0 on the left, ``value_right`` on the right, one ignore."""
    label = np.zeros((H, W), np.uint8)
    label[:, W // 2 :] = value_right
    label[0, 0] = 255
    return label


def write_folder(root, stems=("a", "b", "sub/c"), missing_labels=(), image_ext=".jpg"):
    """images/<stem><image_ext> and labels/<stem>.png under ``root``; returns the two folders."""
    image_dir, label_dir = root / "images", root / "labels"
    rng = np.random.default_rng(0)
    for stem in stems:
        for folder in (image_dir, label_dir):
            (folder / stem).parent.mkdir(parents=True, exist_ok=True)
        image = rng.integers(0, 256, (H, W, 3), dtype=np.uint8)
        Image.fromarray(image).save(image_dir / f"{stem}{image_ext}")
        if stem not in missing_labels:
            Image.fromarray(label_map()).save(label_dir / f"{stem}.png")
    return str(image_dir), str(label_dir)


def test_register_folder_and_load_it(tmp_path):
    image_dir, label_dir = write_folder(tmp_path)
    register_sem_seg_folder("custom_t_train", image_dir, label_dir, CLASSES)
    records = DatasetCatalog.get("custom_t_train")
    assert [os.path.relpath(r["file_name"], image_dir) for r in records] == [
        "a.jpg",
        "b.jpg",
        os.path.join("sub", "c.jpg"),
    ]
    for record in records:
        stem = os.path.splitext(os.path.relpath(record["file_name"], image_dir))[0]
        assert record["sem_seg_file_name"] == os.path.join(label_dir, stem + ".png")
        assert np.array_equal(read_label(record["sem_seg_file_name"]), label_map())


def test_registered_metadata(tmp_path):
    image_dir, label_dir = write_folder(tmp_path)
    register_sem_seg_folder("custom_t_default_colors", image_dir, label_dir, CLASSES)
    colors = [[1, 2, 3], [4, 5, 6], [7, 8, 9]]
    register_sem_seg_folder(
        "custom_t_colors", image_dir, label_dir, CLASSES, colors=colors, ignore_label=100
    )
    meta = MetadataCatalog.get("custom_t_default_colors")
    assert meta.stuff_classes == CLASSES
    assert meta.ignore_label == 255 and meta.evaluator_type == "sem_seg"
    assert (meta.image_root, meta.sem_seg_root) == (image_dir, label_dir)
    assert meta.stuff_colors == default_palette(3)
    assert MetadataCatalog.get("custom_t_colors").stuff_colors == colors
    assert MetadataCatalog.get("custom_t_colors").ignore_label == 100
    palette = [tuple(c) for c in default_palette(300)]
    assert len(set(palette)) == 300 and palette == [tuple(c) for c in default_palette(300)]


def test_ignore_label_colliding_with_a_class_is_rejected(tmp_path):
    image_dir, label_dir = write_folder(tmp_path)
    with pytest.raises(ValueError) as err:
        register_sem_seg_folder(
            "custom_t_bad_ignore", image_dir, label_dir, CLASSES, ignore_label=1
        )
    message = str(err.value)
    assert "ignore_label=1" in message and "'car'" in message and "255" in message
    assert "custom_t_bad_ignore" not in DatasetCatalog.list()


def test_image_without_label_is_named_when_loading(tmp_path):
    image_dir, label_dir = write_folder(tmp_path, missing_labels=("b",))
    register_sem_seg_folder("custom_t_missing", image_dir, label_dir, CLASSES)
    with pytest.raises(FileNotFoundError, match=r"1 of 3 images.*b\.jpg.*b\.png"):
        DatasetCatalog.get("custom_t_missing")


@pytest.mark.parametrize("image_ext", [".png", ".JPG", ".jpeg", ".tif", ".bmp", ".webp"])
def test_common_image_extensions_are_found_without_image_ext(tmp_path, image_ext):
    image_dir, label_dir = write_folder(tmp_path, image_ext=image_ext)
    records = load_sem_seg_folder(image_dir, label_dir)
    assert [os.path.basename(r["file_name"]) for r in records] == [
        f"a{image_ext}",
        f"b{image_ext}",
        f"c{image_ext}",
    ]
    assert image_ext.lower() in IMAGE_EXTS


def test_image_ext_restricts_the_images_taken(tmp_path):
    image_dir, label_dir = write_folder(tmp_path, image_ext=".png")
    Image.fromarray(np.zeros((H, W, 3), np.uint8)).save(tmp_path / "images" / "d.jpg")
    Image.fromarray(label_map()).save(tmp_path / "labels" / "d.png")
    register_sem_seg_folder("custom_t_png", image_dir, label_dir, CLASSES, image_ext="png")
    assert len(DatasetCatalog.get("custom_t_png")) == 3
    assert len(load_sem_seg_folder(image_dir, label_dir)) == 4


def test_two_images_of_one_name_are_named_both(tmp_path):
    image_dir, label_dir = write_folder(tmp_path)
    Image.fromarray(np.zeros((H, W, 3), np.uint8)).save(tmp_path / "images" / "a.png")
    with pytest.raises(ValueError) as err:
        load_sem_seg_folder(image_dir, label_dir)
    message = str(err.value)
    assert (
        os.path.join(image_dir, "a.jpg") in message and os.path.join(image_dir, "a.png") in message
    )
    assert "set image_ext" in message
    assert len(load_sem_seg_folder(image_dir, label_dir, image_ext=".jpg")) == 3


def test_no_image_found_names_folder_extensions_and_key(tmp_path):
    image_dir, label_dir = write_folder(tmp_path, image_ext=".png")
    register_sem_seg_folder("custom_t_gif", image_dir, label_dir, CLASSES, image_ext=".gif")
    with pytest.raises(ValueError) as err:
        check_dataset_ready("custom_t_gif")
    message = str(err.value)
    assert message.startswith(
        f"Dataset custom_t_gif is empty: no file in {image_dir} ends in .gif;"
    )
    assert "it holds 3 .png" in message and "Set image_ext" in message
    (tmp_path / "other").mkdir()
    with pytest.raises(ValueError) as err:
        load_sem_seg_folder(str(tmp_path / "other"), label_dir)
    assert " ".join(IMAGE_EXTS) + " (any case)" in str(err.value)
    assert "it holds nothing" in str(err.value)


def test_register_from_file_takes_png_images_by_default(tmp_path):
    image_dir, label_dir = write_folder(tmp_path, image_ext=".png")
    entry = {"name": "custom_t_file_png", "image_dir": image_dir, "label_dir": label_dir}
    path = tmp_path / "datasets.json"
    path.write_text(json.dumps(dict(entry, classes=CLASSES)))
    register_from_file(str(path))
    assert check_dataset_ready("custom_t_file_png", num_classes=3) == 3


def test_register_from_yaml_and_json_files(tmp_path, monkeypatch):
    write_folder(tmp_path / "roads")
    monkeypatch.setenv("DETECTRON2_DATASETS", str(tmp_path))
    yaml_file = tmp_path / "datasets.yaml"
    yaml_file.write_text(
        "- name: custom_t_yaml\n"
        "  image_dir: roads/images\n"
        "  label_dir: roads/labels\n"
        "  classes: [road, car, tree]\n"
        "  colors: [[1, 2, 3], [4, 5, 6], [7, 8, 9]]\n"
    )
    assert register_from_file(str(yaml_file)) == ["custom_t_yaml"]
    meta = MetadataCatalog.get("custom_t_yaml")
    assert meta.image_root == str(tmp_path / "roads" / "images")
    assert meta.stuff_colors[2] == [7, 8, 9]
    assert len(DatasetCatalog.get("custom_t_yaml")) == 3

    entry = {
        "name": "custom_t_json",
        "image_dir": str(tmp_path / "roads" / "images"),
        "label_dir": str(tmp_path / "roads" / "labels"),
        "classes": CLASSES,
        "ignore_label": 200,
    }
    json_file = tmp_path / "datasets.json"
    json_file.write_text(json.dumps(entry))
    assert register_from_file(str(json_file)) == ["custom_t_json"]
    assert MetadataCatalog.get("custom_t_json").ignore_label == 200


@pytest.mark.parametrize(
    "change, expected",
    [
        ({"clases": CLASSES}, r"unknown key 'clases'; did you mean 'classes'"),
        ({"ignore_label": 0}, r"ignore_label=0 .*'road'"),
    ],
)
def test_register_from_file_rejects_bad_entries_before_registering(tmp_path, change, expected):
    good = {"name": "custom_t_good", "image_dir": "i", "label_dir": "l", "classes": CLASSES}
    bad = {"name": "custom_t_bad", "image_dir": "i", "label_dir": "l", "classes": CLASSES}
    bad.update(change)
    if "clases" in change:
        del bad["classes"]
    path = tmp_path / "datasets.json"
    path.write_text(json.dumps([good, bad]))
    with pytest.raises(ValueError, match=expected):
        register_from_file(str(path))
    assert "custom_t_good" not in DatasetCatalog.list()


def test_check_dataset_ready_names_missing_root_env_and_prepare_command(tmp_path, monkeypatch):
    root = tmp_path / "d2_datasets"
    root.mkdir()
    monkeypatch.setenv("DETECTRON2_DATASETS", str(root))
    register_sem_seg_folder("custom_t_absent", "absent/images", "absent/labels", CLASSES)
    MetadataCatalog.get("custom_t_absent").prepare_command = "python datasets/prepare_absent.py"
    with pytest.raises(FileNotFoundError) as err:
        check_dataset_ready("custom_t_absent")
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith(f"Dataset custom_t_absent: {root / 'absent' / 'images'} does not")
    assert f"DETECTRON2_DATASETS (now '{root}')" in message
    assert "`python datasets/prepare_absent.py` (see datasets/README.md)" in message


def test_check_dataset_ready_outside_the_datasets_root(tmp_path, monkeypatch):
    monkeypatch.delenv("DETECTRON2_DATASETS", raising=False)
    register_sem_seg_folder("custom_t_abs", str(tmp_path / "img"), str(tmp_path / "lbl"), CLASSES)
    with pytest.raises(FileNotFoundError, match="Fix the folder .* now unset"):
        check_dataset_ready("custom_t_abs")


def test_check_dataset_ready_counts_and_rejects_empty_split(tmp_path):
    image_dir, label_dir = write_folder(tmp_path)
    register_sem_seg_folder("custom_t_ready", image_dir, label_dir, CLASSES)
    assert check_dataset_ready("custom_t_ready", num_classes=3) == 3
    with pytest.raises(ValueError, match="3 classes .* predicts 5"):
        check_dataset_ready("custom_t_ready", num_classes=5)
    empty = tmp_path / "empty"
    (empty / "images").mkdir(parents=True)
    (empty / "labels").mkdir()
    register_sem_seg_folder("custom_t_empty", str(empty / "images"), str(empty / "labels"), CLASSES)
    with pytest.raises(ValueError, match=f"custom_t_empty is empty.*{empty / 'images'}"):
        check_dataset_ready("custom_t_empty")


def test_check_dataset_ready_suggests_similar_names(tmp_path):
    image_dir, label_dir = write_folder(tmp_path)
    register_sem_seg_folder("custom_t_roads_train", image_dir, label_dir, CLASSES)
    with pytest.raises(KeyError) as err:
        check_dataset_ready("custom_t_road_train")
    assert "Did you mean custom_t_roads_train" in str(err.value)


# --- tools/check_labels.py ---------------------------------------------------------------


def write_label_mistakes(folder):
    """One label file per mistake, and a clean one; returns {kind: file name}."""
    folder.mkdir(parents=True, exist_ok=True)
    rgb = np.zeros((H, W, 3), np.uint8)
    rgb[:, W // 2 :] = [128, 64, 128]
    out_of_range = label_map()
    out_of_range[1, :3] = [3, 7, 7]
    palette = Image.fromarray(label_map()).convert("P")
    palette.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0] + [9] * (253 * 3))
    files = {
        "clean": Image.fromarray(label_map()),
        "palette": palette,
        "color": Image.fromarray(rgb),
        "rgba": Image.fromarray(np.dstack([rgb, np.full((H, W), 255, np.uint8)])),
        "16bit": Image.fromarray(label_map().astype(np.uint16)),
        "out_of_range": Image.fromarray(out_of_range),
        "all_ignore": Image.fromarray(np.full((H, W), 255, np.uint8)),
    }
    for kind, image in files.items():
        image.save(folder / f"{kind}.png")
    return {kind: str(folder / f"{kind}.png") for kind in files}


def run_checker(*args):
    cmd = [sys.executable, "tools/check_labels.py", *map(str, args)]
    return run_script(cmd)


def test_inspect_label_finds_each_mistake(tmp_path):
    files = write_label_mistakes(tmp_path)
    results = {kind: inspect_label(path, 3, 255) for kind, path in files.items()}
    assert results["clean"]["problems"] == [] and results["palette"]["problems"] == []
    assert results["clean"]["counts"] == {0: H * W // 2 - 1, 2: H * W // 2, 255: 1}
    assert results["palette"]["mode"] == "P"
    assert results["palette"]["counts"] == results["clean"]["counts"]
    assert results["color"]["problems"] == ["color"] and results["rgba"]["problems"] == ["color"]
    assert [128, 64, 128] in [c for c, _ in results["color"]["colors"]]
    assert results["color"]["num_colors"] == 2 and not results["color"]["grey"]
    assert results["16bit"]["problems"] == ["16bit"]
    assert results["out_of_range"]["problems"] == ["out_of_range"]
    assert results["out_of_range"]["bad_values"] == [3, 7]
    assert results["all_ignore"]["problems"] == ["all_ignore"]
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a png")
    assert inspect_label(str(broken), 3, 255)["problems"] == ["unreadable"]


def test_checker_passes_clean_labels(tmp_path):
    files = write_label_mistakes(tmp_path / "all")
    clean = tmp_path / "clean"
    clean.mkdir()
    for kind in ("clean", "palette"):
        os.rename(files[kind], clean / f"{kind}.png")
    names = tmp_path / "names.txt"
    names.write_text("\n".join(CLASSES) + "\n")
    result = run_checker(clean, "--class-names-file", names)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "No problems found." in result.stdout and "palette PNGs" in result.stdout
    assert "| road " in result.stdout.replace("  ", " ")
    assert "Classes with no pixels" in result.stdout and "1 (car)" in result.stdout


def test_checker_reports_each_mistake_with_files_and_fix(tmp_path):
    write_label_mistakes(tmp_path)
    result = run_checker(tmp_path, "--num-classes", 3)
    out = result.stdout
    assert result.returncode == 1, out + result.stderr
    assert "colour-coded (RGB/RGBA)" in out and "color.png, rgba.png" in out
    assert "Map each colour to its class index" in out and "(128, 64, 128)" in out
    assert "16-bit" in out and "16bit.png" in out
    assert "value 3: 1 px in 1 file(s), e.g. out_of_range.png" in out
    assert "value 7: 2 px" in out and "suggests 1-based labels" in out
    assert "all ignore (255): all_ignore.png" in out
    assert "clean.png" not in out.split("Pixels per label value")[0]


def test_checker_reports_ignore_value_colliding_with_a_class(tmp_path):
    Image.fromarray(label_map()).save(tmp_path / "clean.png")
    result = run_checker(tmp_path, "--num-classes", 3, "--ignore-label", 2)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "the ignore value 2 is class index 2 of 0..2" in result.stdout
