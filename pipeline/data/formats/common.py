"""What every converter shares: the plan it produces, label mappings, palettes, file lookups.

A converter only reads a raw layout and returns a `DatasetPlan` (which file is which sample,
how to read its mask); `pipeline.data.formats.writing` turns any plan into shards.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pipeline.data.shards import SPLITS, DatasetError, SkippedSample

IGNORE_INDEX = 255
INVALID = -1  # in a label table: this raw value is not allowed in a mask

MASK_PNG = "png"  # single-channel or palette PNG whose values are label ids
MASK_SBD_MAT = "sbd_mat"  # SBD .mat file holding struct GTcls with field Segmentation
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


@dataclass(frozen=True)
class LabelMapping:
    """How raw mask values become stored class indices.

    `table[raw]` is the stored index (0..num_classes-1 or 255 = ignore) or INVALID when `raw`
    must not occur. 256 entries, since masks are 8-bit.
    """

    table: tuple[int, ...]
    num_classes: int

    @staticmethod
    def identity(num_classes: int) -> LabelMapping:
        """Values 0..num_classes-1 are classes, 255 is ignore, anything else is an error."""
        table = [INVALID] * 256
        for value in range(num_classes):
            table[value] = value
        table[IGNORE_INDEX] = IGNORE_INDEX
        return LabelMapping(tuple(table), num_classes)

    @staticmethod
    def reduce_zero_label(num_classes: int) -> LabelMapping:
        """Raw 0 ("other"/background) -> 255 and k -> k-1 for k in 1..num_classes; 255 stays."""
        table = [INVALID] * 256
        table[0] = IGNORE_INDEX
        for value in range(1, num_classes + 1):
            table[value] = value - 1
        table[IGNORE_INDEX] = IGNORE_INDEX
        return LabelMapping(tuple(table), num_classes)

    @staticmethod
    def from_pairs(pairs: dict[int, int], num_classes: int, known_raw: range) -> LabelMapping:
        """Raw values in `known_raw` map through `pairs` or to 255; 255 stays; others error."""
        table = [INVALID] * 256
        for value in known_raw:
            table[value] = pairs.get(value, IGNORE_INDEX)
        table[IGNORE_INDEX] = IGNORE_INDEX
        return LabelMapping(tuple(table), num_classes)

    def apply(self, raw: np.ndarray) -> np.ndarray:
        """Map a (H, W) uint8 raw mask to a (H, W) uint8 class-index mask.

        Raises ValueError listing the raw values that are neither a class nor 255.
        """
        lookup = np.asarray(self.table, dtype=np.int16)
        mapped = lookup[raw]
        if (mapped == INVALID).any():
            bad = np.unique(raw[mapped == INVALID])
            shown = ", ".join(str(int(v)) for v in bad[:10])
            raise ValueError(
                f"mask values {shown} are neither a class index (0..{self.num_classes - 1} "
                f"after mapping) nor {IGNORE_INDEX} (ignore)"
            )
        return mapped.astype(np.uint8)


@dataclass(frozen=True)
class SampleSpec:
    """One raw sample: where its files are and how to read its mask."""

    split: str
    id: str
    image_file: str
    mask_file: str
    mask_format: str  # MASK_PNG or MASK_SBD_MAT
    mapping: LabelMapping


@dataclass(frozen=True)
class SplitPlan:
    """The samples of one split in the order they are written, and where the list came from."""

    samples: tuple[SampleSpec, ...]
    origin: str  # the split list file or folder, for error messages


@dataclass(frozen=True)
class DatasetPlan:
    dataset: str
    class_names: tuple[str, ...]
    palette: tuple[tuple[int, int, int], ...]
    splits: dict[str, SplitPlan]
    converter: dict = field(default_factory=dict)


def voc_palette(count: int) -> tuple[tuple[int, int, int], ...]:
    """The PASCAL VOC colour map: the bits of a class index spread over R, G and B."""
    colors = []
    for index in range(count):
        red = green = blue = 0
        value = index
        for shift in range(7, -1, -1):
            red |= ((value >> 0) & 1) << shift
            green |= ((value >> 1) & 1) << shift
            blue |= ((value >> 2) & 1) << shift
            value >>= 3
        colors.append((red, green, blue))
    return tuple(colors)


def first_existing_root(
    source: str | os.PathLike, candidates: list[str], required: list[str], what: str
) -> Path:
    """The first of `source/<candidate>` that holds every `required` entry.

    Lets users point --source at the folder they downloaded or at any folder above it.
    """
    base = Path(source).expanduser().resolve()
    if not base.exists():
        raise DatasetError(f"source {base} does not exist; pass the folder holding {what}")
    for candidate in candidates:
        root = base / candidate if candidate else base
        if all((root / entry).exists() for entry in required):
            return root
    tried = ", ".join(str(base / c) if c else str(base) for c in candidates)
    raise DatasetError(
        f"no {what} found under {base}: expected {', '.join(required)} in one of: {tried}"
    )


def read_id_list(path: Path) -> list[str]:
    """Ids one per line (blank lines ignored); a missing list is an error naming it."""
    if not path.is_file():
        raise DatasetError(f"split list {path} is missing; it lists the sample ids of a split")
    return [line.split()[0] for line in path.read_text().splitlines() if line.strip()]


def check_split_name(split: str, origin: str) -> str:
    if split not in SPLITS:
        raise DatasetError(f"{origin}: unknown split {split!r}; use one of {', '.join(SPLITS)}")
    return split


def find_duplicates(plan: DatasetPlan) -> tuple[DatasetPlan, list[SkippedSample]]:
    """Drop samples whose id repeats within a split, keeping the first; report the rest."""
    problems: list[SkippedSample] = []
    splits = {}
    for name, split in plan.splits.items():
        seen: dict[str, SampleSpec] = {}
        kept = []
        for spec in split.samples:
            if spec.id in seen:
                first = seen[spec.id]
                problems.append(
                    SkippedSample(
                        name,
                        spec.id,
                        spec.image_file,
                        f"duplicate id {spec.id!r} in split {name} (also {first.image_file})",
                    )
                )
                continue
            seen[spec.id] = spec
            kept.append(spec)
        splits[name] = SplitPlan(tuple(kept), split.origin)
    return DatasetPlan(
        plan.dataset, plan.class_names, plan.palette, splits, plan.converter
    ), problems
