"""Extension points of the per-worker training loop, installed by whoever calls the driver.

A hook is a picklable object that travels to every Ray Train worker inside the loop's settings,
so it runs wherever the workers run, also on other nodes. The loop calls every hook at fixed
points; the base class does nothing at each, so a hook overrides only what it needs. The
production loop installs none: fault-injection tests install theirs through
`train_or_resume(..., hooks=...)` (or `RunRequest.hooks`), or, for a job started as a subprocess, by naming a factory in the
`APCNET_TRAINING_HOOKS` environment variable (`package.module:function`, returning hooks).
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the driver imports this module and does not need torch before fit()
    import torch

HOOKS_ENV = "APCNET_TRAINING_HOOKS"


@dataclass(frozen=True)
class LoopPosition:
    """Where the loop is: this worker's rank, the world size, the epoch (1-based), the global
    iteration about to run or just run (1-based), and the run's folder."""

    rank: int
    world_size: int
    epoch: int
    iteration: int
    iterations_per_epoch: int
    run_folder: str


class TrainingHook:
    """Called by every worker at the points below; every method does nothing by default."""

    def before_step(self, position: LoopPosition) -> None:
        """Before the forward pass of `position.iteration`."""

    def loss_computed(self, position: LoopPosition, loss: torch.Tensor) -> torch.Tensor:
        """May replace this worker's loss of the step (before the loss is checked and used)."""
        return loss

    def before_report(self, position: LoopPosition) -> None:
        """After the epoch's training and validation, before it is reported with its
        checkpoint (and so before MLflow has it)."""


@dataclass(frozen=True)
class TrainingHooks(TrainingHook):
    """Several hooks called as one, in order: what the loop holds and calls."""

    hooks: tuple[TrainingHook, ...] = ()

    def before_step(self, position: LoopPosition) -> None:
        for hook in self.hooks:
            hook.before_step(position)

    def loss_computed(self, position: LoopPosition, loss: torch.Tensor) -> torch.Tensor:
        for hook in self.hooks:
            loss = hook.loss_computed(position, loss)
        return loss

    def before_report(self, position: LoopPosition) -> None:
        for hook in self.hooks:
            hook.before_report(position)


def hooks_from_environment() -> tuple[TrainingHook, ...]:
    """The hooks named by `APCNET_TRAINING_HOOKS`, or none when it is unset."""
    target = os.environ.get(HOOKS_ENV)
    if not target:
        return ()
    module_name, _, function_name = target.partition(":")
    factory = getattr(importlib.import_module(module_name), function_name)
    hooks: Sequence[TrainingHook] = factory()
    return tuple(hooks)
