"""GPU check of the real training step: AMP x channels_last, NCCL + DDP + SyncBatchNorm, bf16 eval.

Runs the code a training worker runs (`pipeline.train.state` to build, `pipeline.train.step`
for each step, `pipeline.train.validation.validate`) on random normalised images, without Ray
or MLflow, so it runs on a bare GPU machine. Three parts:

- train: images/s, peak memory and final loss for precision none/bf16/fp16 x channels_last
  off/on, each against the fp32/NCHW baseline of the same run; what "auto" resolves to here.
- distributed: one process, NCCL world size 1, bf16 + channels_last + SyncBatchNorm under DDP,
  then `validate` with its counts all-reduced. With one GPU nothing crosses GPUs: torch's
  SyncBatchNorm falls back to local statistics and the all-reduce sums one rank.
- eval: images/s in fp32 and under bf16 autocast, and how often their argmax agrees.

Prints a table, writes JSON, exits 1 when a check fails.

    python benchmarks/gpu.py [--size 512 --batch-size 8 --warmup 5 --iterations 20]
    python benchmarks/gpu.py --device cpu --backbone resnet18 --size 64 --batch-size 2 \\
        --warmup 0 --iterations 1    # smoke run: no fp16, no NCCL
"""

import argparse
import dataclasses
import datetime
import json
import math
import socket
import sys
import time
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pipeline.config.schema import ExperimentConfig, config_to_dict
from pipeline.storage import write_text_atomically
from pipeline.train.device import DeviceFeatures, device_features
from pipeline.train.settings import CheckpointMetadata
from pipeline.train.state import TrainingState, build_training_model, build_training_state
from pipeline.train.step import batch_to_device, forward_loss, optimisation_step
from pipeline.train.validation import validate

IGNORE_INDEX = 255
IGNORED_FRACTION = 0.1  # of mask pixels set to IGNORE_INDEX, as unlabelled borders would be
DTYPES = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass
class TrainVariant:
    precision: str
    channels_last: bool
    images_per_s: float | None = None
    speed_vs_fp32_nchw: float | None = None
    peak_memory_gib: float | None = None
    final_loss: float | None = None
    grad_scale: float | None = None  # fp16's loss scale at the end (None: scaler off)
    error: str | None = None


@dataclass
class DistributedCheck:
    ran: bool
    note: str
    backend: str | None = None
    world_size: int | None = None
    features: dict[str, Any] | None = None
    syncbatchnorm_modules: int = 0
    losses: list[float] = field(default_factory=list)
    images_per_s: float | None = None
    val_miou_local: float | None = None
    val_miou_all_reduced: float | None = None


@dataclass
class EvalComparison:
    fp32_images_per_s: float | None = None
    bf16_images_per_s: float | None = None
    bf16_speed_vs_fp32: float | None = None
    argmax_agreement: float | None = None  # fraction of pixels where bf16 and fp32 agree
    max_abs_logit_difference: float | None = None


@dataclass
class GpuReport:
    device: str
    torch_version: str
    cuda_version: str | None
    cudnn_version: int | None
    backbone: str
    size: int
    batch_size: int
    warmup: int
    iterations: int
    grad_clip_norm: float | None
    auto_features: dict[str, dict[str, Any]]
    training: list[TrainVariant]
    distributed: DistributedCheck
    evaluation: EvalComparison
    problems: list[str]
    passed: bool = False


def experiment_config(
    args: argparse.Namespace, precision: str, channels_last: bool | str
) -> ExperimentConfig:
    """The default ExperimentConfig with this check's model, batch and device features."""
    default = ExperimentConfig()
    return dataclasses.replace(
        default,
        model=dataclasses.replace(
            default.model,
            backbone=args.backbone,
            pool_scales=(1, 2, 3, 6),
            pretrained_backbone=None,
        ),
        optimization=dataclasses.replace(
            default.optimization, batch_size=args.batch_size, grad_clip_norm=args.grad_clip_norm
        ),
        scaling=dataclasses.replace(
            default.scaling,
            use_gpu=True,
            mixed_precision=precision,
            channels_last=channels_last,
            sync_batchnorm=False,
        ),
    )


