"""Test-time prediction: whole image, sliding window, multi-scale + flip (reference semantics).

Every function takes normalised images (N, 3, H, W) and returns class probabilities
(N, num_classes, H, W) at the input's H, W: softmax of the logits, averaged over windows
(as logits, by overlap count, before the softmax), scales and flips (as probabilities).
All bilinear resizes use align_corners=False, as the reference toolbox. The functions run
under torch.no_grad and never change `model.training`: call `model.eval()` first.

The model is any module returning {"out": (N, C, h, w) logits} (or a plain logits tensor);
logits not at the input size are resized bilinearly to it.
"""

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

Pair = int | tuple[int, int]


def _as_pair(value: Pair, name: str) -> tuple[int, int]:
    """(h, w) from an int or a pair, checking both are positive."""
    pair = (value, value) if isinstance(value, int) else tuple(value)
    if len(pair) != 2 or not all(isinstance(v, int) and v > 0 for v in pair):
        raise ValueError(f"inference: {name} must be a positive int or (h, w) pair, got {value!r}")
    return pair  # type: ignore[return-value]


def _check_images(images: torch.Tensor) -> None:
    if images.dim() != 4 or not images.is_floating_point():
        raise ValueError(
            f"inference: images must be a float tensor (N, 3, H, W) of normalised pixels; got "
            f"shape {tuple(images.shape)}, dtype {images.dtype}"
        )


