"""Specification of the training step on a GPU: each precision and memory layout trains,
SyncBatchNorm runs forward and backward in a real NCCL group, validation's counts go through
NCCL's all-reduce, and SyncBatchNorm's statistics cross ranks.

Marked `gpu` and skipped where no CUDA device is (the CPU variant of the step runs everywhere,
so the test's own logic is checked on every machine). Small models and images: these check that
the GPU path runs and computes the same thing, not its speed (`benchmarks/gpu.py`,
`benchmarks/gpu_ray.py`).
"""

from __future__ import annotations

import datetime
import math
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as multiprocessing
from helpers.metadata import numbered_classes_metadata
from torch import nn

from pipeline.config.schema import ExperimentConfig, load_config
from pipeline.train.device import DeviceFeatures
from pipeline.train.settings import CheckpointMetadata
from pipeline.train.state import TrainingState, build_training_state
from pipeline.train.step import batch_to_device, forward_loss, optimisation_step
from pipeline.train.validation import validate

HAS_CUDA = torch.cuda.is_available()
ON_GPU = [pytest.mark.gpu, pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU")]
NUM_CLASSES = 4
IGNORE_INDEX = 255
SIZE = 64


def small_config() -> ExperimentConfig:
    return load_config(
        None,
        [
            "model.backbone=resnet18",
            "model.channels=32",
            "model.pool_scales=[1, 2]",
            "optimization.batch_size=2",
            "optimization.lr=0.01",
        ],
    )


def metadata(config: ExperimentConfig) -> CheckpointMetadata:
    return numbered_classes_metadata(config, NUM_CLASSES, "gpu-spec")


def uint8_batch(count: int, height: int = SIZE, seed: int = 0) -> dict[str, torch.Tensor]:
    """A batch as the training ingest gives it: uint8 images (N, H, W, 3) and masks (N, H, W)."""
    generator = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (count, height, SIZE, 3), generator=generator, dtype=torch.uint8)
    masks = torch.randint(0, NUM_CLASSES, (count, height, SIZE), generator=generator)
    return {"image": images, "mask": masks.to(torch.uint8)}


def train_steps(
    state: TrainingState,
    model: nn.Module,
    features: DeviceFeatures,
    device: torch.device,
    steps: int,
) -> list[float]:
    """`steps` steps on one fixed batch, the way a training worker takes them."""
    config = small_config()
    batch = uint8_batch(2)
    losses = []
    model.train()
    for _ in range(steps):
        images, masks = batch_to_device(
            batch, device, features.channels_last, config.data.augmentation
        )
        loss = forward_loss(model, images, masks, features, config, IGNORE_INDEX)
        losses.append(float(loss.detach().float()))
        optimisation_step(state, loss, clip_norm=None)
    return losses


@pytest.mark.parametrize(
    ("device_type", "precision", "channels_last"),
    [
        ("cpu", None, False),
        pytest.param("cuda", None, False, marks=ON_GPU, id="cuda-fp32"),
        pytest.param("cuda", torch.bfloat16, True, marks=ON_GPU, id="cuda-bf16-channels_last"),
        pytest.param("cuda", torch.float16, True, marks=ON_GPU, id="cuda-fp16-channels_last"),
        pytest.param("cuda", torch.bfloat16, False, marks=ON_GPU, id="cuda-bf16"),
    ],
)
def test_the_training_step_trains_at_each_precision_and_memory_layout(
    device_type: str, precision: torch.dtype | None, channels_last: bool
) -> None:
    device = torch.device(device_type, 0) if device_type == "cuda" else torch.device("cpu")
    config = small_config()
    features = DeviceFeatures(precision, channels_last, sync_batchnorm=False)
    state = build_training_state(
        config, metadata(config), features, device, rank=0, total_iterations=6
    )
    first_conv = next(m for m in state.model.modules() if isinstance(m, nn.Conv2d))
    before = first_conv.weight.detach().clone()
    losses = train_steps(state, state.model, features, device, steps=6)

    assert all(math.isfinite(loss) for loss in losses), losses
    assert not torch.equal(before, first_conv.weight.detach())
    assert first_conv.weight.device.type == device_type
    if channels_last:
        assert first_conv.weight.is_contiguous(memory_format=torch.channels_last)
    # fp16 needs the loss scaler (its scale moves only if a step overflowed); bf16 and fp32 don't.
    assert state.scaler.is_enabled() == (precision == torch.float16)
    # One batch seen six times: the loss falls (fp16's scaler may skip its first steps while
    # it finds its scale, so there only that it trains without overflowing for good).
    if precision != torch.float16:
        assert min(losses[-2:]) < losses[0], losses


