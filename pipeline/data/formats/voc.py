"""PASCAL VOC 2012 (+ SBD for train_aug).

Accepted layout (as downloaded): VOCdevkit/VOC2012/{JPEGImages/*.jpg,
SegmentationClass/*.png, ImageSets/Segmentation/{train,val}.txt}; --source may point at
VOC2012, VOCdevkit or the folder above it. SegmentationClass PNGs are palette PNGs whose pixel
values are the class indices (255 = border/ignore); an RGB mask is an error.

SBD (--sbd): benchmark_RELEASE/dataset/{img/*.jpg, cls/*.mat, train.txt, val.txt}; --sbd may
point at benchmark_RELEASE or its dataset/ folder. train_aug = SBD train + SBD val + VOC train,
minus VOC val; ids in VOC train use the VOC PNG mask, SBD-only ids the .mat mask.
"""

from __future__ import annotations

from pathlib import Path

from pipeline.data.formats.common import (
    MASK_PNG,
    MASK_SBD_MAT,
    DatasetPlan,
    LabelMapping,
    SampleSpec,
    SplitPlan,
    first_existing_root,
    read_id_list,
    voc_palette,
)

VOC_CLASS_NAMES = (
    "background",
    "aeroplane",
    "bicycle",
    "bird",
    "boat",
    "bottle",
    "bus",
    "car",
    "cat",
    "chair",
    "cow",
    "diningtable",
    "dog",
    "horse",
    "motorbike",
    "person",
    "pottedplant",
    "sheep",
    "sofa",
    "train",
    "tvmonitor",
)
VOC_PALETTE = voc_palette(len(VOC_CLASS_NAMES))
_VOC_REQUIRED = ["JPEGImages", "SegmentationClass", "ImageSets/Segmentation"]
_SBD_REQUIRED = ["img", "cls", "train.txt", "val.txt"]


def find_voc_root(source: str | Path) -> Path:
    return first_existing_root(
        source,
        ["", "VOC2012", "VOCdevkit/VOC2012"],
        _VOC_REQUIRED,
        "VOC 2012 (VOCdevkit/VOC2012)",
    )


def find_sbd_root(sbd: str | Path) -> Path:
    return first_existing_root(
        sbd,
        ["", "dataset", "benchmark_RELEASE/dataset"],
        _SBD_REQUIRED,
        "SBD (benchmark_RELEASE/dataset)",
    )


def plan_voc(source: str | Path, sbd: str | Path | None = None) -> DatasetPlan:
    """Plan the VOC train and val splits, and train_aug when `sbd` is given."""
    root = find_voc_root(source)
    mapping = LabelMapping.identity(len(VOC_CLASS_NAMES))
    lists = root / "ImageSets" / "Segmentation"

    def voc_sample(split: str, sample_id: str) -> SampleSpec:
        return SampleSpec(
            split,
            sample_id,
            str(root / "JPEGImages" / f"{sample_id}.jpg"),
            str(root / "SegmentationClass" / f"{sample_id}.png"),
            MASK_PNG,
            mapping,
        )

    ids = {split: read_id_list(lists / f"{split}.txt") for split in ("train", "val")}
    splits = {
        split: SplitPlan(
            tuple(voc_sample(split, i) for i in split_ids), str(lists / f"{split}.txt")
        )
        for split, split_ids in ids.items()
    }
    converter: dict = {"name": "voc", "source": str(root)}
    if sbd is not None:
        sbd_root = find_sbd_root(sbd)
        converter["sbd"] = str(sbd_root)
        voc_train = set(ids["train"])
        sbd_ids = read_id_list(sbd_root / "train.txt") + read_id_list(sbd_root / "val.txt")
        aug_ids = sorted((set(sbd_ids) | voc_train) - set(ids["val"]))
        samples = []
        for sample_id in aug_ids:
            if sample_id in voc_train:
                samples.append(voc_sample("train_aug", sample_id))
            else:
                samples.append(
                    SampleSpec(
                        "train_aug",
                        sample_id,
                        str(sbd_root / "img" / f"{sample_id}.jpg"),
                        str(sbd_root / "cls" / f"{sample_id}.mat"),
                        MASK_SBD_MAT,
                        mapping,
                    )
                )
        origin = f"{sbd_root}/{{train,val}}.txt + {lists}/train.txt - val.txt"
        splits["train_aug"] = SplitPlan(tuple(samples), origin)
    return DatasetPlan("voc2012", VOC_CLASS_NAMES, VOC_PALETTE, splits, converter)
