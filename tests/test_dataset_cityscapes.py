"""Cityscapes: datasets/prepare_cityscapes.py, detectron2's loader and metadata, the official
evaluation and the submission writer, on a tiny archive in the official layout."""

import copy
import json
import os
import sys

import numpy as np
import pytest
import torch
from cityscapesscripts.helpers.annotation import Annotation
from cityscapesscripts.helpers.csHelpers import getCsFileInfo
from cityscapesscripts.helpers.labels import id2label, name2label, trainId2label
from cityscapesscripts.preparation.json2instanceImg import createInstanceImage
from cityscapesscripts.preparation.json2labelImg import json2labelImg
from conftest import REPO_ROOT, load_script, run_command, tiny_train_net
from dataset_checks import (
    assert_files_unchanged,
    check_dataset_metadata,
    check_metadata_addition_keeps_values,
    label_file_states,
)
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets.cityscapes import load_cityscapes_semantic
from detectron2.evaluation import DatasetEvaluators
from PIL import Image

from pointrend_sem.data.datasets import cityscapes as cityscapes_meta
from pointrend_sem.data.datasets.cityscapes import (
    CITYSCAPES_PREPARE_COMMAND,
    CITYSCAPES_SPLITS,
    add_cityscapes_metadata,
)
from pointrend_sem.evaluation.cityscapes import (
    CityscapesOfficialSemSegEvaluator,
    CityscapesSubmissionWriter,
    build_cityscapes_evaluators,
    cityscapes_image_id,
    train_ids_to_label_ids,
)
from pointrend_sem.evaluation.sem_seg import KeyedSemSegEvaluator

SCRIPT = os.path.join(REPO_ROOT, "datasets", "prepare_cityscapes.py")
CITIES = {"train": ("aachen", "bochum"), "val": ("frankfurt", "lindau"), "test": ("berlin", "bonn")}
FRAMES = ("000000_000019", "000001_000019")  # <seq>_<frame>, per city
H, W = 32, 64
NUM_PER_SPLIT = len(FRAMES) * 2


prepare_cityscapes = load_script(SCRIPT)


def polygons(index: int) -> dict:
    """A polygon annotation in the archive's JSON format; the layout moves with ``index``."""

    def box(label, x0, y0, x1, y1):
        return {"label": label, "polygon": [[x0, y0], [x1, y0], [x1, y1], [x0, y1]]}

    s = 3 * index
    objects = [
        box("sky", 0, 0, 63, 9),
        box("building", 0, 6, 40 - s, 17),
        box("vegetation", 40 - s, 6, 63, 17),
        box("road", 0, 17, 63, 31),
        box("sidewalk", 48, 17, 63, 31),
        box("car", 8 + s, 13, 24 + s, 23),
        box("license plate", 12 + s, 20, 18 + s, 22),  # id -1: never drawn
        box("person", 36, 9, 41, 25),
        box("cargroup", 26 + s, 15, 32 + s, 21),
        box("ego vehicle", 0, 28, 63, 31),
    ]
    return {"imgHeight": H, "imgWidth": W, "objects": objects}


def write_instance_ids(polygons_json: str, out: str) -> None:
    """The archive's 16-bit ``*_gtFine_instanceIds.png`` (``json2instanceImg`` makes a 32-bit
    image that recent Pillow cannot save as PNG)."""
    annotation = Annotation()
    annotation.fromJsonFile(polygons_json)
    instance_ids = np.asarray(createInstanceImage(annotation, "ids")).astype(np.uint16)
    Image.fromarray(instance_ids).save(out)


def write_archive(root) -> str:
    """``root/cityscapes/{leftImg8bit,gtFine}/<split>/<city>/`` as the official zips unpack: images,
    polygons, labelIds and instanceIds (no labelTrainIds). Returns the cityscapes folder."""
    cs = root / "cityscapes"
    index = 0
    for split, cities in CITIES.items():
        for city in cities:
            (cs / "leftImg8bit" / split / city).mkdir(parents=True)
            (cs / "gtFine" / split / city).mkdir(parents=True)
            for frame in FRAMES:
                stem, index = f"{city}_{frame}", index + 1
                image = np.random.default_rng(index).integers(0, 256, (H, W, 3), dtype=np.uint8)
                Image.fromarray(image).save(
                    cs / "leftImg8bit" / split / city / f"{stem}_leftImg8bit.png"
                )
                gt = str(cs / "gtFine" / split / city / f"{stem}_gtFine_")
                with open(gt + "polygons.json", "w") as f:
                    json.dump(polygons(index % 4), f)
                json2labelImg(gt + "polygons.json", gt + "labelIds.png", "ids")
                write_instance_ids(gt + "polygons.json", gt + "instanceIds.png")
    return str(cs)


