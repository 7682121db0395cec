"""Training loss: pixel-wise cross-entropy on the main logits plus weighted deep supervision."""

from collections.abc import Mapping

import torch
import torch.nn.functional as F


def _resize_to_target(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Upsample (N, C, h, w) logits bilinearly to the (H, W) of a (N, H, W) target if needed."""
    if logits.shape[-2:] == target.shape[-2:]:
        return logits
    return F.interpolate(logits, size=target.shape[-2:], mode="bilinear", align_corners=False)


def pixel_cross_entropy(
    logits: torch.Tensor, target: torch.Tensor, ignore_index: int = 255
) -> torch.Tensor:
    """Mean cross-entropy over the pixels of `target` that are not `ignore_index`.

    Args:
        logits: (N, C, h, w) float logits; resized to the target size when h, w differ.
        target: (N, H, W) integer class indices, `ignore_index` marks pixels without a label.

    Returns:
        A scalar tensor. A batch with no labelled pixel gives 0 (connected to the graph, so
        `backward()` still works and yields zero gradients) instead of torch's NaN.
    """
    if logits.dim() != 4 or target.dim() != 3:
        raise ValueError(
            f"pixel_cross_entropy expects logits (N, C, H, W) and target (N, H, W); "
            f"got logits {tuple(logits.shape)} and target {tuple(target.shape)}"
        )
    if logits.shape[0] != target.shape[0]:
        raise ValueError(
            f"pixel_cross_entropy: batch sizes differ, logits {tuple(logits.shape)} "
            f"vs target {tuple(target.shape)}"
        )
    logits = _resize_to_target(logits, target)
    target = target.long()
    # Summing and dividing by the labelled count ourselves avoids the 0/0 NaN of reduction="mean".
    summed = F.cross_entropy(logits, target, ignore_index=ignore_index, reduction="sum")
    labelled = (target != ignore_index).sum()
    return summed / labelled.clamp(min=1).to(summed.dtype)


def segmentation_loss(
    outputs: Mapping[str, torch.Tensor],
    target: torch.Tensor,
    aux_weight: float = 0.4,
    ignore_index: int = 255,
) -> torch.Tensor:
    """Cross-entropy on outputs["out"] plus `aux_weight` x cross-entropy on outputs["aux"].

    Args:
        outputs: the model's dict; "out" (N, C, H, W) logits, optional "aux" of the same layout.
            Logits at a smaller size than the target are upsampled bilinearly
            (align_corners=False) before the loss.
        target: (N, H, W) integer label map, `ignore_index` for unlabelled pixels.
        aux_weight: weight of the auxiliary (deep supervision) loss; ignored when "aux" is absent.

    Returns:
        A scalar tensor; 0 (not NaN) when every pixel is `ignore_index`.
    """
    if "out" not in outputs:
        raise KeyError(
            f"segmentation_loss needs the model's main logits under 'out'; got keys "
            f"{sorted(outputs)}"
        )
    loss = pixel_cross_entropy(outputs["out"], target, ignore_index)
    aux = outputs.get("aux")
    if aux is not None and aux_weight != 0:
        loss = loss + aux_weight * pixel_cross_entropy(aux, target, ignore_index)
    return loss
