"""Specification of apcnet.inference: whole, sliding window, multi-scale + flip prediction."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from apcnet.inference import (
    predict_multiscale,
    predict_slide,
    predict_whole,
    rescaled_size,
    slide_logits,
)

NUM_CLASSES = 4


class PixelwiseModel(nn.Module):
    """Logits from a 1x1 convolution: each pixel's output depends on that pixel alone."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.classifier = nn.Conv2d(3, NUM_CLASSES, 1)

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"out": self.classifier(images)}


class OneConvModel(nn.Module):
    """A single zero-padded 3x3 convolution, optionally with horizontally symmetric kernels."""

    def __init__(self, mirror_symmetric: bool = False) -> None:
        super().__init__()
        torch.manual_seed(1)
        self.conv = nn.Conv2d(3, NUM_CLASSES, 3, padding=1)
        if mirror_symmetric:
            with torch.no_grad():
                self.conv.weight.copy_((self.conv.weight + self.conv.weight.flip(-1)) / 2)

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"out": self.conv(images)}


class DownUpModel(nn.Module):
    """Stride-2 features upsampled back to the input size, like a real segmentation net."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(2)
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.ReLU(), nn.Conv2d(8, NUM_CLASSES, 3)
        )
        self.shapes_seen: list[tuple[int, int]] = []

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        self.shapes_seen.append(tuple(images.shape[-2:]))
        logits = self.features(images)
        return {
            "out": F.interpolate(
                logits, size=images.shape[-2:], mode="bilinear", align_corners=False
            )
        }


def _images(height: int = 13, width: int = 17, batch: int = 2) -> torch.Tensor:
    return torch.randn(batch, 3, height, width, generator=torch.Generator().manual_seed(3))


def _probabilities(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(images)["out"].softmax(dim=1)


def test_whole_returns_softmax_of_the_logits_at_input_size():
    model, images = DownUpModel(), _images()
    assert torch.allclose(predict_whole(model, images), _probabilities(model, images))


def test_probabilities_sum_to_one_in_every_mode():
    model, images = DownUpModel(), _images()
    for probabilities in (
        predict_whole(model, images),
        predict_slide(model, images, crop=(8, 8), stride=(5, 5)),
        predict_multiscale(model, images, ratios=(0.5, 1.0, 1.5), flip=True),
    ):
        assert probabilities.shape == (2, NUM_CLASSES, 13, 17)
        assert torch.allclose(probabilities.sum(dim=1), torch.ones(2, 13, 17), atol=1e-6)


def test_multiscale_with_one_unit_ratio_and_no_flip_equals_whole():
    model, images = DownUpModel(), _images()
    single = predict_multiscale(model, images, ratios=(1.0,), flip=False)
    assert torch.equal(single, predict_whole(model, images))


def test_slide_with_a_crop_larger_than_the_image_equals_whole():
    # The window is zero-padded to the crop at the bottom/right, which a single zero-padded
    # 3x3 convolution cannot tell from its own padding: the logits must match exactly.
    model, images = OneConvModel(), _images(13, 17)
    sliding = predict_slide(model, images, crop=(20, 24), stride=(10, 10))
    torch.testing.assert_close(sliding, predict_whole(model, images), rtol=0, atol=1e-6)


def test_slide_with_a_crop_larger_in_one_direction_only_equals_whole():
    model, images = PixelwiseModel(), _images(13, 17)
    sliding = predict_slide(model, images, crop=(20, 6), stride=(20, 4))
    torch.testing.assert_close(sliding, predict_whole(model, images), rtol=0, atol=1e-6)


def test_overlapping_windows_are_averaged_by_overlap_count_on_odd_sizes():
    # Identical per-pixel logits from every window: any miscounted overlap rescales the logits
    # and changes the softmax.
    model, images = PixelwiseModel(), _images(13, 17)
    sliding = predict_slide(model, images, crop=(8, 6), stride=(5, 4))
    torch.testing.assert_close(sliding, predict_whole(model, images), rtol=0, atol=1e-6)


def test_slide_windows_end_at_the_border_and_the_count_matches_the_reference():
    model, images = DownUpModel(), _images(13, 17)
    slide_logits(model, images, crop=(8, 6), stride=(5, 4))
    # rows: (13 - 8 + 4) // 5 + 1 = 2 ; cols: (17 - 6 + 3) // 4 + 1 = 4 ; all full-size windows
    assert model.shapes_seen == [(8, 6)] * 8


def test_flip_averaging_with_a_mirror_symmetric_model_equals_no_flip():
    model, images = OneConvModel(mirror_symmetric=True), _images()
    flipped = predict_multiscale(model, images, ratios=(1.0,), flip=True)
    torch.testing.assert_close(flipped, predict_whole(model, images), rtol=0, atol=1e-6)


def test_flip_averages_the_direct_and_the_mirrored_back_prediction():
    model, images = DownUpModel(), _images()
    expected = (_probabilities(model, images) + _probabilities(model, images.flip(-1)).flip(-1)) / 2
    actual = predict_multiscale(model, images, ratios=(1.0,), flip=True)
    torch.testing.assert_close(actual, expected, rtol=0, atol=1e-6)


def test_multiscale_averages_probabilities_resized_back_to_the_input_size():
    model, images = DownUpModel(), _images(12, 16)
    half = F.interpolate(images, size=(6, 8), mode="bilinear", align_corners=False)
    with torch.no_grad():
        half_logits = F.interpolate(
            model(half)["out"], size=(12, 16), mode="bilinear", align_corners=False
        )
    expected = (half_logits.softmax(dim=1) + _probabilities(model, images)) / 2
    actual = predict_multiscale(model, images, ratios=(0.5, 1.0))
    torch.testing.assert_close(actual, expected, rtol=0, atol=1e-6)


def test_rescaled_size_keeps_the_aspect_ratio_within_long_and_short_bounds():
    assert rescaled_size(375, 500, (2048, 512)) == (512, 683)
    assert rescaled_size(1024, 2048, (2048, 1024)) == (1024, 2048)
    assert rescaled_size(375, 500, (512, 2048)) == (512, 683)  # order does not matter


def test_rescaled_size_applies_ratios_to_the_test_scale():
    # scale (2048, 512) x 0.5 = (1024, 256): factor min(1024 / 500, 256 / 375)
    assert rescaled_size(375, 500, (2048, 512), ratio=0.5) == (256, 341)
    assert rescaled_size(10, 15, None, ratio=1.5) == (15, 23)


@pytest.mark.parametrize("mode", ["whole", "slide"])
def test_test_scale_resizes_the_input_and_returns_the_original_size(mode):
    model, images = DownUpModel(), _images(20, 30, batch=1)
    # factor min(64 / 30, 16 / 20) = 0.8 -> predicted at 16 x 24
    probabilities = predict_multiscale(
        model, images, test_scale=(64, 16), mode=mode, crop=(16, 24), stride=(8, 8)
    )
    assert model.shapes_seen == [(16, 24)]
    assert probabilities.shape == (1, NUM_CLASSES, 20, 30)


def test_test_scale_result_is_the_resized_back_prediction():
    model, images = DownUpModel(), _images(20, 30, batch=1)
    resized = F.interpolate(images, size=(16, 24), mode="bilinear", align_corners=False)
    with torch.no_grad():
        logits = F.interpolate(
            model(resized)["out"], size=(20, 30), mode="bilinear", align_corners=False
        )
    actual = predict_whole(model, images, test_scale=(64, 16))
    torch.testing.assert_close(actual, logits.softmax(dim=1), rtol=0, atol=1e-6)


def test_prediction_neither_changes_the_training_flag_nor_records_gradients():
    model, images = DownUpModel(), _images()
    model.train()
    probabilities = predict_multiscale(model, images, ratios=(0.75, 1.0), flip=True)
    assert model.training
    assert not probabilities.requires_grad


def test_slide_mode_without_crop_is_a_clear_error():
    with pytest.raises(ValueError, match="needs both crop and stride"):
        predict_multiscale(DownUpModel(), _images(), mode="slide")


def test_unknown_mode_is_a_clear_error():
    with pytest.raises(ValueError, match="'whole' or 'slide'"):
        predict_multiscale(DownUpModel(), _images(), mode="sliding")


def test_unbatched_images_are_a_clear_error():
    with pytest.raises(ValueError, match=r"\(N, 3, H, W\)"):
        predict_whole(DownUpModel(), _images()[0])
