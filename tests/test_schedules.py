"""hwsim.schedules: the GearShiftPolicy core, the GearShift torch scheduler,
and gear shifting with a precision floor on a fixed-point LMS task."""

from __future__ import annotations

import copy
import math

import pytest
import torch

import hwsim.optim as hopt
from hwsim.schedules import GearShift, GearShiftPolicy
from tests.test_optim_precision import lms_problem, lms_train


@pytest.mark.parametrize(
    "text,want",
    [
        ("constant", GearShiftPolicy()),
        ("gearshift:every=2000", GearShiftPolicy(every=2000)),
        (
            "gearshift:every=2000,factor=0.5,floor=precision",
            GearShiftPolicy(every=2000, factor=0.5, floor="precision"),
        ),
        (
            "gearshift:plateau=3,factor=0.5,floor=1e-4",
            GearShiftPolicy(plateau=3, factor=0.5, floor=1e-4),
        ),
        (" GearShift:every=10, factor=0.25 ", GearShiftPolicy(every=10, factor=0.25)),
    ],
)
def test_parse(text, want):
    assert GearShiftPolicy.parse(text) == want


@pytest.mark.parametrize(
    "text",
    [
        "cosine",
        "gearshift",
        "gearshift:",
        "gearshift:every",
        "gearshift:every=0",
        "gearshift:every=1.5",
        "gearshift:factor=0.5",
        "gearshift:every=10,factor=2",
        "gearshift:every=10,floor=lsb",
        "gearshift:every=10,plateau=3",
        "gearshift:every=10,every=20",
        "gearshift:every=10,speed=1",
    ],
)
def test_parse_rejects_bad_text_listing_the_forms(text):
    with pytest.raises(
        ValueError, match="gearshift:every=|every= or plateau=|positive integer|factor|floor"
    ):
        GearShiftPolicy.parse(text)
    with pytest.raises(ValueError, match="allowed forms"):
        GearShiftPolicy.parse("cosine")


def test_every_halves_on_schedule_and_constant_never():
    p = GearShiftPolicy.parse("gearshift:every=3")
    lrs, lr = [], 1.0
    for step in range(1, 10):
        lr = p.next_lr(lr, step)
        lrs.append(lr)
    assert lrs == [1, 1, 0.5, 0.5, 0.5, 0.25, 0.25, 0.25, 0.125]
    c = GearShiftPolicy.parse("constant")
    assert all(c.next_lr(0.3, s) == 0.3 for s in range(1, 50))


def test_fixed_floor():
    p = GearShiftPolicy(every=1, factor=0.1, floor=1e-3)
    lr = 1.0
    for step in range(1, 6):
        lr = p.next_lr(lr, step)
    assert lr == 1e-3


def test_plateau_shifts_after_patience_steps_without_improvement():
    p = GearShiftPolicy.parse("gearshift:plateau=2,factor=0.5")
    metrics = [5, 4, 4, 4, 3, 3.5, 3.2, 2]
    lrs, lr = [], 1.0
    for step, m in enumerate(metrics, start=1):
        lr = p.next_lr(lr, step, metric=m)
        lrs.append(lr)
    assert lrs == [1, 1, 1, 0.5, 0.5, 0.5, 0.25, 0.25]
    with pytest.raises(ValueError, match="metric"):
        p.next_lr(lr, 9)


def test_precision_floor_holds_below_half_an_lsb():
    p = GearShiftPolicy(every=1, factor=0.5, floor="precision")
    assert p.next_lr(0.1, 1, typical_update_lsb=1.0) == 0.05  # 0.5 LSB after: still moves
    assert p.next_lr(0.1, 2, typical_update_lsb=0.99) == 0.1  # 0.495 LSB: would stall
    assert p.next_lr(0.1, 3, typical_update_lsb=math.nan) == 0.1  # nothing known: hold
    with pytest.raises(ValueError, match="typical_update_lsb"):
        p.next_lr(0.1, 4)


def test_bad_policy_arguments():
    for kwargs in (
        dict(every=0),
        dict(every=2, plateau=2),
        dict(factor=1.0),
        dict(floor="lsb"),
        dict(floor=-1.0),
        dict(threshold=-1),
    ):
        with pytest.raises(ValueError):
            GearShiftPolicy(**kwargs)