class NumpyShard:
    """A validation shard as Ray Data's `iter_batches` gives it: numpy batches."""

    def __init__(self, batches: list[dict[str, torch.Tensor]]) -> None:
        self.batches = batches

    def iter_batches(self, batch_size: int, batch_format: str):
        assert batch_format == "numpy"
        for batch in self.batches:
            yield {key: value.numpy() for key, value in batch.items()}


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU")
def test_syncbatchnorm_and_validation_counts_run_in_an_nccl_group(tmp_path: Path) -> None:
    device = torch.device("cuda", 0)
    torch.cuda.set_device(device)
    dist.init_process_group(
        "nccl",
        init_method=f"file://{tmp_path / 'rendezvous'}",
        world_size=1,
        rank=0,
        timeout=datetime.timedelta(seconds=60),
    )
    try:
        config = small_config()
        # Built directly: "auto" keeps SyncBatchNorm off in a group of one.
        features = DeviceFeatures(torch.bfloat16, channels_last=True, sync_batchnorm=True)
        state = build_training_state(
            config, metadata(config), features, device, rank=0, total_iterations=3
        )
        assert any(isinstance(m, nn.SyncBatchNorm) for m in state.model.modules())
        # As Ray Train's prepare_model wraps it on a GPU worker.
        model = nn.parallel.DistributedDataParallel(state.model, device_ids=[0], output_device=0)
        losses = train_steps(state, model, features, device, steps=3)
        assert all(math.isfinite(loss) for loss in losses), losses

        shard = NumpyShard([uint8_batch(2, seed=10), uint8_batch(1, height=48, seed=11)])
        scores = {}
        # At world_size 2 validate sums its counts with NCCL's all-reduce (over this group of
        # one): the same scores as without it.
        for world_size in (1, 2):
            scores[world_size] = validate(
                state.model,
                shard,
                class_names=metadata(config).class_names,
                ignore_index=IGNORE_INDEX,
                batch_size=2,
                augmentation=config.data.augmentation,
                features=features,
                device=device,
                world_size=world_size,
            )
        assert scores[1] == pytest.approx(scores[2], nan_ok=True)
    finally:
        dist.destroy_process_group()


def syncbatchnorm_rank(rank: int, rendezvous: str, inputs: torch.Tensor, out: str) -> None:
    """One of two ranks on the one GPU, over gloo: SyncBatchNorm on this rank's half."""
    dist.init_process_group("gloo", init_method=rendezvous, world_size=2, rank=rank)
    try:
        norm = nn.SyncBatchNorm(inputs.shape[1]).cuda()
        half = inputs.chunk(2)[rank].cuda().requires_grad_()
        output = norm(half)
        output.sum().backward()
        torch.save({"output": output.detach().cpu(), "mean": norm.running_mean.cpu()}, out)
    finally:
        dist.destroy_process_group()


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU")
def test_syncbatchnorm_normalises_over_both_ranks_on_one_gpu(tmp_path: Path) -> None:
    # Two ranks share the one GPU (NCCL refuses two ranks on one device): gloo carries the
    # CUDA tensors' statistics between them.
    generator = torch.Generator().manual_seed(0)
    inputs = torch.randn(4, 3, 8, 8, generator=generator) * 3 + 1
    inputs[2:] += 5  # the ranks' halves differ: local statistics would not do
    outs = [str(tmp_path / f"rank{rank}.pt") for rank in (0, 1)]
    context = multiprocessing.get_context("spawn")
    rendezvous = f"file://{tmp_path / 'rendezvous'}"
    ranks = [
        context.Process(target=syncbatchnorm_rank, args=(rank, rendezvous, inputs, outs[rank]))
        for rank in (0, 1)
    ]
    for rank in ranks:
        rank.start()
    for rank in ranks:
        rank.join(timeout=120)
        assert rank.exitcode == 0, "a rank failed: see its traceback above"

    reference = nn.BatchNorm2d(3).train()(inputs).detach()
    results = [torch.load(out, weights_only=True) for out in outs]
    assert torch.allclose(torch.cat([r["output"] for r in results]), reference, atol=1e-4)
    assert torch.allclose(results[0]["mean"], results[1]["mean"])
