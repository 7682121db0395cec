"""Torch's process group for Ray Train's workers, formed by the training loop, torchrun-style.

Ray's own `TorchConfig` forms the group before the training function starts, and its module
imports torch. That puts two imports of torch on the path to the first step: Ray Train's
controller unpickles the backend config as it starts, before it asks for the workers'
processes, and every worker imports torch to join the group before it can ask Ray Data for its
shard (which is what starts the data set's coordinator process). On the 2-core machine each
import takes 2-3 s beside the other start-up processes.

Here, as torchrun does, the backend only sets the torch.distributed environment on every worker
(`MASTER_ADDR`, `MASTER_PORT`, `RANK`, `WORLD_SIZE`, `LOCAL_RANK`, `LOCAL_WORLD_SIZE`,
`NODE_RANK`); nothing in this module imports torch until a worker calls `join_process_group`,
which the training loop does once it has asked for its data. What the workers get is otherwise
what Ray's backend gives them for CPU (gloo) and GPU (NCCL) training: one group formed from rank
0's address, each node's GPUs visible to all of its workers, the CUDA device set, and the group
destroyed at the end. Ray's TPU and HCCL set-ups are not offered: this project trains on CPUs
and NVIDIA GPUs.

Written against Ray 2.60.0's `ray.train.torch.config`; tests/test_ray_internals.py checks that
the controller never imports torch and that the workers form their group.
"""

from __future__ import annotations

import logging
import os
import sys
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Any

import ray
from ray.train._internal.utils import get_address_and_port
from ray.train.backend import Backend, BackendConfig

if TYPE_CHECKING:
    from pipeline.config.schema import ScalingSection

logger = logging.getLogger(__name__)

GLOO = "gloo"
NCCL = "nccl"

# Torch's names for the same switch before and after 2.2; either one set by the user wins.
_NCCL_ERROR_HANDLING_VARIABLES = ("TORCH_NCCL_ASYNC_ERROR_HANDLING", "TORCH_NCCL_BLOCKING_WAIT")


@dataclass
class TorchProcessGroupConfig(BackendConfig):
    """Which collective backend the workers use and how long a collective may hang. Passed to
    Ray Train's `DataParallelTrainer` as its `backend_config`, as `TorchTrainer` passes Ray's
    `TorchConfig`."""

    use_gpu: bool
    timeout_s: int = 1800

    @staticmethod
    def of(scaling: ScalingSection) -> TorchProcessGroupConfig:
        return TorchProcessGroupConfig(
            use_gpu=scaling.use_gpu, timeout_s=scaling.process_group_timeout_s
        )

    @property
    def backend(self) -> str:
        return NCCL if self.use_gpu else GLOO

    @property
    def backend_cls(self) -> type[Backend]:
        return TorchProcessGroupBackend

    @property
    def framework(self) -> Any:
        from ray.train.v2._internal.util import TrainingFramework

        return TrainingFramework.TORCH

    def to_dict(self) -> dict[str, Any]:
        return {"backend": self.backend, "init_method": "env", "timeout_s": self.timeout_s}


class TorchProcessGroupBackend(Backend):
    """Runs in Ray Train's controller; every function it sends runs on the workers."""

    # NCCL needs each worker to see the GPUs of its node's other workers.
    share_cuda_visible_devices = True

    def on_start(self, worker_group: Any, backend_config: TorchProcessGroupConfig) -> None:
        address, port = worker_group.execute_single(0, get_address_and_port)
        ray.get(
            [
                worker_group.execute_single_async(
                    rank,
                    set_torchrun_environment,
                    master_address=address,
                    master_port=port,
                    world_rank=rank,
                    world_size=len(worker_group),
                )
                for rank in range(len(worker_group))
            ]
        )

    def on_shutdown(self, worker_group: Any, backend_config: TorchProcessGroupConfig) -> None:
        # A worker stuck in a collective must not hold the controller's shutdown for ever.
        futures = worker_group.execute_async(leave_process_group)
        try:
            ray.get(futures, timeout=backend_config.timeout_s)
        except ray.exceptions.GetTimeoutError:
            logger.warning(
                "torch.distributed's process group was not destroyed within %d s "
                "(scaling.process_group_timeout_s); Ray ends the workers regardless",
                backend_config.timeout_s,
            )


def set_torchrun_environment(
    master_address: str, master_port: int, world_rank: int, world_size: int
) -> None:
    """On a worker: the variables torchrun sets, which `init_process_group("env://")` reads."""
    context = ray.train.get_context()
    os.environ.update(
        {
            "MASTER_ADDR": master_address,
            "MASTER_PORT": str(master_port),
            "RANK": str(world_rank),
            "WORLD_SIZE": str(world_size),
            "LOCAL_RANK": str(context.get_local_rank()),
            "LOCAL_WORLD_SIZE": str(context.get_local_world_size()),
            "NODE_RANK": str(context.get_node_rank()),
        }
    )


def join_process_group(config: TorchProcessGroupConfig, device: Any) -> None:
    """On a worker, from the training loop: make `device` (a torch.device) the current CUDA
    device when it is one, then form the group with every other rank (blocks until all have
    joined). A no-op where the group already exists."""
    import torch
    import torch.distributed as dist

    if dist.is_initialized():
        return
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if config.backend == NCCL and not any(
        name in os.environ for name in _NCCL_ERROR_HANDLING_VARIABLES
    ):
        # A collective that times out raises instead of hanging the worker for ever.
        os.environ["TORCH_NCCL_ASYNC_ERROR_HANDLING"] = "1"
    dist.init_process_group(
        backend=config.backend,
        init_method="env://",
        rank=int(os.environ["RANK"]),
        world_size=int(os.environ["WORLD_SIZE"]),
        timeout=timedelta(seconds=config.timeout_s),
    )


def leave_process_group() -> None:
    """On a worker: destroy the group (if the loop formed one) and free cached GPU memory."""
    if "torch" not in sys.modules:
        return  # the loop ended before it imported torch: no group, no GPU memory
    import torch
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
