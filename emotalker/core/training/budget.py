"""Fitting a training stage to a wall-clock budget (`--minutes`).

A budget does not cut a long schedule short: it sets the stage's step count, so
that everything the step count drives (learning-rate decay, the densification
window, SH degree steps) plays out in full within the time. The count starts
from the plan's probe and is fitted again every `refit_seconds` to the measured
rate of the last steps, because a step's cost changes as a run goes (Stage 1's
densification triples its Gaussians) and the machine's load changes with it.

The count reached is recorded with the stage (`steps` in avatar.json). A
budgeted run is only as repeatable as the machine's speed: for the same bytes
twice, train a fixed number of steps.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

# Of a stage's budget, what is left after its last step for its held-out evaluation.
FINISH_FRACTION = 0.03


@dataclass
class StepBudget:
    """The step count of one stage, fitted to `seconds` of wall-clock time from `started`.

    A trainer calls `follow(step, steps, progress)` after every step and trains to the count it returns."""

    seconds: float
    started: float = field(default_factory=time.monotonic)
    refit_seconds: float = 20.0
    """Seconds between fits (and at most a twentieth of the budget, so a short one is fitted often)."""
    window: int = 50
    """Steps whose mean rate a fit extrapolates."""
    warmup: int = 3
    """First steps of this process left out of the rate (kernel compilation, caches; also after a resume)."""
    clock: Callable[[], float] = time.monotonic
    _marks: list = field(default_factory=list, init=False, repr=False)  # (step, time) of recent steps
    _next_fit: float = field(default=0.0, init=False, repr=False)
    _calls: int = field(default=0, init=False, repr=False)

    @property
    def deadline(self) -> float:
        return self.started + self.seconds

    def exclude(self, seconds: float) -> None:
        """Leave `seconds` just spent outside training (a benchmark's evaluation) out of the budget."""
        self.started += seconds
        self._marks = [(s, t + seconds) for s, t in self._marks]

    def follow(self, step: int, planned: int, progress=None) -> int | None:
        """The new step count when a fit changed it (a Progress is told the new total), else None."""
        steps = self.steps(step, planned)
        if steps == planned:
            return None
        if progress is not None:
            progress.set_total(steps)
        return steps

    def steps(self, step: int, planned: int) -> int:
        """The step count to train to, now that `step` steps are done (`planned`: the current count)."""
        now = self.clock()
        self._calls += 1
        if self._calls > self.warmup:
            self._marks.append((step, now))
            del self._marks[:-self.window - 1]
        if now >= self.deadline:
            return step
        if now < self._next_fit or len(self._marks) < min(self.window, 10) + 1:
            return planned
        self._next_fit = now + min(self.refit_seconds, self.seconds / 20)
        (s0, t0), (s1, t1) = self._marks[0], self._marks[-1]
        per_step = (t1 - t0) / max(s1 - s0, 1)
        return step + max(int((self.deadline - now) / max(per_step, 1e-6)), 0)


def stage_budget(config, started: float) -> StepBudget | None:
    """The budget of a stage whose config sets `minutes` (None when it does not), counted from
    `started`, the stage's start: its loading is inside it, and FINISH_FRACTION is kept back."""
    if not config.minutes:
        return None
    return StepBudget(config.minutes * 60 * (1 - FINISH_FRACTION), started=started)
