"""Specification of apcnet.schedule: poly learning rate with warm-up and floor."""

import pytest
import torch

from apcnet.schedule import PolyLR, poly_lr


def _optimizer(lr: float = 0.01) -> torch.optim.SGD:
    return torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=lr, momentum=0.9)


def _run(scheduler: PolyLR, steps: int) -> list[float]:
    """The lr used by each of the next `steps` iterations."""
    rates = []
    for _ in range(steps):
        rates.append(scheduler.optimizer.param_groups[0]["lr"])
        scheduler.optimizer.step()
        scheduler.step()
    return rates


def test_first_iteration_uses_the_base_rate():
    assert _run(PolyLR(_optimizer(0.01), total_iters=10), 1) == [0.01]


def test_rate_follows_the_poly_formula_every_iteration():
    rates = _run(PolyLR(_optimizer(0.01), total_iters=10, power=0.9), 10)
    expected = [0.01 * (1 - it / 10) ** 0.9 for it in range(10)]
    assert rates == pytest.approx(expected, rel=1e-12)


def test_min_lr_is_a_floor_as_in_the_reference_toolbox():
    rates = _run(PolyLR(_optimizer(0.01), total_iters=10, min_lr=1e-4), 10)
    expected = [(0.01 - 1e-4) * (1 - it / 10) ** 0.9 + 1e-4 for it in range(10)]
    assert rates == pytest.approx(expected, rel=1e-12)


def test_rate_is_clamped_at_total_iters_and_never_negative():
    rates = _run(PolyLR(_optimizer(0.01), total_iters=5, min_lr=1e-4), 9)
    assert rates[5:] == pytest.approx([1e-4] * 4)
    rates = _run(PolyLR(_optimizer(0.01), total_iters=5), 9)
    assert rates[5:] == [0.0] * 4


def test_linear_warmup_rises_from_ratio_to_the_poly_rate():
    rates = _run(PolyLR(_optimizer(0.01), total_iters=100, warmup_iters=4, warmup_ratio=0.1), 6)
    poly = [0.01 * (1 - it / 100) ** 0.9 for it in range(6)]
    factors = [0.1, 0.325, 0.55, 0.775, 1.0, 1.0]
    assert rates == pytest.approx([p * f for p, f in zip(poly, factors, strict=True)], rel=1e-12)


def test_every_param_group_decays_from_its_own_base_rate():
    head = torch.nn.Parameter(torch.zeros(1))
    backbone = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([{"params": [backbone], "lr": 0.001}, {"params": [head]}], lr=0.01)
    scheduler = PolyLR(optimizer, total_iters=4)
    for _ in range(2):
        optimizer.step()
        scheduler.step()
    assert scheduler.get_last_lr() == pytest.approx([0.001 * 0.5**0.9, 0.01 * 0.5**0.9])


def test_resumed_scheduler_continues_the_same_sequence():
    arguments = dict(total_iters=20, min_lr=1e-4, warmup_iters=3)
    uninterrupted = PolyLR(_optimizer(), **arguments)
    expected = _run(uninterrupted, 12)

    first = PolyLR(_optimizer(), **arguments)
    before = _run(first, 5)
    saved_scheduler = first.state_dict()
    saved_optimizer = first.optimizer.state_dict()

    optimizer = _optimizer()
    resumed = PolyLR(optimizer, **arguments)
    optimizer.load_state_dict(saved_optimizer)
    resumed.load_state_dict(saved_scheduler)
    assert before + _run(resumed, 7) == expected


def test_state_dict_survives_weights_only_serialisation(tmp_path):
    scheduler = PolyLR(_optimizer(), total_iters=20, warmup_iters=2)
    _run(scheduler, 3)
    torch.save(scheduler.state_dict(), tmp_path / "s.pt")
    state = torch.load(tmp_path / "s.pt", weights_only=True)
    assert state["last_epoch"] == 3


def test_poly_lr_function_matches_the_formula_past_warmup():
    assert poly_lr(0.02, 30, 100, power=0.9, min_lr=1e-4) == pytest.approx(
        (0.02 - 1e-4) * 0.7**0.9 + 1e-4
    )


@pytest.mark.parametrize(
    "arguments, message",
    [
        (dict(total_iters=0), "total_iters"),
        (dict(total_iters=10, warmup_iters=10), "warmup_iters"),
        (dict(total_iters=10, warmup_ratio=0.0), "warmup_ratio"),
        (dict(total_iters=10, min_lr=0.5), "below min_lr"),
    ],
)
def test_invalid_settings_are_rejected_with_the_option_named(arguments, message):
    with pytest.raises(ValueError, match=message):
        PolyLR(_optimizer(0.01), **arguments)