def checkpoint_metadata(config: ExperimentConfig, num_classes: int) -> CheckpointMetadata:
    augmentation = config.data.augmentation
    return CheckpointMetadata(
        run_name="gpu-check",
        class_names=tuple(f"class_{index}" for index in range(num_classes)),
        palette=tuple((index, index, index) for index in range(num_classes)),
        ignore_index=IGNORE_INDEX,
        mean=tuple(augmentation.mean),
        std=tuple(augmentation.std),
        config=config_to_dict(config),
        manifest_path="",
    )


def random_batch(
    config: ExperimentConfig, batch_size: int, height: int, width: int, num_classes: int, seed: int
) -> dict[str, torch.Tensor]:
    """A CPU batch as the training ingest gives it: "image" uint8 (N, H, W, 3), "mask" uint8
    (N, H, W) with about IGNORED_FRACTION of pixels IGNORE_INDEX."""
    generator = torch.Generator().manual_seed(seed)
    shape = (batch_size, height, width, 3)
    pixels = torch.randint(0, 256, shape, generator=generator, dtype=torch.uint8)
    masks = torch.randint(0, num_classes, (batch_size, height, width), generator=generator)
    ignored = torch.rand((batch_size, height, width), generator=generator) < IGNORED_FRACTION
    masks = torch.where(ignored, IGNORE_INDEX, masks).to(torch.uint8)
    return {"image": pixels, "mask": masks}


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def train_steps(
    model: nn.Module,
    state: TrainingState,
    batch: dict[str, torch.Tensor],
    config: ExperimentConfig,
    features: DeviceFeatures,
    device: torch.device,
    steps: int,
) -> tuple[list[float], float]:
    """`steps` training steps the way `worker.train_one_epoch` takes them (the loss read back
    every step, as the worker's all-reduce does); returns (losses, seconds)."""
    model.train()
    losses = []
    synchronize(device)
    started = time.perf_counter()
    for _ in range(steps):
        images, masks = batch_to_device(
            batch, device, features.channels_last, config.data.augmentation
        )
        loss = forward_loss(model, images, masks, features, config, IGNORE_INDEX)
        losses.append(float(loss.detach().float()))
        optimisation_step(state, loss, config.optimization.grad_clip_norm)
    synchronize(device)
    return losses, time.perf_counter() - started


def measure_training(
    args: argparse.Namespace, device: torch.device, precisions: list[str], problems: list[str]
) -> list[TrainVariant]:
    variants = []
    for precision in precisions:
        for channels_last in (False, True):
            variant = TrainVariant(precision, channels_last)
            variants.append(variant)
            try:
                train_variant(args, device, variant)
            except Exception as error:  # one failing variant must not hide the others
                traceback.print_exc()
                variant.error = f"{type(error).__name__}: {error}"
            finally:
                release_memory(device)
            finite = variant.final_loss is not None and math.isfinite(variant.final_loss)
            if variant.error or not finite:
                problems.append(
                    f"train {precision} channels_last={channels_last}: "
                    f"{variant.error or f'non-finite final loss {variant.final_loss}'}"
                )
    baseline = variants[0].images_per_s
    for variant in variants:
        if baseline and variant.images_per_s:
            variant.speed_vs_fp32_nchw = round(variant.images_per_s / baseline, 3)
    return variants


def train_variant(args: argparse.Namespace, device: torch.device, variant: TrainVariant) -> None:
    config = experiment_config(args, variant.precision, variant.channels_last)
    features = device_features(config.scaling, device, world_size=1)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    state = build_training_state(
        config,
        checkpoint_metadata(config, args.num_classes),
        features,
        device,
        rank=0,
        total_iterations=args.warmup + args.iterations,
    )
    batch = random_batch(config, args.batch_size, args.size, args.size, args.num_classes, seed=0)
    train_steps(state.model, state, batch, config, features, device, args.warmup)
    losses, seconds = train_steps(
        state.model, state, batch, config, features, device, args.iterations
    )
    variant.images_per_s = round(args.batch_size * args.iterations / seconds, 2)
    variant.final_loss = round(losses[-1], 4)
    if state.scaler.is_enabled():
        variant.grad_scale = state.scaler.get_scale()
    if device.type == "cuda":
        variant.peak_memory_gib = round(torch.cuda.max_memory_allocated(device) / 2**30, 2)


