"""A plain folder of images and class-index masks (your own data).

Accepted layout:

    <source>/images/<stem>.jpg|.jpeg|.png   every file here is a sample (hidden files ignored)
    <source>/masks/<stem>.png               single-channel or palette PNG, values = class index,
                                            255 = ignore
    <source>/classes.txt                    optional: one class name a line (else --num-classes)
    <source>/splits/<split>.txt             optional: stems one a line, split in train, val,
                                            train_aug, test

Without splits/, a seeded random `val_fraction` of the stems (at least one) becomes val and the
rest train.
"""

from __future__ import annotations

import random
from pathlib import Path

from pipeline.data.formats.common import (
    MASK_PNG,
    DatasetPlan,
    LabelMapping,
    SampleSpec,
    SplitPlan,
    check_split_name,
    read_id_list,
    voc_palette,
)
from pipeline.data.shards import DatasetError

DEFAULT_VAL_FRACTION = 0.1


def read_class_names(source: Path, num_classes: int | None) -> tuple[str, ...]:
    """Names from classes.txt, or class_0..class_{N-1} from `num_classes`; both must agree."""
    names_file = source / "classes.txt"
    if names_file.is_file():
        names = tuple(line.strip() for line in names_file.read_text().splitlines() if line.strip())
        if not names:
            raise DatasetError(f"{names_file} lists no class names; write one name a line")
        if num_classes is not None and num_classes != len(names):
            raise DatasetError(
                f"{names_file} lists {len(names)} classes but --num-classes is {num_classes}; "
                "drop --num-classes or fix the file"
            )
        return names
    if num_classes is None:
        raise DatasetError(
            f"{source} has no classes.txt; write one (one class name a line) or pass "
            "--num-classes N"
        )
    return tuple(f"class_{index}" for index in range(num_classes))


def plan_folder(
    source: str | Path,
    num_classes: int | None = None,
    val_fraction: float | None = None,
    seed: int = 0,
) -> DatasetPlan:
    root = Path(source).expanduser().resolve()
    image_folder, mask_folder = root / "images", root / "masks"
    for folder in (image_folder, mask_folder):
        if not folder.is_dir():
            raise DatasetError(f"{folder} is missing; a folder data set needs images/ and masks/")
    names = read_class_names(root, num_classes)
    if len(names) > 255:
        raise DatasetError(f"{len(names)} classes: at most 255 fit an 8-bit mask beside 255")
    mapping = LabelMapping.identity(len(names))
    images = sorted(p for p in image_folder.iterdir() if p.is_file() and not p.name.startswith("."))
    by_stem: dict[str, list[Path]] = {}
    for image in images:
        by_stem.setdefault(image.stem, []).append(image)

    def sample(split: str, stem: str, image: Path) -> SampleSpec:
        return SampleSpec(
            split, stem, str(image), str(mask_folder / f"{stem}.png"), MASK_PNG, mapping
        )

    def samples_for(split: str, stems: list[str]) -> tuple[SampleSpec, ...]:
        specs = []
        for stem in stems:
            # Several images with one stem are kept, so the duplicate check can name them.
            candidates = by_stem.get(stem) or [image_folder / f"{stem}.jpg"]
            specs.extend(sample(split, stem, image) for image in candidates)
        return tuple(specs)

    split_folder = root / "splits"
    converter: dict = {"name": "folder", "source": str(root), "num_classes": len(names)}
    splits = {}
    if split_folder.is_dir():
        for list_file in sorted(split_folder.glob("*.txt")):
            split = check_split_name(list_file.stem, str(list_file))
            splits[split] = SplitPlan(samples_for(split, read_id_list(list_file)), str(list_file))
        if not splits:
            raise DatasetError(
                f"{split_folder} holds no <split>.txt lists (e.g. train.txt, val.txt)"
            )
        converter["splits"] = "lists"
    else:
        fraction = DEFAULT_VAL_FRACTION if val_fraction is None else val_fraction
        if not 0 < fraction < 1:
            raise DatasetError(f"--val-fraction {fraction}: use a value between 0 and 1")
        stems = sorted(by_stem)
        shuffled = stems.copy()
        random.Random(seed).shuffle(shuffled)
        val_stems = set(shuffled[: max(1, round(len(stems) * fraction))]) if stems else set()
        splits["train"] = SplitPlan(
            samples_for("train", [s for s in stems if s not in val_stems]), str(image_folder)
        )
        splits["val"] = SplitPlan(
            samples_for("val", [s for s in stems if s in val_stems]), str(image_folder)
        )
        converter.update({"val_fraction": fraction, "seed": seed})
    return DatasetPlan(root.name or "folder", names, voc_palette(len(names)), splits, converter)