def _resize(tensor: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear resize of (N, C, h, w) to `size` (align_corners=False); no-op at equal size."""
    if tuple(tensor.shape[-2:]) == tuple(size):
        return tensor
    return F.interpolate(tensor, size=size, mode="bilinear", align_corners=False)


def rescaled_size(
    height: int, width: int, test_scale: tuple[int, int] | None, ratio: float = 1.0
) -> tuple[int, int]:
    """(h, w) an image of `height` x `width` is predicted at, as the reference toolbox.

    With `test_scale` = (long, short) (order does not matter: the larger number bounds the long
    side), the scale is first multiplied by `ratio` (truncated to int), then the image is
    rescaled keeping its aspect ratio by factor min(long / max(h, w), short / min(h, w)).
    Without it the image is scaled by `ratio`. Sides are rounded to the nearest integer.
    """
    if test_scale is None:
        factor = ratio
    else:
        if len(test_scale) != 2 or min(test_scale) <= 0:
            raise ValueError(
                f"inference: test_scale must be a (long, short) pair of positive ints, "
                f"e.g. (2048, 512); got {test_scale!r}"
            )
        long_edge = int(max(test_scale) * ratio)
        short_edge = int(min(test_scale) * ratio)
        factor = min(long_edge / max(height, width), short_edge / min(height, width))
    return max(1, int(height * factor + 0.5)), max(1, int(width * factor + 0.5))


def _forward_logits(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """Float32 logits (N, C, h, w) at the size of `images` (N, 3, h, w)."""
    output = model(images)
    logits = output["out"] if isinstance(output, dict) else output
    return _resize(logits.float(), tuple(images.shape[-2:]))


def slide_logits(model: nn.Module, images: torch.Tensor, crop: Pair, stride: Pair) -> torch.Tensor:
    """Sliding-window logits (N, C, H, W) of images (N, 3, H, W), averaged by overlap count.

    Windows of `crop` (h, w) start every `stride` (h, w); the last window in each direction is
    moved back to end at the border. A window larger than the image (image smaller than the
    crop) is zero-padded at the bottom/right to the crop size and its logits cropped back.
    """
    crop_h, crop_w = _as_pair(crop, "crop")
    stride_h, stride_w = _as_pair(stride, "stride")
    _, _, height, width = images.shape
    rows = max(height - crop_h + stride_h - 1, 0) // stride_h + 1
    cols = max(width - crop_w + stride_w - 1, 0) // stride_w + 1
    summed: torch.Tensor | None = None
    overlap = torch.zeros(1, 1, height, width, device=images.device)
    for row in range(rows):
        for col in range(cols):
            bottom = min(row * stride_h + crop_h, height)
            right = min(col * stride_w + crop_w, width)
            top, left = max(bottom - crop_h, 0), max(right - crop_w, 0)
            window = images[:, :, top:bottom, left:right]
            pad_h, pad_w = crop_h - window.shape[2], crop_w - window.shape[3]
            if pad_h or pad_w:
                window = F.pad(window, (0, pad_w, 0, pad_h))
            logits = _forward_logits(model, window)[:, :, : bottom - top, : right - left]
            if summed is None:
                summed = images.new_zeros(
                    (images.shape[0], logits.shape[1], height, width), dtype=torch.float32
                )
            summed[:, :, top:bottom, left:right] += logits
            overlap[:, :, top:bottom, left:right] += 1
    assert summed is not None  # at least one window always exists
    return summed / overlap


def _logits_at(
    model: nn.Module,
    images: torch.Tensor,
    mode: str,
    crop: Pair | None,
    stride: Pair | None,
) -> torch.Tensor:
    if mode == "whole":
        return _forward_logits(model, images)
    if mode == "slide":
        if crop is None or stride is None:
            raise ValueError("inference: mode='slide' needs both crop and stride")
        return slide_logits(model, images, crop, stride)
    raise ValueError(f"inference: mode must be 'whole' or 'slide', got {mode!r}")


@torch.no_grad()
def predict_multiscale(
    model: nn.Module,
    images: torch.Tensor,
    ratios: Sequence[float] = (1.0,),
    flip: bool = False,
    test_scale: tuple[int, int] | None = None,
    mode: str = "whole",
    crop: Pair | None = None,
    stride: Pair | None = None,
) -> torch.Tensor:
    """Probabilities (N, C, H, W) averaged over scale `ratios` and (optionally) horizontal flip.

    For each ratio the images are resized to `rescaled_size(H, W, test_scale, ratio)` (so ratios
    are relative to the test_scale-resized image when test_scale is given), predicted whole or
    with a sliding window (`mode="slide"` with `crop`, `stride` in pixels of the resized image),
    the logits resized back to (H, W), softmaxed and averaged; with `flip`, each scale is also
    predicted on the mirrored images and the result mirrored back before averaging.
    Reference multi-scale + flip: ratios (0.5, 0.75, 1.0, 1.25, 1.5, 1.75), flip=True.
    """
    _check_images(images)
    if not ratios or any(ratio <= 0 or not math.isfinite(ratio) for ratio in ratios):
        raise ValueError(
            f"inference: ratios must be a non-empty list of positive numbers, got {ratios!r}"
        )
    height, width = images.shape[-2:]
    probabilities: torch.Tensor | None = None
    predictions = 0
    for ratio in ratios:
        scaled = _resize(images, rescaled_size(height, width, test_scale, ratio))
        for flipped in (False, True) if flip else (False,):
            source = scaled.flip(-1) if flipped else scaled
            logits = _logits_at(model, source, mode, crop, stride)
            if flipped:
                logits = logits.flip(-1)
            scale_probabilities = _resize(logits, (height, width)).softmax(dim=1)
            if probabilities is None:
                probabilities = scale_probabilities
            else:
                probabilities += scale_probabilities
            predictions += 1
    assert probabilities is not None
    return probabilities / predictions


def predict_whole(
    model: nn.Module, images: torch.Tensor, test_scale: tuple[int, int] | None = None
) -> torch.Tensor:
    """Probabilities (N, C, H, W) from one forward pass over the whole (optionally rescaled) image."""
    return predict_multiscale(model, images, test_scale=test_scale, mode="whole")


def predict_slide(
    model: nn.Module,
    images: torch.Tensor,
    crop: Pair,
    stride: Pair,
    test_scale: tuple[int, int] | None = None,
) -> torch.Tensor:
    """Probabilities (N, C, H, W) from sliding-window logits (see `slide_logits`).

    `crop` and `stride` are in pixels of the (optionally test_scale-rescaled) image, e.g.
    crop=(769, 769), stride=(513, 513) for Cityscapes.
    """
    return predict_multiscale(
        model, images, test_scale=test_scale, mode="slide", crop=crop, stride=stride
    )
