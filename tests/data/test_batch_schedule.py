"""Batch-size schedules: ramps and adaptive decisions, planned in units, resumable, world-size free."""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
import pytest

from speechbs.config import AdaptiveConfig, BatchConfig, RampConfig
from speechbs.data.batch_schedule import BatchSchedule, Decision
from speechbs.data.batching import BatchPlanner
from speechbs.errors import ConfigError, PlanError

RATE = 16_000


def lengths(num_utts: int = 2000, seed: int = 0) -> np.ndarray:
    """1-16 s utterances, in samples."""
    return (np.random.default_rng(seed).uniform(1.0, 16.0, num_utts) * RATE).astype(np.int64)


def planner(**batch) -> BatchPlanner:
    cfg = BatchConfig(**{"seconds": 240.0, "max_device_seconds": 60.0, **batch})
    return BatchPlanner(lengths(), cfg, sample_rate_hz=RATE, seed=3)


def ramp(**kw) -> dict:
    return {"schedule": "ramp", "ramp": RampConfig(**{"start_seconds": 60.0, "steps": 20, **kw})}


def test_a_constant_batch_is_one_unit_per_step_and_the_plan_of_an_explicit_unit():
    """The default unit is the batch: a constant run's plan (and its resume fingerprint) is the
    batch-per-step plan; a smaller unit gives batches of whole units."""
    default, explicit = planner(), planner(unit_seconds=240.0)
    assert default.unit_s == 240.0 and default.state_dict()["fingerprint"] == explicit.state_dict()["fingerprint"]
    assert [default.next_batch() for _ in range(5)] == [explicit.next_batch() for _ in range(5)]
    quarter = planner(unit_seconds=60.0)
    assert all(quarter.next_batch().num_units == 4 for _ in range(5))


def test_a_linear_ramp_follows_its_schedule_within_the_planners_bound():
    p = planner(**ramp())
    longest_s = p.capped_N.max() / RATE
    for step in range(30):
        batch = p.next_batch()
        wanted_s = 60.0 + (240.0 - 60.0) * min(step / 20, 1.0)
        units = math.floor(wanted_s / 60.0 + 0.5)
        assert batch.num_units == units and batch.target_s == units * 60.0
        # Each unit is within one longest utterance of the epoch's per-unit target.
        assert abs(batch.real_samples / RATE - batch.target_s) <= units * longest_s


def test_a_stepwise_ramp_doubles_at_equal_fractions():
    p = planner(**ramp(shape="stepwise", num_stages=3))  # 60 -> 120 -> 240 s at steps 0, 7, 14
    units = [p.next_batch().num_units for _ in range(24)]
    assert units == [1] * 7 + [2] * 7 + [4] * 10


def test_a_ramp_in_hours_reads_the_audio_already_planned():
    p = planner(**ramp(steps=0, hours=0.1))  # 360 s of audio: the ramp ends after about 3 steps
    seen_h, units = 0.0, []
    for _ in range(6):
        batch = p.next_batch()
        units.append(batch.num_units)
        assert batch.num_units == math.floor((60 + 180 * min(seen_h / 0.1, 1.0)) / 60 + 0.5)
        seen_h += batch.real_samples / RATE / 3600
    assert units[0] == 1 and units[-1] == 4 and units == sorted(units)


def test_every_utterance_is_used_once_per_epoch_and_the_last_step_takes_what_is_left():
    p = planner(**ramp(steps=5), unit_seconds=60.0)
    rows, last = Counter(), None
    while p.epoch == 0:
        last = p.next_batch()
        rows.update(s.index for s in last.segments)
    assert sorted(rows) == list(range(len(p.num_samples_N))) and set(rows.values()) == {1}
    assert last.num_units == p.units_per_epoch - last.unit_in_epoch <= 4
    assert last.target_s == 240.0  # the step's LR follows the scheduled batch, its batch_s is what was left


def test_adaptive_decisions_by_hand():
    cfg = BatchConfig(seconds=30.0, schedule="adaptive", unit_seconds=15.0,
                      adaptive=AdaptiveConfig(every_steps=10, factor=2.0, min_seconds=15.0, max_seconds=120.0))
    schedule = BatchSchedule(cfg)
    assert schedule.num_units(0, 0.0) == 2 and not schedule.is_decision_step(5) and schedule.is_decision_step(10)
    assert schedule.decide(10, 19.0) == Decision(10, 3, 19.0, 38.0)  # 38 s = 2.53 units -> 3 = 45 s
    assert schedule.decide(10, 22.5) == Decision(10, 3, 22.5, 45.0)
    assert schedule.decide(10, 500.0).num_units == 8  # clamped to 120 s
    assert schedule.decide(10, 2.0).num_units == 1  # 4 s: clamped to 15 s
    unmeasured = schedule.decide(10, math.nan)
    assert unmeasured.num_units == 2 and math.isnan(unmeasured.b_simple_s)
    assert schedule.decide(10, -3.0).num_units == 2  # |mu|^2 not positive yet: keep the batch
    schedule.record(schedule.decide(10, 40.0))  # 80 s -> 5 units from step 10 on
    assert [schedule.num_units(k, 0.0) for k in (9, 10, 30)] == [2, 5, 5]
    # A unit that does not divide the bounds never steps outside them.
    odd = BatchSchedule(BatchConfig(seconds=40.0, schedule="adaptive", unit_seconds=20.0,
                                    adaptive=AdaptiveConfig(min_seconds=40.0, max_seconds=70.0)))
    assert odd.decide(50, 1e6).num_units == 3 and odd.decide(50, 1.0).num_units == 2


