"""Batch-size schedules: the global batch of every step, in planning units (``batch.schedule``).

Legend: u = the planning unit, s (``BatchConfig.planning_unit_seconds``); a step's batch is a whole
number of units, ``num_units``; t = optimizer steps taken, h = hours of real audio seen before the step.

Three schedules, each a pure function of what the run has already decided:

- ``constant``: every step is ``batch.seconds``.
- ``ramp``: from ``batch.ramp.start_seconds`` to ``batch.seconds`` over ``batch.ramp.steps`` steps or
  ``batch.ramp.hours`` hours seen, ``linear`` or ``stepwise``; a function of (t, h).
- ``adaptive``: starts at ``batch.seconds``; every ``batch.adaptive.every_steps`` steps the loop calls
  :meth:`BatchSchedule.decide` with the measured noise scale B_simple, which sets the batch to
  clamp(k B_simple, min, max) rounded to the unit from the next step on. The decisions are the
  schedule's state: they are the same on every rank (rank 0 decides, the loop broadcasts), saved in
  the checkpoint with the planner, and a resume at any world size continues from them.

Nothing here depends on the number of devices, so the batch plan that consumes it does not either.
Torch-free: the planner (data/batching.py) and the advisor use it without a model.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from speechbs.config import BatchConfig
from speechbs.errors import PlanError


@dataclass(frozen=True)
class Decision:
    """One adaptive decision: from optimizer step ``step`` (0-based, the next step to run) on, ``num_units``."""

    step: int
    """The first step (0-based) that runs at the decided batch."""
    num_units: int
    """The decided batch in planning units."""
    b_simple_s: float
    """The measured noise scale the decision read, s of audio (NaN: unmeasured, the batch was kept)."""
    wanted_s: float
    """factor x B_simple before clamping and rounding, s (NaN when unmeasured)."""


class BatchSchedule:
    """The target batch of every step, in planning units, for one ``[batch]`` config."""

    def __init__(self, cfg: BatchConfig) -> None:
        self.cfg = cfg
        self.unit_s = cfg.planning_unit_seconds
        self.decisions: tuple[Decision, ...] = ()
        """The adaptive decisions so far, in step order (empty for constant and ramp)."""
        for key, seconds in self._fixed_points():
            units = seconds / self.unit_s
            if abs(units - round(units)) > 0.01:
                raise PlanError(f"{key} = {seconds:g} s is not a whole number of planning units of "
                                f"{self.unit_s:g} s (batch.unit_seconds): make it a multiple, or set "
                                f"batch.unit_seconds to a common divisor")

    def _fixed_points(self) -> list[tuple[str, float]]:
        cfg = self.cfg
        points = [("batch.seconds", cfg.seconds)]
        if cfg.schedule == "ramp":
            points.append(("batch.ramp.start_seconds", cfg.ramp.start_seconds))
        return points

    def units(self, seconds: float) -> int:
        """``seconds`` rounded to the nearest whole number of units, halves up (at least one)."""
        return max(1, math.floor(seconds / self.unit_s + 0.5 + 1e-9))

    def num_units(self, step: int, hours_seen: float) -> int:
        """The batch of optimizer step ``step`` (0-based) after ``hours_seen`` h of audio, units."""
        cfg = self.cfg
        if cfg.schedule == "ramp":
            return self.units(self._ramp_seconds(step, hours_seen))
        if cfg.schedule == "adaptive":
            for decision in reversed(self.decisions):
                if decision.step <= step:
                    return decision.num_units
        return self.units(cfg.seconds)

    def seconds(self, step: int, hours_seen: float) -> float:
        """The target batch of ``step`` in seconds: :meth:`num_units` x the unit."""
        return self.num_units(step, hours_seen) * self.unit_s

    def _ramp_seconds(self, step: int, hours_seen: float) -> float:
        ramp, end = self.cfg.ramp, self.cfg.seconds
        progress = min(step / ramp.steps, 1.0) if ramp.steps else min(hours_seen / ramp.hours, 1.0)
        if progress >= 1.0:
            return end
        if ramp.shape == "linear":
            return ramp.start_seconds + (end - ramp.start_seconds) * progress
        stage = math.floor(progress * ramp.num_stages)
        return ramp.start_seconds * (end / ramp.start_seconds) ** (stage / (ramp.num_stages - 1))

    # -------------------------------------------------------------- adaptive
    def is_decision_step(self, steps_done: int) -> bool:
        """Whether the loop decides after ``steps_done`` steps (adaptive only)."""
        return (self.cfg.schedule == "adaptive" and steps_done > 0
                and steps_done % self.cfg.adaptive.every_steps == 0)

    def decide(self, steps_done: int, b_simple_s: float) -> Decision:
        """The batch from step ``steps_done`` on, given the measured noise scale (s of audio; NaN or <= 0:
        unmeasured, the batch stays). Pure: :meth:`record` applies it."""
        adaptive = self.cfg.adaptive
        current = self.num_units(steps_done, 0.0)
        if not (math.isfinite(b_simple_s) and b_simple_s > 0):
            return Decision(steps_done, current, math.nan, math.nan)
        wanted = adaptive.factor * b_simple_s
        clamped = min(max(wanted, self.cfg.adaptive_min_seconds), adaptive.max_seconds)
        # Round within the bounds: a unit that does not divide them must not step outside.
        low, high = math.ceil(self.cfg.adaptive_min_seconds / self.unit_s - 1e-9), \
            math.floor(adaptive.max_seconds / self.unit_s + 1e-9)
        return Decision(steps_done, min(max(self.units(clamped), low), max(high, 1)), b_simple_s, wanted)

    def record(self, decision: Decision) -> None:
        """Apply a decision (every rank records the one rank 0 made)."""
        assert not self.decisions or decision.step > self.decisions[-1].step, "decisions out of order"
        self.decisions = (*self.decisions, decision)

    def state_dict(self) -> dict:
        return {"kind": self.cfg.schedule, "unit_s": self.unit_s,
                "decisions": [asdict(d) for d in self.decisions]}

    def load_state_dict(self, state: dict) -> None:
        self.decisions = tuple(Decision(int(d["step"]), int(d["num_units"]), float(d["b_simple_s"]),
                                        float(d["wanted_s"])) for d in state.get("decisions", ()))
        if self.decisions and self.cfg.schedule != "adaptive":
            raise PlanError(f"the checkpoint's batch was set by {len(self.decisions)} adaptive decisions, but "
                            f"batch.schedule = {self.cfg.schedule!r}: resume with batch.schedule = \"adaptive\"")
