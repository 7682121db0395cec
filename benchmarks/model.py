"""APCNet vs. the dilated-FCN baseline: images/s (eval forward, train forward+backward), head MACs.

Both variants share the backbone; the baseline has no context modules (pool_scales=()).
Runs on CUDA when available, else CPU. Prints a table and writes JSON.

    python benchmarks/model.py [--batch-size 2 --size 256 --iterations 3 --output PATH]
"""

import argparse
import copy
import json
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from apcnet import APCNet, count_parameters
from pipeline.storage import write_text_atomically

# The reference head-cost figure is quoted for a 512x512 input (64x64 stage-4 map).
HEAD_MACS_INPUT_SIZE = 512


@dataclass
class VariantResult:
    variant: str
    backbone: str
    pool_scales: list[int]
    parameters: int
    head_gmacs_at_512: float
    eval_images_per_s: float
    train_images_per_s: float


@dataclass
class BenchmarkReport:
    device: str
    batch_size: int
    size: int
    iterations: int
    threads: int
    results: list[VariantResult]
    apcnet_over_baseline_eval_speed: float
    apcnet_over_baseline_train_speed: float
    apcnet_over_baseline_head_macs: float


def head_gmacs(model: APCNet, input_size: int) -> float:
    """MACs (in 10^9) of the decode head on the stage-4 map of an input_size^2 image.

    Counted on a meta-device copy with FlopCounterMode (a MAC is two FLOPs): nothing runs.
    """
    side = -(-input_size // model.arguments["output_stride"])
    head = copy.deepcopy(model.decode_head).to("meta").eval()
    features = torch.empty(1, model.backbone.stage4_channels, side, side, device="meta")
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        head(features)
    return counter.get_total_flops() / 2e9


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed_step(model: APCNet, images: torch.Tensor, train: bool) -> float:
    """Seconds for one eval forward under no_grad (train=False) or train forward+backward."""
    model.train(train)
    _synchronize(images.device)
    start = time.perf_counter()
    if train:
        result = model(images)
        (result["out"].mean() + 0.4 * result["aux"].mean()).backward()
        model.zero_grad(set_to_none=True)
    else:
        with torch.no_grad():
            model(images)
    _synchronize(images.device)
    return time.perf_counter() - start


def images_per_second(
    models: dict[str, APCNet], images: torch.Tensor, train: bool, warmup: int, iterations: int
) -> dict[str, float]:
    """Median-step throughput per model; the models alternate step by step so that load from
    other processes on a shared machine hits all of them alike."""
    times: dict[str, list[float]] = {name: [] for name in models}
    for iteration in range(warmup + iterations):
        for name, model in models.items():
            seconds = timed_step(model, images, train)
            if iteration >= warmup:
                times[name].append(seconds)
    return {name: images.shape[0] / statistics.median(steps) for name, steps in times.items()}


def run(args: argparse.Namespace, device: torch.device) -> list[VariantResult]:
    variants = {"apcnet": [1, 2, 3, 6], "fcn": []}
    models = {}
    for name, pool_scales in variants.items():
        torch.manual_seed(0)
        models[name] = APCNet(args.num_classes, backbone=args.backbone, pool_scales=pool_scales).to(
            device
        )
    images = torch.randn(args.batch_size, 3, args.size, args.size, device=device)
    eval_speed = images_per_second(models, images, False, args.warmup, args.iterations)
    train_speed = images_per_second(models, images, True, args.warmup, args.iterations)
    return [
        VariantResult(
            variant=name,
            backbone=args.backbone,
            pool_scales=variants[name],
            parameters=count_parameters(model),
            head_gmacs_at_512=round(head_gmacs(model, HEAD_MACS_INPUT_SIZE), 3),
            eval_images_per_s=round(eval_speed[name], 3),
            train_images_per_s=round(train_speed[name], 3),
        )
        for name, model in models.items()
    ]


def print_table(report: BenchmarkReport) -> None:
    print(
        f"device={report.device} batch={report.batch_size} size={report.size} "
        f"iterations={report.iterations} threads={report.threads}"
    )
    header = f"{'variant':<10} {'params':>12} {'head GMACs@512':>15} {'eval img/s':>11} {'train img/s':>12}"
    print(header)
    print("-" * len(header))
    for r in report.results:
        print(
            f"{r.variant:<10} {r.parameters:>12,} {r.head_gmacs_at_512:>15.1f} "
            f"{r.eval_images_per_s:>11.2f} {r.train_images_per_s:>12.2f}"
        )
    print(
        f"APCNet / baseline: eval speed {report.apcnet_over_baseline_eval_speed:.2f}x, "
        f"train speed {report.apcnet_over_baseline_train_speed:.2f}x, "
        f"head MACs {report.apcnet_over_baseline_head_macs:.2f}x"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="resnet50_v1c")
    parser.add_argument("--num-classes", type=int, default=21)
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--size", type=int, default=256, help="square input side in pixels")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--iterations", type=int, default=3)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: default)")
    parser.add_argument("--output", type=Path, default=Path("benchmarks/out/model.json"))
    args = parser.parse_args()

    if args.threads > 0:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    apcnet, baseline = run(args, device)
    report = BenchmarkReport(
        device=str(torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"),
        batch_size=args.batch_size,
        size=args.size,
        iterations=args.iterations,
        threads=torch.get_num_threads(),
        results=[apcnet, baseline],
        apcnet_over_baseline_eval_speed=round(
            apcnet.eval_images_per_s / baseline.eval_images_per_s, 3
        ),
        apcnet_over_baseline_train_speed=round(
            apcnet.train_images_per_s / baseline.train_images_per_s, 3
        ),
        apcnet_over_baseline_head_macs=round(
            apcnet.head_gmacs_at_512 / baseline.head_gmacs_at_512, 3
        ),
    )
    print_table(report)
    write_text_atomically(args.output, json.dumps(asdict(report), indent=2) + "\n")
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
