"""Test-time options (whole image, sliding window, multi-scale + flip) and one image's prediction.

Shared by evaluation and prediction so that both run exactly the same inference code; the
local reference loop and the Ray actors call `predict_label_map` the same way.
"""

from dataclasses import asdict, dataclass
from typing import Literal

import numpy as np
import torch
from torch import nn

from apcnet.inference import predict_multiscale, predict_slide, predict_whole
from pipeline.evaluate.inference_model import InferenceError

Mode = Literal["whole", "slide", "msflip"]
MODES: tuple[str, ...] = ("whole", "slide", "msflip")
# The reference multi-scale ratios (REFERENCE.md, "Evaluation").
DEFAULT_RATIOS: tuple[float, ...] = (0.5, 0.75, 1.0, 1.25, 1.5, 1.75)


@dataclass(frozen=True)
class TestTimeOptions:
    """How each image is predicted.

    mode: "whole" (one forward pass), "slide" (crop/stride windows, logits averaged by overlap),
        "msflip" (the image at each ratio, with a horizontal flip when `flip`, probabilities
        averaged).
    crop, stride: (height, width) of the sliding window and its step; used by "slide".
    ratios: scales for "msflip"; flip: add flipped copies in "msflip".
    resize: keep-ratio test scale, e.g. (2048, 512): the image is resized, keeping its aspect
        ratio, so that its long side fits the larger number and its short side the smaller one;
        the probabilities are resized back to the original size. None keeps the original size.
    """

    __test__ = False  # not a pytest test class, despite the name

    mode: Mode = "whole"
    crop: tuple[int, int] | None = None
    stride: tuple[int, int] | None = None
    ratios: tuple[float, ...] = DEFAULT_RATIOS
    flip: bool = False
    resize: tuple[int, int] | None = None

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise InferenceError(f"--mode must be one of {', '.join(MODES)}; got {self.mode!r}")
        if self.mode == "slide":
            if self.crop is None or self.stride is None:
                raise InferenceError("--mode slide needs --crop H W and --stride H W")
            for name, pair in (("--crop", self.crop), ("--stride", self.stride)):
                if len(pair) != 2 or min(pair) < 1:
                    raise InferenceError(f"{name} takes two positive integers H W; got {pair}")
        if self.mode == "msflip" and (not self.ratios or min(self.ratios) <= 0):
            raise InferenceError(f"--ratios must be positive numbers; got {self.ratios}")
        if self.resize is not None and (len(self.resize) != 2 or min(self.resize) < 1):
            raise InferenceError(f"--resize takes two positive integers W H; got {self.resize}")

    def as_params(self) -> dict[str, str]:
        """The options that matter for `mode`, as flat strings (MLflow params)."""
        values = asdict(self)
        wanted = {"mode", "resize"}
        if self.mode == "slide":
            wanted |= {"crop", "stride"}
        if self.mode == "msflip":
            wanted |= {"ratios", "flip"}
        return {f"test_{key}": str(values[key]) for key in sorted(wanted)}


@torch.no_grad()
def predict_probabilities(
    model: nn.Module, images: torch.Tensor, options: TestTimeOptions
) -> torch.Tensor:
    """Softmax probabilities (N, C, H, W) for normalised float images (N, 3, H, W)."""
    if options.mode == "whole":
        return predict_whole(model, images, test_scale=options.resize)
    if options.mode == "slide":
        return predict_slide(model, images, options.crop, options.stride, test_scale=options.resize)
    return predict_multiscale(
        model, images, options.ratios, options.flip, test_scale=options.resize
    )


def predict_label_map(
    model: nn.Module, image: np.ndarray | torch.Tensor, options: TestTimeOptions
) -> np.ndarray:
    """Class indices int64 (H, W) for one normalised float image (3, H, W) at its own size.

    The image goes through the model alone (batch of one): images keep their original sizes,
    and a fixed batch composition makes every caller's result bit-identical.
    """
    device = next(model.parameters()).device
    tensor = torch.tensor(np.asarray(image, dtype=np.float32)).unsqueeze(0).to(device)
    probabilities = predict_probabilities(model, tensor, options)
    return probabilities.argmax(dim=1)[0].to("cpu", torch.int64).numpy()
