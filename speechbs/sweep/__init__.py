"""Batch-size sweeps: a grid of pretraining runs, each fine-tuned, decoded and scored.

``plan_sweep`` reads a sweep recipe and resolves every point; ``run_sweep`` runs
the missing stages; ``write_launch_scripts`` writes cluster scripts instead.
See docs/sweep.md.
"""

from speechbs.sweep.config import SweepConfig
from speechbs.sweep.launch import write_launch_scripts
from speechbs.sweep.plan import Point, SweepPlan, load_sweep, plan_sweep, steps_for
from speechbs.sweep.runner import StageResult, SubprocessRunner, SweepStatus, dry_run, run_sweep
from speechbs.sweep.stages import Stage, is_done, point_stages

__all__ = ["Point", "Stage", "StageResult", "SubprocessRunner", "SweepConfig", "SweepPlan", "SweepStatus",
           "dry_run", "is_done", "load_sweep", "plan_sweep", "point_stages", "run_sweep", "steps_for",
           "write_launch_scripts"]
