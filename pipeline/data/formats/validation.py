"""Read, check and encode one raw sample; runs in worker processes, so it is a pure function.

Every problem becomes a `SampleResult` with a reason instead of an exception, so the writer
can either stop with the file named (`--on-error fail`) or record and skip it.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from pipeline.data.formats.common import MASK_PNG, MASK_SBD_MAT, SampleSpec
from pipeline.data.shards import ShardRow

STORED_IMAGE_FORMATS = ("JPEG", "PNG")
INDEX_MASK_MODES = ("L", "P")  # P: a palette PNG whose pixel values are the class indices


class SampleProblem(Exception):
    """A raw sample cannot be stored as it is; `file` is the file at fault."""

    def __init__(self, file: str, reason: str) -> None:
        super().__init__(f"{file}: {reason}")
        self.file = file
        self.reason = reason


@dataclass(frozen=True)
class SampleResult:
    """The stored row, or the file at fault and why (then `row` is None)."""

    split: str
    id: str
    row: ShardRow | None
    file: str = ""
    reason: str = ""


def convert_sample(spec: SampleSpec) -> SampleResult:
    """Check one sample and build its shard row; never raises for bad input."""
    try:
        image_bytes, height, width = read_image(spec.image_file)
        raw_mask = read_mask(spec)
        if raw_mask.shape != (height, width):
            raise SampleProblem(
                spec.mask_file,
                f"mask is {raw_mask.shape[1]}x{raw_mask.shape[0]} (WxH) but its image "
                f"{spec.image_file} is {width}x{height}",
            )
        try:
            labels = spec.mapping.apply(raw_mask)
        except ValueError as error:
            raise SampleProblem(spec.mask_file, str(error)) from None
        row = ShardRow(spec.id, image_bytes, encode_mask_png(labels), height, width)
        return SampleResult(spec.split, spec.id, row)
    except SampleProblem as problem:
        return SampleResult(spec.split, spec.id, None, problem.file, problem.reason)


def read_image(path: str) -> tuple[bytes, int, int]:
    """The file's original bytes and its (height, width), after a full decode to catch damage."""
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        raise SampleProblem(path, "image file is missing") from None
    except OSError as error:
        raise SampleProblem(path, f"image file cannot be read ({error})") from None
    try:
        with Image.open(io.BytesIO(data)) as image:
            if image.format not in STORED_IMAGE_FORMATS:
                raise SampleProblem(
                    path, f"image is {image.format}, not JPEG or PNG; convert it to PNG first"
                )
            image.load()
            width, height = image.size
    except SampleProblem:
        raise
    except Exception as error:  # PIL raises many types for damaged files
        raise SampleProblem(path, f"image is unreadable or truncated ({error})") from None
    return data, height, width


def read_mask(spec: SampleSpec) -> np.ndarray:
    """The raw (H, W) uint8 label ids of a mask file, before the label mapping."""
    path = spec.mask_file
    if not Path(path).is_file():
        raise SampleProblem(path, f"mask file is missing (image {spec.image_file})")
    if spec.mask_format == MASK_SBD_MAT:
        return read_sbd_mat(path)
    if spec.mask_format != MASK_PNG:
        raise SampleProblem(path, f"unknown mask format {spec.mask_format!r}")
    try:
        with Image.open(path) as mask:
            mask.load()
            mode = mask.mode
            if mask.format != "PNG":
                raise SampleProblem(path, f"mask is {mask.format}; masks must be lossless PNG")
            if mode in INDEX_MASK_MODES:
                return np.asarray(mask, dtype=np.uint8)
            if mode in ("I", "I;16", "I;16B"):
                values = np.asarray(mask)
                if values.min() < 0 or values.max() > 255:
                    raise SampleProblem(path, "16-bit mask has values outside 0..255")
                return values.astype(np.uint8)
    except SampleProblem:
        raise
    except Exception as error:
        raise SampleProblem(path, f"mask is unreadable or truncated ({error})") from None
    raise SampleProblem(
        path,
        f"mask is a {mode} colour image; class-index masks are expected (a single-channel "
        "or palette PNG whose pixel values are the class indices, 255 = ignore)",
    )


def read_sbd_mat(path: str) -> np.ndarray:
    """The class mask in an SBD cls/*.mat file (struct GTcls, field Segmentation)."""
    from scipy.io import loadmat  # scipy is heavy; only SBD needs it

    try:
        content = loadmat(path, squeeze_me=True, struct_as_record=False)
        segmentation = np.asarray(content["GTcls"].Segmentation)
    except (KeyError, AttributeError):
        raise SampleProblem(path, "has no struct GTcls with a Segmentation field") from None
    except Exception as error:
        raise SampleProblem(path, f"is not a readable .mat file ({error})") from None
    if segmentation.ndim != 2 or segmentation.min() < 0 or segmentation.max() > 255:
        raise SampleProblem(path, "GTcls.Segmentation is not a 2-D mask of values 0..255")
    return segmentation.astype(np.uint8)


def encode_mask_png(labels: np.ndarray) -> bytes:
    """A (H, W) uint8 class-index mask as single-channel (mode L) PNG bytes."""
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(labels, dtype=np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()
