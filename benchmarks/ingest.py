"""Training ingest throughput: Ray Data pipeline vs a torch DataLoader doing the same work.

Writes N synthetic VOC-sized JPEGs (about 500x375) with masks into temporary shard sets, then
measures images/s of decode + augment + normalise at a 512 crop, as float32 (B, 3, H, W)
batches in the consuming process, through:
- torch.utils.data.DataLoader with W worker processes (the baseline), frozen as it was before
  the ingest shipped uint8: the same decode and augmentation, normalised and padded in the
  DataLoader's workers, float32 sent to the consumer; and
- `pipeline.data.ingest.train_dataset` as training runs it (the default), and a few variants
  that each change one public setting (bigger decode tasks, an actor pool, Ray Data's
  per-operator resource reservation off, a per-row `map` instead of `map_batches`), uint8
  blocks normalised by the consumer with the training step's own `batch_to_device`,
interleaved in rounds (DataLoader, then every variant, repeated), so a noisy machine slows
them alike; each variant's ratio is taken against the DataLoader of its own round and the
median over rounds is reported.

    python benchmarks/ingest.py --num-images 200 --workers 2 --repeats 3 --variants all
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import argparse
import io
import json
import os
import statistics
import tempfile
import time
from dataclasses import asdict, dataclass

import numpy as np
import torch
from PIL import Image

from pipeline.config.ingest import IngestOptions
from pipeline.data.ingest import SAMPLE_COLUMNS, sample_seed, train_dataset
from pipeline.data.shard_source import read_shards
from pipeline.data.shard_writer import ShardWriter, write_manifest
from pipeline.data.shards import Manifest, ShardRow, load_manifest, read_shard_rows
from pipeline.data.transforms import (
    AugmentationConfig,
    augment_sample,
    decode_image,
    decode_mask,
    normalize,
)
from pipeline.storage import write_text_atomically
from pipeline.train.step import batch_to_device


@dataclass(frozen=True)
class Measurement:
    name: str
    images: int
    seconds: float

    @property
    def images_per_second(self) -> float:
        return self.images / self.seconds


def synthetic_row(index: int, rng: np.random.Generator) -> ShardRow:
    """A smooth, noisy 375x500 JPEG (realistic compressed size) and a blocky 21-class mask."""
    height, width = 375, 500
    y, x = np.mgrid[0:height, 0:width]
    phase = rng.uniform(0, 6.28, size=3)
    image = np.stack(
        [127 + 100 * np.sin(x / (30 + 10 * c) + y / 50 + phase[c]) for c in range(3)], axis=-1
    )
    image = np.clip(image + rng.normal(0, 12, image.shape), 0, 255).astype(np.uint8)
    blocks = rng.integers(0, 21, size=(height // 40 + 1, width // 40 + 1))
    mask = np.kron(blocks, np.ones((40, 40), dtype=np.int64))[:height, :width].astype(np.uint8)
    encoded_image, encoded_mask = io.BytesIO(), io.BytesIO()
    Image.fromarray(image).save(encoded_image, format="JPEG", quality=90)
    Image.fromarray(mask).save(encoded_mask, format="PNG")
    return ShardRow(
        f"bench-{index:05d}", encoded_image.getvalue(), encoded_mask.getvalue(), height, width
    )


def write_benchmark_shards(root: Path, rows: list[ShardRow], row_group_rows: int) -> Manifest:
    """Four shard files of the given rows, cut into row groups of `row_group_rows`."""
    with ShardWriter(
        root, "train", max_rows=max(1, len(rows) // 4), row_group_rows=row_group_rows
    ) as writer:
        for row in rows:
            writer.write(row)
        split = writer.close()
    write_manifest(
        root,
        Manifest(
            format_version=1,
            dataset="ingest-benchmark",
            class_names=tuple(f"class{k}" for k in range(21)),
            palette=tuple((k, k, k) for k in range(21)),
            ignore_index=255,
            splits={"train": split},
            converter={"name": "benchmarks/ingest.py", "row_group_rows": row_group_rows},
        ),
    )
    return load_manifest(root)


class ShardRowsDataset(torch.utils.data.Dataset):
    """Map-style dataset over in-memory shard rows, using the same decode/augment functions."""

    def __init__(self, rows: list[ShardRow], config: AugmentationConfig) -> None:
        self.rows, self.config = rows, config

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        row = self.rows[index]
        rng = np.random.default_rng(index)
        image, mask = augment_sample(
            decode_image(row.image), decode_mask(row.mask), self.config, rng, pad=False
        )
        # As the training ingest did before it shipped uint8: normalise, then pad with 0
        # (the mean) and the ignore index up to the crop.
        normalized = normalize(image, self.config.mean, self.config.std)
        height, width = self.config.crop_size
        padded = np.zeros((3, height, width), dtype=np.float32)
        padded[:, : mask.shape[0], : mask.shape[1]] = normalized
        labels = np.full((height, width), self.config.ignore_index, dtype=np.int64)
        labels[: mask.shape[0], : mask.shape[1]] = mask
        return torch.from_numpy(padded), torch.from_numpy(labels)


def measure_dataloader(
    manifest: Manifest, config: AugmentationConfig, workers: int, batch_size: int
) -> Measurement:
    rows = [row for uri in manifest.shard_uris("train") for row in read_shard_rows(uri)]
    loader = torch.utils.data.DataLoader(
        ShardRowsDataset(rows, config),
        batch_size=batch_size,
        shuffle=True,
        num_workers=workers,
        persistent_workers=False,
    )
    start = time.perf_counter()
    images = sum(images.shape[0] for images, _ in loader)
    return Measurement(f"DataLoader workers={workers}", images, time.perf_counter() - start)


@dataclass(frozen=True)
class Variant:
    """One Ray Data setting: how train_dataset runs (IngestOptions), a per-row `map` instead,
    or Ray Data's per-operator resource reservation (`DataContext`) off."""

    ingest: IngestOptions
    per_row_map: bool = False
    # Off, the executor submits every task of an epoch at once.
    operator_reservation: bool = True


