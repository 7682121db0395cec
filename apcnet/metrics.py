"""Segmentation metrics from summed per-class intersection / union counts (mergeable, reducible).

Every count starts from one confusion matrix (`confusion_matrix`, one bincount per call); the
per-class intersection, union and label area are read off it (`intersection_union_from_confusion`,
`intersection_union`).

mIoU is computed the reference way: per-class intersection and union are summed over the whole
data set first, then IoU_c = sum I_c / sum U_c, and the mean runs over classes whose union is
non-zero. Per-batch mIoUs are never averaged.
"""

from dataclasses import dataclass
from typing import Self

import torch


def _check_label_maps(
    pred: torch.Tensor, target: torch.Tensor, num_classes: int, ignore_index: int
) -> None:
    """Raise a ValueError/TypeError naming the problem when pred/target are not valid label maps."""
    if pred.shape != target.shape:
        hint = ""
        if pred.dim() == target.dim() + 1:
            hint = " (pred looks like logits or probabilities: pass pred.argmax(dim=1))"
        raise ValueError(
            f"pred shape {tuple(pred.shape)} differs from target shape {tuple(target.shape)}; "
            f"both must be integer label maps (N, H, W){hint}"
        )
    for name, tensor in (("pred", pred), ("target", target)):
        if tensor.is_floating_point() or tensor.is_complex() or tensor.dtype == torch.bool:
            raise TypeError(
                f"{name} must hold integer class indices, got dtype {tensor.dtype}; "
                "convert with .argmax(dim=1) or .long()"
            )
    if pred.numel() == 0:
        return
    low, high = (int(value) for value in torch.aminmax(pred))
    if low < 0 or high >= num_classes:
        raise ValueError(
            f"predictions must lie in [0, {num_classes - 1}] for num_classes={num_classes}; "
            f"found values from {low} to {high}"
        )
    # Ignored pixels are replaced by class 0 so one aminmax covers the labelled ones.
    labelled_only = torch.where(target == ignore_index, 0, target)
    low, high = (int(value) for value in torch.aminmax(labelled_only))
    if low < 0 or high >= num_classes:
        raise ValueError(
            f"target labels must lie in [0, {num_classes - 1}] or equal ignore_index="
            f"{ignore_index}; found values from {low} to {high} (wrong num_classes, or a data "
            "set needing label reduction?)"
        )


def confusion_matrix(
    pred: torch.Tensor, target: torch.Tensor, num_classes: int, ignore_index: int = 255
) -> torch.Tensor:
    """The confusion matrix of one batch, over pixels whose target is not `ignore_index`.

    Args:
        pred: integer predicted class indices, shape (N, H, W) (any shape equal to target's).
        target: integer labels of the same shape; `ignore_index` marks unlabelled pixels.
        num_classes: number of classes C.

    Returns:
        An int64 tensor of shape (C, C) on pred's device: entry [t, p] counts the pixels
        labelled t and predicted p (rows ground truth, columns prediction).

    Raises ValueError or TypeError, naming the problem, when pred and target are not label
    maps of equal shape with values in range.
    """
    _check_label_maps(pred, target, num_classes, ignore_index)
    # One bincount of a joint (label, prediction) index; ignored pixels go to an extra bin that
    # is dropped. torch.where avoids boolean indexing, which costs a copy and a device sync
    # (about 3x slower on CPU for 512x512 batches).
    joint = target.long() * num_classes + pred.long()
    joint = torch.where(target == ignore_index, num_classes * num_classes, joint)
    bins = torch.bincount(joint.flatten(), minlength=num_classes * num_classes + 1)
    return bins[:-1].reshape(num_classes, num_classes)


