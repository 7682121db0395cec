"""ADE20K, Pascal-Context, Cityscapes and plain-folder conversion, and the job's summary."""

import io
from pathlib import Path

import numpy as np
import pytest
from helpers.jobs import run_job_process
from PIL import Image

from pipeline.data.formats.prepare import PrepareOptions, prepare_dataset
from pipeline.data.shards import DatasetError, load_manifest, read_shard_rows


def write_image(path: Path, height: int = 12, width: int = 16, fmt: str = "JPEG") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(len(str(path))).integers(0, 255, (height, width, 3))
    Image.fromarray(pixels.astype(np.uint8)).save(path, format=fmt)


def write_mask(path: Path, labels: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(labels.astype(np.uint8)).save(path, format="PNG")


def raw_labels(values: list[int], height: int = 12, width: int = 16) -> np.ndarray:
    """A mask cycling through `values`, so every value appears."""
    return np.resize(np.array(values, np.uint8), (height, width))


def convert(fmt: str, source: Path, output: Path, **options) -> object:
    return prepare_dataset(
        PrepareOptions(
            format=fmt, source=str(source), output=str(output), workers=1, progress=False, **options
        )
    )


def stored_masks(output: Path, split: str) -> dict[str, np.ndarray]:
    manifest = load_manifest(output)
    return {
        row.id: np.asarray(Image.open(io.BytesIO(row.mask)))
        for uri in manifest.shard_uris(split)
        for row in read_shard_rows(uri)
    }


def make_ade(root: Path, raw: np.ndarray) -> Path:
    base = root / "ADEChallengeData2016"
    for folder, count in (("training", 3), ("validation", 2)):
        for index in range(count):
            stem = f"ADE_{folder[:5]}_{index:08d}"
            write_image(base / "images" / folder / f"{stem}.jpg")
            write_mask(base / "annotations" / folder / f"{stem}.png", raw)
    return base


def test_ade20k_reduces_the_zero_label(tmp_path: Path) -> None:
    make_ade(tmp_path, raw_labels([0, 1, 2, 150]))
    manifest = convert("ade20k", tmp_path, tmp_path / "out")
    assert manifest.num_classes == 150 and len(set(manifest.class_names)) == 150
    assert (manifest.splits["train"].rows, manifest.splits["val"].rows) == (3, 2)
    mask = stored_masks(tmp_path / "out", "val")["ADE_valid_00000001"]
    np.testing.assert_array_equal(mask, raw_labels([255, 0, 1, 149]))


def test_ade20k_label_above_150_is_an_error_naming_the_file(tmp_path: Path) -> None:
    make_ade(tmp_path, raw_labels([0, 151]))
    with pytest.raises(DatasetError, match=r"ADE_train_00000000\.png: mask values 151"):
        convert("ade20k", tmp_path / "ADEChallengeData2016", tmp_path / "out")


def make_context(root: Path, raw: np.ndarray) -> Path:
    voc = root / "VOCdevkit" / "VOC2010"
    ids = {"train": ["2008_000001", "2008_000002"], "val": ["2008_000003"]}
    lists = voc / "ImageSets" / "SegmentationContext"
    lists.mkdir(parents=True)
    for split, split_ids in ids.items():
        (lists / f"{split}.txt").write_text("\n".join(split_ids))
        for sample_id in split_ids:
            write_image(voc / "JPEGImages" / f"{sample_id}.jpg")
            write_mask(voc / "SegmentationClassContext" / f"{sample_id}.png", raw)
    return voc


def test_pascal_context_59_ignores_background(tmp_path: Path) -> None:
    make_context(tmp_path, raw_labels([0, 1, 59]))
    manifest = convert("pascal_context", tmp_path, tmp_path / "out")
    assert manifest.num_classes == 59 and manifest.class_names[0] == "aeroplane"
    mask = stored_masks(tmp_path / "out", "val")["2008_000003"]
    np.testing.assert_array_equal(mask, raw_labels([255, 0, 58]))


def test_pascal_context_60_keeps_background_as_class_0(tmp_path: Path) -> None:
    make_context(tmp_path, raw_labels([0, 1, 59]))
    manifest = convert("pascal_context", tmp_path, tmp_path / "out", num_classes=60)
    assert manifest.num_classes == 60 and manifest.class_names[0] == "background"
    mask = stored_masks(tmp_path / "out", "train")["2008_000001"]
    np.testing.assert_array_equal(mask, raw_labels([0, 1, 59]))


def make_cityscapes(root: Path, raw: np.ndarray) -> None:
    for split, cities in (("train", ["aachen", "bremen"]), ("val", ["lindau"]), ("test", ["bonn"])):
        for city in cities:
            stem = f"{city}_000000_000019"
            write_image(root / "leftImg8bit" / split / city / f"{stem}_leftImg8bit.png", fmt="PNG")
            write_mask(root / "gtFine" / split / city / f"{stem}_gtFine_labelIds.png", raw)


def test_cityscapes_maps_label_ids_to_train_ids(tmp_path: Path) -> None:
    make_cityscapes(tmp_path / "cityscapes", raw_labels([0, 7, 8, 26, 33, 255]))
    manifest = convert("cityscapes", tmp_path, tmp_path / "out")
    assert manifest.num_classes == 19 and sorted(manifest.splits) == ["train", "val"]
    mask = stored_masks(tmp_path / "out", "val")["lindau_000000_000019"]
    np.testing.assert_array_equal(mask, raw_labels([255, 0, 1, 13, 18, 255]))
    assert sorted(stored_masks(tmp_path / "out", "train")) == [
        "aachen_000000_000019",
        "bremen_000000_000019",
    ]


def test_cityscapes_test_split_only_on_request(tmp_path: Path) -> None:
    make_cityscapes(tmp_path, raw_labels([7]))
    manifest = convert("cityscapes", tmp_path, tmp_path / "out", include_test=True)
    assert manifest.splits["test"].rows == 1


def test_cityscapes_unknown_label_id_is_an_error(tmp_path: Path) -> None:
    make_cityscapes(tmp_path, raw_labels([7, 40]))
    with pytest.raises(DatasetError, match=r"_gtFine_labelIds\.png: mask values 40"):
        convert("cityscapes", tmp_path, tmp_path / "out")


def make_folder(root: Path, stems: list[str], classes: list[str] | None = None) -> None:
    for index, stem in enumerate(stems):
        write_image(root / "images" / f"{stem}.jpg")
        write_mask(root / "masks" / f"{stem}.png", raw_labels([index % 3, 255]))
    if classes:
        (root / "classes.txt").write_text("\n".join(classes) + "\n")


def test_folder_uses_split_lists_and_class_names(tmp_path: Path) -> None:
    make_folder(tmp_path, ["a", "b", "c"], ["road", "tree", "sky"])
    (tmp_path / "splits").mkdir()
    (tmp_path / "splits" / "train.txt").write_text("a\nc\n")
    (tmp_path / "splits" / "val.txt").write_text("b\n")
    manifest = convert("folder", tmp_path, tmp_path / "out")
    assert manifest.class_names == ("road", "tree", "sky")
    assert sorted(stored_masks(tmp_path / "out", "train")) == ["a", "c"]
    np.testing.assert_array_equal(stored_masks(tmp_path / "out", "val")["b"], raw_labels([1, 255]))


def test_folder_val_fraction_split_is_seeded(tmp_path: Path) -> None:
    make_folder(tmp_path, [f"s{index}" for index in range(10)])
    first = convert("folder", tmp_path, tmp_path / "one", num_classes=3, val_fraction=0.3, seed=4)
    convert("folder", tmp_path, tmp_path / "two", num_classes=3, val_fraction=0.3, seed=4)
    assert (first.splits["train"].rows, first.splits["val"].rows) == (7, 3)
    assert sorted(stored_masks(tmp_path / "one", "val")) == sorted(
        stored_masks(tmp_path / "two", "val")
    )


def test_folder_without_class_count_is_an_error(tmp_path: Path) -> None:
    make_folder(tmp_path, ["a", "b"])
    with pytest.raises(DatasetError, match=r"no classes\.txt.*--num-classes"):
        convert("folder", tmp_path, tmp_path / "out")


def test_folder_images_sharing_a_stem_are_duplicates(tmp_path: Path) -> None:
    make_folder(tmp_path, ["a", "b", "c"], ["x", "y", "z"])
    write_image(tmp_path / "images" / "a.png", fmt="PNG")
    with pytest.raises(DatasetError, match=r"duplicate id 'a'"):
        convert("folder", tmp_path, tmp_path / "out", val_fraction=0.3)


@pytest.mark.integration
def test_job_prints_the_summary_table_and_manifest_path(tmp_path: Path) -> None:
    make_folder(tmp_path / "raw", ["a", "b", "c", "d"], ["x", "y", "z"])
    (tmp_path / "raw" / "masks" / "d.png").unlink()
    arguments = ["--format", "folder"]
    arguments += ["--source", str(tmp_path / "raw"), "--output", str(tmp_path / "out")]
    arguments += ["--val-fraction", "0.25", "--on-error", "skip", "--workers", "1", "--no-progress"]
    result = run_job_process("prepare_data.py", arguments, home=tmp_path / "home", check=True)
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["split", "images", "shards", "skipped"]
    assert set(lines[1]) <= {"-", " "}, "a rule under the header"
    assert sum(int(line.split()[3]) for line in lines[2:4]) == 1
    assert f"manifest: {(tmp_path / 'out').resolve()}/manifest.json" in result.stdout


@pytest.mark.integration
def test_job_without_source_is_a_usage_error(tmp_path: Path) -> None:
    arguments = ["--format", "voc", "--output", str(tmp_path)]
    result = run_job_process("prepare_data.py", arguments, home=tmp_path / "home")
    assert result.returncode == 2 and "--format voc needs --source" in result.stderr