def run_script(root) -> str:
    args = [sys.executable, SCRIPT, "--root", str(root), "--workers", "2"]
    return run_command(args, check=True).stdout


def train_ids_files(cs: str):
    """{path: (mtime_ns, pixels)} of every labelTrainIds file."""
    splits = CITIES.items()
    folders = [
        os.path.join(cs, "gtFine", split, city) for split, cities in splits for city in cities
    ]
    return label_file_states(folders, "_labelTrainIds.png")


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """The tiny archive after one run of the script: (root, cityscapes folder, stdout)."""
    root = tmp_path_factory.mktemp("cityscapes_root")
    cs = write_archive(root)
    return root, cs, run_script(root)


def split_dirs(cs: str, split: str):
    return os.path.join(cs, "leftImg8bit", split), os.path.join(cs, "gtFine", split)


@pytest.fixture(scope="module")
def fixture_val(prepared):
    """The fixture's val split registered under a test-only name (detectron2's own
    ``cityscapes_fine_sem_seg_val`` points at $DETECTRON2_DATASETS): (name, dataset dicts)."""
    _, cs, _ = prepared
    name = "pointrend_sem_test_cityscapes_fixture_val"
    image_dir, gt_dir = split_dirs(cs, "val")
    if name not in DatasetCatalog.list():
        DatasetCatalog.register(name, lambda: load_cityscapes_semantic(image_dir, gt_dir))
        MetadataCatalog.get(name).set(
            image_dir=image_dir,
            gt_dir=gt_dir,
            evaluator_type="cityscapes_sem_seg",
            ignore_label=255,
            stuff_classes=MetadataCatalog.get("cityscapes_fine_sem_seg_val").stuff_classes,
        )
    return name, DatasetCatalog.get(name)


# ---------------------------------------------------------------------------------------------
# prepare_cityscapes.py


def test_train_ids_path():
    json_file = "/d/gtFine/val/lindau/lindau_000000_000019_gtFine_polygons.json"
    assert prepare_cityscapes.train_ids_path(json_file) == (
        "/d/gtFine/val/lindau/lindau_000000_000019_gtFine_labelTrainIds.png"
    )
    with pytest.raises(ValueError):
        prepare_cityscapes.train_ids_path("/d/x_gtFine_labelIds.png")


def test_draw_one_label_once(tmp_path):
    json_file = str(tmp_path / "ulm_000000_000019_gtFine_polygons.json")
    with open(json_file, "w") as f:
        json.dump(polygons(0), f)
    assert prepare_cityscapes.make_train_ids_label(json_file) is True
    out = prepare_cityscapes.train_ids_path(json_file)
    label = np.asarray(Image.open(out))
    assert label.shape == (H, W) and label.dtype == np.uint8
    assert label[2, 30] == name2label["sky"].trainId == 10
    assert label[20, 4] == name2label["road"].trainId == 0
    assert label[20, 55] == name2label["sidewalk"].trainId == 1
    assert label[15, 38] == name2label["person"].trainId == 11
    assert label[21, 15] == name2label["car"].trainId == 13  # under the license plate
    assert label[18, 29] == name2label["car"].trainId  # "cargroup" is drawn as car
    assert label[30, 30] == 255  # ego vehicle: ignored
    mtime = os.stat(out).st_mtime_ns
    assert prepare_cityscapes.make_train_ids_label(json_file) is False
    assert os.stat(out).st_mtime_ns == mtime
    assert sorted(os.listdir(tmp_path)) == sorted(
        [os.path.basename(json_file), os.path.basename(out)]
    )


def test_draw_reports_unknown_labels_instead_of_exiting(tmp_path):
    json_file = str(tmp_path / "ulm_000000_000019_gtFine_polygons.json")
    with open(json_file, "w") as f:
        json.dump(
            {
                "imgHeight": H,
                "imgWidth": W,
                "objects": [{"label": "dragon", "polygon": [[0, 0], [5, 0], [5, 5]]}],
            },
            f,
        )
    with pytest.raises(RuntimeError, match="could not draw"):
        prepare_cityscapes.make_train_ids_label(json_file)
    assert os.listdir(tmp_path) == [os.path.basename(json_file)]