VARIANTS: dict[str, Variant] = {
    "default": Variant(IngestOptions()),
    "64-row decode tasks": Variant(IngestOptions(shuffle_window=64)),
    "actor pool": Variant(IngestOptions(actors=True, concurrency=2, num_cpus=0.5)),
    "no operator reservation": Variant(IngestOptions(), operator_reservation=False),
    "per-row map": Variant(IngestOptions(), per_row_map=True),
}
QUICK_VARIANTS = ("default",)


def measure_ray(
    manifest: Manifest,
    config: AugmentationConfig,
    name: str,
    variant: Variant,
    batch_size: int,
    epoch: int,
) -> Measurement:
    """One epoch of train_dataset, consumed like the training loop (iter_torch_batches, then
    `batch_to_device` normalising on this process's CPU)."""
    if variant.per_row_map:
        dataset = per_row_dataset(manifest, config, epoch)
    else:
        dataset = train_dataset(
            manifest, "train", config, seed=0, epoch=epoch, ingest=variant.ingest
        )
    dataset.context.op_resource_reservation_enabled = variant.operator_reservation
    start = time.perf_counter()
    batches = dataset.iter_torch_batches(
        batch_size=batch_size, prefetch_batches=variant.ingest.prefetch_batches
    )
    cpu = torch.device("cpu")
    images = sum(batch_to_device(batch, cpu, False, config)[0].shape[0] for batch in batches)
    return Measurement(name, images, time.perf_counter() - start)


def per_row_dataset(manifest: Manifest, config: AugmentationConfig, epoch: int):
    """The same decode and augmentation as `train_dataset`, one row per call (`Dataset.map`)
    instead of a block per call (`map_batches`); files in order, no shuffle."""

    def augment_row(row: dict) -> dict:
        rng = np.random.default_rng(sample_seed(0, epoch, str(row["id"])))
        image, mask = augment_sample(
            decode_image(row["image"]), decode_mask(row["mask"]), config, rng
        )
        return {"image": image, "mask": mask}

    return read_shards(manifest, "train", SAMPLE_COLUMNS, rows_per_block=8).map(augment_row)


