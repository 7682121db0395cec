"""The Ray Data actor pool a model runs on: how many actors and what each reserves
(`plan_actor_pool`), and the model made ready inside each actor (`prepare_actor_model`)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from pipeline.evaluate.inference_model import InferenceError


@dataclass(frozen=True)
class ActorPoolPlan:
    """How many model actors to start and what each one reserves."""

    actors: int
    num_cpus: float
    num_gpus: float

    @property
    def torch_threads(self) -> int:
        """Intra-op threads per actor: one per reserved CPU, at least one."""
        return max(1, math.floor(self.num_cpus))


def plan_actor_pool(
    actors: int | None = None,
    cpus_per_actor: float | None = None,
    cluster_resources: dict[str, float] | None = None,
) -> ActorPoolPlan:
    """Size the actor pool from the options or the cluster.

    With GPUs: one actor per GPU (num_gpus=1, one CPU each). CPU only: the actors together
    reserve at most half the cluster's CPUs (the rest reads and decodes the data), one actor per
    two CPUs by default; on a 2-core machine that is one actor with one CPU, or two at 0.5 each
    with `actors=2`.
    """
    if cluster_resources is None:
        import ray

        cluster_resources = ray.cluster_resources()
    total_cpus = float(cluster_resources.get("CPU", 1.0))
    total_gpus = int(cluster_resources.get("GPU", 0))
    if actors is not None and actors < 1:
        raise InferenceError(f"--actors must be at least 1, got {actors}")
    if cpus_per_actor is not None and cpus_per_actor <= 0:
        raise InferenceError(f"--cpus-per-actor must be positive, got {cpus_per_actor}")
    if total_gpus > 0:
        pool = actors or total_gpus
        return ActorPoolPlan(pool, cpus_per_actor or 1.0, 1.0)
    pool = actors or max(1, int(total_cpus // 2))
    share = cpus_per_actor or min(1.0, total_cpus / (2 * pool))
    return ActorPoolPlan(pool, share, 0.0)


def prepare_actor_model(model: nn.Module | object, threads: int) -> nn.Module:
    """Inside an actor: fetch the model if it came as an object reference, move it to the GPU
    when there is one, set the CPU thread count, switch to eval mode."""
    import ray

    if isinstance(model, ray.ObjectRef):
        model = ray.get(model)
    torch.set_num_threads(threads)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    return model.to(device).eval()
