"""Cityscapes (fine, 19 classes): metadata for detectron2's ``cityscapes_fine_sem_seg_*``.

detectron2 registers the train / val / test splits (``cityscapes/{leftImg8bit,gtFine}/<split>/
<city>/``, reading ``*_gtFine_labelTrainIds.png``; ``evaluator_type`` "cityscapes_sem_seg") with
class names but no colours; importing this module adds the trainId colours of
``cityscapesscripts`` and the command that makes the ``labelTrainIds`` files. The names are never
registered again.
"""

from typing import List

from detectron2.data import MetadataCatalog

CITYSCAPES_SPLITS = (
    "cityscapes_fine_sem_seg_train",
    "cityscapes_fine_sem_seg_val",
    "cityscapes_fine_sem_seg_test",
)
CITYSCAPES_PREPARE_COMMAND = "python datasets/prepare_cityscapes.py"
NUM_CITYSCAPES_CLASSES = 19


def cityscapes_colors() -> List[List[int]]:
    """The 19 trainId colours of ``cityscapesscripts``, ``[[R, G, B], ...]``, trainId order."""
    from cityscapesscripts.helpers.labels import trainId2label

    return [list(trainId2label[i].color) for i in range(NUM_CITYSCAPES_CLASSES)]


def _set_missing(dataset_name: str, **values) -> None:
    """Set the metadata keys of ``dataset_name`` that are not set yet; leave the others."""
    metadata = MetadataCatalog.get(dataset_name)
    metadata.set(**{k: v for k, v in values.items() if metadata.get(k) is None})


def add_cityscapes_metadata() -> None:
    """Add ``stuff_colors`` and ``prepare_command`` to detectron2's Cityscapes semantic splits."""
    for name in CITYSCAPES_SPLITS:
        _set_missing(
            name, stuff_colors=cityscapes_colors(), prepare_command=CITYSCAPES_PREPARE_COMMAND
        )


add_cityscapes_metadata()
