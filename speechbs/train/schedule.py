"""Schedules as pure functions of the optimizer step.

The loop calls these before each step and writes the values into the
optimizer and the model's inputs. Nothing here holds state, so resuming at
step k needs nothing but k, and a schedule can be plotted or tested by
calling it.
"""

from __future__ import annotations

import math

from speechbs.config import OptimConfig, ScheduleConfig


def peak_lr(optim: OptimConfig, batch_seconds: float) -> float:
    """The peak LR for this batch under the scaling rule.

    The seed study (Vaessen & van Leeuwen 2024) anchors 5e-4 at 6,000 s and
    compares ``linear`` (Goyal et al. 2017) with ``sqrt`` (Krizhevsky 2014;
    Malladi et al. 2022) scaling; sqrt won from 150 s to 20 min and a constant
    5e-4 at 40-80 min.
    """
    ratio = batch_seconds / optim.reference_seconds
    exponent = {"none": 0.0, "linear": 1.0, "sqrt": 0.5}[optim.lr_rule]
    return optim.lr * ratio**exponent


def warmup_steps(sched: ScheduleConfig, num_steps: int) -> int:
    """Warm-up steps: ``warmup_fraction`` of the run when it is set, else ``warmup_steps``; never past the end."""
    steps = round(sched.warmup_fraction * num_steps) if sched.warmup_fraction > 0 else sched.warmup_steps
    return min(steps, num_steps)


def lr_scale(step: int, sched: ScheduleConfig, num_steps: int) -> float:
    """LR at ``step`` (0-based, the step about to be taken) as a fraction of the peak."""
    warmup = warmup_steps(sched, num_steps)
    if sched.kind == "constant":
        return _warmup(step, warmup, 0.0) if step < warmup else 1.0
    if sched.kind == "polynomial":
        if step < warmup:
            return _warmup(step, warmup, 0.0)
        remaining = max(num_steps - warmup, 1)
        progress = min((step - warmup) / remaining, 1.0)
        return sched.end_lr_scale + (1.0 - sched.end_lr_scale) * (1.0 - progress) ** sched.power
    if sched.kind == "cosine":
        if step < warmup:
            return _warmup(step, warmup, 0.0)
        progress = min((step - warmup) / max(num_steps - warmup, 1), 1.0)
        return sched.end_lr_scale + (1.0 - sched.end_lr_scale) * 0.5 * (1.0 + math.cos(math.pi * progress))
    if sched.kind == "tri_stage":
        return _tri_stage(step, sched, num_steps)
    if sched.kind == "cyclic":
        # torch's CyclicLR "triangular": up for half a cycle, down for the other half,
        # so every multiple of cycle_steps sits at the minimum (a fair point to fine-tune).
        half = sched.cycle_steps / 2
        position = step % sched.cycle_steps
        rise = position / half if position < half else (sched.cycle_steps - position) / half
        return sched.cycle_min_scale + (1.0 - sched.cycle_min_scale) * rise
    raise AssertionError(f"unhandled schedule {sched.kind}")


def at_lr_minimum(step: int, sched: ScheduleConfig, num_steps: int) -> bool:
    """Whether the model after ``step`` steps is a fair point to stop and fine-tune.

    Always, except inside a cycle of a ``cyclic`` schedule: there only the LR
    minima (multiples of ``cycle_steps``) and the run's last step are, which is
    why the seed study fine-tunes its cyclic runs' checkpoints at the minima.
    """
    return sched.kind != "cyclic" or step % sched.cycle_steps == 0 or step >= num_steps


def _warmup(step: int, warmup: int, start: float) -> float:
    return start + (1.0 - start) * step / max(warmup, 1)


def _tri_stage(step: int, sched: ScheduleConfig, num_steps: int) -> float:
    """fairseq's tri_stage: linear warm-up from init scale, hold, exponential decay to the end scale."""
    warmup, hold = warmup_steps(sched, num_steps), sched.hold_steps
    if step < warmup:
        return _warmup(step, warmup, sched.init_lr_scale)
    if step < warmup + hold:
        return 1.0
    decay_steps = max(num_steps - warmup - hold, 1)
    progress = min((step - warmup - hold) / decay_steps, 1.0)
    return math.exp(math.log(sched.end_lr_scale) * progress)


def gumbel_temperature(step: int, start: float = 2.0, end: float = 0.5, decay: float = 0.999995) -> float:
    """wav2vec 2.0's Gumbel-softmax temperature: ``max(end, start * decay**step)`` (paper section 4.2)."""
    return max(end, start * decay**step)
