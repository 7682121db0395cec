"""Pascal-Context (VOC 2010 images with full-scene labels).

Accepted layout (the converted form most tools use):
VOCdevkit/VOC2010/{JPEGImages/*.jpg, SegmentationClassContext/*.png,
ImageSets/SegmentationContext/{train,val}.txt}; --source may point at VOC2010, VOCdevkit or the
folder above it. Label PNGs hold 0 = background and 1..59 = the 59 classes.

- 59 classes (default, the reference toolbox's setting): background 0 -> 255 (ignore), k -> k-1.
- 60 classes (--num-classes 60, the paper's setting): background kept as class 0.
"""

from __future__ import annotations

from pathlib import Path

from pipeline.data.formats.common import (
    MASK_PNG,
    DatasetPlan,
    LabelMapping,
    SampleSpec,
    SplitPlan,
    first_existing_root,
    read_id_list,
    voc_palette,
)
from pipeline.data.shards import DatasetError

CONTEXT_59_CLASS_NAMES = (
    "aeroplane", "bag", "bed", "bedclothes", "bench", "bicycle", "bird", "boat", "book",
    "bottle", "building", "bus", "cabinet", "car", "cat", "ceiling", "chair", "cloth",
    "computer", "cow", "cup", "curtain", "dog", "door", "fence", "floor", "flower", "food",
    "grass", "ground", "horse", "keyboard", "light", "motorbike", "mountain", "mouse", "person",
    "plate", "platform", "pottedplant", "road", "rock", "sheep", "shelves", "sidewalk", "sign",
    "sky", "snow", "sofa", "table", "track", "train", "tree", "truck", "tvmonitor", "wall",
    "water", "window", "wood",
)  # fmt: skip
CONTEXT_60_CLASS_NAMES = ("background", *CONTEXT_59_CLASS_NAMES)
CONTEXT_60_PALETTE = voc_palette(60)
CONTEXT_59_PALETTE = CONTEXT_60_PALETTE[1:]


def plan_pascal_context(source: str | Path, num_classes: int = 59) -> DatasetPlan:
    if num_classes not in (59, 60):
        raise DatasetError(
            f"Pascal-Context --num-classes {num_classes}: use 59 (background ignored) or 60"
        )
    root = first_existing_root(
        source,
        ["", "VOC2010", "VOCdevkit/VOC2010"],
        ["JPEGImages", "SegmentationClassContext", "ImageSets/SegmentationContext"],
        "Pascal-Context (VOCdevkit/VOC2010 with SegmentationClassContext)",
    )
    if num_classes == 59:
        mapping = LabelMapping.reduce_zero_label(59)
        names, palette = CONTEXT_59_CLASS_NAMES, CONTEXT_59_PALETTE
    else:
        mapping = LabelMapping.identity(60)
        names, palette = CONTEXT_60_CLASS_NAMES, CONTEXT_60_PALETTE
    lists = root / "ImageSets" / "SegmentationContext"
    splits = {}
    for split in ("train", "val"):
        ids = read_id_list(lists / f"{split}.txt")
        samples = tuple(
            SampleSpec(
                split,
                sample_id,
                str(root / "JPEGImages" / f"{sample_id}.jpg"),
                str(root / "SegmentationClassContext" / f"{sample_id}.png"),
                MASK_PNG,
                mapping,
            )
            for sample_id in ids
        )
        splits[split] = SplitPlan(samples, str(lists / f"{split}.txt"))
    converter = {"name": "pascal_context", "source": str(root), "num_classes": num_classes}
    return DatasetPlan(f"pascal_context_{num_classes}", names, palette, splits, converter)
