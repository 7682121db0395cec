"""Exact split metrics: per-image intersection / union / confusion counts, summed.

Two ways to get the same numbers, count for count: `count_split_distributed` runs the model on
a Ray Data actor pool (one model per actor) whose actors return per-image count rows, summed on
the driver; `evaluate_locally` is the plain single-process loop used as its reference.
"""

from __future__ import annotations

import gc
import os
import socket
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from apcnet.metrics import (
    SegmentationScores,
    confusion_matrix,
    intersection_union_from_confusion,
    scores_from_counts,
)
from pipeline.data.transforms import normalize
from pipeline.evaluate.actor_pool import ActorPoolPlan, prepare_actor_model
from pipeline.evaluate.testtime import TestTimeOptions, predict_label_map

# How long the evaluation actor pool may take to start (load the model on every actor).
POOL_START_TIMEOUT_S = 600


@dataclass(frozen=True)
class EvalSample:
    """One labelled image: image float32 (3, H, W) normalised, mask int64 (H, W)."""

    id: str
    image: np.ndarray
    mask: np.ndarray


@dataclass
class SplitCounts:
    """Counts summed over a split.

    intersection_union: int64 (3, C), rows [intersection, union, label area].
    confusion: int64 (C, C), rows ground truth, columns prediction (labelled pixels only).
    image_ids: the images counted, each once.
    per_image: image id -> that image's int64 (3, C) counts, when asked for (`empty(...,
    per_image=True)`); otherwise None, so that a split of any length costs the driver its
    image ids and nothing more (20,210 images of 150 classes would otherwise hold 73 MB).
    workers: ids of the processes that counted (one per actor that received work).
    """

    intersection_union: np.ndarray
    confusion: np.ndarray
    image_ids: set[str] = field(default_factory=set)
    per_image: dict[str, np.ndarray] | None = None
    workers: set[str] = field(default_factory=set)

    @classmethod
    def empty(cls, num_classes: int, *, per_image: bool = False) -> SplitCounts:
        return cls(
            np.zeros((3, num_classes), dtype=np.int64),
            np.zeros((num_classes, num_classes), dtype=np.int64),
            per_image={} if per_image else None,
        )

    @property
    def num_images(self) -> int:
        return len(self.image_ids)

    @property
    def labelled_pixels(self) -> int:
        return int(self.intersection_union[2].sum())

    def add(self, image_id: str, counts: np.ndarray, confusion: np.ndarray) -> None:
        """Add one image's (3, C) counts and (C, C) confusion; each image id at most once."""
        if image_id in self.image_ids:
            raise ValueError(f"image {image_id!r} was counted twice: sample ids must be unique")
        self.image_ids.add(image_id)
        if self.per_image is not None:
            self.per_image[image_id] = np.array(counts, dtype=np.int64)
        self.intersection_union += counts
        self.confusion += confusion

    def scores(self) -> SegmentationScores:
        """mIoU, pixel accuracy and per-class IoU from the summed counts (REFERENCE.md)."""
        return scores_from_counts(torch.from_numpy(self.intersection_union))


def image_counts(
    prediction: np.ndarray, target: np.ndarray, num_classes: int, ignore_index: int
) -> tuple[np.ndarray, np.ndarray]:
    """One image's counts over pixels whose label is not `ignore_index`.

    prediction, target: integer (H, W). Returns int64 (3, C) [intersection, union, label area]
    and int64 (C, C) confusion (rows ground truth, columns prediction).
    """
    # Copies: arrays handed over by Ray Data are read-only views of Arrow memory.
    predicted = torch.from_numpy(np.array(prediction, dtype=np.int64))
    labels = torch.from_numpy(np.array(target, dtype=np.int64))
    confusion = confusion_matrix(predicted, labels, num_classes, ignore_index)
    counts = torch.stack(intersection_union_from_confusion(confusion))
    return counts.numpy(), confusion.numpy()


def evaluate_locally(
    model: nn.Module,
    samples: Iterable[EvalSample],
    options: TestTimeOptions,
    num_classes: int,
    ignore_index: int = 255,
) -> SplitCounts:
    """The single-process reference: predict every sample in turn and sum its counts (and
    keep each image's)."""
    model = model.eval()
    totals = SplitCounts.empty(num_classes, per_image=True)
    for sample in samples:
        prediction = predict_label_map(model, sample.image, options)
        totals.add(sample.id, *image_counts(prediction, sample.mask, num_classes, ignore_index))
    return totals


