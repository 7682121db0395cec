"""The `data.augmentation` config section: how training samples are augmented and normalised.

`pipeline.data.transforms` applies it; it lives with the config so that the config imports no
other part of the pipeline.
"""

from __future__ import annotations

from dataclasses import dataclass

IMAGENET_MEAN = (123.675, 116.28, 103.53)
IMAGENET_STD = (58.395, 57.12, 57.375)


@dataclass(frozen=True)
class AugmentationConfig:
    """Training augmentation settings; defaults reproduce the reference toolbox at a 512 crop.

    crop_size: output (height, width); smaller rescaled images are padded up to it.
    scale_range: the random rescale ratio is drawn uniformly from [low, high].
    base_scale: (long side, short side). When set, the image is first fitted (aspect kept)
        into base_scale * ratio, like the reference's (2048, 512) keep-ratio resize; when
        None the ratio multiplies the original size.
    cat_max_ratio: a crop is redrawn (up to crop_retries times) while one class, ignoring
        ignore_index, covers more than this fraction of it; 1.0 disables the check.
    flip_prob: probability of a horizontal flip.
    photometric: brightness +-32, contrast and saturation 0.5-1.5, hue +-18 (in the
        reference's 0-180 hue units), each applied with probability 0.5.
    mean, std: RGB normalisation on 0-255 values (ImageNet's by default).
    ignore_index: label value that marks pixels without a class; used for mask padding.
    """

    crop_size: tuple[int, int] = (512, 512)
    scale_range: tuple[float, float] = (0.5, 2.0)
    base_scale: tuple[int, int] | None = None
    cat_max_ratio: float = 0.75
    crop_retries: int = 10
    flip_prob: float = 0.5
    photometric: bool = False
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    ignore_index: int = 255

    def __post_init__(self) -> None:
        if len(self.crop_size) != 2 or min(self.crop_size) < 1:
            raise ValueError(
                f"AugmentationConfig.crop_size must be two positive ints (height, width), "
                f"got {self.crop_size!r}"
            )
        low, high = self.scale_range
        if not 0 < low <= high:
            raise ValueError(
                f"AugmentationConfig.scale_range must satisfy 0 < low <= high, "
                f"got {self.scale_range!r}"
            )
        if self.base_scale is not None and (len(self.base_scale) != 2 or min(self.base_scale) < 1):
            raise ValueError(
                f"AugmentationConfig.base_scale must be None or two positive ints "
                f"(long side, short side), got {self.base_scale!r}"
            )
        if not 0 < self.cat_max_ratio <= 1:
            raise ValueError(
                f"AugmentationConfig.cat_max_ratio must be in (0, 1] (1.0 disables the "
                f"check), got {self.cat_max_ratio!r}"
            )
        if self.crop_retries < 1:
            raise ValueError(
                f"AugmentationConfig.crop_retries must be at least 1, got {self.crop_retries!r}"
            )
        if not 0 <= self.flip_prob <= 1:
            raise ValueError(
                f"AugmentationConfig.flip_prob must be in [0, 1], got {self.flip_prob!r}"
            )
        if len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0:
            raise ValueError(
                f"AugmentationConfig.mean/std must be three RGB values with std > 0, "
                f"got mean={self.mean!r} std={self.std!r}"
            )
        if not 0 <= self.ignore_index <= 255:
            raise ValueError(
                f"AugmentationConfig.ignore_index must fit in a uint8 mask (0-255), "
                f"got {self.ignore_index!r}"
            )
