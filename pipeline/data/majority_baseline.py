"""The mIoU of predicting the most frequent class everywhere: the bar a trained model must clear.

Computed exactly from a split's label masks. Predicting class k everywhere gives IoU_k =
pixels of k / labelled pixels and IoU 0 for every other class present in the labels; classes
absent from the labels have zero union and drop out of the mean, as in `apcnet.metrics`.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from pipeline.data.shards import Manifest, read_shard_rows


def class_pixel_counts(manifest: Manifest, split: str) -> np.ndarray:
    """Labelled pixels per class over a split, shape (num_classes,), int64 (ignore excluded)."""
    counts = np.zeros(manifest.num_classes, dtype=np.int64)
    for uri in manifest.shard_uris(split):
        for row in read_shard_rows(uri):
            mask = np.asarray(Image.open(io.BytesIO(row.mask)))
            labels = mask[mask != manifest.ignore_index].astype(np.int64)
            counts += np.bincount(labels, minlength=manifest.num_classes)[: manifest.num_classes]
    return counts


def majority_class_miou(pixel_counts: np.ndarray) -> float:
    """mIoU of predicting argmax(pixel_counts) at every labelled pixel; nan without labels."""
    total = int(pixel_counts.sum())
    if total == 0:
        return float("nan")
    present = int((pixel_counts > 0).sum())
    return float(pixel_counts.max()) / total / present