def test_script_draws_every_split(prepared):
    _, cs, stdout = prepared
    files = train_ids_files(cs)
    assert len(files) == 3 * NUM_PER_SPLIT
    for path, (_, label) in files.items():
        label_ids = np.asarray(Image.open(path.replace("labelTrainIds", "labelIds")))
        expected = np.vectorize(lambda i: id2label[i].trainId)(label_ids)
        assert np.array_equal(label, expected)
    assert f"Drew {3 * NUM_PER_SPLIT} " in stdout
    for split in CITIES:
        assert f"{split}: {NUM_PER_SPLIT} images, {NUM_PER_SPLIT} labels" in stdout


def test_script_second_run_changes_nothing(prepared):
    root, cs, _ = prepared
    before = train_ids_files(cs)
    stdout = run_script(root)
    assert "Nothing to do" in stdout
    assert f"val: {NUM_PER_SPLIT} images, {NUM_PER_SPLIT} labels" in stdout
    assert_files_unchanged(before, train_ids_files(cs))


def test_script_reports_a_missing_archive(tmp_path, capsys):
    assert prepare_cityscapes.main(["--root", str(tmp_path)]) == 1
    assert "gtFine_trainvaltest.zip" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------
# detectron2's loader and the registered metadata


@pytest.mark.parametrize("split", list(CITIES))
def test_detectron2_loader_reads_the_prepared_split(prepared, split):
    _, cs, _ = prepared
    dicts = load_cityscapes_semantic(*split_dirs(cs, split))
    assert len(dicts) == NUM_PER_SPLIT
    for d in dicts:
        assert (d["height"], d["width"]) == (H, W)
        assert d["sem_seg_file_name"].endswith("_gtFine_labelTrainIds.png")
        label = np.asarray(Image.open(d["sem_seg_file_name"]))
        assert set(np.unique(label)) <= set(range(19)) | {255}
        assert cityscapes_image_id(d["file_name"])[1] in d["sem_seg_file_name"]


def test_registered_metadata():
    for name in CITYSCAPES_SPLITS:
        meta = MetadataCatalog.get(name)
        check_dataset_metadata(meta, 19, "cityscapes_sem_seg", CITYSCAPES_PREPARE_COMMAND)
        assert meta.stuff_classes[0] == "road"
        assert meta.stuff_colors[0] == [128, 64, 128]  # road
        assert meta.stuff_colors == [list(trainId2label[i].color) for i in range(19)]


def test_metadata_addition_is_repeatable_and_keeps_existing_values(monkeypatch):
    meta = check_metadata_addition_keeps_values(
        add_cityscapes_metadata, cityscapes_meta, "CITYSCAPES_SPLITS", monkeypatch
    )
    assert meta.prepare_command == CITYSCAPES_PREPARE_COMMAND


# ---------------------------------------------------------------------------------------------
# evaluation


def partly_right(dataset_dict: dict, seed: int, classes=tuple(range(19))) -> np.ndarray:
    """(H, W) trainIds: the ground truth with a few blocks of ``classes`` (ignored pixels get
    class 2)."""
    rng = np.random.default_rng(seed)
    pred = np.asarray(Image.open(dataset_dict["sem_seg_file_name"])).astype(np.int64)
    pred[pred == 255] = 2
    for _ in range(3):
        y, x = rng.integers(0, H - 8), rng.integers(0, W - 12)
        pred[y : y + 8, x : x + 12] = rng.choice(classes)
    return pred


def scores(train_ids: np.ndarray) -> torch.Tensor:
    """(19, H, W) scores whose argmax is ``train_ids``."""
    return torch.nn.functional.one_hot(torch.as_tensor(train_ids), 19).permute(2, 0, 1).float()


def run_evaluator(evaluator, dicts, predictions):
    evaluator.reset()
    for d, pred in zip(dicts, predictions):
        evaluator.process([{"file_name": d["file_name"]}], [{"sem_seg": scores(pred)}])
    return evaluator.evaluate()