def release_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()


def auto_features(device: torch.device) -> dict[str, dict[str, Any]]:
    """What scaling's all-"auto" defaults resolve to on this device, for 1 and 2 workers."""
    resolved = {}
    for world_size in (1, 2):
        features = device_features(ExperimentConfig().scaling, device, world_size)
        resolved[f"world_size_{world_size}"] = features_dict(features)
    return resolved


def features_dict(features: DeviceFeatures) -> dict[str, Any]:
    return {**asdict(features), "autocast_dtype": str(features.autocast_dtype)}


class NumpyBatches:
    """Stands in for a Ray Data shard in `validate`: yields the given numpy batches."""

    def __init__(self, batches: list[dict[str, np.ndarray]]) -> None:
        self.batches = batches

    def iter_batches(self, *, batch_size: int, batch_format: str) -> Any:
        return iter(self.batches)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def check_distributed(
    args: argparse.Namespace, device: torch.device, problems: list[str]
) -> DistributedCheck:
    if device.type != "cuda":
        return DistributedCheck(False, "skipped: NCCL needs CUDA (CPU smoke run)")
    check = DistributedCheck(
        True,
        "one GPU: NCCL init, DDP, SyncBatchNorm forward/backward under bf16 + channels_last and "
        "validate's count all-reduce ran at world size 1; nothing crossed GPUs (SyncBatchNorm "
        "uses local statistics at world size 1, the all-reduce sums one rank)",
        backend="nccl",
        world_size=1,
    )
    torch.cuda.set_device(device)
    dist.init_process_group(
        "nccl",
        init_method=f"tcp://127.0.0.1:{free_port()}",
        world_size=1,
        rank=0,
        timeout=datetime.timedelta(seconds=120),
    )
    try:
        config = experiment_config(args, "bf16", True)
        # Built directly: device_features turns SyncBatchNorm off at world size 1.
        features = DeviceFeatures(torch.bfloat16, channels_last=True, sync_batchnorm=True)
        check.features = features_dict(features)
        metadata = checkpoint_metadata(config, args.num_classes)
        state = build_training_state(
            config,
            metadata,
            features,
            device,
            rank=0,
            total_iterations=args.warmup + args.ddp_steps,
        )
        check.syncbatchnorm_modules = sum(
            isinstance(module, nn.SyncBatchNorm) for module in state.model.modules()
        )
        # As ray.train.torch.prepare_model wraps it on a GPU worker.
        model = nn.parallel.DistributedDataParallel(
            state.model, device_ids=[device.index], output_device=device.index
        )
        batch = random_batch(config, args.batch_size, args.size, args.size, args.num_classes, 1)
        warmup_losses, _ = train_steps(model, state, batch, config, features, device, args.warmup)
        losses, seconds = train_steps(model, state, batch, config, features, device, args.ddp_steps)
        check.losses = [round(loss, 4) for loss in warmup_losses + losses]
        check.images_per_s = round(args.batch_size * args.ddp_steps / seconds, 2)
        shard = NumpyBatches(validation_batches(config, args))
        miou = {}
        # world_size=2 only makes validate take its all-reduce branch over the 1-rank group.
        for world_size in (1, 2):
            metrics = validate(
                state.model,
                shard,
                class_names=metadata.class_names,
                ignore_index=IGNORE_INDEX,
                batch_size=2,
                augmentation=config.data.augmentation,
                features=features,
                device=device,
                world_size=world_size,
            )
            miou[world_size] = metrics["val_miou"]
        check.val_miou_local, check.val_miou_all_reduced = miou[1], miou[2]
    finally:
        dist.destroy_process_group()
        release_memory(device)
    if check.syncbatchnorm_modules == 0:
        problems.append("distributed: no SyncBatchNorm module in the model")
    if not all(math.isfinite(loss) for loss in check.losses):
        problems.append(f"distributed: non-finite loss in {check.losses}")
    if check.val_miou_local != check.val_miou_all_reduced:
        problems.append(
            f"distributed: validate's val_miou changed by the all-reduce over one rank: "
            f"{check.val_miou_local} != {check.val_miou_all_reduced}"
        )
    return check


