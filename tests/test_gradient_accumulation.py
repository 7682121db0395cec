"""Specification of gradient accumulation: a shrunk elastic group trains like the full one.

An elastic group keeps the global batch when it shrinks by accumulating micro-batches
(`pipeline.config.batching`). Here the project's model (tiny resnet18 APCNet, train mode, SGD
with momentum, poly schedule) trains two optimiser steps from the same initial weights:

- 2 workers x 1 micro-batch of 2 images (global batch 4, `scaling.num_workers=[1, 2]`) against
  1 worker x 2 accumulated micro-batches of the same images, micro-batch 0 rank 0's;
- 2 workers x 2 accumulated micro-batches of 3 images (global batch 12, `[1, 4]` shrunk to 2,
  DDP's `no_sync` on the first) against 1 worker x 4 micro-batches of the same images.

The workers are a real 2-process gloo group with the model in DistributedDataParallel, as
`ray.train.torch.prepare_model` wraps it on CPU (broadcast_buffers=True); a single worker's
model is not wrapped, as there. Every path runs `batch_to_device`, `forward_loss`,
`backward_micro_batch` and `apply_gradients` in the order `train_one_epoch` does. Dropout is 0:
each worker draws its masks from its own random stream, so no two paths could share them.

Every parameter agrees within 1e-6 + 1e-6 x its magnitude after each step, with and without
`grad_clip_norm`: clipping sees the accumulated gradient as it sees DDP's averaged one, and the
schedule counts optimiser steps, not micro-batches. Measured on CPU (parameters up to 1.5 in
magnitude, where float32's spacing is 1.2e-7): 2 x 1 and 1 x 2 agree exactly; 2 x 3 x 2 and
1 x 3 x 4 sum their micro-batches' gradients in another order and differ by at most 1.5e-8
after two steps, while the first step moves a parameter by up to 6e-5 to 9e-5 and the clip
changes it by up to 2e-5 to 5e-5.

BatchNorm running statistics are the one intended difference. Under DDP each worker updates
them from its own micro-batch, and DDP broadcasts rank 0's buffers to the others at the start
of the next step's first forward, so after a step of 2 x 1 the group keeps rank 0's update
only (one momentum update, from 2 of the 4 images; rank 0's model is the one checkpointed).
An accumulating worker updates them once per micro-batch, one after the other (two momentum
updates, `num_batches_tracked` 2). Both are estimates of the same statistics.

An integration test although it starts no Ray: the 2-process group costs about 13 s on a
2-core machine (torch imported in each process, then four short runs).
"""

from __future__ import annotations

import contextlib
import datetime
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from helpers.metadata import numbered_classes_metadata
from torch import nn

from pipeline.config.batching import BatchPlan, batch_plan
from pipeline.config.schema import ExperimentConfig, load_config
from pipeline.train.device import device_features
from pipeline.train.settings import CheckpointMetadata
from pipeline.train.state import TrainingState, build_training_state
from pipeline.train.step import apply_gradients, backward_micro_batch, batch_to_device, forward_loss

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("single_torch_thread")]

CPU = torch.device("cpu")
WORKERS = 2
NUM_CLASSES = 3
IMAGE_SIZE = 32
STEPS = 2
CLIP_NORM = 0.05  # well below the tiny model's first gradient norms, so the clip takes effect
TOLERANCE = 1e-6  # absolute, and relative to the value
# A step must move the parameters (or the clip change them) by this many tolerances, or the
# comparison would say nothing.
SIGNIFICANT = 10 * TOLERANCE

# A step's images as the ingest delivers them: "image" uint8 (N, H, W, 3), "mask" uint8 (N, H, W).
Batch = dict[str, torch.Tensor]
# What a worker holds after each step: {"parameters": {name: tensor}, "buffers": {name: tensor}}.
Snapshot = dict[str, dict[str, torch.Tensor]]


@dataclass(frozen=True)
class Group:
    """An elastic group: `global_batch` images per step, `scaling.num_workers=[1, max_workers]`."""

    global_batch: int
    max_workers: int

    def config(self, clip_norm: float | None) -> ExperimentConfig:
        return load_config(
            None,
            [
                "data.augmentation.crop_size=[32, 32]",
                "model.backbone=resnet18",
                "model.channels=64",
                "model.pool_scales=[1, 2]",
                "model.dropout=0",
                f"optimization.batch_size={self.global_batch}",
                f"optimization.grad_clip_norm={'null' if clip_norm is None else clip_norm}",
                "optimization.epochs=null",
                f"optimization.iterations={STEPS}",
                f"scaling.num_workers=[1, {self.max_workers}]",
            ],
        )

    def plan(self, workers: int) -> BatchPlan:
        return batch_plan(self.global_batch, workers, self.max_workers)


