"""Paired augmentation: geometry keeps image and mask aligned, outputs have fixed shapes."""

import io

import numpy as np
import pytest
from helpers.import_probe import modules_imported_by
from PIL import Image

from pipeline.data.transforms import (
    AugmentationConfig,
    augment_sample,
    decode_image,
    decode_mask,
    mean_colour,
    normalize,
    pad_to_size,
    photometric_distortion,
    random_crop,
    rescale,
    rescaled_size,
)

# Class k is painted in COLOURS[k]; a pixel whose colour is exactly one of these must carry
# that class after any geometric transform.
COLOURS = np.array(
    [[255, 0, 0], [0, 255, 0], [0, 0, 255], [255, 255, 0], [0, 255, 255], [255, 0, 255]],
    dtype=np.uint8,
)
GEOMETRY_ONLY = AugmentationConfig(crop_size=(96, 128), photometric=False)


def colour_coded_sample(height: int = 120, width: int = 160, block: int = 20, seed: int = 0):
    """An image of solid colour blocks and the mask derived from its colours."""
    rng = np.random.default_rng(seed)
    blocks = rng.integers(0, len(COLOURS), size=(height // block + 1, width // block + 1))
    mask = np.kron(blocks, np.ones((block, block), dtype=np.int64))[:height, :width]
    return COLOURS[mask], mask.astype(np.uint8)


def assert_labels_follow_colours(rgb: np.ndarray, mask: np.ndarray) -> None:
    checked = 0
    for label, colour in enumerate(COLOURS):
        pure = np.all(rgb == colour, axis=-1)
        assert np.all(mask[pure] == label), f"pixels of colour {colour} lost label {label}"
        checked += int(pure.sum())
    assert checked > 0.3 * mask.size, "too few pure-colour pixels: the check would be vacuous"


@pytest.mark.parametrize("size", [(60, 80), (121, 163), (300, 400), (33, 500)])
def test_rescale_keeps_labels_on_their_pixels(size):
    image, mask = colour_coded_sample()
    resized_image, resized_mask = rescale(image, mask, size)
    assert resized_image.shape == (*size, 3) and resized_mask.shape == size
    assert_labels_follow_colours(resized_image, resized_mask)


def test_rescale_never_invents_mask_values():
    image, mask = colour_coded_sample()
    mask[0:10, 0:10] = 255
    _, resized_mask = rescale(image, mask, (77, 91))
    assert set(np.unique(resized_mask)) <= set(np.unique(mask))


@pytest.mark.parametrize("seed", range(8))
def test_augment_sample_keeps_image_and_mask_aligned(seed):
    image, mask = colour_coded_sample(seed=seed)
    config = AugmentationConfig(crop_size=(96, 128), flip_prob=0.5, cat_max_ratio=0.75)
    rgb, out_mask = augment_sample(image, mask, config, np.random.default_rng(seed))
    labelled = out_mask != 255
    assert_labels_follow_colours(rgb[labelled], out_mask[labelled])


def test_augment_sample_output_has_crop_shape_and_dtypes():
    image, mask = colour_coded_sample(height=50, width=700)
    out_image, out_mask = augment_sample(image, mask, GEOMETRY_ONLY, np.random.default_rng(0))
    assert out_image.shape == (96, 128, 3) and out_image.dtype == np.uint8
    assert out_mask.shape == (96, 128) and out_mask.dtype == np.uint8


def test_padding_fills_image_with_the_fill_colour_and_mask_with_ignore():
    image = np.ones((10, 20, 3), dtype=np.uint8)
    mask = np.zeros((10, 20), dtype=np.uint8)
    padded_image, padded_mask = pad_to_size(image, mask, (16, 24), image_fill=(7, 8, 9))
    assert padded_image.shape == (16, 24, 3) and padded_mask.shape == (16, 24)
    assert np.all(padded_image[10:, :] == (7, 8, 9)) and np.all(padded_image[:, 20:] == (7, 8, 9))
    assert np.all(padded_mask[10:, :] == 255) and np.all(padded_mask[:, 20:] == 255)
    assert np.all(padded_image[:10, :20] == 1) and np.all(padded_mask[:10, :20] == 0)


def test_small_image_is_padded_with_ignore_after_augmentation():
    image, mask = colour_coded_sample(height=40, width=40)
    config = AugmentationConfig(crop_size=(96, 128), scale_range=(1.0, 1.0), flip_prob=0.0)
    out_image, out_mask = augment_sample(image, mask, config, np.random.default_rng(0))
    assert np.all(out_mask[40:, :] == 255) and np.all(out_mask[:, 40:] == 255)
    # The mean colour: 0 once normalised, within 0.5/std of the reference's exact 0.
    assert np.all(out_image[:, 40:] == mean_colour(config))
    normalised_fill = normalize(out_image[:, 40:], config.mean, config.std)
    assert np.abs(normalised_fill).max() <= 0.5 / min(config.std)
    np.testing.assert_array_equal(out_mask[:40, :40], mask)


def dominated_mask() -> np.ndarray:
    """Mostly class 0, with a thin stripe of class 1 on the right: most crops hold one class."""
    mask = np.zeros((100, 400), dtype=np.uint8)
    mask[:, 330:] = 1
    return mask


def test_cat_max_ratio_retries_crops_dominated_by_one_class():
    mask = dominated_mask()
    image = np.zeros((*mask.shape, 3), dtype=np.uint8)
    rng = np.random.default_rng(0)
    balanced = 0
    for _ in range(50):
        _, crop = random_crop(image, mask, (100, 100), rng, cat_max_ratio=0.75, retries=10)
        balanced += np.bincount(crop.ravel(), minlength=2).max() < 0.75 * crop.size
    without_retry = 0
    for _ in range(50):
        _, crop = random_crop(image, mask, (100, 100), rng, cat_max_ratio=1.0)
        without_retry += np.bincount(crop.ravel(), minlength=2).max() < 0.75 * crop.size
    assert balanced > 2 * without_retry and balanced >= 30


def test_cat_max_ratio_ignores_the_ignore_label():
    mask = np.full((100, 100), 255, dtype=np.uint8)
    mask[:, :30] = 0
    mask[:, 30:60] = 1
    image = np.zeros((100, 100, 3), dtype=np.uint8)
    # The only possible crop is the whole mask: classes 0 and 1 share 50/50, which passes.
    _, crop = random_crop(image, mask, (100, 100), np.random.default_rng(0), cat_max_ratio=0.6)
    assert crop.shape == (100, 100)


def test_base_scale_fits_the_image_inside_the_scaled_box():
    assert rescaled_size(375, 500, 1.0, (2048, 512)) == (512, 683)
    assert rescaled_size(375, 500, 0.5, (2048, 512)) == (256, 341)
    assert rescaled_size(375, 500, 2.0, None) == (750, 1000)


def test_same_rng_seed_gives_the_same_augmentation():
    image, mask = colour_coded_sample()
    config = AugmentationConfig(crop_size=(64, 64), photometric=True)
    first = augment_sample(image, mask, config, np.random.default_rng(7))
    second = augment_sample(image, mask, config, np.random.default_rng(7))
    other = augment_sample(image, mask, config, np.random.default_rng(8))
    np.testing.assert_array_equal(first[0], second[0])
    np.testing.assert_array_equal(first[1], second[1])
    assert not np.array_equal(first[0], other[0])


def test_photometric_distortion_changes_colours_but_keeps_shape_and_dtype():
    image, _ = colour_coded_sample()
    changed = [photometric_distortion(image, np.random.default_rng(seed)) for seed in range(10)]
    assert all(result.shape == image.shape and result.dtype == np.uint8 for result in changed)
    assert any(not np.array_equal(result, image) for result in changed)


def test_photometric_distortion_with_no_change_round_trips_hsv():
    # A grey-free image through saturation x1 / hue +0 must come back unchanged.
    from pipeline.data.transforms import _hsv_to_rgb, _rgb_to_hsv

    rgb = np.random.default_rng(0).integers(0, 256, (32, 32, 3)).astype(np.float32)
    np.testing.assert_allclose(_hsv_to_rgb(*_rgb_to_hsv(rgb)), rgb, atol=1e-3)


def test_normalize_matches_the_formula():
    image = np.random.default_rng(0).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    mean, std = (10.0, 20.0, 30.0), (2.0, 4.0, 8.0)
    expected = ((image - np.array(mean)) / np.array(std)).transpose(2, 0, 1)
    np.testing.assert_allclose(normalize(image, mean, std), expected, rtol=1e-6)


def encode(array: np.ndarray, fmt: str) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format=fmt)
    return buffer.getvalue()


def test_decode_image_returns_rgb_for_png_and_grayscale_jpeg():
    image, _ = colour_coded_sample()
    np.testing.assert_array_equal(decode_image(encode(image, "PNG")), image)
    grey = decode_image(encode(image[..., 0], "JPEG"))
    assert grey.shape == (*image.shape[:2], 3) and grey.dtype == np.uint8


def _jpeg_of_pixels(pixels: int) -> bytes:
    side = int(np.ceil(np.sqrt(pixels)))
    gradient = np.linspace(0, 255, side, dtype=np.float32)
    image = np.stack([*np.meshgrid(gradient, gradient[::-1]), np.full((side, side), 90.0)], -1)
    buffer = io.BytesIO()
    Image.fromarray(image.astype(np.uint8)).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def _decoded_by_pil(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as image:
        return np.array(image.convert("RGB"))


@pytest.mark.parametrize("pixels", [64 * 64, 1_000_000])
def test_jpegs_decode_to_the_pixels_pil_decodes(pixels):
    data = _jpeg_of_pixels(pixels)
    decoded = decode_image(data)
    by_pil = _decoded_by_pil(data)
    assert decoded.shape == by_pil.shape and decoded.dtype == np.uint8
    assert np.abs(decoded.astype(int) - by_pil).max() <= 1


def test_a_cmyk_jpeg_decodes_to_the_rgb_pil_gives():
    image, _ = colour_coded_sample()
    buffer = io.BytesIO()
    Image.fromarray(image).convert("CMYK").save(buffer, format="JPEG", quality=95)
    np.testing.assert_array_equal(
        decode_image(buffer.getvalue()), _decoded_by_pil(buffer.getvalue())
    )


def test_rescaled_images_are_within_one_of_torch_bilinear_interpolation():
    import torch
    import torch.nn.functional as F

    image = np.random.default_rng(0).integers(0, 256, size=(75, 100, 3), dtype=np.uint8)
    mask = np.zeros(image.shape[:2], dtype=np.uint8)
    for size in [(40, 53), (150, 200), (97, 131)]:
        resized, _ = rescale(image, mask, size)
        chw = torch.from_numpy(image).permute(2, 0, 1)[None]
        by_torch = F.interpolate(chw, size=size, mode="bilinear", align_corners=False)
        assert np.abs(resized.astype(int) - by_torch[0].permute(1, 2, 0).numpy()).max() <= 1


def test_decoding_and_augmenting_a_sample_does_not_import_torch():
    """torch costs about 1.5 s of CPU to import in every Ray Data decode process."""
    program = (
        "import io\n"
        "import numpy as np\n"
        "from PIL import Image\n"
        "from pipeline.data.transforms import AugmentationConfig, augment_sample, decode_image\n"
        "buffer = io.BytesIO()\n"
        "Image.fromarray(np.full((90, 120, 3), 90, np.uint8)).save(buffer, format='JPEG')\n"
        "image = decode_image(buffer.getvalue())\n"
        "config = AugmentationConfig(crop_size=(64, 64), scale_range=(0.5, 2.0))\n"
        "mask = np.zeros(image.shape[:2], np.uint8)\n"
        "augment_sample(image, mask, config, np.random.default_rng(0))"
    )
    assert modules_imported_by(program, ["torch", "torchvision"]) == []


def test_decode_image_names_bytes_that_are_no_image():
    with pytest.raises(ValueError, match="decode_image: cannot decode 4 bytes"):
        decode_image(b"\xff\xd8\xff\x00")


def test_decode_mask_keeps_palette_indices():
    _, mask = colour_coded_sample()
    palette_image = Image.fromarray(mask, mode="P")
    palette_image.putpalette([value for colour in COLOURS for value in colour])
    buffer = io.BytesIO()
    palette_image.save(buffer, format="PNG")
    np.testing.assert_array_equal(decode_mask(buffer.getvalue()), mask)


def test_decode_mask_rejects_colour_png():
    image, _ = colour_coded_sample()
    with pytest.raises(ValueError, match="single-channel"):
        decode_mask(encode(image, "PNG"))


def test_augmentation_config_rejects_bad_values_with_the_option_name():
    with pytest.raises(ValueError, match="scale_range"):
        AugmentationConfig(scale_range=(2.0, 1.0))
    with pytest.raises(ValueError, match="cat_max_ratio"):
        AugmentationConfig(cat_max_ratio=0.0)
    with pytest.raises(ValueError, match="crop_size"):
        AugmentationConfig(crop_size=(0, 512))
