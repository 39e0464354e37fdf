"""Sweep recipes: loading, budgets, points, and every sweep recipe in recipes/ plans."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from speechbs.errors import ConfigError
from speechbs.sweep import load_sweep, plan_sweep, steps_for
from speechbs.sweep.config import SweepSection
from tests.sweep.conftest import write_sweep

REPO = Path(__file__).resolve().parents[2]


def test_hours_budget_gives_equal_audio(tmp_path):
    plan = plan_sweep(write_sweep(tmp_path, grid="batch_seconds = [87.5, 150.0, 4800.0]", sweep='hours = 10.0'))
    steps = {p.batch_s: p.num_steps for p in plan.points}
    assert steps == {87.5: math.ceil(36000 / 87.5), 150.0: 240, 4800.0: 8}
    assert all(p.batch_s * p.num_steps >= 36000 for p in plan.points)
    assert steps_for(SweepSection(pretrain_recipe="x", budget="steps", steps=7), 600.0) == 7


def test_points_carry_batch_lr_rule_and_names(tmp_path):
    plan = plan_sweep(write_sweep(tmp_path, grid='batch_minutes = [1.0, 4.0]\nlr_rule = ["sqrt", "none"]'))
    assert [p.name for p in plan.points] == ["bs60s-sqrt", "bs60s-none", "bs240s-sqrt", "bs240s-none"]
    by_name = {p.name: p for p in plan.points}
    # sqrt rule anchored at the recipe's 5e-4 default for 60 s (reference_seconds=60 in pretrain_set)
    assert by_name["bs240s-sqrt"].peak_lr == pytest.approx(5e-4 * 2)
    assert by_name["bs240s-none"].peak_lr == pytest.approx(5e-4)
    assert "batch.seconds=240.0" in by_name["bs240s-none"].overrides
    assert len({p.config_hash for p in plan.points}) == 4


def test_a_sweep_grids_over_batch_schedules(tmp_path):
    """The schedule is an axis like the LR rule: ramp and adaptive points take their settings from the
    sweep's pretrain_set (or the base recipe) and are named by their schedule."""
    sweep = 'budget = "steps_with_milestones"\nsteps = 40\nmilestone_hours = [0.1]'
    settings = ('sweep.pretrain_set=["batch.ramp.start_seconds=15.0", "batch.ramp.steps=20", '
                '"batch.adaptive.max_seconds=240.0", "train.grad_noise_every=5"]')
    plan = plan_sweep(write_sweep(tmp_path, grid='batch_seconds = [60.0]\nbatch_schedule = ["constant", "ramp", "adaptive"]',
                                  sweep=sweep), [settings])
    assert [p.name for p in plan.points] == ["bs60s-constant", "bs60s-ramp", "bs60s-adaptive"]
    assert 'batch.schedule="ramp"' in plan.points[1].overrides
    assert len({p.config_hash for p in plan.points}) == 3
    with pytest.raises(ConfigError, match="sweep point bs60s-ramp: .*batch.ramp.start_seconds"):
        plan_sweep(write_sweep(tmp_path, grid='batch_seconds = [60.0]\nbatch_schedule = ["constant", "ramp"]'))


@pytest.mark.parametrize("body, message", [
    ('[sweep]\npretrain_recipe = "pre.toml"\nbudget = "hours"\n[grid]\nbatch_seconds = [1.0]\n', "sweep.hours"),
    ('[sweep]\npretrain_recipe = "pre.toml"\nhours = 1.0\n[grid]\nbatch_secs = [1.0]\n', "Did you mean grid.batch_seconds"),
    ('[sweep]\npretrain_recipe = "nope.toml"\nhours = 1.0\n[grid]\nbatch_seconds = [1.0]\n', "does not exist"),
    ('[sweep]\npretrain_recipe = "pre.toml"\nbudget = "steps_with_milestones"\nsteps = 5\n'
     '[grid]\nbatch_seconds = [1.0]\n', "milestone_hours"),
    ('[sweep]\npretrain_recipe = "pre.toml"\nhours = 1.0\n[grid]\nbatch_seconds = [1.0]\n'
     '[[test]]\nname = "t"\nmanifest = "t.tsv"\n', "needs at least one [[finetune]]"),
    ('[run]\nname = "x"\n', "needs a [sweep] table"),
])
def test_bad_recipes_say_what_to_change(tmp_path, body, message):
    write_sweep(tmp_path)
    path = tmp_path / "bad.toml"
    path.write_text(body)
    with pytest.raises(ConfigError, match=message.replace("[", r"\[")):
        plan_sweep(path)


