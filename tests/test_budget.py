"""Time budgets (`--minutes`) and the plan printed before training: the step count is fitted to the
budget and refitted as a step's cost changes; the plan probes the stages and shares a run's budget out.

Time is a fake clock here (each step costs what the test says), so nothing depends on this machine's speed.
"""

from __future__ import annotations

import pytest
import torch

from emotalker.core.datasets.dataset import Dataset
from emotalker.core.training.budget import StepBudget
from emotalker.core.training.neutral import TrainNeutralConfig
from emotalker.core.training.pipeline import TrainAllConfig
from emotalker.core.training.plan import (CPU_MINUTES, FINISH_SECONDS, STAGE_SHARES, budget_share, plan_training,
                                          run_minutes, stage_config)


class StepClock:
    """A clock that moves on by `cost(call)` seconds each time it is read (read once a step)."""

    def __init__(self, cost):
        self.cost, self.calls, self.now = cost, 0, 0.0

    def __call__(self) -> float:
        self.now += self.cost(self.calls)
        self.calls += 1
        return self.now


class Totals:
    """A stand-in Progress that keeps the totals it is told."""

    def __init__(self):
        self.totals = []

    def set_total(self, total: int) -> None:
        self.totals.append(total)


def train_under(budget: StepBudget, planned: int, progress=None) -> int:
    """The loop every trainer runs: a step, then the step count the budget says."""
    step = 0
    while step < planned:
        step += 1
        if (steps := budget.follow(step, planned, progress)) is not None:
            planned = steps
    return step


def test_a_constant_step_cost_gets_the_budget_s_worth_of_steps():
    clock = StepClock(lambda call: 0.1)
    progress = Totals()
    steps = train_under(StepBudget(60.0, started=0.0, clock=clock, refit_seconds=5.0), planned=100, progress=progress)
    assert 590 <= steps <= 600
    assert 59.0 <= clock.now <= 60.0
    assert progress.totals and progress.totals[-1] == steps  # the bar is told each new count, and ends at the last
    assert all(a != b for a, b in zip(progress.totals, progress.totals[1:]))  # only changes are told


def test_steps_that_grow_dearer_are_refitted_so_the_run_still_ends_within_the_budget():
    """Stage 1's densification triples the Gaussians in the first half of a run: a count fitted once, early,
    would overrun by half."""
    clock = StepClock(lambda call: 0.05 + 0.1 * min(call / 300, 1.0))
    budget = StepBudget(60.0, started=0.0, clock=clock, refit_seconds=5.0)
    steps = train_under(budget, planned=1200)  # what the first steps' rate promises
    assert 0.97 * 60 <= clock.now <= 60.0 + 0.15
    assert steps < 1200 * 0.75


def test_time_excluded_from_the_budget_moves_its_deadline():
    clock = StepClock(lambda call: 0.1)
    budget = StepBudget(30.0, started=0.0, clock=clock, refit_seconds=2.0)
    step, planned = 0, 100
    while step < planned:
        step += 1
        if step == 50:
            clock.now += 10.0  # a benchmark's evaluation pause
            budget.exclude(10.0)
        planned = budget.steps(step, planned)
    assert 39.0 <= clock.now <= 40.0 and 290 <= step <= 300


