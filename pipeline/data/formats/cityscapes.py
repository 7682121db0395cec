"""Cityscapes (fine annotations).

Accepted layout (as downloaded): leftImg8bit/{train,val,test}/<city>/*_leftImg8bit.png and
gtFine/{train,val,test}/<city>/*_gtFine_labelIds.png; --source may point at the folder holding
both or the folder above it (cityscapes/). labelIds (0..33) map to the 19 train ids; every other
id becomes 255. The public test split has no usable labels, so it is left out unless
`include_test` is set (its masks then come out almost all 255).
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
)

CITYSCAPES_CLASS_NAMES = (
    "road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign",
    "vegetation", "terrain", "sky", "person", "rider", "car", "truck", "bus", "train",
    "motorcycle", "bicycle",
)  # fmt: skip
CITYSCAPES_PALETTE = (
    (128, 64, 128), (244, 35, 232), (70, 70, 70), (102, 102, 156), (190, 153, 153),
    (153, 153, 153), (250, 170, 30), (220, 220, 0), (107, 142, 35), (152, 251, 152),
    (70, 130, 180), (220, 20, 60), (255, 0, 0), (0, 0, 142), (0, 0, 70), (0, 60, 100),
    (0, 80, 100), (0, 0, 230), (119, 11, 32),
)  # fmt: skip
# labelId -> train id for the 19 evaluated classes, in train-id order.
LABEL_ID_TO_TRAIN_ID = {
    label_id: train_id
    for train_id, label_id in enumerate(
        (7, 8, 11, 12, 13, 17, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 31, 32, 33)
    )
}
_LABEL_IDS = range(34)  # 0..33 are defined labelIds; anything else but 255 is an error
_IMAGE_SUFFIX = "_leftImg8bit.png"
_MASK_SUFFIX = "_gtFine_labelIds.png"


def plan_cityscapes(source: str | Path, include_test: bool = False) -> DatasetPlan:
    root = first_existing_root(
        source, ["", "cityscapes"], ["leftImg8bit", "gtFine"], "Cityscapes (leftImg8bit, gtFine)"
    )
    mapping = LabelMapping.from_pairs(LABEL_ID_TO_TRAIN_ID, 19, _LABEL_IDS)
    split_names = ("train", "val", "test") if include_test else ("train", "val")
    splits = {}
    for split in split_names:
        image_folder = root / "leftImg8bit" / split
        images = sorted(image_folder.glob(f"*/*{_IMAGE_SUFFIX}")) if image_folder.is_dir() else []
        samples = []
        for image in images:
            stem = image.name[: -len(_IMAGE_SUFFIX)]
            city = image.parent.name
            mask = root / "gtFine" / split / city / f"{stem}{_MASK_SUFFIX}"
            samples.append(SampleSpec(split, stem, str(image), str(mask), MASK_PNG, mapping))
        splits[split] = SplitPlan(tuple(samples), str(image_folder))
    converter = {"name": "cityscapes", "source": str(root), "include_test": include_test}
    return DatasetPlan("cityscapes", CITYSCAPES_CLASS_NAMES, CITYSCAPES_PALETTE, splits, converter)