def write_reference_predictions(folder, dicts, predictions):
    """labelId PNGs, mapped with cityscapesscripts' own table, named as its script expects;
    returns their paths."""
    os.makedirs(folder)
    paths = []
    for d, pred in zip(dicts, predictions):
        label_ids = np.zeros(pred.shape, np.uint8)
        for train_id in range(19):
            label_ids[pred == train_id] = trainId2label[train_id].id
        name = os.path.basename(d["file_name"]).replace("leftImg8bit", "prediction")
        paths.append(os.path.join(folder, name))
        Image.fromarray(label_ids).save(paths[-1])
    return paths


OFFICIAL_SCRIPT = (
    "import runpy, numpy as np\n"
    "if not hasattr(np, 'in1d'):  # cityscapesscripts 2.3.0 still calls it; NumPy 2.4 removed it\n"
    "    np.in1d = lambda a, b: np.isin(a, b).ravel()\n"
    "runpy.run_module('cityscapesscripts.evaluation.evalPixelLevelSemanticLabeling', "
    "run_name='__main__')\n"
)


def run_official_script(cs: str, results: str, export: str) -> dict:
    """``python -m cityscapesscripts.evaluation.evalPixelLevelSemanticLabeling`` on gtFine/val."""
    os.makedirs(export)
    env = dict(os.environ, CITYSCAPES_DATASET=cs, CITYSCAPES_RESULTS=results)
    env["CITYSCAPES_EXPORT_DIR"] = export
    run_command([sys.executable, "-c", OFFICIAL_SCRIPT], env=env, check=True)
    with open(os.path.join(export, "resultPixelLevelSemanticLabeling.json")) as f:
        return json.load(f)


def test_official_evaluator_matches_cityscapesscripts(prepared, fixture_val, tmp_path):
    _, cs, _ = prepared
    name, dicts = fixture_val
    predictions = [partly_right(d, seed) for seed, d in enumerate(dicts)]
    numpy_had_in1d = hasattr(np, "in1d")
    ours = run_evaluator(CityscapesOfficialSemSegEvaluator(name), dicts, predictions)
    ours = ours["sem_seg_cityscapes"]
    assert hasattr(np, "in1d") == numpy_had_in1d  # the evaluation leaves NumPy as it was
    write_reference_predictions(str(tmp_path / "results"), dicts, predictions)
    official = run_official_script(cs, str(tmp_path / "results"), str(tmp_path / "export"))
    assert 20 < ours["IoU"] < 95  # partly right
    assert ours["IoU"] == pytest.approx(100 * official["averageScoreClasses"], abs=1e-9)
    assert ours["iIoU"] == pytest.approx(100 * official["averageScoreInstClasses"], abs=1e-9)
    assert ours["IoU_sup"] == pytest.approx(100 * official["averageScoreCategories"], abs=1e-9)
    assert ours["IoU-car"] == pytest.approx(100 * official["classScores"]["car"], abs=1e-9)


def test_official_evaluator_scores_only_the_images_it_was_given(fixture_val, tmp_path):
    from cityscapesscripts.evaluation import evalPixelLevelSemanticLabeling as cs_eval

    name, dicts = fixture_val
    predictions = [partly_right(d, seed) for seed, d in enumerate(dicts)]
    evaluator = CityscapesOfficialSemSegEvaluator(name)
    subset = run_evaluator(evaluator, dicts[:3], predictions[:3])["sem_seg_cityscapes"]
    everything = run_evaluator(evaluator, dicts, predictions)["sem_seg_cityscapes"]
    assert subset["IoU"] != pytest.approx(everything["IoU"])

    # the reference: cityscapesscripts' evaluateImgLists on exactly these three pairs
    preds = write_reference_predictions(str(tmp_path / "results"), dicts[:3], predictions[:3])
    gts = [d["sem_seg_file_name"].replace("labelTrainIds", "labelIds") for d in dicts[:3]]
    args = copy.copy(cs_eval.args)
    args.evalInstLevelScore, args.JSONOutput, args.quiet = False, False, True
    reference = cs_eval.evaluateImgLists(preds, gts, args)
    assert subset["IoU"] == pytest.approx(100 * reference["averageScoreClasses"], abs=1e-9)