@pytest.mark.parametrize("batch", [ramp(steps=7), ramp(steps=0, hours=0.05),
                                   {"schedule": "adaptive", "unit_seconds": 60.0,
                                    "adaptive": AdaptiveConfig(every_steps=3, max_seconds=480.0)}])
def test_a_resumed_planner_continues_the_same_batches(batch):
    """The position, the audio planned and the decisions are the planner's state: a fresh planner
    loaded from it plans what the uninterrupted one plans."""
    a = planner(**batch)
    for step in range(9):
        a.next_batch()
        if a.schedule.is_decision_step(step + 1):
            a.schedule.record(a.schedule.decide(step + 1, 100.0 * (step + 1)))
    b = planner(**batch)
    b.load_state_dict(a.state_dict())
    assert [a.next_batch() for _ in range(8)] == [b.next_batch() for _ in range(8)]
    assert b.schedule.decisions == a.schedule.decisions


def test_a_planner_state_from_before_schedules_resumes():
    """Checkpoints written before batch schedules hold {epoch, step_in_epoch, seed, fingerprint}."""
    a = planner()
    for _ in range(3):
        a.next_batch()
    old = {"epoch": a.epoch, "step_in_epoch": a.unit_in_epoch, "seed": 3, "fingerprint": a.state_dict()["fingerprint"]}
    b = planner()
    b.load_state_dict(old)
    assert a.next_batch() == b.next_batch()


def test_decisions_need_an_adaptive_schedule_to_resume():
    a = planner(schedule="adaptive", adaptive=AdaptiveConfig(max_seconds=480.0))
    a.schedule.record(Decision(50, 2, 400.0, 400.0))
    with pytest.raises(PlanError, match='batch.schedule = "adaptive"'):
        planner().load_state_dict(a.state_dict())


@pytest.mark.parametrize("batch, words", [
    ({"schedule": "ramp"}, ["batch.ramp.start_seconds", "must be > 0"]),
    ({"schedule": "ramp", "ramp": RampConfig(start_seconds=60.0)}, ["batch.ramp", "exactly one of steps"]),
    ({"schedule": "ramp", "ramp": RampConfig(start_seconds=60.0, steps=5, hours=1.0)}, ["exactly one"]),
    ({"schedule": "adaptive"}, ["batch.adaptive.max_seconds", "must be > 0"]),
    ({"schedule": "adaptive", "adaptive": AdaptiveConfig(min_seconds=100.0, max_seconds=50.0)},
     ["batch.adaptive.max_seconds", ">= batch.adaptive.min_seconds"]),
    ({"unit_seconds": 500.0}, ["batch.unit_seconds", "larger than the schedule's smallest batch"]),
])
def test_impossible_schedules_are_config_errors(batch, words):
    with pytest.raises(ConfigError) as err:
        BatchConfig(**{"seconds": 240.0, **batch})
    for word in words:
        assert word in str(err.value)


def test_batches_that_are_not_whole_units_are_plan_errors():
    with pytest.raises(PlanError, match=r"batch.ramp.start_seconds = 90 s is not a whole number of planning units"):
        planner(schedule="ramp", unit_seconds=60.0, ramp=RampConfig(start_seconds=90.0, steps=4))
    with pytest.raises(PlanError, match="the schedule.s largest batch = 1000000.0 is more than the whole training set"):
        planner(schedule="adaptive", adaptive=AdaptiveConfig(max_seconds=1e6))


def test_adaptive_needs_gradient_noise_measurements():
    from speechbs.configio import load_config

    sets = ['batch.schedule="adaptive"', "batch.adaptive.max_seconds=9000", "batch.adaptive.every_steps=20"]
    with pytest.raises(ConfigError, match="train.grad_noise_every.*must be in 1..batch.adaptive.every_steps"):
        load_config(None, sets)
    assert load_config(None, [*sets, "train.grad_noise_every=5"]).batch.schedule == "adaptive"