def test_the_trainer_follows_its_budget_and_its_schedule_follows_the_fitted_count(tmp_path):
    from stage1_data import write_teacher_dataset
    from emotalker.core.datasets.frames import FrameSet
    from emotalker.core.training.neutral import NeutralTrainer, new_model

    ds = Dataset.open(write_teacher_dataset(tmp_path))
    frames = FrameSet(ds, [c.id for c in ds.split("train")])
    cfg = TrainNeutralConfig(steps=1000, max_gaussians=2000, checkpoint_every=10**6, delta_every=1)
    trainer = NeutralTrainer(new_model(ds.flame_model(), 300, n_teeth=30), frames, cfg)
    budget = StepBudget(20.0, started=0.0, clock=StepClock(lambda call: 0.5), refit_seconds=1.0)
    state = trainer.run(budget=budget)
    assert 38 <= state.step <= 40
    assert trainer.cfg.steps == state.step
    # The step-valued settings left at None follow the fitted count, not the first one.
    assert trainer.cfg.densify_until == state.step // 2
    assert trainer.cfg.sh_increase_every == max(1, state.step // 8)


@pytest.mark.parametrize("minutes, steps, device, expected", [
    (None, None, "cpu", CPU_MINUTES),  # the CPU default
    (None, 500, "cpu", None),  # steps asked for: no budget
    (0, None, "cpu", None),  # --minutes 0: none
    (12.5, 500, "cpu", 12.5),  # a budget given wins
    (None, None, "cuda", None),  # CUDA trains the paper's steps
])
def test_the_run_budget_by_device_and_options(minutes, steps, device, expected):
    neutral = TrainNeutralConfig() if steps is None else TrainNeutralConfig(steps=steps)
    assert run_minutes(TrainAllConfig(neutral=neutral, minutes=minutes), device) == expected


def test_a_budget_is_shared_out_by_stage_and_the_later_stages_pay_for_an_overrun():
    assert sum(STAGE_SHARES.values()) == pytest.approx(1.0)
    stages = ["neutral", "a2e", "emotion"]
    assert budget_share("neutral", stages, 1000.0) == pytest.approx(600.0)
    # After Stage 1 ran over, A2E and Stage 2 share what is left in their proportion.
    assert budget_share("a2e", stages[1:], 100.0) == pytest.approx(100.0 * 0.12 / 0.40)


def test_the_plan_probes_each_stage_and_fits_a_budget(tmp_path):
    from emotion_fixture import make_emotion_dataset

    root, _ = make_emotion_dataset(tmp_path)
    from emotalker.core.models.blendshapes import BlendshapeConfig

    config = TrainAllConfig(neutral=TrainNeutralConfig(max_gaussians=3000, model=BlendshapeConfig(n_gaussians=1000)))
    torch_state = torch.get_rng_state()
    plan = plan_training(root, config, ["neutral", "a2e", "emotion"], "cpu", minutes=4.0)
    assert torch.equal(torch.get_rng_state(), torch_state)  # the probes leave the run's random state alone
    assert [s.stage for s in plan.stages] == ["neutral", "a2e", "emotion"]
    budgets = [s.budget_seconds for s in plan.stages]
    assert sum(budgets) == pytest.approx(4 * 60 - plan.probe_seconds - FINISH_SECONDS)
    assert budgets[0] / budgets[2] == pytest.approx(STAGE_SHARES["neutral"] / STAGE_SHARES["emotion"])
    for s in plan.stages:
        assert s.seconds_per_step > 0 and s.steps == pytest.approx(s.budget_seconds * 0.97 / s.seconds_per_step, rel=0.01)
    lines = plan.lines()
    assert lines[0].startswith("plan (cpu, a budget of 4 min") and "estimated total: 4.0 min" in lines[-1]
    # A stage starting late gets its share of what is left, its steps scaled to match.
    late = stage_config(plan, "a2e", config.a2e, seconds_left=budgets[1] + budgets[2] - 30.0)
    assert late.minutes * 60 < budgets[1] and late.steps < plan.stages[1].steps


def test_short_runs_are_not_probed_and_say_so(tmp_path):
    from emotion_fixture import make_emotion_dataset

    root, _ = make_emotion_dataset(tmp_path)
    config = TrainAllConfig(neutral=TrainNeutralConfig(steps=20))
    plan = plan_training(root, config, ["neutral"], "cpu", minutes=None)
    assert plan.probe_seconds < 5 and plan.stages[0].seconds_per_step is None and plan.stages[0].steps == 20
    assert "too short to probe" in plan.lines()[1]
