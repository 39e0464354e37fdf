import math

import pytest

from speechbs.config import OptimConfig, ScheduleConfig
from speechbs.train.schedule import gumbel_temperature, lr_scale, peak_lr


@pytest.mark.parametrize("seconds, rule, expected", [
    # The seed study's grid: every LR it swept is one of these rules anchored at 5e-4 for 6,000 s.
    (87.5, "linear", 7.29e-6), (150, "linear", 1.25e-5), (600, "linear", 5e-5),
    (150, "sqrt", 7.91e-5), (300, "sqrt", 1.118e-4), (1200, "sqrt", 2.24e-4), (2400, "sqrt", 3.16e-4),
    (4800, "none", 5e-4),
])
def test_lr_scaling_rules_reproduce_the_seed_grid(seconds, rule, expected):
    optim = OptimConfig(lr=5e-4, lr_rule=rule, reference_seconds=6000)
    assert peak_lr(optim, seconds) == pytest.approx(expected, rel=2e-3)


def test_polynomial_warmup_then_linear_decay():
    s = ScheduleConfig(kind="polynomial", warmup_steps=10)
    assert lr_scale(0, s, 110) == 0.0
    assert lr_scale(5, s, 110) == pytest.approx(0.5)
    assert lr_scale(10, s, 110) == pytest.approx(1.0)
    assert lr_scale(60, s, 110) == pytest.approx(0.5)
    assert lr_scale(110, s, 110) == pytest.approx(0.0)


def test_tri_stage_matches_fairseq_shape():
    s = ScheduleConfig(kind="tri_stage", warmup_steps=10, hold_steps=40, end_lr_scale=0.05, init_lr_scale=0.01)
    assert lr_scale(0, s, 100) == pytest.approx(0.01)
    assert lr_scale(10, s, 100) == pytest.approx(1.0)
    assert lr_scale(49, s, 100) == pytest.approx(1.0)
    assert lr_scale(75, s, 100) == pytest.approx(math.sqrt(0.05))
    assert lr_scale(100, s, 100) == pytest.approx(0.05)


def test_tri_stage_refuses_a_decay_to_zero():
    # exp(log(0)) has no finite form: a recipe that forgot final_lr_scale would silently train
    # at ~0 LR after the first few decay steps.
    from speechbs.errors import ConfigError
    with pytest.raises(ConfigError, match="schedule.end_lr_scale.*0.05"):
        ScheduleConfig(kind="tri_stage", warmup_steps=10, hold_steps=40, end_lr_scale=0.0)


def test_cyclic_minima_sit_at_every_cycle():
    s = ScheduleConfig(kind="cyclic", cycle_steps=100, cycle_min_scale=0.01)
    for k in range(5):
        assert lr_scale(100 * k, s, 500) == pytest.approx(0.01)
        assert lr_scale(100 * k + 50, s, 500) == pytest.approx(1.0)
    assert lr_scale(25, s, 500) == pytest.approx(0.505)


def test_cosine_ends_at_end_scale():
    s = ScheduleConfig(kind="cosine", warmup_steps=0, end_lr_scale=0.1)
    assert lr_scale(0, s, 100) == pytest.approx(1.0)
    assert lr_scale(50, s, 100) == pytest.approx(0.55)
    assert lr_scale(100, s, 100) == pytest.approx(0.1)


def test_gumbel_temperature_decays_to_floor():
    assert gumbel_temperature(0) == 2.0
    assert gumbel_temperature(10**7) == 0.5
    assert 0.5 < gumbel_temperature(100_000) < 2.0


def test_warmup_fraction_gives_runs_of_different_lengths_one_schedule_shape():
    from speechbs.config import ScheduleConfig
    from speechbs.train.schedule import lr_scale

    sched = ScheduleConfig(kind="polynomial", warmup_steps=999, warmup_fraction=0.1)
    short = [lr_scale(k, sched, 100) for k in range(0, 100, 10)]
    long = [lr_scale(k, sched, 400) for k in range(0, 400, 40)]
    assert short == pytest.approx(long)
    assert lr_scale(10, sched, 100) == 1.0 and lr_scale(9, sched, 100) < 1.0  # warmup_steps is ignored
    tri = ScheduleConfig(kind="tri_stage", warmup_fraction=0.5, end_lr_scale=0.05)
    assert lr_scale(5, tri, 10) == 1.0 and lr_scale(4, tri, 10) < 1.0
