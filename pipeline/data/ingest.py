"""Reading prepared shards into Ray Data: augmented training data, full-size evaluation data.

Shard rows (see pipeline/data/shards.py) hold encoded image and mask bytes; decoding and
augmentation run in Ray Data `map_batches` tasks on CPUs, so training workers only receive
ready crops: uint8, which the training step normalises on the worker's device.

Randomness, and the guarantee given:
- Augmentation of a sample is a pure function of (seed, epoch, sample id): every sample gets
  its own `np.random.Generator` seeded from those three, so what a sample looks like does not
  depend on which task, batch or worker it lands in.
- The epoch is `first_epoch + k` where k counts the completed passes of this Dataset object
  (Ray Data's execution index, the counter behind its own `RandomSeedConfig(...,
  reseed_after_execution=True)`; see `shard_source.completed_passes`). Ray Train re-executes
  the pipeline once per epoch, so each epoch gets fresh augmentation, reproducible from the
  seed. Pass `epoch=` to pin it instead (a dataset built per epoch by the caller, or a test).
  After a resume, build the dataset with `first_epoch=<epoch to resume at>`.
- Row order (default `IngestOptions.shuffle="window"`): the split is read in windows of
  `shuffle_window` consecutive rows of one shard; every pass reads the windows in a new order,
  seeded from (seed, first_epoch) and the execution index (`shard_source.ordered_blocks`), and
  permutes each window's rows with a generator seeded from (seed, epoch, the window's first
  sample id). Random across epochs and reproducible from the seed up to Ray's parallel task
  completion order (exact order needs `DataContext.execution_options.preserve_order`). This is
  a windowed shuffle, not a uniform one: the rows of a window stay together, so shards should
  not be sorted by class (converters write them in data set order), and a consumer may add
  `iter_torch_batches(..., local_shuffle_buffer_size=..., local_shuffle_seed=epoch)` to mix
  further.
  `shuffle="rows"` restores a full `random_shuffle` of the encoded rows: an all-to-all
  exchange whose memory grows with the data set.

Evaluation data keeps every image at its original size, uint8 as well; see `eval_dataset`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from dataclasses import fields as fields_of
from typing import Any

import numpy as np
import ray
import ray.data
import ray.train
from ray.data import DataContext, ExecutionOptions, RandomSeedConfig

from pipeline.config.ingest import IngestOptions
from pipeline.config.schema import DataSection
from pipeline.data.shard_source import completed_passes, read_shards
from pipeline.data.shards import Manifest
from pipeline.data.transforms import (
    AugmentationConfig,
    augment_sample,
    decode_image,
    decode_mask,
)

# The names of the data sets a training run streams (`training_datasets`).
TRAIN_DATASET = "train"
VAL_DATASET = "val"
TRAIN_SPLIT_NAMES = (TRAIN_DATASET,)
SAMPLE_COLUMNS = ["id", "image", "mask"]
# The epoch a training row's augmentation was drawn for (int32): training epoch e reads data
# epoch e - 1, which a worker checks (`pipeline.train.worker.check_augmentation_epoch`), so a
# restarted or resized group cannot silently train on another epoch's augmentation.
AUGMENTATION_EPOCH_COLUMN = "augmentation_epoch"
# A training dataset's first epoch, when set in its DataContext (`DataContext.set_config`):
# replaces the `first_epoch` it was built with. Ray Train hands every new worker group a fresh
# copy of the dataset, whose pass count starts again at 0; `SegmentationDataConfig` sets this
# to the epochs the group's checkpoint completed, so a restarted group reads the right epoch.
FIRST_EPOCH_CONFIG = "apcnet.first_epoch"


def sample_seed(seed: int, epoch: int, sample_id: str) -> list[int]:
    """Seed material for one sample's generator: stable across processes (no Python hash)."""
    digest = hashlib.blake2b(sample_id.encode("utf-8"), digest_size=8).digest()
    return [seed, epoch, int.from_bytes(digest, "little")]


