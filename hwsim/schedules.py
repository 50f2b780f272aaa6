"""Gear shifting: cut the learning rate as training converges, down to a floor.

Variable-step LMS ("gear shifting", Widrow & Stearns 1985; Caraiscos & Liu
1984 for the fixed-point analysis) starts with a large step for fast
convergence and reduces it as convergence proceeds — but on a fixed-point
grid only down to the precision limit: once the typical update
``lr * |g|`` falls below half an LSB of the accumulator, a smaller step does
not refine the weights, it freezes them (the stall).

Two layers:

- :class:`GearShiftPolicy` — framework-agnostic, pure Python: decides from
  the step count, a monitored metric and the typical update size (in
  accumulator LSBs) what the next learning rate is. Usable from a Numba LMS
  loop between blocks.
- :class:`GearShift` — the same policy as a ``torch.optim`` LR scheduler; it
  reads the typical update from the hwsim optimizer's telemetry.

>>> p = GearShiftPolicy.parse("gearshift:every=100,factor=0.5,floor=precision")
>>> p.next_lr(0.1, step=100, typical_update_lsb=3.0)   # 1.5 LSB after the shift: go
0.05
>>> p.next_lr(0.05, step=200, typical_update_lsb=0.8)  # 0.4 LSB after: hold
0.05
"""

from __future__ import annotations

import dataclasses
import math

import torch

ALLOWED_FORMS = (
    "'constant', 'gearshift:every=<steps>[,factor=<f>][,floor=<lr>|precision]', "
    "'gearshift:plateau=<patience>[,factor=<f>][,floor=<lr>|precision][,threshold=<rel>]'"
)


@dataclasses.dataclass
class GearShiftPolicy:
    """When and how far to shift the learning rate down.

    Args:
        every: shift every ``every`` steps (or epochs: whatever the caller counts).
        plateau: shift after ``plateau`` consecutive calls whose ``metric`` did
            not improve on the best by more than ``threshold`` (relative).
        factor: multiply the learning rate by this at each shift (0 < factor < 1).
        floor: ``None`` (shift forever), a float (never below it), or
            ``"precision"``: shift only while the typical update after the shift,
            ``typical_update_lsb * factor``, is still at least half an
            accumulator LSB.
        threshold: relative improvement that counts as progress on a plateau.

    With neither ``every`` nor ``plateau`` the learning rate is constant.
    """

    every: int | None = None
    plateau: int | None = None
    factor: float = 0.5
    floor: float | str | None = None
    threshold: float = 1e-4
    best: float = math.inf
    bad_steps: int = 0
    shifts: int = 0

    def __post_init__(self) -> None:
        for name in ("every", "plateau"):
            v = getattr(self, name)
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
                raise ValueError(f"{name} must be a positive integer, got {v!r}")
        if self.every is not None and self.plateau is not None:
            raise ValueError("give either every= or plateau=, not both")
        if not (isinstance(self.factor, (int, float)) and 0.0 < self.factor < 1.0):
            raise ValueError(f"factor must be a number in (0, 1), got {self.factor!r}")
        if isinstance(self.floor, str) and self.floor != "precision":
            raise ValueError(
                f"floor must be None, a learning rate >= 0 or 'precision', got {self.floor!r}"
            )
        if (
            self.floor is not None
            and not isinstance(self.floor, str)
            and not (isinstance(self.floor, (int, float)) and self.floor >= 0)
        ):
            raise ValueError(
                f"floor must be None, a learning rate >= 0 or 'precision', got {self.floor!r}"
            )
        if not (isinstance(self.threshold, (int, float)) and self.threshold >= 0):
            raise ValueError(f"threshold must be a number >= 0, got {self.threshold!r}")

    @property
    def constant(self) -> bool:
        return self.every is None and self.plateau is None

    @classmethod
    def parse(cls, text: str) -> GearShiftPolicy:
        """A policy from its text form (as in study specs): ``"constant"``,
        ``"gearshift:every=2000"``, ``"gearshift:every=2000,factor=0.5,floor=precision"``,
        ``"gearshift:plateau=3,factor=0.5,floor=1e-4"``."""
        if not isinstance(text, str):
            raise ValueError(f"a schedule must be a string, one of {ALLOWED_FORMS}; got {text!r}")
        t = text.strip().lower()
        if t == "constant":
            return cls()
        head, sep, body = t.partition(":")
        if head != "gearshift" or not sep or not body:
            raise ValueError(f"cannot parse schedule {text!r}; allowed forms: {ALLOWED_FORMS}")
        kwargs: dict = {}
        for item in body.split(","):
            key, eq, value = (s.strip() for s in item.partition("="))
            if (
                not eq
                or key not in ("every", "plateau", "factor", "floor", "threshold")
                or key in kwargs
            ):
                raise ValueError(
                    f"bad item {item!r} in schedule {text!r}; allowed forms: {ALLOWED_FORMS}"
                )
            try:
                if key in ("every", "plateau"):
                    kwargs[key] = int(value)
                elif key == "floor" and value == "precision":
                    kwargs[key] = value
                else:
                    kwargs[key] = float(value)
            except ValueError:
                raise ValueError(
                    f"bad value {value!r} for {key} in schedule {text!r}; allowed forms: {ALLOWED_FORMS}"
                ) from None
        if "every" not in kwargs and "plateau" not in kwargs:
            raise ValueError(
                f"schedule {text!r} needs every= or plateau=; allowed forms: {ALLOWED_FORMS}"
            )
        return cls(**kwargs)

    def due(self, step: int, metric: float | None = None) -> bool:
        """Whether a shift is due after ``step`` (1-based count of steps done);
        updates the plateau counters, so call it once per step."""
        if self.every is not None:
            return step > 0 and step % self.every == 0
        if self.plateau is not None:
            if metric is None:
                raise ValueError("a plateau schedule needs the monitored metric at every call")
            metric = float(metric)
            if metric < self.best * (1.0 - self.threshold) if self.best > 0 else metric < self.best:
                self.best, self.bad_steps = metric, 0
                return False
            self.bad_steps += 1
            if self.bad_steps >= self.plateau:
                self.bad_steps = 0
                return True
        return False

    def shift(self, lr: float, typical_update_lsb: float | None = None) -> float:
        """The learning rate after one shift down from ``lr``, floor applied."""
        new = lr * self.factor
        if self.floor is None:
            pass
        elif self.floor == "precision":
            if typical_update_lsb is None:
                raise ValueError(
                    "floor='precision' needs typical_update_lsb (the median |update| in accumulator LSBs)"
                )
            # NaN (no nonzero update seen) or a shifted update below LSB/2: hold
            if not typical_update_lsb * self.factor >= 0.5:
                return lr
        else:
            if lr <= self.floor:
                return lr
            new = max(new, float(self.floor))
        if new != lr:
            self.shifts += 1
        return new

    def next_lr(
        self,
        lr: float,
        step: int,
        metric: float | None = None,
        typical_update_lsb: float | None = None,
    ) -> float:
        """The learning rate to use after ``step`` steps (see :meth:`due` and
        :meth:`shift`)."""
        if self.constant or not self.due(step, metric):
            return lr
        return self.shift(lr, typical_update_lsb)