# ---------------------------------------------------------- torch scheduler
def test_gearshift_scheduler_every_and_state_dict():
    w = torch.nn.Parameter(torch.zeros(3))
    opt = hopt.SGD([w], lr=0.8)
    sched = GearShift(opt, every=2, floor=0.1)
    lrs = []
    for _ in range(8):
        w.grad = torch.ones(3)
        opt.step()
        sched.step()
        lrs.append(opt.param_groups[0]["lr"])
    assert lrs == [0.8, 0.4, 0.4, 0.2, 0.2, 0.1, 0.1, 0.1]
    assert sched.get_last_lr() == [0.1]
    state = copy.deepcopy(sched.state_dict())
    opt2 = hopt.SGD([w], lr=0.8)
    sched2 = GearShift(opt2, every=2, floor=0.1)
    sched2.load_state_dict(state)
    assert sched2.last_epoch == 8 and sched2.policy == sched.policy


def test_gearshift_scheduler_plateau_and_text_policy():
    w = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([w], lr=1.0)  # any torch optimizer works without a precision floor
    sched = GearShift(opt, policy="gearshift:plateau=1,factor=0.5")
    for m in (3.0, 2.0, 2.0, 2.0):
        opt.step()
        sched.step(m)
    assert opt.param_groups[0]["lr"] == 0.25


def test_precision_floor_needs_telemetry():
    w = torch.nn.Parameter(torch.zeros(1))
    for opt in (
        torch.optim.SGD([w], lr=1.0),
        hopt.SGD([w], lr=1.0, weight="fx8.4", telemetry=False),
    ):
        sched = GearShift(opt, every=1, floor="precision")
        w.grad = torch.ones(1)
        opt.step()
        with pytest.raises(ValueError, match="telemetry"):
            sched.step()


def test_precision_floor_per_param_group():
    a = torch.nn.Parameter(torch.zeros(4, dtype=torch.float64))
    b = torch.nn.Parameter(torch.zeros(4, dtype=torch.float64))
    opt = hopt.SGD([{"params": [a]}, {"params": [b], "weight": "fx16.4"}], lr=0.1, weight="fx16.12")
    sched = GearShift(opt, every=1, floor="precision")
    for _ in range(3):
        a.grad = torch.full((4,), 0.05, dtype=torch.float64)
        b.grad = torch.full((4,), 0.05, dtype=torch.float64)
        opt.step()
        sched.step()
    # group a: updates of 0.005 = 20 LSB keep shifting; group b (LSB 1/16): 0.08 LSB holds at once
    assert opt.param_groups[0]["lr"] == 0.1 / 8
    assert opt.param_groups[1]["lr"] == 0.1


# ------------------------------------------------------- fixed-point LMS
def test_precision_floor_beats_fixed_lr_and_unbounded_halving_on_fixed_point_lms():
    """Weights in fx16.10, nearest rounding, no accumulator. A fixed large step
    converges fast but misadjusts; halving without a floor drives the step
    below the stall point before the filter has converged and freezes it; the
    precision floor stops halving where the typical update would fall below
    half an LSB and keeps adapting (Caraiscos & Liu 1984; gear shifting)."""
    x, d, w_true = lms_problem(2000, noise=0.03)
    lr0, every = 0.1, 25
    fixed, _, _ = lms_train(x, d, w_true, lr0, weight="fx16.10")
    halving, halving_stalls, _ = lms_train(
        x, d, w_true, lr0, weight="fx16.10", scheduler=lambda o: GearShift(o, every=every)
    )
    floored, _, _ = lms_train(
        x,
        d,
        w_true,
        lr0,
        weight="fx16.10",
        scheduler=lambda o: GearShift(o, every=every, floor="precision"),
    )
    print(
        f"misalignment dB: fixed {fixed:.1f}, unbounded halving {halving:.1f}, precision floor {floored:.1f}"
    )
    assert sum(halving_stalls[-500:]) / 500 == 1.0  # unbounded halving ends frozen
    assert floored < fixed - 6.0
    assert floored < halving - 6.0
