"""ADE20K scene parsing (ADEChallengeData2016).

Accepted layout (as downloaded): ADEChallengeData2016/{images,annotations}/{training,validation}/
with ADE_*.jpg images and same-stem .png annotations; --source may point at
ADEChallengeData2016 or the folder above it. Annotations hold 0 = other and 1..150 = classes;
"reduce zero label" stores 0 as 255 (ignore) and k as k-1.
"""

from __future__ import annotations

from pathlib import Path

from pipeline.data.formats.common import (
    IMAGE_SUFFIXES,
    MASK_PNG,
    DatasetPlan,
    LabelMapping,
    SampleSpec,
    SplitPlan,
    first_existing_root,
    voc_palette,
)

# The 150 SceneParsing classes in label order (label k+1 in the raw annotations).
ADE20K_CLASS_NAMES = (
    "wall", "building", "sky", "floor", "tree", "ceiling", "road", "bed", "windowpane",
    "grass", "cabinet", "sidewalk", "person", "earth", "door", "table", "mountain", "plant",
    "curtain", "chair", "car", "water", "painting", "sofa", "shelf", "house", "sea", "mirror",
    "rug", "field", "armchair", "seat", "fence", "desk", "rock", "wardrobe", "lamp", "bathtub",
    "railing", "cushion", "base", "box", "column", "signboard", "chest of drawers", "counter",
    "sand", "sink", "skyscraper", "fireplace", "refrigerator", "grandstand", "path", "stairs",
    "runway", "case", "pool table", "pillow", "screen door", "stairway", "river", "bridge",
    "bookcase", "blind", "coffee table", "toilet", "flower", "book", "hill", "bench",
    "countertop", "stove", "palm", "kitchen island", "computer", "swivel chair", "boat", "bar",
    "arcade machine", "hovel", "bus", "towel", "light", "truck", "tower", "chandelier",
    "awning", "streetlight", "booth", "television receiver", "airplane", "dirt track",
    "apparel", "pole", "land", "bannister", "escalator", "ottoman", "bottle", "buffet",
    "poster", "stage", "van", "ship", "fountain", "conveyer belt", "canopy", "washer",
    "plaything", "swimming pool", "stool", "barrel", "basket", "waterfall", "tent", "bag",
    "minibike", "cradle", "oven", "ball", "food", "step", "tank", "trade name", "microwave",
    "pot", "animal", "bicycle", "lake", "dishwasher", "screen", "blanket", "sculpture", "hood",
    "sconce", "vase", "traffic light", "tray", "ashcan", "fan", "pier", "crt screen", "plate",
    "monitor", "bulletin board", "shower", "radiator", "glass", "clock", "flag",
)  # fmt: skip
# Our own palette: the VOC bit-spread colour map, skipping black (index 0) for readability.
ADE20K_PALETTE = voc_palette(len(ADE20K_CLASS_NAMES) + 1)[1:]
_SPLIT_FOLDERS = {"train": "training", "val": "validation"}


def plan_ade20k(source: str | Path) -> DatasetPlan:
    root = first_existing_root(
        source,
        ["", "ADEChallengeData2016"],
        ["images/training", "images/validation", "annotations/training", "annotations/validation"],
        "ADE20K (ADEChallengeData2016)",
    )
    mapping = LabelMapping.reduce_zero_label(len(ADE20K_CLASS_NAMES))
    splits = {}
    for split, folder in _SPLIT_FOLDERS.items():
        image_folder = root / "images" / folder
        images = sorted(p for p in image_folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        samples = tuple(
            SampleSpec(
                split,
                image.stem,
                str(image),
                str(root / "annotations" / folder / f"{image.stem}.png"),
                MASK_PNG,
                mapping,
            )
            for image in images
        )
        splits[split] = SplitPlan(samples, str(image_folder))
    converter = {"name": "ade20k", "source": str(root), "reduce_zero_label": True}
    return DatasetPlan("ade20k", ADE20K_CLASS_NAMES, ADE20K_PALETTE, splits, converter)