@dataclass(frozen=True)
class Summary:
    """A pipeline's rounds: median images/s, and its ratio to each round's DataLoader."""

    name: str
    images_per_second: list[float]
    ratios: list[float]

    def as_json(self) -> dict[str, object]:
        return {
            "name": self.name,
            "images_per_second": self.images_per_second,
            "median_images_per_second": statistics.median(self.images_per_second),
            "ratios_to_dataloader": self.ratios,
            "median_ratio_to_dataloader": statistics.median(self.ratios),
        }


def run_rounds(
    manifest: Manifest,
    config: AugmentationConfig,
    names: list[str],
    args: argparse.Namespace,
) -> list[Summary]:
    """DataLoader then every variant, `args.repeats` times; variant order rotates per round."""
    # One unmeasured epoch first: Ray starts its worker processes (each imports torch) once
    # per cluster, while DataLoader workers fork an already-imported process every epoch.
    measure_ray(manifest, config, "warm-up", VARIANTS["default"], args.batch_size, 1000)
    speeds: dict[str, list[float]] = {name: [] for name in ["DataLoader", *names]}
    ratios: dict[str, list[float]] = {name: [] for name in speeds}
    for round_index in range(args.repeats):
        baseline = measure_dataloader(manifest, config, args.workers, args.batch_size)
        speeds["DataLoader"].append(baseline.images_per_second)
        ratios["DataLoader"].append(1.0)
        shift = round_index % len(names)
        for name in names[shift:] + names[:shift]:
            variant = VARIANTS[name]
            result = measure_ray(manifest, config, name, variant, args.batch_size, round_index)
            speeds[name].append(result.images_per_second)
            ratios[name].append(result.images_per_second / baseline.images_per_second)
            print(
                f"round {round_index}: {name:<32} {result.images_per_second:6.1f} img/s "
                f"(DataLoader {baseline.images_per_second:6.1f})",
                flush=True,
            )
    return [Summary(name, speeds[name], ratios[name]) for name in speeds]


def chosen_variants(text: str) -> list[str]:
    names = list(VARIANTS) if text == "all" else [name.strip() for name in text.split(",")]
    unknown = [name for name in names if name not in VARIANTS]
    if unknown:
        raise SystemExit(f"--variants: unknown {unknown}; choose from {list(VARIANTS)} or 'all'")
    return names


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-images", type=int, default=200)
    parser.add_argument("--workers", type=int, default=2, help="DataLoader worker processes")
    parser.add_argument("--batch-size", type=int, default=8, help="training batch size")
    parser.add_argument("--crop", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=3, help="interleaved rounds")
    parser.add_argument(
        "--variants",
        default=",".join(QUICK_VARIANTS),
        help=f"comma-separated names, or 'all': {', '.join(VARIANTS)}",
    )
    parser.add_argument("--output", default="benchmarks/out/ingest.json")
    args = parser.parse_args()
    names = chosen_variants(args.variants)

    import ray

    config = AugmentationConfig(crop_size=(args.crop, args.crop), base_scale=(2048, 512))
    rng = np.random.default_rng(0)
    rows = [synthetic_row(index, rng) for index in range(args.num_images)]
    with tempfile.TemporaryDirectory(prefix="ingest-bench-") as folder:
        manifest = write_benchmark_shards(Path(folder), rows, row_group_rows=64)
        ray.init(num_cpus=args.workers, include_dashboard=False, log_to_driver=False)
        ray.data.DataContext.get_current().enable_progress_bars = False
        try:
            summaries = run_rounds(manifest, config, names, args)
        finally:
            ray.shutdown()

    print(f"\n{'pipeline':<34} {'median img/s':>12} {'median ratio':>12}  ratios per round")
    for summary in summaries:
        row = summary.as_json()
        per_round = " ".join(f"{ratio:.2f}" for ratio in summary.ratios)
        print(
            f"{summary.name:<34} {row['median_images_per_second']:>12.1f} "
            f"{row['median_ratio_to_dataloader']:>12.2f}  {per_round}"
        )
    variants = {name: asdict(VARIANTS[name]) for name in names}
    report = {
        "arguments": vars(args),
        "load_average_after": list(os.getloadavg()),
        "variants": variants,
        "results": [summary.as_json() for summary in summaries],
    }
    output = Path(args.output)
    write_text_atomically(output, json.dumps(report, indent=2))
    print(f"wrote {output}")


if __name__ == "__main__":
    main()
