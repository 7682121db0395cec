"""The smallest Ray Train job that takes one training step on the project's shards.

python benchmarks/minimal_train_start.py --data DIR --out FILE [--workers 2] [--cpus-per-worker 0.5]

Written with Ray's documented APIs only, the way Ray's own examples train: `ray.init()` (a new
local instance), `ray.data.read_parquet` of the train split and a `map_batches` that decodes
and crops, `TorchTrainer` with `ScalingConfig`, and in each worker `get_dataset_shard`,
`iter_torch_batches` and `prepare_model`. It trains the same APCNet as the project's default
config on the same shards, global batch and workers, takes one optimisation step and writes
when that step finished (`first_step_unix_s`) to FILE as JSON. `benchmarks/train.py` starts
it beside the project's own training job to compare their start-ups.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="a prepared shard folder (manifest.json)")
    parser.add_argument("--out", required=True, help="where to write the first step's time")
    parser.add_argument("--split", default="train")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--cpus-per-worker", type=float, default=0.5)
    parser.add_argument("--global-batch", type=int, default=8)
    parser.add_argument("--crop", type=int, default=64)
    parser.add_argument("--backbone", default="resnet18")
    parser.add_argument("--channels", type=int, default=256)
    return parser.parse_args()


def decode_and_crop(batch: dict[str, np.ndarray], crop: int) -> dict[str, np.ndarray]:
    """Encoded rows -> uint8 images (B, crop, crop, 3) and masks (B, crop, crop)."""
    rng = np.random.default_rng()
    images, masks = [], []
    for image_bytes, mask_bytes in zip(batch["image"], batch["mask"], strict=True):
        image = cv2.imdecode(np.frombuffer(image_bytes, np.uint8), cv2.IMREAD_COLOR_RGB)
        mask = cv2.imdecode(np.frombuffer(mask_bytes, np.uint8), cv2.IMREAD_UNCHANGED)
        pad = ((0, max(crop - image.shape[0], 0)), (0, max(crop - image.shape[1], 0)))
        image = np.pad(image, (*pad, (0, 0)))
        mask = np.pad(mask, pad, constant_values=255)
        top = rng.integers(0, image.shape[0] - crop + 1)
        left = rng.integers(0, image.shape[1] - crop + 1)
        images.append(image[top : top + crop, left : left + crop])
        masks.append(mask[top : top + crop, left : left + crop])
    return {"image": np.stack(images), "mask": np.stack(masks)}


def train_one_step(config: dict) -> float:
    import ray.train
    import ray.train.torch
    import torch
    import torch.nn.functional as F

    from apcnet import APCNet

    model = APCNet(
        num_classes=config["num_classes"], backbone=config["backbone"], channels=config["channels"]
    )
    model = ray.train.torch.prepare_model(model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.002)
    shard = ray.train.get_dataset_shard("train")
    for batch in shard.iter_torch_batches(batch_size=config["batch_size"], drop_last=True):
        images = batch["image"].permute(0, 3, 1, 2).float() / 255.0
        logits = model(images)["out"]
        loss = F.cross_entropy(logits, batch["mask"].long(), ignore_index=255)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        return time.time()  # rank 0's becomes the Result's return_value
    raise RuntimeError("the shard held no full batch")


def main() -> None:
    args = parse_args()
    import ray
    import ray.data
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    manifest = json.loads((Path(args.data) / "manifest.json").read_text())
    ray.init()
    train = ray.data.read_parquet(
        str(Path(args.data) / args.split), columns=["image", "mask"]
    ).map_batches(decode_and_crop, fn_kwargs={"crop": args.crop}, batch_format="numpy")
    trainer = TorchTrainer(
        train_one_step,
        train_loop_config={
            "num_classes": len(manifest["class_names"]),
            "backbone": args.backbone,
            "channels": args.channels,
            "batch_size": args.global_batch // args.workers,
        },
        scaling_config=ScalingConfig(
            num_workers=args.workers, resources_per_worker={"CPU": args.cpus_per_worker}
        ),
        run_config=RunConfig(
            name="minimal-train-start", storage_path=tempfile.mkdtemp(prefix="minimal-train-")
        ),
        datasets={"train": train},
    )
    result = trainer.fit()
    Path(args.out).write_text(json.dumps({"first_step_unix_s": result.return_value}))


if __name__ == "__main__":
    main()
