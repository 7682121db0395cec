"""Exact validation inside the training workers: per-worker counts summed over all workers.

Ray Train gives every worker a disjoint share of the val split, so summing the workers'
intersection/union counts counts every val sample exactly once, whatever the worker count.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from apcnet.metrics import MeanIoU
from pipeline.config.augmentation import AugmentationConfig
from pipeline.train.device import DeviceFeatures, autocast
from pipeline.train.step import batch_to_device


@torch.no_grad()
def validate(
    model: nn.Module,
    val_shard: Any,
    *,
    class_names: tuple[str, ...],
    ignore_index: int,
    batch_size: int,
    augmentation: AugmentationConfig,
    features: DeviceFeatures,
    device: torch.device,
    world_size: int,
) -> dict[str, float]:
    """val_miou, val_pixel_accuracy and val_iou/<class> over the whole val split.

    `model` is the bare model (not the DDP wrapper): validation needs no gradient sync, and
    every worker calls this at the same epoch, so the final all-reduce lines up. The val rows
    come uint8 (`pipeline.data.ingest.eval_dataset`) and are normalised on `device` with
    `augmentation.mean` / `std`, as training batches are (`batch_to_device`).
    """
    model.eval()
    metric = MeanIoU(len(class_names), ignore_index)
    # Val images keep their own sizes; rows of one batch are stacked only when they match.
    for batch in val_shard.iter_batches(batch_size=batch_size, batch_format="numpy"):
        for pixels, labels in same_size_groups(batch["image"], batch["mask"]):
            group = {"image": pixels, "mask": labels}
            images, masks = batch_to_device(group, device, features.channels_last, augmentation)
            with autocast(features, device):
                logits = model(images)["out"]
            metric.update(logits.argmax(dim=1), masks)
    counts = metric.counts().to(device)
    if world_size > 1:
        dist.all_reduce(counts, op=dist.ReduceOp.SUM)
    scores = MeanIoU.from_counts(counts.cpu(), ignore_index).compute()
    metrics = {"val_miou": scores.miou, "val_pixel_accuracy": scores.pixel_accuracy}
    for name, iou in zip(class_names, scores.per_class_iou, strict=True):
        metrics[f"val_iou/{name}"] = iou
    return metrics


def same_size_groups(images: Any, masks: Any) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Split a numpy batch (stacked, or object arrays of per-row arrays) into tensor groups
    of equal size: images (n, h, w, 3) and masks (n, h, w) as they came (uint8 from
    `eval_dataset`)."""
    rows = [
        (np.asarray(image), np.asarray(mask)) for image, mask in zip(images, masks, strict=True)
    ]
    groups: list[tuple[torch.Tensor, torch.Tensor]] = []
    start = 0
    for end in range(1, len(rows) + 1):
        if end == len(rows) or rows[end][0].shape != rows[start][0].shape:
            group = rows[start:end]
            groups.append(
                (
                    torch.from_numpy(np.stack([image for image, _ in group])),
                    torch.from_numpy(np.stack([mask for _, mask in group])),
                )
            )
            start = end
    return groups
