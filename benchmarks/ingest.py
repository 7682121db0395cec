"""Training ingest throughput: Ray Data pipeline vs a torch DataLoader doing the same work.

Writes N synthetic VOC-sized JPEGs (about 500x375) with masks into a temporary shard set,
then measures images/s of decode + augment at a 512 crop through:
- torch.utils.data.DataLoader with W worker processes (the baseline), and
- `pipeline.data.train_dataset` under several Ray Data settings (IngestOptions),
all in one run, and reports each as a ratio to the DataLoader. Also times the decoders.

    python benchmarks/ingest.py --num-images 200 --workers 2 --output benchmarks/out/ingest.json
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import argparse
import io
import json
import tempfile
import time
from dataclasses import asdict, dataclass

import numpy as np
import torch
from PIL import Image

from pipeline.data import IngestOptions, train_dataset
from pipeline.shards import (
    Manifest,
    ShardRow,
    ShardWriter,
    load_manifest,
    read_shard_rows,
    write_manifest,
)
from pipeline.transforms import (
    AugmentationConfig,
    augment_sample,
    decode_image,
    decode_mask,
)


@dataclass
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


def write_benchmark_shards(root: Path, num_images: int) -> Manifest:
    rng = np.random.default_rng(0)
    with ShardWriter(root, "train", max_rows=max(1, num_images // 4)) as writer:
        for index in range(num_images):
            writer.write(synthetic_row(index, rng))
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
            converter={"name": "benchmarks/ingest.py"},
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
            decode_image(row.image), decode_mask(row.mask), self.config, rng
        )
        return torch.from_numpy(image), torch.from_numpy(mask)


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


def measure_ray(
    manifest: Manifest, config: AugmentationConfig, ingest: IngestOptions, batch_size: int
) -> Measurement:
    dataset = train_dataset(manifest, "train", config, seed=0, epoch=0, ingest=ingest)
    start = time.perf_counter()
    images = sum(
        batch["image"].shape[0]
        for batch in dataset.iter_torch_batches(batch_size=batch_size, prefetch_batches=2)
    )
    name = (
        f"Ray Data batch={ingest.batch_size} cpus={ingest.num_cpus} "
        f"shuffle={'rows' if ingest.full_shuffle else 'files'}"
    )
    return Measurement(name, images, time.perf_counter() - start)


def measure_decoders(manifest: Manifest, repeats: int = 50) -> dict[str, float]:
    """Milliseconds per decode: torchvision (used for JPEG) vs PIL, on one benchmark row."""
    row = read_shard_rows(manifest.shard_uris("train")[0])[0]

    def timed(function) -> float:
        function()
        start = time.perf_counter()
        for _ in range(repeats):
            function()
        return (time.perf_counter() - start) / repeats * 1e3

    return {
        "decode_image (torchvision jpeg) ms": timed(lambda: decode_image(row.image)),
        "PIL jpeg ms": timed(lambda: np.asarray(Image.open(io.BytesIO(row.image)).convert("RGB"))),
        "decode_mask (PIL png) ms": timed(lambda: decode_mask(row.mask)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-images", type=int, default=200)
    parser.add_argument("--workers", type=int, default=2, help="DataLoader worker processes")
    parser.add_argument("--batch-size", type=int, default=8, help="training batch size")
    parser.add_argument("--crop", type=int, default=512)
    parser.add_argument("--output", default="benchmarks/out/ingest.json")
    args = parser.parse_args()

    import ray

    config = AugmentationConfig(crop_size=(args.crop, args.crop), base_scale=(2048, 512))
    with tempfile.TemporaryDirectory(prefix="ingest-bench-") as folder:
        manifest = write_benchmark_shards(Path(folder), args.num_images)
        decoders = measure_decoders(manifest)
        baseline = measure_dataloader(manifest, config, args.workers, args.batch_size)
        ray.init(num_cpus=args.workers, include_dashboard=False, log_to_driver=False)
        candidates = [
            IngestOptions(batch_size=8, full_shuffle=True),
            IngestOptions(batch_size=8, full_shuffle=False),
            IngestOptions(batch_size=2, full_shuffle=False),
            IngestOptions(batch_size=32, full_shuffle=False),
        ]
        results = [measure_ray(manifest, config, ingest, args.batch_size) for ingest in candidates]
        ray.shutdown()

    rows = [baseline, *results]
    print(f"{'pipeline':<48} {'images':>6} {'img/s':>8} {'ratio':>6}")
    for result in rows:
        ratio = result.images_per_second / baseline.images_per_second
        print(
            f"{result.name:<48} {result.images:>6} {result.images_per_second:>8.1f} {ratio:>6.2f}"
        )
    for name, milliseconds in decoders.items():
        print(f"{name:<48} {milliseconds:>8.2f}")
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    report = {
        "arguments": vars(args),
        "decoders_ms": decoders,
        "results": [
            {
                **asdict(result),
                "images_per_second": result.images_per_second,
                "ratio_to_dataloader": result.images_per_second / baseline.images_per_second,
            }
            for result in rows
        ],
    }
    temporary = output.with_suffix(".json.tmp")
    temporary.write_text(json.dumps(report, indent=2))
    temporary.replace(output)
    print(f"wrote {output}")


if __name__ == "__main__":
    main()
