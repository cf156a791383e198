"""ADE20K (SceneParsing, 150 classes): metadata for detectron2's ``ade20k_sem_seg_{train,val}``.

detectron2 registers both splits (``ADEChallengeData2016/{images,annotations_detectron2}/
{training,validation}``, labels already shifted so that "other" is 255) with their class names;
importing this module adds what it lacks: the benchmark's colours and the command that makes
``annotations_detectron2`` from the official archive. The names are never registered again.
"""

from typing import List

from detectron2.data import MetadataCatalog

ADE20K_SPLITS = ("ade20k_sem_seg_train", "ade20k_sem_seg_val")
ADE20K_PREPARE_COMMAND = "python datasets/prepare_ade20k.py"

# The scene-parsing benchmark's 150-colour palette (CSAIL's color150), RGB, in class order
# ("wall" first); colour i belongs to class i of detectron2's ADE20K_SEM_SEG_CATEGORIES.
_ADE20K_PALETTE_HEX = (
    "787878 b47878 06e6e6 503232 04c803 787850 8c8c8c cc05ff e6e6e6 04fa07 "
    "e005ff ebff07 96053d 787846 08ff33 ff0652 8fff8c ccff04 ff3307 cc4603 "
    "0066c8 3de6fa ff0633 0b66ff ff0747 ff09e0 0907e6 dcdcdc ff095c 7009ff "
    "08ffd6 07ffe0 ffb806 0aff47 ff290a 07ffff e0ff08 6608ff ff3d06 ffc207 "
    "ff7a08 00ff14 ff0829 ff0599 0633ff eb0cff a09614 00a3ff 8c8c8c fa0a0f "
    "14ff00 1fff00 ff1f00 ffe000 99ff00 0000ff ff4700 00ebff 00adff 1f00ff "
    "0bc8c8 ff5200 00fff5 003dff 00ff70 00ff85 ff0000 ffa300 ff6600 c2ff00 "
    "008fff 33ff00 0052ff 00ff29 00ffad 0a00ff adff00 00ff99 ff5c00 ff00ff "
    "ff00f5 ff0066 ffad00 ff0014 ffb8b8 001fff 00ff3d 0047ff ff00cc 00ffc2 "
    "00ff52 000aff 0070ff 3300ff 00c2ff 007aff 00ffa3 ff9900 00ff0a ff7000 "
    "8fff00 5200ff a3ff00 ffeb00 08b8aa 8500ff 00ff5c b800ff ff001f 00b8ff "
    "00d6ff ff0070 5cff00 00e0ff 70e0ff 46b8a0 a300ff 9900ff 47ff00 ff00a3 "
    "ffcc00 ff008f 00ffeb 85ff00 ff00eb f500ff ff007a fff500 0abed4 d6ff00 "
    "00ccff 1400ff ffff00 0099ff 0029ff 00ffcc 2900ff 29ff00 ad00ff 00f5ff "
    "4700ff 7a00ff 00ffb8 005cff b8ff00 0085ff ffd600 19c2c2 66ff00 5c00ff"
)


def ade20k_colors() -> List[List[int]]:
    """The 150 class colours, ``[[R, G, B], ...]`` (0..255), in class order."""
    return [[int(c[i : i + 2], 16) for i in (0, 2, 4)] for c in _ADE20K_PALETTE_HEX.split()]


def _set_missing(dataset_name: str, **values) -> None:
    """Set the metadata keys of ``dataset_name`` that are not set yet; leave the others."""
    metadata = MetadataCatalog.get(dataset_name)
    metadata.set(**{k: v for k, v in values.items() if metadata.get(k) is None})


def add_ade20k_metadata() -> None:
    """Add ``stuff_colors`` and ``prepare_command`` to detectron2's ADE20K splits."""
    for name in ADE20K_SPLITS:
        _set_missing(name, stuff_colors=ade20k_colors(), prepare_command=ADE20K_PREPARE_COMMAND)


add_ade20k_metadata()
