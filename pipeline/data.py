"""Reading prepared shards into Ray Data: augmented training data, full-size evaluation data.

Shard rows (see pipeline/shards.py) hold encoded image and mask bytes; decoding and
augmentation run in Ray Data `map_batches` tasks on CPUs, so training workers only receive
ready arrays.

Randomness, and the guarantee given:
- Augmentation of a sample is a pure function of (seed, epoch, sample id): every sample gets
  its own `np.random.Generator` seeded from those three, so what a sample looks like does not
  depend on which task, batch or worker it lands in.
- The epoch is `first_epoch + k` where k counts the completed passes of this Dataset object
  (Ray Data's execution index, the same counter its own `RandomSeedConfig(...,
  reseed_after_execution=True)` uses). Ray Train re-executes the pipeline once per epoch, so
  each epoch gets fresh augmentation, reproducible from the seed. Pass `epoch=` to pin it
  instead (a dataset built per epoch by the caller, or a test). After a resume, build the
  dataset with `first_epoch=<epoch to resume at>`.
- Row order is a full `random_shuffle` of the encoded rows, reseeded each pass from
  (seed, first_epoch) and the execution index: random across epochs, reproducible from the
  seed up to Ray's parallel task completion order (exact order needs
  `DataContext.execution_options.preserve_order`).

Evaluation data keeps every image at its original size; see `eval_dataset`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import ray
import ray.data
import ray.train
from ray.data import DataContext, RandomSeedConfig

from pipeline.shards import Manifest
from pipeline.transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    AugmentationConfig,
    augment_sample,
    decode_image,
    decode_mask,
    normalize,
)

TRAIN_SPLIT_NAMES = ("train",)
SAMPLE_COLUMNS = ["id", "image", "mask"]


@dataclass(frozen=True)
class IngestOptions:
    """Throughput knobs of the decode + augment stage (defaults measured by benchmarks/ingest.py).

    batch_size: rows per map_batches call; small batches keep the stream flowing to the trainer.
    num_cpus: CPUs reserved per decode/augment task.
    concurrency: maximum parallel tasks (None: as many as the free CPUs allow).
    full_shuffle: shuffle every row each epoch (an all-to-all over the encoded bytes); when
        False only the order of shard files changes per epoch (use a local shuffle buffer
        in `iter_torch_batches` then).
    """

    batch_size: int = 8
    num_cpus: float = 1.0
    concurrency: int | None = None
    full_shuffle: bool = True

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ValueError(f"IngestOptions.batch_size must be >= 1, got {self.batch_size}")
        if self.num_cpus <= 0:
            raise ValueError(f"IngestOptions.num_cpus must be > 0, got {self.num_cpus}")
        if self.concurrency is not None and self.concurrency < 1:
            raise ValueError(
                f"IngestOptions.concurrency must be None or >= 1, got {self.concurrency}"
            )


def sample_seed(seed: int, epoch: int, sample_id: str) -> list[int]:
    """Seed material for one sample's generator: stable across processes (no Python hash)."""
    digest = hashlib.blake2b(sample_id.encode("utf-8"), digest_size=8).digest()
    return [seed, epoch, int.from_bytes(digest, "little")]


def _current_pass() -> int:
    """How many times this Dataset has been executed before the current pass (0, 1, ...)."""
    # Ray Data installs the executing dataset's DataContext in each task; its execution index
    # is what Ray's own reseed_after_execution shuffles use to vary per epoch.
    return int(DataContext.get_current()._execution_idx)


@dataclass(frozen=True)
class _AugmentBatch:
    """map_batches callable: encoded rows -> image float32 (B, 3, H, W), mask int64 (B, H, W)."""

    augmentation: AugmentationConfig
    seed: int
    first_epoch: int
    epoch: int | None

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        epoch = self.epoch if self.epoch is not None else self.first_epoch + _current_pass()
        crop_height, crop_width = self.augmentation.crop_size
        count = len(batch["id"])
        images = np.empty((count, 3, crop_height, crop_width), dtype=np.float32)
        masks = np.empty((count, crop_height, crop_width), dtype=np.int64)
        for index in range(count):
            sample_id = str(batch["id"][index])
            image, mask = _decode_pair(batch, index)
            rng = np.random.default_rng(sample_seed(self.seed, epoch, sample_id))
            images[index], masks[index] = augment_sample(image, mask, self.augmentation, rng)
        return {"image": images, "mask": masks}


def _decode_pair(batch: dict[str, np.ndarray], index: int) -> tuple[np.ndarray, np.ndarray]:
    sample_id = batch["id"][index]
    try:
        image = decode_image(batch["image"][index])
        mask = decode_mask(batch["mask"][index])
    except ValueError as error:
        raise ValueError(f"sample {sample_id!r}: {error}") from error
    if image.shape[:2] != mask.shape:
        raise ValueError(
            f"sample {sample_id!r}: image is {image.shape[:2]} but mask is {mask.shape}; "
            f"re-run the data preparation job for this data set"
        )
    return image, mask


def _shuffle_seed(seed: int, first_epoch: int) -> int:
    digest = hashlib.blake2b(f"{seed}:{first_epoch}".encode(), digest_size=4).digest()
    return int.from_bytes(digest, "little")