class SplitCounter:
    """Ray Data actor: one model per actor; a batch of samples in, per-image count rows out.

    Input batch columns (as `pipeline.data.ingest.eval_dataset` gives them): id, image (uint8
    (H, W, 3) each), mask (uint8 (H, W) each). The images are normalised here with
    `normalize`, the function `evaluate_locally`'s samples went through, so both count the
    same pixels the same way. Output columns: id, counts int64 (B, 3, C), confusion int64
    (B, C, C), worker (this actor's process). Images are never sent back: only counts travel
    to the driver.
    """

    def __init__(
        self,
        model: nn.Module | object,
        options: TestTimeOptions,
        mean: tuple[float, float, float],
        std: tuple[float, float, float],
        num_classes: int,
        ignore_index: int,
        torch_threads: int,
    ) -> None:
        self.model = prepare_actor_model(model, torch_threads)
        self.options = options
        self.mean, self.std = mean, std
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.worker = f"{socket.gethostname()}:{os.getpid()}"

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        all_counts, all_confusions = [], []
        for pixels, mask in zip(batch["image"], batch["mask"], strict=True):
            image = normalize(np.asarray(pixels), self.mean, self.std)
            prediction = predict_label_map(self.model, image, self.options)
            counts, confusion = image_counts(prediction, mask, self.num_classes, self.ignore_index)
            all_counts.append(counts)
            all_confusions.append(confusion)
        return {
            "id": np.asarray(batch["id"]),
            "counts": np.stack(all_counts),
            "confusion": np.stack(all_confusions),
            "worker": np.asarray([self.worker] * len(all_counts)),
        }


def count_split_distributed(
    model: nn.Module,
    dataset,
    options: TestTimeOptions,
    num_classes: int,
    ignore_index: int,
    pool: ActorPoolPlan,
    batch_size: int = 1,
    total_images: int | None = None,
    *,
    mean: Sequence[float],
    std: Sequence[float],
) -> SplitCounts:
    """Counts over a Ray Dataset of samples (columns id, image uint8 (H, W, 3), mask uint8
    (H, W): `pipeline.data.ingest.eval_dataset`), each image normalised with the model's
    `mean` / `std`, computed on an actor pool of `pool.actors` model actors and summed on the
    driver, with a progress bar over the images (of `total_images`, when known) on the
    driver's console."""
    import ray

    from pipeline.console.progress import progress_over

    model_ref = ray.put(model.cpu().eval())
    # Blocks of `batch_size` rows (streaming, no shuffle): a block goes to one actor, so small
    # blocks spread the split over the whole pool.
    samples = dataset.select_columns(["id", "image", "mask"])
    samples = samples.repartition(target_num_rows_per_block=batch_size)
    counted = samples.map_batches(
        SplitCounter,
        fn_constructor_kwargs={
            "model": model_ref,
            "options": options,
            "mean": tuple(mean),
            "std": tuple(std),
            "num_classes": num_classes,
            "ignore_index": ignore_index,
            "torch_threads": pool.torch_threads,
        },
        batch_size=batch_size,
        batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=pool.actors),
        num_cpus=pool.num_cpus,
        num_gpus=pool.num_gpus or None,
    )
    # Dispatch once the whole pool is up. By default Ray Data starts its actors
    # asynchronously and feeds the first ready one, which can take a small split alone
    # (seen: one of two actors counted all 5 images once decoding got faster); waiting also
    # turns a pool that cannot be placed into an error instead of a hang.
    counted.context.wait_for_min_actors_s = POOL_START_TIMEOUT_S
    totals = SplitCounts.empty(num_classes)
    # Blocks as the actors finish them (`batch_size=None`), so the bar moves with each one.
    batches = counted.iter_batches(batch_format="numpy", batch_size=None)
    try:
        for batch in progress_over(batches, total_images, "evaluating", "img", _rows):
            for image_id, counts, confusion in zip(
                batch["id"], batch["counts"], batch["confusion"], strict=True
            ):
                totals.add(str(image_id), counts, confusion)
            totals.workers.update(str(worker) for worker in batch["worker"])
    finally:
        # Ray stops the pool's actors when the iteration ends, but the Datasets reach the
        # model's object-store copy through reference cycles, which only the garbage collector
        # breaks, seconds later: a data set streamed meanwhile would find the store that much
        # smaller (seen: an ingest on an 80 MiB store then held most of its set in the driver).
        del batches, counted, samples, model_ref
        gc.collect()
    return totals


def _rows(batch: dict[str, np.ndarray]) -> int:
    return len(batch["id"])