def validation_batches(config: ExperimentConfig, args: argparse.Namespace) -> list[dict]:
    """Two numpy batches as `eval_dataset` gives them (uint8 (N, H, W, 3) and (N, H, W)), the
    second at another height."""
    sizes = [(2, args.size, args.size), (1, args.size * 3 // 4, args.size)]
    batches = []
    for seed, (count, height, width) in enumerate(sizes, start=10):
        batch = random_batch(config, count, height, width, args.num_classes, seed)
        batches.append({"image": batch["image"].numpy(), "mask": batch["mask"].numpy()})
    return batches


def compare_eval(args: argparse.Namespace, device: torch.device) -> EvalComparison:
    """fp32 vs bf16-autocast eval forward of one model whose BatchNorm statistics come from
    the data (as a trained model's would), in the memory format "auto" picks here."""
    config = experiment_config(args, "none", "auto")
    features = device_features(config.scaling, device, world_size=1)
    model = build_training_model(
        config.model, checkpoint_metadata(config, args.num_classes), features, device, seed=0
    )
    batch = random_batch(config, args.batch_size, args.size, args.size, args.num_classes, 2)
    images, _ = batch_to_device(batch, device, features.channels_last, config.data.augmentation)
    calibrate_batchnorm(model, images)
    model.eval()
    result = EvalComparison()
    logits = {}
    for name, dtype in (("fp32", None), ("bf16", torch.bfloat16)):
        with torch.inference_mode(), torch.autocast(device.type, dtype, enabled=dtype is not None):
            for _ in range(args.warmup):
                model(images)
            synchronize(device)
            started = time.perf_counter()
            for _ in range(args.iterations):
                out = model(images)["out"]
            synchronize(device)
        speed = round(args.batch_size * args.iterations / (time.perf_counter() - started), 2)
        setattr(result, f"{name}_images_per_s", speed)
        logits[name] = out.float()
    result.bf16_speed_vs_fp32 = round(result.bf16_images_per_s / result.fp32_images_per_s, 3)
    agree = logits["fp32"].argmax(dim=1) == logits["bf16"].argmax(dim=1)
    result.argmax_agreement = round(float(agree.float().mean()), 5)
    result.max_abs_logit_difference = round(float((logits["fp32"] - logits["bf16"]).abs().max()), 4)
    del model, logits
    release_memory(device)
    return result


@torch.no_grad()
def calibrate_batchnorm(model: nn.Module, images: torch.Tensor, passes: int = 2) -> None:
    """Replace the BatchNorm running statistics of a fresh model by those of `images`."""
    norms = [module for module in model.modules() if isinstance(module, nn.BatchNorm2d)]
    momenta = [norm.momentum for norm in norms]
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None  # a cumulative average over the passes
    model.train()
    for _ in range(passes):
        model(images)
    for norm, momentum in zip(norms, momenta, strict=True):
        norm.momentum = momentum


def print_table(report: GpuReport) -> None:
    print(
        f"device={report.device} torch={report.torch_version} backbone={report.backbone} "
        f"batch={report.batch_size} size={report.size} warmup={report.warmup} "
        f"iterations={report.iterations}"
    )
    for world_size, features in report.auto_features.items():
        print(f"auto ({world_size}): {features}")
    header = (
        f"{'precision':<9} {'channels_last':>13} {'img/s':>9} {'vs fp32 NCHW':>12} "
        f"{'peak GiB':>9} {'final loss':>10}"
    )
    print(header)
    print("-" * len(header))
    for v in report.training:
        if v.error:
            print(f"{v.precision:<9} {v.channels_last!s:>13}  failed: {v.error}")
            continue
        ratio = f"{v.speed_vs_fp32_nchw:.2f}x" if v.speed_vs_fp32_nchw else "-"
        memory = f"{v.peak_memory_gib:.2f}" if v.peak_memory_gib is not None else "-"
        print(
            f"{v.precision:<9} {v.channels_last!s:>13} {v.images_per_s:>9.2f} {ratio:>12} "
            f"{memory:>9} {v.final_loss:>10.4f}"
        )
    d = report.distributed
    print(f"distributed: {d.note}")
    if d.ran:
        print(
            f"  SyncBatchNorm modules={d.syncbatchnorm_modules} DDP img/s={d.images_per_s} "
            f"losses={d.losses} val_miou local={d.val_miou_local} "
            f"all-reduced={d.val_miou_all_reduced}"
        )
    e = report.evaluation
    print(
        f"eval: fp32 {e.fp32_images_per_s} img/s, bf16 {e.bf16_images_per_s} img/s "
        f"({e.bf16_speed_vs_fp32}x), argmax agreement {e.argmax_agreement}, "
        f"max |logit diff| {e.max_abs_logit_difference}"
    )
    for problem in report.problems:
        print(f"problem: {problem}")
    print("PASSED" if report.passed else "FAILED")


def run_part(name: str, problems: list[str], part: Any, default: Any) -> Any:
    """A part's result, or `default` with the failure recorded, so later parts still run."""
    try:
        return part()
    except Exception as error:
        traceback.print_exc()
        problems.append(f"{name}: {type(error).__name__}: {error}")
        return default


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="resnet50_v1c")
    parser.add_argument("--num-classes", type=int, default=21)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--size", type=int, default=512, help="square crop side in pixels")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--iterations", type=int, default=20, help="timed steps per variant")
    parser.add_argument("--ddp-steps", type=int, default=5, help="timed steps under DDP")
    parser.add_argument("--grad-clip-norm", type=float, default=None, help="default: off")
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    parser.add_argument("--output", type=Path, default=Path("benchmarks/out/gpu.json"))
    args = parser.parse_args()
    if min(args.iterations, args.ddp_steps, args.batch_size) < 1 or args.warmup < 0:
        parser.error("--iterations, --ddp-steps and --batch-size must be >= 1, --warmup >= 0")
    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("error: no CUDA device here; this check is for a GPU (--device cpu: smoke run)")
    on_gpu = args.device == "cuda"
    device = torch.device("cuda", torch.cuda.current_device()) if on_gpu else torch.device("cpu")
    problems: list[str] = []
    # fp16 autocast is a GPU path; a CPU smoke run checks fp32 and bf16 only.
    precisions = ["none", "bf16", "fp16"] if on_gpu else ["none", "bf16"]
    training = measure_training(args, device, precisions, problems)
    distributed = run_part(
        "distributed",
        problems,
        lambda: check_distributed(args, device, problems),
        DistributedCheck(False, "failed: see problems"),
    )
    evaluation = run_part("eval", problems, lambda: compare_eval(args, device), EvalComparison())
    if evaluation.max_abs_logit_difference is not None and not math.isfinite(
        evaluation.max_abs_logit_difference
    ):
        problems.append("eval: non-finite logits in the fp32 or bf16 forward")
    report = GpuReport(
        device=torch.cuda.get_device_name(device) if on_gpu else "cpu",
        torch_version=torch.__version__,
        cuda_version=torch.version.cuda,
        cudnn_version=torch.backends.cudnn.version() if on_gpu else None,
        backbone=args.backbone,
        size=args.size,
        batch_size=args.batch_size,
        warmup=args.warmup,
        iterations=args.iterations,
        grad_clip_norm=args.grad_clip_norm,
        auto_features=auto_features(device),
        training=training,
        distributed=distributed,
        evaluation=evaluation,
        problems=problems,
        passed=not problems,
    )
    print_table(report)
    write_text_atomically(args.output, json.dumps(asdict(report), indent=2) + "\n")
    print(f"wrote {args.output}")
    sys.exit(0 if report.passed else 1)


if __name__ == "__main__":
    main()
