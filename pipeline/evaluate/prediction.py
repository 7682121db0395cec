"""Predict palette masks (and colour overlays) for a folder of images or a data set split.

The images flow through Ray Data (`read_binary_files` for a folder, the split's shards for a
manifest) to the same kind of actor pool as evaluation; each actor writes one palette PNG per
image to `<output>/<stem>.png` (pixel values are class indices, the palette is the
checkpoint's) and, with `overlay`, a blended picture to `<output>/overlay/<stem>.png`.
Each PNG is encoded in memory and written with `pipeline.storage.write_bytes_atomically`, so a
crash never leaves a complete-looking but truncated mask.
"""

from __future__ import annotations

import io
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image
from torch import nn

from pipeline.data.transforms import decode_image, normalize
from pipeline.evaluate.actor_pool import plan_actor_pool, prepare_actor_model
from pipeline.evaluate.inference_model import (
    InferenceError,
    InferenceModel,
    load_project_checkpoint,
)
from pipeline.evaluate.pictures import overlay, palette_png
from pipeline.evaluate.testtime import TestTimeOptions, predict_label_map
from pipeline.storage import write_bytes_atomically

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
OVERLAY_FOLDER = "overlay"


@dataclass(frozen=True)
class PredictionRequest:
    """checkpoint: this project's checkpoint file or Ray checkpoint folder. input: a folder of
    images, or a prepared data set (folder or manifest.json) whose `split` is predicted."""

    checkpoint: str
    input: str
    output: str
    split: str = "val"
    options: TestTimeOptions = field(default_factory=TestTimeOptions)
    overlay: bool = False
    batch_size: int = 1
    actors: int | None = None
    cpus_per_actor: float | None = None


@dataclass(frozen=True)
class PredictionReport:
    """What was written: one mask per image (name -> (height, width))."""

    output: str
    sizes: dict[str, tuple[int, int]]
    seconds: float

    @property
    def num_images(self) -> int:
        return len(self.sizes)


def write_png_atomically(picture: Image.Image, path: str | Path) -> None:
    """Encode `picture` as PNG and write it whole to `path`, a local path or an s3:// / gs://
    URI (see `write_bytes_atomically`)."""
    encoded = io.BytesIO()
    picture.save(encoded, format="PNG")
    write_bytes_atomically(path, encoded.getvalue())


class MaskWriter:
    """Ray Data actor: encoded images in, masks written to disk, (name, height, width) out.

    Input batch columns: name (output stem) and bytes (the encoded image).
    """

    def __init__(
        self,
        model: nn.Module | object,
        options: TestTimeOptions,
        output: str,
        palette: tuple[tuple[int, int, int], ...],
        ignore_index: int,
        mean: tuple[float, float, float],
        std: tuple[float, float, float],
        with_overlay: bool,
        torch_threads: int,
    ) -> None:
        self.model = prepare_actor_model(model, torch_threads)
        self.options = options
        self.output = Path(output)
        self.palette = palette
        self.ignore_index = ignore_index
        self.mean = mean
        self.std = std
        self.with_overlay = with_overlay

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        heights, widths = [], []
        for name, data in zip(batch["name"], batch["bytes"], strict=True):
            try:
                rgb = decode_image(bytes(data))
            except Exception as error:
                raise InferenceError(f"cannot decode input image {name!r}: {error}") from error
            prediction = predict_label_map(
                self.model, normalize(rgb, self.mean, self.std), self.options
            )
            mask = palette_png(prediction, self.palette, self.ignore_index)
            write_png_atomically(mask, self.output / f"{name}.png")
            if self.with_overlay:
                blended = overlay(rgb, prediction, self.palette, ignore_index=self.ignore_index)
                picture = Image.fromarray(blended)
                write_png_atomically(picture, self.output / OVERLAY_FOLDER / f"{name}.png")
            heights.append(rgb.shape[0])
            widths.append(rgb.shape[1])
        return {
            "name": np.asarray(batch["name"]),
            "height": np.asarray(heights, dtype=np.int64),
            "width": np.asarray(widths, dtype=np.int64),
        }


