"""From a sweep recipe to points and their stages, with nothing run.

A point is one combination of the grid (batch seconds x LR rule x model size x
seed). Its stages are: pretrain -> fine-tune (per labeled split, and per
milestone checkpoint when asked) -> decode (per test set) -> score. The layout
under the sweep root is fixed, so ``speechbs report`` can read any sweep::

    <root>/sweep.toml                 the recipe as given (plus --set lines)
    <root>/sweep.json                 status of every stage (rewritten as stages finish)
    <root>/points/<point>/pretrain/   pretraining run directory
    <root>/points/<point>/finetune/<split>[@<hours>h]/   fine-tuning run directories
    <root>/points/<point>/decode/<split>[@<hours>h]/<test>/   hyp.wrd, decode.json, score.json
    <root>/logs/<point>/<stage>.log   each stage's console output
    <root>/launch/                    scripts written by --launch torchrun|slurm

The batch is the recipe's number (``batch.seconds``) and never depends on how
many GPUs run it: the launch scripts pass the same ``--set`` lines to 1 or 64
processes, and speechbs derives the accumulation.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from speechbs.configio import config_hash, load, load_config, parse_override, toml_str
from speechbs.errors import ConfigError
from speechbs.sweep.config import FinetuneSpec, GridSection, SweepConfig, SweepSection
from speechbs.train.schedule import peak_lr


@dataclass
class Point:
    """One grid combination: its pretraining command and the numbers it was planned with."""

    name: str
    batch_s: float
    num_steps: int
    overrides: list[str]
    """``--set`` lines for ``speechbs pretrain`` (sweep-wide ones first, then the point's own)."""
    peak_lr: float
    config_hash: str
    axes: dict[str, Any] = field(default_factory=dict)
    """Grid values of this point, e.g. {"batch_s": 600.0, "lr_rule": "sqrt"}."""


@dataclass
class SweepPlan:
    cfg: SweepConfig
    recipe_path: Path
    """The sweep file; recipe paths in it are relative to its directory."""
    root: Path
    pretrain_recipe: Path
    points: list[Point]
    overrides: list[str]
    """The ``--set`` lines the sweep recipe was loaded with."""

    def point_dir(self, point: Point) -> Path:
        return self.root / "points" / point.name

    def finetune_recipe(self, spec: FinetuneSpec) -> Path:
        return (self.recipe_path.parent / spec.recipe).resolve()


def load_sweep(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> SweepConfig:
    """Read and check a sweep recipe (``--set sweep.hours=2`` style overrides apply to it)."""
    return load(SweepConfig, path, overrides)


def plan_sweep(path: str | Path, overrides: list[str] | tuple[str, ...] = (), out: str | Path | None = None) -> SweepPlan:
    """Load the sweep recipe and resolve every point's pretraining config (which checks it)."""
    path = Path(path).resolve()
    cfg = load_sweep(path, overrides)
    root = Path(out) if out else Path(cfg.sweep.output_dir) / cfg.sweep.name
    base = (path.parent / cfg.sweep.pretrain_recipe).resolve()
    if not base.is_file():
        raise ConfigError(f"{path}: sweep.pretrain_recipe = {cfg.sweep.pretrain_recipe!r} does not exist "
                          f"(looked for {base}; the path is relative to the sweep file)")
    for spec in cfg.finetune:
        recipe = (path.parent / spec.recipe).resolve()
        if not recipe.is_file():
            raise ConfigError(f"{path}: finetune {spec.name!r}: recipe {spec.recipe!r} does not exist "
                              f"(looked for {recipe}; the path is relative to the sweep file)")
    points = [_point(cfg, base, root.resolve(), combo) for combo in _combinations(cfg.grid)]
    return SweepPlan(cfg=cfg, recipe_path=path, root=root.resolve(), pretrain_recipe=base, points=points,
                     overrides=list(overrides))


def steps_for(section: SweepSection, batch_s: float) -> int:
    """Optimizer steps for one point under the budget policy."""
    if section.budget == "hours":
        # Nominal hours: batch.seconds is the real audio the planner aims at per step.
        return max(1, math.ceil(section.hours * 3600 / batch_s - 1e-9))
    return section.steps


def _combinations(grid: GridSection) -> list[dict[str, Any]]:
    axes = {"batch_s": grid.batch_seconds, "batch_schedule": grid.batch_schedule, "lr_rule": grid.lr_rule,
            "model_size": grid.model_size, "seed": grid.seed}
    present = {k: v for k, v in axes.items() if v}
    keys = list(present)
    return [dict(zip(keys, values)) for values in itertools.product(*(present[k] for k in keys))]


def point_name(combo: dict[str, Any], grid: GridSection) -> str:
    """``bs600s``, plus ``-ramp``, ``-sqrt``, ``-base``, ``-seed2`` for the axes that have several values."""
    name = f"bs{combo['batch_s']:g}s"
    if len(grid.batch_schedule) > 1:
        name += f"-{combo['batch_schedule']}"
    if len(grid.lr_rule) > 1:
        name += f"-{combo['lr_rule']}"
    if len(grid.model_size) > 1:
        name += f"-{combo['model_size']}"
    if len(grid.seed) > 1:
        name += f"-seed{combo['seed']}"
    return name


def _point(cfg: SweepConfig, base: Path, root: Path, combo: dict[str, Any]) -> Point:
    name = point_name(combo, cfg.grid)
    batch_s = float(combo["batch_s"])
    num_steps = steps_for(cfg.sweep, batch_s)
    own = [f"run.output_dir={toml_str(root / 'points' / name)}", "run.name=pretrain",
           f"batch.seconds={batch_s!r}", f"train.num_steps={num_steps}"]
    if "batch_schedule" in combo:
        own.append(f"batch.schedule={toml_str(combo['batch_schedule'])}")
    if "lr_rule" in combo:
        own.append(f"optim.lr_rule={toml_str(combo['lr_rule'])}")
    if "model_size" in combo:
        own.append(f"model.size={toml_str(combo['model_size'])}")
    if "seed" in combo:
        own.append(f"run.seed={combo['seed']}")
    if cfg.sweep.milestone_hours:
        own.append("train.milestone_hours=[" + ", ".join(repr(float(h)) for h in cfg.sweep.milestone_hours) + "]")
    noise_steps = _noise_milestones(cfg, batch_s, combo.get("seed"), num_steps)
    if noise_steps:  # the checkpoints [[noise]] measures are kept; merged with the recipe's own milestones
        own.append("train.milestone_steps=[" + ", ".join(str(k) for k in noise_steps) + "]")
    overrides = [*cfg.sweep.pretrain_set, *own]
    try:
        resolved = load_config(base, overrides)
    except ConfigError as exc:
        raise ConfigError(f"sweep point {name}: {exc}") from None
    return Point(name=name, batch_s=batch_s, num_steps=num_steps, overrides=overrides,
                 peak_lr=peak_lr(resolved.optim, resolved.batch.seconds), config_hash=config_hash(resolved),
                 axes=dict(combo))


def _noise_milestones(cfg: SweepConfig, batch_s: float, seed: int | None, num_steps: int) -> list[int]:
    """The recipe's ``train.milestone_steps`` (from ``sweep.pretrain_set``) plus the [[noise]] steps of this point."""
    wanted = {k for spec in cfg.noise if spec.measures(batch_s, seed) for k in spec.steps if k < num_steps}
    if not wanted:
        return []
    for item in cfg.sweep.pretrain_set:
        key, value = parse_override(item)
        if key == "train.milestone_steps" and isinstance(value, list):
            wanted |= {int(k) for k in value}
    return sorted(wanted)