# Micro-batches of more than 1 image: batch statistics in every BatchNorm (a single image
# would send the 1x1 pooled branch to its running statistics, which the paths update apart).
FULL_GROUP = Group(global_batch=4, max_workers=2)  # 2 x 2 x 1 against 1 x 2 x 2
SHRUNK_GROUP = Group(global_batch=12, max_workers=4)  # 2 x 3 x 2 against 1 x 3 x 4
RUNS = {
    "full": (FULL_GROUP, None),
    "full_clipped": (FULL_GROUP, CLIP_NORM),
    "shrunk": (SHRUNK_GROUP, None),
    "shrunk_clipped": (SHRUNK_GROUP, CLIP_NORM),
}


def metadata(config: ExperimentConfig) -> CheckpointMetadata:
    return numbered_classes_metadata(config, NUM_CLASSES, "accumulation")


def fresh_state(config: ExperimentConfig, world_size: int, rank: int) -> TrainingState:
    """The state a worker builds for a new run: the initial weights depend on the seed alone."""
    features = device_features(config.scaling, CPU, world_size)
    return build_training_state(
        config, metadata(config), features, CPU, rank=rank, total_iterations=STEPS
    )


def step_batches(global_batch: int) -> list[Batch]:
    """STEPS global batches of random images and labels."""
    generator = torch.Generator().manual_seed(0)
    shape = (global_batch, IMAGE_SIZE, IMAGE_SIZE)
    return [
        {
            "image": torch.randint(0, 256, (*shape, 3), generator=generator, dtype=torch.uint8),
            "mask": torch.randint(0, NUM_CLASSES, shape, generator=generator, dtype=torch.uint8),
        }
        for _ in range(STEPS)
    ]


def micro_batches(batch: Batch, plan: BatchPlan, rank: int) -> list[Batch]:
    """Worker `rank`'s micro-batches of a global batch: its consecutive share, in order."""
    first = rank * plan.images_per_worker
    starts = range(first, first + plan.images_per_worker, plan.micro_batch_size)
    return [
        {key: values[start : start + plan.micro_batch_size] for key, values in batch.items()}
        for start in starts
    ]


def train_steps(
    model: nn.Module, state: TrainingState, config: ExperimentConfig, plan: BatchPlan, rank: int
) -> list[Snapshot]:
    """`train_one_epoch`'s step, without Ray, over `step_batches`; the worker's parameters and
    buffers after every step. `model` is `state.model`, in DDP for several workers."""
    world_size = plan.workers
    features = device_features(config.scaling, CPU, world_size)
    ignore_index = metadata(config).ignore_index
    model.train()
    snapshots = []
    for batch in step_batches(plan.global_batch):
        state.optimizer.zero_grad(set_to_none=True)
        for index, micro_batch in enumerate(micro_batches(batch, plan, rank)):
            images, masks = batch_to_device(
                micro_batch, CPU, features.channels_last, config.data.augmentation
            )
            last = index == plan.accumulation_steps - 1
            # pipeline.train.worker.no_gradient_sync, not imported: it would import Ray.
            unsynced = isinstance(model, nn.parallel.DistributedDataParallel) and not last
            with model.no_sync() if unsynced else contextlib.nullcontext():
                loss = forward_loss(model, images, masks, features, config, ignore_index)
                backward_micro_batch(state, loss, plan.accumulation_steps)
        apply_gradients(state, config.optimization.grad_clip_norm)
        snapshots.append(snapshot(state.model))
    return snapshots


def snapshot(model: nn.Module) -> Snapshot:
    return {
        "parameters": {name: value.detach().clone() for name, value in model.named_parameters()},
        "buffers": {name: value.detach().clone() for name, value in model.named_buffers()},
    }


def train_in_group(rank: int, store_file: str, results_folder: str) -> None:
    """One of the WORKERS processes: every run's steps with the model in DDP; its snapshots
    go to `<results_folder>/rank<rank>.pt`."""
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo",
        init_method=f"file://{store_file}",
        rank=rank,
        world_size=WORKERS,
        timeout=datetime.timedelta(seconds=60),
    )
    try:
        results = {}
        for name, (group, clip_norm) in RUNS.items():
            config = group.config(clip_norm)
            state = fresh_state(config, WORKERS, rank)
            model = nn.parallel.DistributedDataParallel(state.model)
            results[name] = train_steps(model, state, config, group.plan(WORKERS), rank)
    finally:
        dist.destroy_process_group()
    torch.save(results, Path(results_folder) / f"rank{rank}.pt")