def intersection_union_from_confusion(
    confusion: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(intersection, union, label_area), each of shape (C,), from a (C, C) confusion matrix
    whose rows are ground truth and columns prediction (as `confusion_matrix` returns)."""
    area_intersection = confusion.diagonal().clone()
    area_label = confusion.sum(dim=1)
    area_union = confusion.sum(dim=0) + area_label - area_intersection
    return area_intersection, area_union, area_label


def intersection_union(
    pred: torch.Tensor, target: torch.Tensor, num_classes: int, ignore_index: int = 255
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-class pixel counts of one batch, over pixels whose target is not `ignore_index`.

    Args:
        pred: integer predicted class indices, shape (N, H, W) (any shape equal to target's).
        target: integer labels of the same shape; `ignore_index` marks unlabelled pixels.
        num_classes: number of classes C.

    Returns:
        (intersection, union, label_area), each an int64 tensor of shape (C,) on pred's device:
        |pred == c and target == c|, |pred == c or target == c|, |target == c|.
    """
    return intersection_union_from_confusion(
        confusion_matrix(pred, target, num_classes, ignore_index)
    )


@dataclass(frozen=True)
class SegmentationScores:
    """Scores as fractions in [0, 1]; nan where undefined (no labelled pixel, zero union).

    Attributes:
        miou: mean over classes with non-zero union of IoU_c = sum I_c / sum U_c.
        pixel_accuracy: correctly predicted labelled pixels / labelled pixels.
        mean_accuracy: mean over classes present in the labels of sum I_c / sum label_area_c.
        per_class_iou: IoU per class; nan for classes with zero union.
        per_class_accuracy: recall per class; nan for classes absent from the labels.
    """

    miou: float
    pixel_accuracy: float
    mean_accuracy: float
    per_class_iou: tuple[float, ...]
    per_class_accuracy: tuple[float, ...]

    def summary(self) -> dict[str, float]:
        """The three headline scores as a flat dict (e.g. for `mlflow.log_metrics`)."""
        return {
            "miou": self.miou,
            "pixel_accuracy": self.pixel_accuracy,
            "mean_accuracy": self.mean_accuracy,
        }


def scores_from_counts(counts: torch.Tensor) -> SegmentationScores:
    """Scores from a (3, C) int tensor of summed [intersection, union, label_area] counts."""
    counts = counts.detach().to("cpu", torch.float64)
    intersection, union, label_area = counts[0], counts[1], counts[2]
    nan = torch.tensor(float("nan"), dtype=torch.float64)
    # Division only where the denominator is non-zero; 0/0 classes become nan and drop out.
    iou = torch.where(union > 0, intersection / union.clamp(min=1), nan)
    accuracy = torch.where(label_area > 0, intersection / label_area.clamp(min=1), nan)
    labelled_pixels = label_area.sum()
    pixel_accuracy = (
        float(intersection.sum() / labelled_pixels) if labelled_pixels > 0 else float("nan")
    )
    return SegmentationScores(
        miou=float(torch.nanmean(iou)),
        pixel_accuracy=pixel_accuracy,
        mean_accuracy=float(torch.nanmean(accuracy)),
        per_class_iou=tuple(iou.tolist()),
        per_class_accuracy=tuple(accuracy.tolist()),
    )


class MeanIoU:
    """Accumulates intersection / union / label-area counts over batches; computes mIoU once.

    The counts live on the device of the first `update` (no host sync per batch beyond the
    input checks). To combine evaluators from several processes or actors, sum their
    `counts()` (e.g. `torch.distributed.all_reduce`, or plain addition of gathered tensors)
    and call `MeanIoU.from_counts(total)`, or `merge` two evaluators in the same process.

    Example:
        metric = MeanIoU(num_classes=21)
        for images, labels in loader:
            metric.update(model(images)["out"].argmax(dim=1), labels)
        scores = metric.compute()   # SegmentationScores
    """

    def __init__(self, num_classes: int, ignore_index: int = 255) -> None:
        if num_classes < 1:
            raise ValueError(f"MeanIoU: num_classes must be >= 1, got {num_classes}")
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self._counts = torch.zeros(3, num_classes, dtype=torch.int64)

    def reset(self) -> None:
        """Forget everything accumulated so far."""
        self._counts = torch.zeros(3, self.num_classes, dtype=torch.int64)

    @torch.no_grad()
    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        """Add one batch: `pred` and `target` are integer label maps of equal shape (N, H, W)."""
        intersection, union, label_area = intersection_union(
            pred, target, self.num_classes, self.ignore_index
        )
        batch = torch.stack((intersection, union, label_area))
        if self._counts.device != batch.device:
            self._counts = self._counts.to(batch.device)
        self._counts += batch

    def counts(self) -> torch.Tensor:
        """A copy of the int64 counts, shape (3, C): rows [intersection, union, label_area]."""
        return self._counts.clone()

    @classmethod
    def from_counts(cls, counts: torch.Tensor, ignore_index: int = 255) -> "MeanIoU":
        """An evaluator holding `counts` (shape (3, C), e.g. summed over processes)."""
        if counts.dim() != 2 or counts.shape[0] != 3:
            raise ValueError(
                f"MeanIoU.from_counts: counts must have shape (3, num_classes) with rows "
                f"[intersection, union, label_area]; got {tuple(counts.shape)}"
            )
        if counts.is_floating_point():
            raise TypeError(
                f"MeanIoU.from_counts: counts must be integer pixel counts, got {counts.dtype}"
            )
        metric = cls(num_classes=counts.shape[1], ignore_index=ignore_index)
        metric._counts = counts.detach().to(torch.int64).clone()
        return metric

    def merge(self, other: "MeanIoU") -> Self:
        """Add `other`'s counts into this evaluator, in place; returns self for chaining."""
        if (other.num_classes, other.ignore_index) != (self.num_classes, self.ignore_index):
            raise ValueError(
                f"MeanIoU.merge: cannot merge an evaluator with num_classes={other.num_classes}, "
                f"ignore_index={other.ignore_index} into one with num_classes="
                f"{self.num_classes}, ignore_index={self.ignore_index}"
            )
        self._counts += other._counts.to(self._counts.device)
        return self

    def compute(self) -> SegmentationScores:
        """Scores from everything accumulated (nan scores when no labelled pixel was seen)."""
        return scores_from_counts(self._counts)