def test_official_evaluator_reports_missing_ground_truth_and_cleans_up(fixture_val, tmp_path):
    name, dicts = fixture_val
    other = "pointrend_sem_test_cityscapes_no_ground_truth"
    MetadataCatalog.get(other).set(gt_dir=str(tmp_path / "gtFine" / "val"))
    evaluator = CityscapesOfficialSemSegEvaluator(other)
    with pytest.raises(FileNotFoundError, match="gtFine_trainvaltest.zip"):
        run_evaluator(evaluator, dicts[:1], [partly_right(dicts[0], 0)])
    assert not os.path.exists(evaluator._temp_dir)


def test_cityscapes_evaluators_of_val_run_together(fixture_val, tmp_path):
    name, dicts = fixture_val
    evaluators = build_cityscapes_evaluators(name, str(tmp_path))
    assert [type(e) for e in evaluators] == [
        KeyedSemSegEvaluator,
        CityscapesOfficialSemSegEvaluator,
    ]
    # Wrong classes that the ground truth has: detectron2's mIoU leaves out the classes absent
    # from the ground truth, the official IoU counts them as 0 when predicted.
    present = [0, 1, 2, 8, 10, 11, 13]
    predictions = [partly_right(d, seed, present) for seed, d in enumerate(dicts)]
    results = run_evaluator(DatasetEvaluators(evaluators), dicts, predictions)
    assert set(results) == {"sem_seg", "sem_seg_cityscapes"}
    assert results["sem_seg"]["mIoU"] < 95
    # one confusion matrix, two implementations
    assert results["sem_seg"]["mIoU"] == pytest.approx(results["sem_seg_cityscapes"]["IoU"])


def test_submission_writer_files(prepared, tmp_path):
    from cityscapesscripts.evaluation import evalPixelLevelSemanticLabeling as cs_eval

    _, cs, _ = prepared
    dicts = load_cityscapes_semantic(*split_dirs(cs, "test"))
    evaluators = build_cityscapes_evaluators("cityscapes_fine_sem_seg_test", str(tmp_path))
    assert [type(e) for e in evaluators] == [CityscapesSubmissionWriter]
    rng = np.random.default_rng(0)
    predictions = [rng.integers(0, 19, (H, W)) for _ in dicts]
    assert run_evaluator(evaluators[0], dicts, predictions) == {}

    folder = str(tmp_path / "cityscapes_submission")
    assert sorted(os.listdir(folder)) == sorted(os.path.basename(d["file_name"]) for d in dicts)
    server_args = copy.copy(cs_eval.args)  # the benchmark's matching of predictions to images
    server_args.predictionPath, server_args.predictionWalk = folder, None
    for d, pred in zip(dicts, predictions):
        gt = d["sem_seg_file_name"].replace("labelTrainIds", "labelIds")
        found = cs_eval.getPrediction(server_args, gt)
        assert os.path.basename(found) == os.path.basename(d["file_name"])
        info = getCsFileInfo(found)
        assert (info.city, info.type) == (os.path.basename(os.path.dirname(gt)), "leftImg8bit")
        label_ids = np.asarray(Image.open(found))
        assert label_ids.dtype == np.uint8 and label_ids.shape == (H, W)
        assert np.array_equal(label_ids, np.vectorize(lambda t: trainId2label[t].id)(pred))


def test_train_ids_to_label_ids():
    train_ids = np.array([[0, 1, 10, 13], [18, 255, 19, 7]])
    assert train_ids_to_label_ids(train_ids).tolist() == [[7, 8, 23, 26], [33, 0, 0, 20]]


def test_cityscapes_image_id():
    path = "/x/leftImg8bit/val/frankfurt/frankfurt_000000_000294_leftImg8bit.png"
    assert cityscapes_image_id(path) == ("frankfurt", "frankfurt_000000_000294")
    with pytest.raises(ValueError):
        cityscapes_image_id("/x/frankfurt_000000_000294.png")


@pytest.mark.slow
def test_train_net_trains_and_evaluates_on_cityscapes(prepared, tmp_path):
    """The Cityscapes recipe through train_net.py on the prepared fixture, a small model, with
    detectron2's mIoU and the official evaluation."""
    root, _, _ = prepared
    output = tiny_train_net("configs/cityscapes_r50.yaml", root, tmp_path / "out")
    assert "cityscapes_fine_sem_seg_val" in output
    assert "IoU-road" in output and "IoU-bicycle" in output
    assert "sem_seg_cityscapes" in output
