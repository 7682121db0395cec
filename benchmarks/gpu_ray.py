"""Ray's cost on a GPU: the training job through Ray Train against the bare training step.

    python benchmarks/gpu_ray.py                       # on a GPU machine (about 5 min)
    python benchmarks/gpu_ray.py --device cpu --backbone resnet18 --size 64 --images 32 \\
        --epochs 2 --warmup 1 --iterations 2          # smoke run without a GPU

In one call, on one machine:
1. direct: the step a training worker takes (`benchmarks/gpu.py`'s `train_variant`: random
   batches already in memory, no Ray, no data loading), at the precision and memory layout
   that `scaling.mixed_precision` / `channels_last: auto` resolve to for one GPU worker;
2. ray: `jobs/train.py` on the synthetic set at the same model, size and batch, one worker with
   `scaling.use_gpu` (Ray Data decoding and augmenting on the node's CPUs), tracking off. Its
   images/s and data_wait_fraction are the medians of the epochs after the first (the first
   holds the start-up and cuDNN's first choices);
3. evaluate, predict: `jobs/evaluate.py` and `jobs/predict.py` on that run, their model actors on
   the GPU: wall time (their logs hold the rest).

Prints a table (ray / direct images/s, goal at least 0.95; data_wait_fraction, goal at most
0.05) and writes benchmarks/out/gpu_ray.json; exits 1 when a job fails.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.gpu import TrainVariant, train_variant
from pipeline.config.schema import ExperimentConfig, config_to_yaml, load_config
from pipeline.data.shards import load_manifest
from pipeline.data.training_data import data_set_path
from pipeline.storage import write_text_atomically
from pipeline.train.device import device_features
from pipeline.train.run_folder import best_checkpoint, latest_checkpoint
from pipeline.train.state import read_progress

REPO_ROOT = Path(__file__).resolve().parent.parent
OUTPUT = REPO_ROOT / "benchmarks" / "out" / "gpu_ray.json"
RUN_NAME = "gpu-ray"
RATIO_GOAL = 0.95
DATA_WAIT_GOAL = 0.05


@dataclass
class JobResult:
    command: str
    returncode: int | None = None
    wall_s: float | None = None
    tail: str = ""


@dataclass
class GpuRayReport:
    device: str
    torch_version: str
    python_version: str
    ray_version: str
    backbone: str
    size: int
    batch_size: int
    precision: str
    channels_last: bool
    direct_images_per_s: float | None = None
    ray_images_per_s: float | None = None
    ray_vs_direct: float | None = None
    data_wait_fraction: float | None = None
    epochs: list[dict[str, float]] = field(default_factory=list)
    jobs: dict[str, JobResult] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    parser.add_argument("--backbone", default="resnet50_v1c")
    parser.add_argument("--size", type=int, default=512, help="image and crop side in pixels")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--images", type=int, default=320, help="training images (synthetic)")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument(
        "--cpus",
        type=float,
        help="CPUs the training worker reserves; Ray Data decodes on the rest (default: 2 beside "
        "a GPU, 0.5 on a CPU)",
    )
    parser.add_argument("--warmup", type=int, default=10, help="direct: untimed steps")
    parser.add_argument("--iterations", type=int, default=50, help="direct: timed steps")
    parser.add_argument("--work", type=Path, help="folder for data and runs (default: temporary)")
    parser.add_argument("--output", type=Path, default=OUTPUT)
    return parser.parse_args()


def job_config(args: argparse.Namespace, work: Path) -> ExperimentConfig:
    """The training job's config: the bare step's model, size and batch, one worker."""
    on_gpu = args.device == "cuda"
    cpus = args.cpus or (2.0 if on_gpu else 0.5)
    resources = f"{{CPU: {cpus:g}, GPU: 1}}" if on_gpu else f"{{CPU: {cpus:g}}}"
    return load_config(
        None,
        [
            f"model.backbone={args.backbone}",
            f"data.synthetic.num_train={args.images}",
            f"data.synthetic.num_val={max(4, args.images // 10)}",
            f"data.synthetic.size={args.size}",
            f"data.augmentation.crop_size=[{args.size}, {args.size}]",
            f"optimization.batch_size={args.batch_size}",
            f"optimization.epochs={args.epochs}",
            f"evaluation.every_epochs={args.epochs}",
            "scaling.num_workers=1",
            f"scaling.use_gpu={str(on_gpu).lower()}",
            f"scaling.resources_per_worker={resources}",
            "tracking.enabled=false",
            f"checkpointing.storage_path={work / 'runs'}",
        ],
    )


def direct_step(args: argparse.Namespace, config: ExperimentConfig) -> TrainVariant:
    """The bare step at what `auto` resolves to for this config's one worker."""
    device = torch.device("cuda", 0) if args.device == "cuda" else torch.device("cpu")
    features = device_features(config.scaling, device, world_size=1)
    precision = {torch.bfloat16: "bf16", torch.float16: "fp16", None: "none"}[
        features.autocast_dtype
    ]
    variant = TrainVariant(precision, features.channels_last)
    step_args = argparse.Namespace(
        backbone=args.backbone,
        num_classes=len(config_class_names(config)),
        batch_size=args.batch_size,
        size=args.size,
        warmup=args.warmup,
        iterations=args.iterations,
        grad_clip_norm=config.optimization.grad_clip_norm,
    )
    train_variant(step_args, device, variant)
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return variant