def train_dataset(
    manifest: Manifest,
    split: str,
    augmentation: AugmentationConfig,
    seed: int,
    *,
    first_epoch: int = 0,
    epoch: int | None = None,
    ingest: IngestOptions | None = None,
) -> ray.data.Dataset:
    """Augmented training samples of one split, reshuffled and re-augmented every epoch.

    Columns: `image` float32 (3, crop_h, crop_w) normalised, `mask` int64 (crop_h, crop_w)
    with ignore_index on padding; every row has the crop shape, so `iter_torch_batches`
    stacks them into (B, 3, H, W) / (B, H, W). See the module docstring for which randomness
    is reproducible: augmentation depends only on (seed, epoch, sample id), with epoch =
    `first_epoch` + number of completed passes, unless `epoch` pins it.
    """
    ingest = ingest or IngestOptions()
    shuffle_seed = _shuffle_seed(seed, first_epoch)
    reseeded = RandomSeedConfig(seed=shuffle_seed, reseed_after_execution=True)
    dataset = ray.data.read_parquet(
        manifest.shard_uris(split),
        shuffle=ray.data.FileShuffleConfig(seed=shuffle_seed, reseed_after_execution=True),
    ).select_columns(SAMPLE_COLUMNS)
    if ingest.full_shuffle:
        dataset = dataset.random_shuffle(seed=reseeded)
    return dataset.map_batches(
        _AugmentBatch(augmentation, seed, first_epoch, epoch),
        batch_size=ingest.batch_size,
        batch_format="numpy",
        num_cpus=ingest.num_cpus,
        concurrency=ingest.concurrency,
        zero_copy_batch=True,
    )


@dataclass(frozen=True)
class _NormalizeBatch:
    """map_batches callable for evaluation: decode, normalise, keep the original size."""

    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    keep_uint8: bool

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, Any]:
        ids, images, masks, originals = [], [], [], []
        for index in range(len(batch["id"])):
            image, mask = _decode_pair(batch, index)
            ids.append(str(batch["id"][index]))
            images.append(normalize(image, self.mean, self.std))
            masks.append(mask.astype(np.int64))
            originals.append(image)
        columns: dict[str, Any] = {"id": np.array(ids, dtype=object)}
        columns["image"] = _ragged(images)
        columns["mask"] = _ragged(masks)
        if self.keep_uint8:
            columns["image_uint8"] = _ragged(originals)
        return columns


def _ragged(arrays: list[np.ndarray]) -> np.ndarray:
    """A 1-D object array of per-row arrays: Ray Data stores it as a variable-shaped tensor."""
    holder = np.empty(len(arrays), dtype=object)
    for index, array in enumerate(arrays):
        holder[index] = array
    return holder


def eval_dataset(
    manifest: Manifest,
    split: str,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    *,
    keep_uint8: bool = False,
    ingest: IngestOptions | None = None,
) -> ray.data.Dataset:
    """Every sample of a split at its original size, in shard order, each exactly once.

    Columns: `id` str, `image` float32 (3, h, w) normalised, `mask` int64 (h, w) (labels
    never resized), and with keep_uint8 also `image_uint8` uint8 (h, w, 3) for drawing.
    Sizes differ between rows, so Ray Data stores image/mask as variable-shaped tensors:
    iterate with `iter_batches(batch_size=1, batch_format="numpy")` and take `batch["image"][0]`
    (with larger batches `batch["image"]` is an object array of per-row arrays).
    """
    ingest = ingest or IngestOptions()
    if len(mean) != 3 or len(std) != 3:
        raise ValueError(f"eval_dataset: mean and std need 3 RGB values, got {mean}, {std}")
    dataset = ray.data.read_parquet(manifest.shard_uris(split)).select_columns(SAMPLE_COLUMNS)
    return dataset.map_batches(
        _NormalizeBatch(tuple(mean), tuple(std), keep_uint8),
        batch_size=ingest.batch_size,
        batch_format="numpy",
        num_cpus=ingest.num_cpus,
        concurrency=ingest.concurrency,
        zero_copy_batch=True,
    )


class SegmentationDataConfig(ray.train.DataConfig):
    """Ray Train data config: training splits split evenly, evaluation splits exactly.

    Datasets named in `train_split_names` are streamed with `equal=True` (every worker gets
    the same number of rows per epoch, a few rows may be dropped, which keeps DDP steps in
    lockstep). Every other dataset is streamed with `equal=False`, so across all workers
    each row is read exactly once: no row dropped or repeated to even out the shards, as
    exact metrics need. Workers may then receive different numbers of rows.
    """

    def __init__(self, train_split_names: Sequence[str] = TRAIN_SPLIT_NAMES) -> None:
        super().__init__(datasets_to_split="all")
        self.train_split_names = tuple(train_split_names)

    def configure(
        self,
        datasets: dict[str, ray.data.Dataset],
        world_size: int,
        worker_handles: Any,
        worker_node_ids: Any,
        **kwargs: Any,
    ) -> list[dict[str, Any]]:
        output: list[dict[str, Any]] = [{} for _ in range(world_size)]
        locality_hints = worker_node_ids if self._enable_shard_locality else None
        for name, dataset in datasets.items():
            if dataset.name is None:
                dataset.set_name(name)
            dataset = dataset.copy(dataset)
            dataset.context.execution_options = self._resolve_execution_options(name)
            splits = dataset.streaming_split(
                world_size, equal=name in self.train_split_names, locality_hints=locality_hints
            )
            for rank, split_iterator in enumerate(splits):
                output[rank][name] = split_iterator
        return output


def data_config(train_split_name: str = "train") -> SegmentationDataConfig:
    """The `dataset_config` for `TorchTrainer`: `train_split_name` even, everything else exact."""
    return SegmentationDataConfig((train_split_name,))