@dataclass(frozen=True)
class Trained:
    """Every run's snapshots after each step: rank 0 of the DDP group, and a single worker."""

    in_group: dict[str, list[Snapshot]]
    accumulated: dict[str, list[Snapshot]]


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, single_torch_thread: None) -> Trained:
    folder = tmp_path_factory.mktemp("accumulation")
    group_processes = mp.spawn(
        train_in_group,
        args=(str(folder / "store"), str(folder)),
        nprocs=WORKERS,
        join=False,
    )
    try:
        # The single worker trains here meanwhile.
        accumulated = {}
        for name, (group, clip_norm) in RUNS.items():
            config = group.config(clip_norm)
            state = fresh_state(config, world_size=1, rank=0)
            accumulated[name] = train_steps(state.model, state, config, group.plan(1), rank=0)
    finally:
        # Raises what a worker raised, after ending the other (ProcessContext.join).
        while not group_processes.join():
            pass
    return Trained(torch.load(folder / "rank0.pt", weights_only=True), accumulated)


def max_difference(first: Mapping[str, torch.Tensor], second: Mapping[str, torch.Tensor]) -> float:
    assert first.keys() == second.keys()
    return max((first[key].double() - second[key].double()).abs().max().item() for key in first)


def assert_close(first: Mapping[str, torch.Tensor], second: Mapping[str, torch.Tensor]) -> None:
    for key in first:
        torch.testing.assert_close(first[key], second[key], atol=TOLERANCE, rtol=TOLERANCE, msg=key)


def initial_parameters(group: Group) -> dict[str, torch.Tensor]:
    return snapshot(fresh_state(group.config(None), world_size=1, rank=0).model)["parameters"]


def batchnorm_statistics_after(group: Group, batches: list[Batch]) -> dict[str, torch.Tensor]:
    """The running statistics of the initial model after train-mode forwards of `batches`,
    one after the other."""
    config = group.config(None)
    model = fresh_state(config, world_size=1, rank=0).model.train()
    with torch.no_grad():
        for batch in batches:
            images, _ = batch_to_device(batch, CPU, False, config.data.augmentation)
            model(images)
    return snapshot(model)["buffers"]


@pytest.mark.parametrize("run", ["full", "shrunk"])
def test_one_worker_accumulating_micro_batches_steps_like_the_group_of_two(trained, run):
    for in_group, accumulated in zip(trained.in_group[run], trained.accumulated[run], strict=True):
        assert_close(accumulated["parameters"], in_group["parameters"])


@pytest.mark.parametrize("run", ["full", "shrunk"])
def test_the_compared_steps_move_the_parameters_far_beyond_the_tolerance(trained, run):
    group, _ = RUNS[run]
    moved = max_difference(trained.accumulated[run][0]["parameters"], initial_parameters(group))
    assert moved > SIGNIFICANT


@pytest.mark.parametrize("run", ["full_clipped", "shrunk_clipped"])
def test_gradient_clipping_applies_to_the_accumulated_gradient(trained, run):
    for in_group, accumulated in zip(trained.in_group[run], trained.accumulated[run], strict=True):
        assert_close(accumulated["parameters"], in_group["parameters"])
    unclipped = run.removesuffix("_clipped")
    clipping_changed = max_difference(
        trained.accumulated[run][0]["parameters"],
        trained.accumulated[unclipped][0]["parameters"],
    )
    assert clipping_changed > SIGNIFICANT


def test_batchnorm_keeps_rank_0s_update_in_a_group_and_every_update_when_accumulating(trained):
    batch = step_batches(FULL_GROUP.global_batch)[0]
    rank_0_micro_batch, rank_1_micro_batch = micro_batches(batch, FULL_GROUP.plan(1), rank=0)
    one_update = batchnorm_statistics_after(FULL_GROUP, [rank_0_micro_batch])
    two_updates = batchnorm_statistics_after(FULL_GROUP, [rank_0_micro_batch, rank_1_micro_batch])
    in_group = trained.in_group["full"][0]["buffers"]
    accumulated = trained.accumulated["full"][0]["buffers"]
    assert_close(in_group, one_update)
    assert_close(accumulated, two_updates)
    assert max_difference(in_group, accumulated) > SIGNIFICANT
    tracked = [key for key in accumulated if key.endswith("num_batches_tracked")]
    assert tracked
    assert all(in_group[key].item() == 1 and accumulated[key].item() == 2 for key in tracked)