@pytest.mark.parametrize("extra, message", [
    ('[[finetune]]\nname = "other"\n', "finetune[1].recipe: is required"),
    ('[[noise]]\nmanifest = "n.tsv"\nrepeats = 1\n', "noise[0].repeats: must be >= 2"),
    ('[[finetune]]\nname = "other"\nrecipe = "ft.toml"\nrecipes = ""\n',
     "unknown key 'finetune[1].recipes'. Allowed in [[finetune]]: name, recipe"),
])
def test_errors_in_a_table_list_name_the_item(tmp_path, extra, message):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[")):
        load_sweep(write_sweep(tmp_path, extra))


def test_a_list_of_tables_must_be_written_as_tables(tmp_path):
    path = write_sweep(tmp_path)
    tables = path.read_text().replace('[[finetune]]\nname = "train"\nrecipe = "ft.toml"\n', "")
    path.write_text("finetune = 3\n" + tables)
    with pytest.raises(ConfigError, match=r"finetune must be written as \[\[finetune\]\] tables"):
        load_sweep(path)


def test_grid_batch_minutes_is_an_alias_of_batch_seconds(tmp_path):
    assert load_sweep(write_sweep(tmp_path, grid="batch_minutes = [1, 2.5]")).grid.batch_seconds == [60.0, 150.0]
    with pytest.raises(ConfigError, match="both grid.batch_minutes and grid.batch_seconds are set"):
        load_sweep(write_sweep(tmp_path, grid="batch_minutes = [1]\nbatch_seconds = [60.0]"))


def test_set_overrides_the_sweep_recipe(tmp_path):
    cfg = load_sweep(write_sweep(tmp_path), ["sweep.hours=2", "grid.batch_seconds=[30.0]"])
    assert cfg.sweep.hours == 2.0 and cfg.grid.batch_seconds == [30.0]


def test_point_config_errors_name_the_point(tmp_path):
    with pytest.raises(ConfigError, match="sweep point bs15s"):
        plan_sweep(write_sweep(tmp_path), ['sweep.pretrain_set=["optim.lr_rule=\\"cubic\\""]'])


SWEEP_RECIPES = [p for p in sorted(REPO.glob("recipes/**/*.toml")) if "[sweep]" in p.read_text()]


def test_there_are_sweep_recipes():
    assert {p.name for p in SWEEP_RECIPES} >= {"demo.toml", "sweep.toml"}


@pytest.mark.parametrize("recipe", SWEEP_RECIPES, ids=lambda p: str(p.relative_to(REPO)))
def test_every_sweep_recipe_plans(recipe):
    plan = plan_sweep(recipe)
    assert len(plan.points) >= 3
    assert plan.cfg.finetune and plan.cfg.test


def test_noise_tables_keep_their_checkpoints_and_list_a_stage_each(tmp_path):
    """[[noise]] steps become milestones of the points that reach them; a stage per kept checkpoint."""
    from speechbs.sweep.stages import point_stages

    noise = ('[[noise]]\nname = "fixed"\nmanifest = "train.tsv"\nbatch_seconds = [15.0, 30.0]\nrepeats = 4\n'
             'steps = [10, 100]\npoints = [15.0]\n')
    plan = plan_sweep(write_sweep(tmp_path, extra=noise))  # 0.5 h: 120 steps at 15 s, 30 at 60 s
    by_batch = {p.batch_s: p for p in plan.points}
    assert "train.milestone_steps=[10, 100]" in by_batch[15.0].overrides
    assert not any("milestone_steps" in o for o in by_batch[60.0].overrides)  # not a measured point
    point = by_batch[15.0]
    assert [s.key for s in point_stages(plan, point) if s.kind == "noise"] == []  # no checkpoint kept yet
    ckpt_dir = plan.point_dir(point) / "pretrain" / "checkpoints"
    ckpt_dir.mkdir(parents=True)
    (ckpt_dir / "step_00000010.pt").write_bytes(b"")
    stages = [s for s in point_stages(plan, point) if s.kind == "noise"]
    assert [s.key for s in stages] == ["noise/fixed-step10"]
    assert stages[0].argv[:2] == ["noise", str(ckpt_dir / "step_00000010.pt")]
    assert "--batch-seconds" in stages[0].argv and "15,30" in stages[0].argv
    assert stages[0].out_dir == plan.point_dir(point) / "noise" / "fixed-step10"


def test_a_noise_table_without_steps_measures_the_final_checkpoint(tmp_path):
    from speechbs.sweep.stages import point_stages

    plan = plan_sweep(write_sweep(tmp_path, extra='[[noise]]\nmanifest = "train.tsv"\n'))
    for point in plan.points:
        (stage,) = [s for s in point_stages(plan, point) if s.kind == "noise"]
        assert stage.needs == "pretrain" and stage.key == f"noise/noise-step{point.num_steps}"