class GearShift(torch.optim.lr_scheduler.LRScheduler):
    """:class:`GearShiftPolicy` as a torch LR scheduler. Call ``step()`` after
    each optimizer step (or epoch), with the monitored ``metric`` for a plateau
    policy. With ``floor="precision"`` the typical update comes from the
    optimizer's telemetry (``median_update_lsb`` of each param group), so the
    optimizer must be a hwsim optimizer with telemetry on; the typical update
    of a group is the median, over the steps since the previous decision, of
    its per-step ``median_update_lsb``.

    >>> import torch, hwsim.optim
    >>> w = torch.nn.Parameter(torch.zeros(4))
    >>> opt = hwsim.optim.SGD([w], lr=0.1, weight="fx16.8")
    >>> sched = GearShift(opt, every=1, floor="precision")
    >>> w.grad = torch.full((4,), 0.05); opt.step(); sched.step()  # 0.005 = 1.28 LSB
    >>> opt.param_groups[0]["lr"]
    0.05
    >>> opt.step(); sched.step()  # 0.64 LSB now; halving would give 0.32 < 0.5
    >>> opt.param_groups[0]["lr"]
    0.05
    """

    def __init__(
        self,
        optimizer,
        every: int | None = None,
        plateau: int | None = None,
        factor: float = 0.5,
        floor: float | str | None = None,
        threshold: float = 1e-4,
        *,
        policy: GearShiftPolicy | str | None = None,
        last_epoch: int = -1,
    ):
        if policy is None:
            policy = GearShiftPolicy(
                every=every, plateau=plateau, factor=factor, floor=floor, threshold=threshold
            )
        elif isinstance(policy, str):
            policy = GearShiftPolicy.parse(policy)
        self.policy = policy
        self._seen: list[list[float]] = []
        super().__init__(optimizer, last_epoch)

    def get_lr(self) -> list[float]:
        return [group["lr"] for group in self.optimizer.param_groups]

    def step(self, metric: float | None = None, epoch: None = None) -> None:
        if epoch is not None:
            raise ValueError("GearShift.step takes no epoch argument; it counts its own calls")
        self.last_epoch += 1
        groups = self.optimizer.param_groups
        precision = self.policy.floor == "precision"
        if self.last_epoch > 0 and precision:
            telemetry = getattr(self.optimizer, "telemetry", None)
            if not telemetry or len(telemetry) != len(groups):
                raise ValueError(
                    "floor='precision' reads optimizer.telemetry: use a hwsim optimizer with "
                    "telemetry=True and call optimizer.step() before scheduler.step()"
                )
            # the typical update: median over the steps since the last decision
            # (one step's median is noisy when a group has few weights)
            if len(self._seen) != len(groups):
                self._seen = [[] for _ in groups]
            for seen, t in zip(self._seen, telemetry, strict=True):
                if not math.isnan(t["median_update_lsb"]):
                    seen.append(t["median_update_lsb"])
        if (
            self.last_epoch > 0
            and not self.policy.constant
            and self.policy.due(self.last_epoch, metric)
        ):
            for i, group in enumerate(groups):
                typical = None
                if precision:
                    seen = sorted(self._seen[i])
                    typical = seen[len(seen) // 2] if seen else math.nan
                    self._seen[i] = []
                group["lr"] = self.policy.shift(group["lr"], typical)
        self._last_lr = [group["lr"] for group in groups]