def list_images(folder: Path) -> list[Path]:
    """The image files directly in `folder`, sorted; stems must be unique (they name outputs)."""
    images = sorted(
        path
        for path in folder.iterdir()
        if path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES
    )
    if not images:
        raise InferenceError(
            f"--input {folder} holds no images ({', '.join(IMAGE_SUFFIXES)}); pass a folder of "
            "images or a prepared data set's manifest.json"
        )
    stems: dict[str, Path] = {}
    for path in images:
        if path.stem in stems:
            raise InferenceError(
                f"--input {folder}: {stems[path.stem].name} and {path.name} would both be written "
                f"as {path.stem}.png; rename one of them"
            )
        stems[path.stem] = path
    return images


def input_dataset(request: PredictionRequest):
    """A Ray Dataset with columns name, bytes: the folder's images or the split's images."""
    import ray

    location = Path(request.input).expanduser()
    if location.is_dir() and not (location / "manifest.json").exists():
        paths = [str(path.resolve()) for path in list_images(location)]
        files = ray.data.read_binary_files(paths, include_paths=True)
        return files.map_batches(_name_from_path, batch_format="numpy")
    from pipeline.data.shard_source import read_shards
    from pipeline.data.shards import load_manifest

    manifest = load_manifest(request.input)
    shards = read_shards(manifest, request.split, ["id", "image"])
    return shards.map_batches(_name_from_id, batch_format="numpy")


def count_inputs(request: PredictionRequest) -> int:
    """How many images `input_dataset(request)` holds."""
    location = Path(request.input).expanduser()
    if location.is_dir() and not (location / "manifest.json").exists():
        return len(list_images(location))
    from pipeline.data.shards import load_manifest

    return load_manifest(request.input, verify=False).splits[request.split].rows


def _name_from_path(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    names = [Path(str(path)).stem for path in batch["path"]]
    return {"name": np.asarray(names), "bytes": batch["bytes"]}


def _name_from_id(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    # Sample ids may contain "/" (e.g. "city/frame"): flatten them into a file name.
    names = [str(sample_id).replace("/", "__") for sample_id in batch["id"]]
    return {"name": np.asarray(names), "bytes": batch["image"]}


def predict(request: PredictionRequest) -> PredictionReport:
    """Write a palette mask (and an overlay) for every input image; see the module docstring."""
    import ray

    from pipeline.console.progress import progress_over
    from pipeline.train.connection import connect

    started = time.perf_counter()
    inference: InferenceModel = load_project_checkpoint(request.checkpoint)
    if request.batch_size < 1:
        raise InferenceError(f"--batch-size must be at least 1, got {request.batch_size}")
    output = Path(request.output).expanduser().resolve()
    connect()
    dataset = input_dataset(request)
    (output / OVERLAY_FOLDER if request.overlay else output).mkdir(parents=True, exist_ok=True)
    pool = plan_actor_pool(request.actors, request.cpus_per_actor)
    # Blocks of `batch_size` rows so that the images spread over every actor of the pool.
    dataset = dataset.repartition(target_num_rows_per_block=request.batch_size)
    written = dataset.map_batches(
        MaskWriter,
        fn_constructor_kwargs={
            "model": ray.put(inference.model),
            "options": request.options,
            "output": str(output),
            "palette": inference.palette,
            "ignore_index": inference.ignore_index,
            "mean": inference.mean,
            "std": inference.std,
            "with_overlay": request.overlay,
            "torch_threads": pool.torch_threads,
        },
        batch_size=request.batch_size,
        batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=pool.actors),
        num_cpus=pool.num_cpus,
        num_gpus=pool.num_gpus or None,
    )
    sizes = {}
    # Blocks as the actors finish them (`batch_size=None`), so the bar moves with each one.
    batches = written.iter_batches(batch_format="numpy", batch_size=None)
    total = count_inputs(request)
    for batch in progress_over(batches, total, "predicting", "img", lambda b: len(b["name"])):
        for name, height, width in zip(batch["name"], batch["height"], batch["width"], strict=True):
            sizes[str(name)] = (int(height), int(width))
    return PredictionReport(str(output), sizes, time.perf_counter() - started)