@dataclass(frozen=True)
class _AugmentBatch:
    """map_batches callable: encoded rows -> blocks of image uint8 (B, H, W, 3), mask uint8
    (B, H, W), B <= batch_size; with `shuffle_window` the encoded rows are permuted first."""

    augmentation: AugmentationConfig
    seed: int
    first_epoch: int
    epoch: int | None
    batch_size: int
    shuffle_window: bool

    def __call__(self, batch: dict[str, np.ndarray]) -> Iterator[dict[str, np.ndarray]]:
        if self.epoch is not None:
            epoch = self.epoch
        else:
            context = DataContext.get_current()
            first_epoch = context.get_config(FIRST_EPOCH_CONFIG, self.first_epoch)
            epoch = first_epoch + completed_passes(context)
        count = len(batch["id"])
        order = np.arange(count)
        if self.shuffle_window and count > 1:
            # A window is a fixed run of one shard's rows, so seeding from its first row makes
            # the permutation reproducible without any shared state.
            window_seed = sample_seed(self.seed, epoch, f"window:{batch['id'][0]}")
            order = np.random.default_rng(window_seed).permutation(count)
        for start in range(0, count, self.batch_size):
            yield self._augment(batch, order[start : start + self.batch_size], epoch)

    def _augment(
        self, batch: dict[str, np.ndarray], indices: np.ndarray, epoch: int
    ) -> dict[str, np.ndarray]:
        crop_height, crop_width = self.augmentation.crop_size
        images = np.empty((len(indices), crop_height, crop_width, 3), dtype=np.uint8)
        masks = np.empty((len(indices), crop_height, crop_width), dtype=np.uint8)
        for position, index in enumerate(indices):
            sample_id = str(batch["id"][index])
            image, mask = _decode_pair(batch, int(index))
            rng = np.random.default_rng(sample_seed(self.seed, epoch, sample_id))
            images[position], masks[position] = augment_sample(image, mask, self.augmentation, rng)
        drawn_for = np.full(len(indices), epoch, dtype=np.int32)
        return {"image": images, "mask": masks, AUGMENTATION_EPOCH_COLUMN: drawn_for}


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

    Columns: `image` uint8 (crop_h, crop_w, 3) RGB, not normalised (the training step does
    that on its device: `pipeline.train.step.batch_to_device`), `mask` uint8 (crop_h, crop_w)
    with ignore_index on padding, `augmentation_epoch` int32 (the epoch drawn for); every row has the crop shape, so `iter_torch_batches`
    stacks them into (B, H, W, 3) / (B, H, W). See the module docstring for which randomness
    is reproducible: augmentation depends only on (seed, epoch, sample id), with epoch =
    `first_epoch` + number of completed passes, unless `epoch` pins it.
    """
    ingest = ingest or IngestOptions()
    shuffle_seed = _shuffle_seed(seed, first_epoch)
    reseeded = RandomSeedConfig(seed=shuffle_seed, reseed_after_execution=True)
    dataset = read_shards(
        manifest,
        split,
        SAMPLE_COLUMNS,
        rows_per_block=ingest.rows_per_read_block(ingest.rows_per_call),
        order="blocks" if ingest.shuffle == "window" else "files",
        seed=shuffle_seed,
    )
    if ingest.shuffle == "rows":
        dataset = dataset.random_shuffle(seed=reseeded)
    augment = _AugmentBatch(
        augmentation,
        seed,
        first_epoch,
        epoch,
        batch_size=ingest.batch_size,
        shuffle_window=ingest.shuffle == "window",
    )
    return _map_encoded_rows(dataset, augment, ingest)


def _map_encoded_rows(
    dataset: ray.data.Dataset, function: Any, ingest: IngestOptions
) -> ray.data.Dataset:
    """Apply a frozen-dataclass batch callable on tasks, or on an actor pool (one copy each)."""
    options: dict[str, Any] = {
        "batch_size": ingest.rows_per_call,
        "batch_format": "numpy",
        "num_cpus": ingest.num_cpus,
        "zero_copy_batch": True,
    }
    if not ingest.actors:
        tasks = ray.data.TaskPoolStrategy(size=ingest.concurrency)
        return dataset.map_batches(function, compute=tasks, **options)
    pool_size = ingest.concurrency or max(1, int(ray.available_resources().get("CPU", 1)))
    fields = {field.name: getattr(function, field.name) for field in fields_of(function)}
    return dataset.map_batches(
        type(function),
        fn_constructor_kwargs=fields,
        compute=ray.data.ActorPoolStrategy(size=pool_size),
        **options,
    )


def _decode_rows(batch: dict[str, np.ndarray]) -> dict[str, Any]:
    """map_batches callable for evaluation: decode, keep the original size and the uint8 bytes."""
    images, masks = [], []
    for index in range(len(batch["id"])):
        image, mask = _decode_pair(batch, index)
        images.append(image)
        masks.append(mask)
    return {
        "id": np.array([str(sample_id) for sample_id in batch["id"]], dtype=object),
        "image": _ragged(images),
        "mask": _ragged(masks),
    }


def _ragged(arrays: list[np.ndarray]) -> np.ndarray:
    """A 1-D object array of per-row arrays: Ray Data stores it as a variable-shaped tensor."""
    holder = np.empty(len(arrays), dtype=object)
    for index, array in enumerate(arrays):
        holder[index] = array
    return holder


def eval_dataset(
    manifest: Manifest, split: str, *, ingest: IngestOptions | None = None
) -> ray.data.Dataset:
    """Every sample of a split at its original size, in shard order, each exactly once.

    Columns: `id` str, `image` uint8 (h, w, 3) RGB, `mask` uint8 (h, w) (labels never
    resized). Like training ingest, the rows stay uint8, a fifth of the bytes of a float32
    image and int64 mask, so a split streams through the object store at that size; each
    consumer normalises where it computes (`pipeline.data.transforms.normalize` in the
    evaluation actors, `pipeline.train.step.batch_to_device` in training's validation).
    Sizes differ between rows, so Ray Data stores image/mask as variable-shaped tensors:
    iterate with `iter_batches(batch_size=1, batch_format="numpy")` and take `batch["image"][0]`
    (with larger batches `batch["image"]` is an object array of per-row arrays).
    """
    ingest = ingest or IngestOptions()
    dataset = read_shards(
        manifest,
        split,
        SAMPLE_COLUMNS,
        rows_per_block=ingest.rows_per_read_block(ingest.batch_size),
    )
    return dataset.map_batches(
        _decode_rows,
        batch_size=ingest.batch_size,
        batch_format="numpy",
        num_cpus=ingest.num_cpus,
        compute=ray.data.TaskPoolStrategy(size=ingest.concurrency),
        zero_copy_batch=True,
    )


def training_datasets(
    data: DataSection, manifest: Manifest, first_epoch: int
) -> dict[str, ray.data.Dataset]:
    """What a training run streams: TRAIN_DATASET, its train split augmented (re-augmented every
    epoch from `data.seed`, starting at `first_epoch`), and VAL_DATASET, its val split at full size."""
    augmentation = data.augmentation
    return {
        TRAIN_DATASET: train_dataset(
            manifest,
            data.train_split,
            augmentation,
            data.seed,
            first_epoch=first_epoch,
            ingest=data.ingest,
        ),
        VAL_DATASET: eval_dataset(manifest, data.val_split, ingest=data.ingest),
    }


class SegmentationDataConfig(ray.train.DataConfig):
    """Ray Train data config: training splits split evenly, evaluation splits exactly.

    Datasets named in `train_split_names` are streamed with `equal=True` (every worker gets
    the same number of rows per epoch, a few rows may be dropped, which keeps DDP steps in
    lockstep). Every other dataset is streamed with `equal=False`, so across all workers
    each row is read exactly once: no row dropped or repeated to even out the shards, as
    exact metrics need. Workers may then receive different numbers of rows. Every dataset
    gets `ingest_options(cpu_limit)` and the workers' nodes as locality hints.

    `resume_epochs`, when given, is a Ray actor whose `completed_epochs()` says how many
    epochs the checkpoint a new worker group resumes from has completed (0 when it starts
    from none); the training datasets then start their epoch count there
    (FIRST_EPOCH_CONFIG).
    """

    def __init__(
        self,
        train_split_names: Sequence[str] = TRAIN_SPLIT_NAMES,
        cpu_limit: float | None = None,
        resume_epochs: Any = None,
    ) -> None:
        super().__init__(datasets_to_split="all")
        self.train_split_names = tuple(train_split_names)
        self.cpu_limit = cpu_limit
        self.resume_epochs = resume_epochs

    def configure(
        self,
        datasets: dict[str, ray.data.Dataset],
        world_size: int,
        worker_handles: Any,
        worker_node_ids: Any,
        **kwargs: Any,
    ) -> list[dict[str, Any]]:
        output: list[dict[str, Any]] = [{} for _ in range(world_size)]
        completed = None
        if self.resume_epochs is not None:
            completed = int(ray.get(self.resume_epochs.completed_epochs.remote()))
        for name, dataset in datasets.items():
            if dataset.name is None:
                dataset.set_name(name)
            dataset = dataset.copy(dataset)
            dataset.context.execution_options = ingest_options(self.cpu_limit)
            if completed is not None and name in self.train_split_names:
                dataset.context.set_config(FIRST_EPOCH_CONFIG, completed)
            splits = dataset.streaming_split(
                world_size, equal=name in self.train_split_names, locality_hints=worker_node_ids
            )
            for rank, split_iterator in enumerate(splits):
                output[rank][name] = split_iterator
        return output


def ingest_options(cpu_limit: float | None = None) -> ExecutionOptions:
    """Ray Data's options for streaming into Ray Train: those of the current DataContext (in
    Ray Train's dataset manager, the driver's), as Ray's `DataConfig.default_ingest_options`
    gives them, but built without `exclude_resources`; with `cpu_limit` Ray Data uses at most
    that many CPUs (`IngestOptions.cpu_limit`).

    Ray 2.60's `default_ingest_options` copies the context's `exclude_resources` into the new
    options through the setter Ray has deprecated, which warns on every training start.
    Ray Train V2 never sets that field (it stays zero unless a user sets it, itself
    deprecated), so leaving it out builds the same options without the warning.
    """
    current = DataContext.get_current().execution_options
    limits = current.resource_limits
    return ExecutionOptions(
        resource_limits=limits if cpu_limit is None else limits.copy(cpu=cpu_limit),
        preserve_order=current.preserve_order,
        verbose_progress=current.verbose_progress,
    )


def data_config(
    train_split_name: str = TRAIN_DATASET,
    ingest: IngestOptions | None = None,
    resume_epochs: Any = None,
) -> SegmentationDataConfig:
    """The `dataset_config` for `TorchTrainer`: `train_split_name` even, everything else exact,
    Ray Data limited to `ingest.cpu_limit` CPUs when that is set; `resume_epochs` as
    `SegmentationDataConfig` takes it."""
    cpu_limit = ingest.cpu_limit if ingest is not None else None
    return SegmentationDataConfig((train_split_name,), cpu_limit, resume_epochs)
