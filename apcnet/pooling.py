"""Adaptive average pooling that exports with dynamic input sizes (ONNX and torch.export).

PyTorch's adaptive average pool splits an input of length L into s bins, bin i covering
positions [floor(i*L/s), ceil((i+1)*L/s)). When s does not divide L the bins differ in size
and may overlap. `torch.export` keeps `aten.adaptive_avg_pool2d` as one op, but the ONNX
exporter lowers it to gather indices computed from the size it traced at, so an ONNX file
traced at one size gives wrong results (or fails) at another. `bin_average_pool2d` computes
the same bins from the input's size at run time, as two (s, L) averaging matrices built from
arange / floor division / comparisons, and pools with two matmuls: every exporter accepts it
with symbolic H and W.
"""

import torch
import torch.nn.functional as F


def bin_average_matrix(length: int | torch.SymInt, bins: int, like: torch.Tensor) -> torch.Tensor:
    """(bins, length) matrix whose row i averages PyTorch's adaptive-pool bin i.

    Row i holds 1 / (end_i - start_i) at positions start_i <= p < end_i, where
    start_i = floor(i * length / bins) and end_i = ceil((i + 1) * length / bins), and 0
    elsewhere. `length` may be symbolic (an exported input size). dtype and device of `like`.
    """
    index = torch.arange(bins, device=like.device)
    start = torch.div(index * length, bins, rounding_mode="floor")
    end = torch.div((index + 1) * length + (bins - 1), bins, rounding_mode="floor")
    position = torch.arange(length, device=like.device)
    inside = (position >= start[:, None]) & (position < end[:, None])
    return inside.to(like.dtype) / (end - start).to(like.dtype)[:, None]


def bin_average_pool2d(features: torch.Tensor, output_size: int) -> torch.Tensor:
    """(N, C, H, W) -> (N, C, s, s) with s = output_size: `F.adaptive_avg_pool2d`'s bins,
    computed from the input's H and W at run time (exportable with dynamic H, W).

    Equal to `F.adaptive_avg_pool2d(features, s)` up to float rounding (a weighted sum
    instead of a sum divided by the count).
    """
    height, width = features.shape[-2:]
    rows = bin_average_matrix(height, output_size, features)  # (s, H)
    columns = bin_average_matrix(width, output_size, features)  # (s, W)
    # Columns first: (N, C, H, W) @ (W, s), then (s, H) @ (N, C, H, s). The other order traces
    # a view whose validity torch.export cannot prove for s = 1 with symbolic sizes.
    return torch.matmul(rows, torch.matmul(features, columns.transpose(0, 1)))


def adaptive_avg_pool2d(features: torch.Tensor, output_size: int) -> torch.Tensor:
    """(N, C, H, W) -> (N, C, s, s): `F.adaptive_avg_pool2d` in eager mode and under
    torch.compile, `bin_average_pool2d` while `torch.export` (and so the ONNX exporter) traces.

    Why two paths: the eager op stays bit-identical (reference-checkpoint parity, the numbers
    of every run so far) and keeps its own kernel under mixed precision, where matmuls would
    round the averaging weights to bf16/fp16; exported programs get the formulation that is
    right at every input size. Tests compare the two at every size from 1 to 40 px.
    """
    if torch.compiler.is_exporting():
        return bin_average_pool2d(features, output_size)
    return F.adaptive_avg_pool2d(features, output_size)
