"""Poly learning-rate schedule with optional linear warm-up and floor, stepped per iteration."""

import torch
from torch.optim.lr_scheduler import LRScheduler


def poly_lr(
    base_lr: float,
    iteration: int,
    total_iters: int,
    power: float = 0.9,
    min_lr: float = 0.0,
    warmup_iters: int = 0,
    warmup_ratio: float = 0.1,
) -> float:
    """Learning rate at `iteration` (0-based) of a poly schedule, as the reference toolbox.

    lr = (base_lr - min_lr) * (1 - it / total_iters) ** power + min_lr, with `it` clamped to
    `total_iters` (so the rate never goes below `min_lr`, however long training runs). During
    the first `warmup_iters` iterations the poly rate is scaled by a factor rising linearly
    from `warmup_ratio` (iteration 0) to 1 (iteration `warmup_iters`).
    """
    clamped = min(max(iteration, 0), total_iters)
    regular = (base_lr - min_lr) * (1.0 - clamped / total_iters) ** power + min_lr
    if clamped < warmup_iters:
        # Linear warm-up multiplier, from warmup_ratio at it=0 up to 1 at it=warmup_iters.
        shortfall = (1.0 - clamped / warmup_iters) * (1.0 - warmup_ratio)
        return regular * (1.0 - shortfall)
    return regular


class PolyLR(LRScheduler):
    """Poly decay `lr = (base - min_lr) * (1 - it/total_iters)^power + min_lr`, per iteration.

    Call `step()` once per optimisation step (after `optimizer.step()`); the rate after `k`
    steps is `poly_lr(base, k, ...)` for each parameter group's initial lr. The rate is computed
    in closed form from the iteration counter, so `state_dict()` / `load_state_dict()` resume the
    exact sequence. Past `total_iters` the rate stays at `min_lr`.

    Args:
        optimizer: the optimizer whose param groups' "lr" are set each step.
        total_iters: number of iterations of the whole schedule (> 0).
        power: exponent of the decay (0.9 in the paper).
        min_lr: floor the rate decays to (the reference toolbox uses 1e-4); must not exceed any
            group's base lr.
        warmup_iters: length of the linear warm-up (0 = none); must be below `total_iters`.
        warmup_ratio: warm-up starting factor, in (0, 1].
        last_epoch: the index of the last iteration when resuming; keep -1 and use
            `load_state_dict` instead.
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        total_iters: int,
        power: float = 0.9,
        min_lr: float = 0.0,
        warmup_iters: int = 0,
        warmup_ratio: float = 0.1,
        last_epoch: int = -1,
    ) -> None:
        if total_iters <= 0:
            raise ValueError(f"PolyLR: total_iters must be positive, got {total_iters}")
        if power < 0:
            raise ValueError(f"PolyLR: power must be >= 0, got {power}")
        if min_lr < 0:
            raise ValueError(f"PolyLR: min_lr must be >= 0, got {min_lr}")
        if not 0 <= warmup_iters < total_iters:
            raise ValueError(
                f"PolyLR: warmup_iters must be in [0, total_iters={total_iters}), got {warmup_iters}"
            )
        if not 0 < warmup_ratio <= 1:
            raise ValueError(f"PolyLR: warmup_ratio must be in (0, 1], got {warmup_ratio}")
        for index, group in enumerate(optimizer.param_groups):
            base = float(group.get("initial_lr", group["lr"]))
            if base < min_lr:
                raise ValueError(
                    f"PolyLR: param group {index} has base lr {base} below min_lr {min_lr}; "
                    f"lower min_lr or raise the learning rate"
                )
        self.total_iters = total_iters
        self.power = power
        self.min_lr = min_lr
        self.warmup_iters = warmup_iters
        self.warmup_ratio = warmup_ratio
        super().__init__(optimizer, last_epoch)

    def _lr_at(self, iteration: int) -> list[float]:
        return [
            poly_lr(
                float(base),
                iteration,
                self.total_iters,
                self.power,
                self.min_lr,
                self.warmup_iters,
                self.warmup_ratio,
            )
            for base in self.base_lrs
        ]

    def get_lr(self) -> list[float]:
        """Learning rates for the current `last_epoch` (the iteration counter)."""
        return self._lr_at(self.last_epoch)

    def _get_closed_form_lr(self) -> list[float]:
        return self._lr_at(self.last_epoch)
