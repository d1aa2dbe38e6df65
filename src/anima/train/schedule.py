"""Learning-rate schedule: linear warm-up, then cosine (or linear/constant) decay to a floor.

The decay's horizon is `trainer.max_steps`, or, with `trainer.max_time` set, whichever ends first: the step
budget or the time budget (with `trainer.max_steps` left null, the time budget alone). By time, the horizon is
the step count the speed so far implies (`step * budget / elapsed`), so the decay tracks the measured speed
and reaches the floor exactly when the time budget runs out. Warm-up always counts optimizer steps (a budget that holds fewer steps than
`optim.warmup_steps` never leaves warm-up).
"""

from __future__ import annotations

import math

from anima.config.groups import TrainerConfig


DEFAULT_MAX_STEPS = 200


def step_limit(trainer: TrainerConfig) -> int | None:
    """`trainer.max_steps`, or when it is null: no step limit for a time-budgeted run (`trainer.max_time`
    alone decides, so a faster machine trains more), `DEFAULT_MAX_STEPS` otherwise."""
    if trainer.max_steps is not None:
        return trainer.max_steps
    return None if trainer.max_time else DEFAULT_MAX_STEPS


def duration_seconds(value: str) -> float:
    """Seconds in a `DD:HH:MM:SS` duration (the format of `trainer.max_time`)."""
    days, hours, minutes, seconds = (int(p) for p in str(value).split(":"))
    return float(((days * 24 + hours) * 60 + minutes) * 60 + seconds)


def time_progress(step: int, warmup: int, elapsed_s: float, budget_s: float) -> float:
    """Fraction of the post-warm-up decay done at `step`, when the run ends after `budget_s` seconds and the
    first `step` steps took `elapsed_s`: the budget then holds `step * budget_s / elapsed_s` steps."""
    if elapsed_s >= budget_s:
        return 1.0
    if step <= 0 or elapsed_s <= 0:
        return 0.0
    implied_total = step * budget_s / elapsed_s  # > step >= warmup, so the denominator is positive
    return min(1.0, max(0.0, (step - warmup) / (implied_total - warmup)))


def lr_factor(step: int, warmup: int, total: int | None, schedule: str, min_ratio: float,
              elapsed_s: float | None = None, budget_s: float | None = None) -> float:
    """Multiplier of the peak lr at optimizer step `step` (0-based). With `budget_s`, the decay progress is the
    larger of the step progress and the time progress (`elapsed_s`: training seconds before this step);
    `total=None`: no step limit (a time-budgeted run), the time progress alone."""
    if warmup and step < warmup:
        return (step + 1) / warmup
    if schedule == "constant" or (total is not None and total <= warmup):
        return 1.0
    progress = 0.0 if total is None else min(1.0, (step - warmup) / max(1, total - warmup))
    if budget_s:
        progress = max(progress, time_progress(step, warmup, elapsed_s or 0.0, budget_s))
    if schedule == "linear":
        return 1.0 - (1.0 - min_ratio) * progress
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))