def config_class_names(config: ExperimentConfig) -> tuple[str, ...]:
    return load_manifest(data_set_path(config.data)).class_names


def run_job(name: str, command: list[str], work: Path, report: GpuRayReport) -> JobResult:
    """Run one job to its end as a user would, its home in `work`; record how it went."""
    environment = {key: value for key, value in os.environ.items() if key != "RAY_ADDRESS"}
    environment["APCNET_HOME"] = str(work)
    started = time.perf_counter()
    finished = subprocess.run(
        [sys.executable, *command],
        cwd=REPO_ROOT,
        env=environment,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    result = JobResult(
        " ".join(command[:1] + command[1:4]),
        finished.returncode,
        round(time.perf_counter() - started, 1),
        finished.stdout[-3000:],
    )
    (work / f"{name}.log").write_text(finished.stdout)
    report.jobs[name] = result
    if finished.returncode != 0:
        report.problems.append(f"{name}: exit {finished.returncode} (log {work / name}.log)")
    return result


def ray_epochs(work: Path) -> list[dict[str, float]]:
    history = read_progress(latest_checkpoint(RUN_NAME, str(work / "runs"))).history
    keys = ("epoch", "images_per_s", "data_wait_fraction", "epoch_time_s", "train_loss")
    return [{key: epoch[key] for key in keys if key in epoch} for epoch in history]


def measure(args: argparse.Namespace, work: Path) -> GpuRayReport:
    os.environ["APCNET_HOME"] = str(work)  # where data_set_path writes the synthetic set
    config = job_config(args, work)
    data = data_set_path(config.data)  # written here, once, not in the job's time
    device_name = torch.cuda.get_device_name(0) if args.device == "cuda" else "cpu"
    variant = direct_step(args, config)
    report = GpuRayReport(
        device=device_name,
        torch_version=torch.__version__,
        python_version=platform.python_version(),
        ray_version=importlib.metadata.version("ray"),
        backbone=args.backbone,
        size=args.size,
        batch_size=args.batch_size,
        precision=variant.precision,
        channels_last=variant.channels_last,
        direct_images_per_s=variant.images_per_s,
    )
    config_file = work / "gpu_ray.yaml"
    config_file.write_text(config_to_yaml(config))
    training = ["jobs/train.py", "--config", str(config_file), "--name", RUN_NAME]
    if run_job("train", [*training, "--set", f"data.path={data}"], work, report).returncode:
        return report
    report.epochs = ray_epochs(work)
    later = report.epochs[1:] or report.epochs
    report.ray_images_per_s = statistics.median(epoch["images_per_s"] for epoch in later)
    report.data_wait_fraction = statistics.median(epoch["data_wait_fraction"] for epoch in later)
    if report.direct_images_per_s:
        report.ray_vs_direct = round(report.ray_images_per_s / report.direct_images_per_s, 3)
    storage = ["--storage-path", str(work / "runs")]
    run_job(
        "evaluate", ["jobs/evaluate.py", "--run", RUN_NAME, *storage, "--no-tracking"], work, report
    )
    checkpoint = best_checkpoint(RUN_NAME, str(work / "runs"))
    predict = ["jobs/predict.py", "--checkpoint", checkpoint, "--input", data, "--output"]
    run_job("predict", [*predict, str(work / "masks"), "--split", "val"], work, report)
    return report


def print_table(report: GpuRayReport) -> None:
    print(f"{report.device}: torch {report.torch_version}, Python {report.python_version}, "
          f"Ray {report.ray_version}; {report.backbone} at {report.size} px, batch "
          f"{report.batch_size}, {report.precision}, channels_last={report.channels_last}")  # fmt: skip
    rows = [
        ("direct step, images/s", report.direct_images_per_s, ""),
        ("jobs/train.py through Ray, images/s", report.ray_images_per_s, ""),
        ("ray / direct", report.ray_vs_direct, f"goal >= {RATIO_GOAL}"),
        ("data_wait_fraction", report.data_wait_fraction, f"goal <= {DATA_WAIT_GOAL}"),
        *((f"{name} wall s (exit {job.returncode})", job.wall_s, "") for name, job in report.jobs.items()),
    ]  # fmt: skip
    for label, value, goal in rows:
        shown = "-" if value is None else f"{value:.3f}" if isinstance(value, float) else value
        print(f"  {label:<40} {shown:>10}  {goal}")
    for problem in report.problems:
        print(f"  problem: {problem}")


def main() -> int:
    args = parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("error: no CUDA device here (--device cpu for a smoke run)")
    with tempfile.TemporaryDirectory(prefix="gpu-ray-") as temporary:
        work = (args.work or Path(temporary)).resolve()
        work.mkdir(parents=True, exist_ok=True)
        report = measure(args, work)
    print_table(report)
    payload: dict[str, Any] = asdict(report)
    write_text_atomically(args.output, json.dumps(payload, indent=2) + "\n")
    print(f"wrote {args.output}")
    return 1 if report.problems else 0


if __name__ == "__main__":
    sys.exit(main())
