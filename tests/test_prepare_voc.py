"""VOC 2012 (+ SBD train_aug) conversion, and how bad input is reported."""

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy.io import savemat

from pipeline.data.formats.prepare import PrepareOptions, prepare_dataset
from pipeline.data.formats.voc import VOC_CLASS_NAMES, VOC_PALETTE
from pipeline.data.shards import MANIFEST_NAME, DatasetError, load_manifest, read_shard_rows

VOC_TRAIN = ["2007_000001", "2007_000002", "2007_000003"]
VOC_VAL = ["2007_000004", "2007_000005"]
SBD_ONLY = ["2008_000010", "2008_000011"]


def label_pattern(seed: int, height: int = 20, width: int = 24) -> np.ndarray:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 21, (height, width)).astype(np.uint8)
    labels[0, :] = 255  # VOC's border/ignore value
    return labels


def write_jpeg(path: Path, height: int = 20, width: int = 24, seed: int = 0) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 255, (height, width, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path, format="JPEG")


def write_palette_png(path: Path, labels: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    mask = Image.fromarray(labels, mode="P")
    mask.putpalette([c for color in VOC_PALETTE for c in color] + [224, 224, 192] * 235)
    mask.save(path)


def make_voc(root: Path) -> Path:
    voc = root / "VOCdevkit" / "VOC2012"
    for index, sample_id in enumerate(VOC_TRAIN + VOC_VAL):
        write_jpeg(voc / "JPEGImages" / f"{sample_id}.jpg", seed=index)
        write_palette_png(voc / "SegmentationClass" / f"{sample_id}.png", label_pattern(index))
    lists = voc / "ImageSets" / "Segmentation"
    lists.mkdir(parents=True)
    (lists / "train.txt").write_text("\n".join(VOC_TRAIN) + "\n")
    (lists / "val.txt").write_text("\n".join(VOC_VAL) + "\n")
    return voc


def make_sbd(root: Path) -> Path:
    dataset = root / "benchmark_RELEASE" / "dataset"
    # SBD also labels a VOC val image and a VOC train image: both must follow the VOC rule.
    for index, sample_id in enumerate([*SBD_ONLY, VOC_VAL[0], VOC_TRAIN[0]]):
        write_jpeg(dataset / "img" / f"{sample_id}.jpg", seed=100 + index)
        (dataset / "cls").mkdir(parents=True, exist_ok=True)
        labels = label_pattern(100 + index)
        savemat(dataset / "cls" / f"{sample_id}.mat", {"GTcls": {"Segmentation": labels}})
    (dataset / "train.txt").write_text(f"{SBD_ONLY[0]}\n{VOC_VAL[0]}\n")
    (dataset / "val.txt").write_text(f"{SBD_ONLY[1]}\n{VOC_TRAIN[0]}\n")
    return dataset


def convert(source: Path, output: Path, **options) -> object:
    defaults = {"workers": 1, "progress": False}
    return prepare_dataset(
        PrepareOptions(
            format="voc", source=str(source), output=str(output), **{**defaults, **options}
        )
    )


def stored_rows(output: Path, split: str) -> dict:
    manifest = load_manifest(output)
    return {row.id: row for uri in manifest.shard_uris(split) for row in read_shard_rows(uri)}


def decode_mask(row) -> np.ndarray:
    mask = Image.open(io.BytesIO(row.mask))
    assert mask.mode == "L"
    return np.asarray(mask)


def test_voc_splits_hold_the_listed_ids(tmp_path: Path) -> None:
    make_voc(tmp_path / "raw")
    manifest = convert(tmp_path / "raw", tmp_path / "out")
    assert sorted(manifest.splits) == ["train", "val"]
    assert sorted(stored_rows(tmp_path / "out", "train")) == VOC_TRAIN
    assert sorted(stored_rows(tmp_path / "out", "val")) == VOC_VAL


def test_voc_palette_png_is_decoded_to_class_indices(tmp_path: Path) -> None:
    make_voc(tmp_path / "raw")
    convert(tmp_path / "raw", tmp_path / "out")
    row = stored_rows(tmp_path / "out", "val")[VOC_VAL[1]]
    np.testing.assert_array_equal(decode_mask(row), label_pattern(4))


def test_voc_image_bytes_are_stored_unchanged(tmp_path: Path) -> None:
    voc = make_voc(tmp_path / "raw")
    convert(tmp_path / "raw", tmp_path / "out")
    row = stored_rows(tmp_path / "out", "train")[VOC_TRAIN[0]]
    assert row.image == (voc / "JPEGImages" / f"{VOC_TRAIN[0]}.jpg").read_bytes()
    assert (row.height, row.width) == (20, 24)


def test_voc_manifest_names_the_21_classes_and_palette(tmp_path: Path) -> None:
    make_voc(tmp_path / "raw")
    manifest = convert(tmp_path / "raw", tmp_path / "out")
    assert manifest.class_names == VOC_CLASS_NAMES and manifest.num_classes == 21
    assert manifest.palette[:3] == ((0, 0, 0), (128, 0, 0), (0, 128, 0))
    assert manifest.ignore_index == 255


@pytest.mark.parametrize("level", ["", "VOCdevkit", "VOCdevkit/VOC2012"])
def test_voc_source_may_point_at_any_level(tmp_path: Path, level: str) -> None:
    make_voc(tmp_path / "raw")
    manifest = convert(tmp_path / "raw" / level, tmp_path / "out")
    assert manifest.splits["train"].rows == 3


def test_train_aug_is_sbd_plus_voc_train_minus_voc_val(tmp_path: Path) -> None:
    make_voc(tmp_path / "raw")
    make_sbd(tmp_path / "sbd")
    convert(tmp_path / "raw", tmp_path / "out", sbd=str(tmp_path / "sbd" / "benchmark_RELEASE"))
    assert sorted(stored_rows(tmp_path / "out", "train_aug")) == sorted(SBD_ONLY + VOC_TRAIN)


def test_train_aug_reads_sbd_only_masks_from_the_mat_file(tmp_path: Path) -> None:
    make_voc(tmp_path / "raw")
    make_sbd(tmp_path / "sbd")
    convert(tmp_path / "raw", tmp_path / "out", sbd=str(tmp_path / "sbd"))
    rows = stored_rows(tmp_path / "out", "train_aug")
    np.testing.assert_array_equal(decode_mask(rows[SBD_ONLY[1]]), label_pattern(101))


def test_train_aug_keeps_the_voc_mask_for_voc_train_ids(tmp_path: Path) -> None:
    make_voc(tmp_path / "raw")
    make_sbd(tmp_path / "sbd")
    convert(tmp_path / "raw", tmp_path / "out", sbd=str(tmp_path / "sbd"))
    rows = stored_rows(tmp_path / "out", "train_aug")
    np.testing.assert_array_equal(decode_mask(rows[VOC_TRAIN[0]]), label_pattern(0))


def test_rgb_voc_mask_is_an_error_naming_the_file(tmp_path: Path) -> None:
    voc = make_voc(tmp_path / "raw")
    bad = voc / "SegmentationClass" / f"{VOC_TRAIN[1]}.png"
    Image.open(bad).convert("RGB").save(bad)
    with pytest.raises(DatasetError, match=rf"{VOC_TRAIN[1]}\.png: mask is a RGB colour image"):
        convert(tmp_path / "raw", tmp_path / "out")
    assert not (tmp_path / "out" / MANIFEST_NAME).exists()


def test_truncated_image_is_an_error_naming_the_file(tmp_path: Path) -> None:
    voc = make_voc(tmp_path / "raw")
    bad = voc / "JPEGImages" / f"{VOC_VAL[0]}.jpg"
    bad.write_bytes(bad.read_bytes()[:200])
    with pytest.raises(DatasetError, match=rf"{VOC_VAL[0]}\.jpg: image is unreadable or truncated"):
        convert(tmp_path / "raw", tmp_path / "out")


def test_missing_mask_is_an_error_naming_the_file(tmp_path: Path) -> None:
    voc = make_voc(tmp_path / "raw")
    (voc / "SegmentationClass" / f"{VOC_TRAIN[2]}.png").unlink()
    with pytest.raises(DatasetError, match=rf"{VOC_TRAIN[2]}\.png: mask file is missing"):
        convert(tmp_path / "raw", tmp_path / "out")


def test_size_mismatch_is_an_error_naming_the_mask(tmp_path: Path) -> None:
    voc = make_voc(tmp_path / "raw")
    write_palette_png(voc / "SegmentationClass" / f"{VOC_TRAIN[0]}.png", label_pattern(0, 10, 24))
    with pytest.raises(DatasetError, match=rf"{VOC_TRAIN[0]}\.png: mask is 24x10 \(WxH\)"):
        convert(tmp_path / "raw", tmp_path / "out")


def test_mask_value_outside_the_classes_is_an_error(tmp_path: Path) -> None:
    voc = make_voc(tmp_path / "raw")
    labels = label_pattern(0)
    labels[5, 5] = 42
    write_palette_png(voc / "SegmentationClass" / f"{VOC_TRAIN[0]}.png", labels)
    with pytest.raises(DatasetError, match=r"mask values 42 are neither a class index"):
        convert(tmp_path / "raw", tmp_path / "out")


def test_duplicate_id_is_an_error(tmp_path: Path) -> None:
    voc = make_voc(tmp_path / "raw")
    (voc / "ImageSets" / "Segmentation" / "val.txt").write_text("\n".join([*VOC_VAL, VOC_VAL[0]]))
    with pytest.raises(DatasetError, match=rf"duplicate id '{VOC_VAL[0]}' in split val"):
        convert(tmp_path / "raw", tmp_path / "out")


def test_empty_split_is_an_error_naming_its_list(tmp_path: Path) -> None:
    voc = make_voc(tmp_path / "raw")
    (voc / "ImageSets" / "Segmentation" / "val.txt").write_text("\n")
    with pytest.raises(DatasetError, match=r"split val is empty: no samples found in .*val\.txt"):
        convert(tmp_path / "raw", tmp_path / "out")


def test_skip_records_each_bad_sample_in_the_manifest(tmp_path: Path) -> None:
    voc = make_voc(tmp_path / "raw")
    (voc / "SegmentationClass" / f"{VOC_TRAIN[2]}.png").unlink()
    truncated = voc / "JPEGImages" / f"{VOC_VAL[0]}.jpg"
    truncated.write_bytes(truncated.read_bytes()[:200])
    convert(tmp_path / "raw", tmp_path / "out", on_error="skip")
    manifest = load_manifest(tmp_path / "out")
    records = {(s.split, s.id): s for s in manifest.skipped}
    assert sorted(records) == [("train", VOC_TRAIN[2]), ("val", VOC_VAL[0])]
    assert records[("train", VOC_TRAIN[2])].file.endswith(f"{VOC_TRAIN[2]}.png")
    assert "missing" in records[("train", VOC_TRAIN[2])].reason
    assert records[("val", VOC_VAL[0])].file == str(truncated)
    assert (manifest.splits["train"].rows, manifest.splits["val"].rows) == (2, 1)


def test_failure_midway_leaves_no_manifest(tmp_path: Path) -> None:
    voc = make_voc(tmp_path / "raw")
    (voc / "SegmentationClass" / f"{VOC_VAL[1]}.png").unlink()  # the very last sample
    with pytest.raises(DatasetError):
        convert(tmp_path / "raw", tmp_path / "out", max_rows=1)
    assert (tmp_path / "out" / "train" / "part-00000.parquet").exists()
    assert not (tmp_path / "out" / MANIFEST_NAME).exists()
    with pytest.raises(DatasetError, match="incomplete"):
        load_manifest(tmp_path / "out")


def test_rerun_over_existing_output_needs_overwrite(tmp_path: Path) -> None:
    make_voc(tmp_path / "raw")
    convert(tmp_path / "raw", tmp_path / "out")
    with pytest.raises(DatasetError, match="--overwrite"):
        convert(tmp_path / "raw", tmp_path / "out")
    manifest = convert(tmp_path / "raw", tmp_path / "out", overwrite=True)
    assert manifest.splits["val"].rows == 2


def test_parallel_workers_give_the_same_shards(tmp_path: Path) -> None:
    make_voc(tmp_path / "raw")
    serial = convert(tmp_path / "raw", tmp_path / "serial")
    parallel = convert(tmp_path / "raw", tmp_path / "parallel", workers=2)
    assert serial.splits == parallel.splits
