"""Weight and temperature schedules: a value as a pure function of training progress.

``progress = step / total_steps`` in [0, 1]. A schedule holds no state, so a resumed run that
calls ``CompositeLoss.set_progress(step, total_steps)`` gets exactly the value it had before.

From YAML (keys = constructor args)::

    weight: {_target_: distill.losses.schedules.Linear, start: 0.0, end: 1.0, to_fraction: 0.1}
    temperature: {_target_: distill.losses.schedules.Linear, start: 4.0, end: 1.0}
"""

from __future__ import annotations

from distill.errors import DistillError


class Schedule:
    """A number that depends on progress only. Subclasses implement ``__call__``."""

    def __call__(self, progress: float) -> float:
        raise NotImplementedError


class Constant(Schedule):
    """value(progress) = value."""

    def __init__(self, value: float):
        self.value = float(value)

    def __call__(self, progress: float) -> float:
        return self.value

    def __repr__(self) -> str:
        return f"Constant({self.value:g})"

    def __str__(self) -> str:
        return f"{self.value:g}"


class Linear(Schedule):
    """Hold ``start`` until ``from_fraction``, ramp linearly to ``end`` at ``to_fraction``, then hold.

    value(p) = start + (end - start) · clamp((p - from_fraction) / (to_fraction - from_fraction), 0, 1)

    Warm-up over the first 10 %: ``Linear(0, 1, to_fraction=0.1)``; decay: ``Linear(1, 0)``;
    temperature annealing: ``Linear(4, 1)``.
    """

    def __init__(self, start: float, end: float, from_fraction: float = 0.0, to_fraction: float = 1.0):
        if not 0.0 <= from_fraction < to_fraction <= 1.0:
            raise DistillError(
                f"Linear schedule needs 0 <= from_fraction < to_fraction <= 1, got "
                f"from_fraction={from_fraction}, to_fraction={to_fraction}; fix the two fractions"
            )
        self.start, self.end = float(start), float(end)
        self.from_fraction, self.to_fraction = float(from_fraction), float(to_fraction)

    def __call__(self, progress: float) -> float:
        span = self.to_fraction - self.from_fraction
        t = min(max((progress - self.from_fraction) / span, 0.0), 1.0)
        return self.start + (self.end - self.start) * t

    def __repr__(self) -> str:
        return f"Linear({self.start:g}→{self.end:g} over {self.from_fraction:g}..{self.to_fraction:g})"

    __str__ = __repr__


def as_schedule(value: float | Schedule, what: str) -> Schedule:
    """A number becomes :class:`Constant`; a schedule passes through; anything else is an error."""
    if isinstance(value, Schedule):
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return Constant(value)
    raise DistillError(
        f"{what}={value!r} is neither a number nor a schedule; give a number or "
        f"{{_target_: distill.losses.schedules.Linear, start: ..., end: ...}}"
    )


def progress_of(step: int, total_steps: int) -> float:
    """step / total_steps clamped to [0, 1] (a run may go one step past its planned total)."""
    return min(max(step / max(total_steps, 1), 0.0), 1.0)
