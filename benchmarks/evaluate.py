"""Ray Data evaluation vs. the single-process loop: images/s per test-time mode, same machine.

For each mode (whole, slide, msflip) the same model and synthetic split are evaluated twice:
`evaluate_locally` (one process, no Ray) and `count_split_distributed` (Ray Data actor pool,
actor start-up included, since every evaluation pays it). The counts must agree exactly;
the ratio Ray / local is the speed-up (below 1 on a small CPU machine: Ray's start-up and the
cores it shares with its data tasks cost more than the parallelism brings). Prints a table
and writes JSON.

    python benchmarks/evaluate.py [--images 16 --size 96 --actors 2 --cpus-per-actor 0.5]
"""

import argparse
import json
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from apcnet import APCNet
from pipeline.data.formats.synthetic import write_synthetic
from pipeline.data.ingest import eval_dataset
from pipeline.data.shards import load_manifest
from pipeline.evaluate.actor_pool import plan_actor_pool
from pipeline.evaluate.counts import count_split_distributed, evaluate_locally
from pipeline.evaluate.evaluation import read_split_samples
from pipeline.evaluate.testtime import TestTimeOptions
from pipeline.storage import write_text_atomically

MEAN = (123.675, 116.28, 103.53)
STD = (58.395, 57.12, 57.375)


@dataclass
class ModeResult:
    mode: str
    images: int
    local_images_per_s: float
    ray_images_per_s: float
    ray_over_local: float
    counts_equal: bool


def mode_options(size: int) -> dict[str, TestTimeOptions]:
    """The three modes at sizes that fit the synthetic images: windows of 2/3 of the side."""
    crop = (2 * size // 3, 2 * size // 3)
    stride = (size // 3, size // 3)
    return {
        "whole": TestTimeOptions(),
        "slide": TestTimeOptions(mode="slide", crop=crop, stride=stride),
        "msflip": TestTimeOptions(mode="msflip", ratios=(0.75, 1.0, 1.25), flip=True),
    }


def run(args: argparse.Namespace) -> list[ModeResult]:
    import ray

    torch.manual_seed(0)
    with tempfile.TemporaryDirectory(prefix="apcnet-bench-eval-") as folder:
        data = Path(folder) / "data"
        write_synthetic(data, num_train=1, num_val=args.images, size=args.size, seed=0)
        manifest = load_manifest(data)
        model = APCNet(manifest.num_classes, backbone="resnet18", channels=args.channels).eval()
        samples = list(read_split_samples(manifest, "val", MEAN, STD))
        ray.init(num_cpus=args.ray_cpus, include_dashboard=False, configure_logging=False)
        try:
            pool = plan_actor_pool(args.actors, args.cpus_per_actor)
            results = []
            for mode, options in mode_options(args.size).items():
                started = time.perf_counter()
                local = evaluate_locally(model, samples, options, manifest.num_classes)
                local_seconds = time.perf_counter() - started
                dataset = eval_dataset(manifest, "val")
                started = time.perf_counter()
                distributed = count_split_distributed(
                    model, dataset, options, manifest.num_classes, 255, pool, args.batch_size,
                    mean=MEAN, std=STD,
                )  # fmt: skip
                ray_seconds = time.perf_counter() - started
                equal = np.array_equal(
                    local.intersection_union, distributed.intersection_union
                ) and np.array_equal(local.confusion, distributed.confusion)
                results.append(
                    ModeResult(
                        mode=mode,
                        images=len(samples),
                        local_images_per_s=len(samples) / local_seconds,
                        ray_images_per_s=len(samples) / ray_seconds,
                        ray_over_local=local_seconds / ray_seconds,
                        counts_equal=equal,
                    )
                )
        finally:
            ray.shutdown()
    return results


def print_table(results: list[ModeResult]) -> None:
    print(
        f"{'mode':<8} {'images':>6} {'local img/s':>12} {'ray img/s':>10} {'ray/local':>10} equal"
    )
    for result in results:
        print(
            f"{result.mode:<8} {result.images:>6} {result.local_images_per_s:>12.2f} "
            f"{result.ray_images_per_s:>10.2f} {result.ray_over_local:>10.2f} "
            f"{result.counts_equal}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=16, help="validation images")
    parser.add_argument("--size", type=int, default=96, help="synthetic image side")
    parser.add_argument("--channels", type=int, default=64, help="APC head width")
    parser.add_argument("--actors", type=int, default=2)
    parser.add_argument("--cpus-per-actor", type=float, default=0.5)
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--ray-cpus", type=int, default=None, help="default: all cores")
    parser.add_argument(
        "--output", default=str(Path(__file__).resolve().parent / "out" / "evaluate.json")
    )
    args = parser.parse_args()
    results = run(args)
    print_table(results)
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    report = {
        "settings": {key: value for key, value in vars(args).items() if key != "output"},
        "torch_threads": torch.get_num_threads(),
        "device": "cuda" if torch.cuda.is_available() else "cpu",
        "results": [asdict(result) for result in results],
    }
    write_text_atomically(output, json.dumps(report, indent=2) + "\n")
    print(f"wrote {output}")
    if not all(result.counts_equal for result in results):
        raise SystemExit("distributed counts differ from the single-process loop")


if __name__ == "__main__":
    main()
