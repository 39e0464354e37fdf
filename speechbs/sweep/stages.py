"""The stages of one sweep point, and when each is done.

Every stage is a ``speechbs`` command line with an output directory, and is
done when that output exists and is complete:

- pretrain / finetune: the run's latest checkpoint (``checkpoints/index.json``)
  is at ``train.num_steps`` (the planned steps for pretraining; the run's own
  ``config.toml`` for fine-tuning);
- decode: ``hyp.wrd`` and ``decode.json`` (written last) exist;
- score: ``score.json`` exists;
- noise: ``noise.json`` (written last, atomically) exists;
- probe: ``probe.json`` (written last, atomically) exists.

So a sweep killed at any moment and started again runs only what is missing;
a half-finished pretraining or fine-tuning run resumes from its checkpoint.
Stages are listed from what is on disk: the fine-tuning stages of milestone
checkpoints appear once pretraining has written them, and decoding uses the
fine-tuned run's ``checkpoints/best.pt`` (dev-WER best) when it exists.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

from speechbs.checkpoint import checkpoint_step, milestone_checkpoints
from speechbs.sweep.plan import Point, SweepPlan, toml_str

KINDS = ("pretrain", "finetune", "decode", "score", "noise", "probe")


@dataclass
class Stage:
    kind: str
    """One of :data:`KINDS`; also the ``speechbs`` subcommand that runs it."""
    point: str
    key: str
    """Unique within the point: ``pretrain``, ``finetune/<split>``, ``decode/<split>/<test>``, ``score/<split>/<test>``."""
    argv: list[str]
    """Arguments after ``speechbs`` (the subcommand first)."""
    out_dir: Path
    needs: str = ""
    """Key of the stage whose output this one reads (empty: none)."""
    num_steps: int | None = None
    """Planned optimizer steps (pretraining); None: read from the run's config.toml."""
    info: dict = field(default_factory=dict)
    """What the report needs to know without parsing argv (split, test set, milestone hours)."""


def run_step(run_dir: Path) -> int:
    """Step of the newest checkpoint of a run directory (0 when there is none)."""
    ckpt_dir = run_dir / "checkpoints"
    index_path = ckpt_dir / "index.json"
    name = None
    if index_path.is_file():
        try:
            name = json.loads(index_path.read_text()).get("latest")
        except (json.JSONDecodeError, OSError):
            name = None
    if name is None:
        files = sorted(ckpt_dir.glob("step_*.pt")) if ckpt_dir.is_dir() else []
        name = files[-1].name if files else None
    if not name or not (ckpt_dir / name).is_file():
        return 0
    return int(Path(name).stem.split("_")[1])


def planned_steps(run_dir: Path) -> int | None:
    """``train.num_steps`` from a run's config.toml, or None when it has not started."""
    path = run_dir / "config.toml"
    if not path.is_file():
        return None
    return int(tomllib.loads(path.read_text()).get("train", {}).get("num_steps", 0)) or None


def is_done(stage: Stage) -> bool:
    if stage.kind in ("pretrain", "finetune"):
        target = stage.num_steps if stage.num_steps is not None else planned_steps(stage.out_dir)
        return target is not None and run_step(stage.out_dir) >= target
    if stage.kind == "decode":
        return (stage.out_dir / "hyp.wrd").is_file() and (stage.out_dir / "decode.json").is_file()
    if stage.kind == "score":
        return (stage.out_dir / "score.json").is_file()
    if stage.kind in ("noise", "probe"):
        return (stage.out_dir / f"{stage.kind}.json").is_file()
    raise AssertionError(stage.kind)


def finetuned_checkpoint(run_dir: Path) -> Path:
    """The checkpoint to decode with: ``best.pt`` (dev-WER best) when saved, else the run directory."""
    best = run_dir / "checkpoints" / "best.pt"
    return best if best.is_file() else run_dir


def point_stages(plan: SweepPlan, point: Point) -> list[Stage]:
    """All stages of a point known from what is on disk now, in the order they must run."""
    point_dir = plan.point_dir(point)
    pretrain_dir = point_dir / "pretrain"
    argv = ["pretrain", str(plan.pretrain_recipe)]
    for item in point.overrides:
        argv += ["--set", item]
    stages = [Stage("pretrain", point.name, "pretrain", argv, pretrain_dir, num_steps=point.num_steps)]
    inits: list[tuple[str, Path, float | None]] = [("", pretrain_dir, None)]
    if plan.cfg.sweep.finetune_milestones:
        for mark, ckpt in milestone_checkpoints(pretrain_dir, plan.cfg.sweep.milestone_hours):
            if checkpoint_step(ckpt) != point.num_steps:  # a mark kept at the last step is the final model
                inits.append((f"@{mark:g}h", ckpt, mark))
    for spec in plan.cfg.finetune:
        for tag, init, mark in inits:
            stages += _finetune_stages(plan, point, spec, tag, init, mark)
    for noise in plan.cfg.noise:
        stages += _noise_stages(point, noise, point_dir)
    for probe in plan.cfg.probe:
        stages.append(_probe_stage(point, probe, point_dir))
    return stages


def _probe_stage(point: Point, spec, point_dir: Path) -> Stage:
    """``speechbs probe`` of the point's final pretraining checkpoint; the points share nothing but the
    recipe, and each point's features are cached beside its probes (``probe/cache``)."""
    out = point_dir / "probe" / spec.name
    argv = ["probe", str(point_dir / "pretrain"), "--task", spec.name, "--label", spec.label,
            "--train", spec.train_manifest, "--test", spec.test_manifest, "--level", spec.level,
            "--head", spec.head, "--epochs", str(spec.epochs), "--out", str(out),
            "--cache", str(point_dir / "probe" / "cache")]
    if spec.valid_manifest:
        argv += ["--valid", spec.valid_manifest]
    return Stage("probe", point.name, f"probe/{spec.name}", argv, out, needs="pretrain", info={"task": spec.name})


def _noise_stages(point: Point, spec, point_dir: Path) -> list[Stage]:
    """``speechbs noise`` of the final checkpoint, or of each kept checkpoint at ``spec.steps`` (once it exists)."""
    if not spec.measures(point.batch_s, point.axes.get("seed")):
        return []
    pretrain_dir = point_dir / "pretrain"
    steps = [k for k in spec.steps if k <= point.num_steps] if spec.steps else [point.num_steps]
    stages = []
    for step in steps:
        ckpt = pretrain_dir / "checkpoints" / f"step_{step:08d}.pt"
        if step != point.num_steps and not ckpt.is_file():
            continue  # listed once pretraining has kept it, as milestone fine-tuning is
        out = point_dir / "noise" / f"{spec.name}-step{step}"
        argv = ["noise", str(ckpt), "--manifest", spec.manifest, "--batch-seconds",
                ",".join(f"{b:g}" for b in spec.batch_seconds), "--repeats", str(spec.repeats), "--out", str(out)]
        for item in spec.set:
            argv += ["--set", item]
        stages.append(Stage("noise", point.name, f"noise/{spec.name}-step{step}", argv, out, needs="pretrain",
                            info={"step": step}))
    return stages


def _finetune_stages(plan: SweepPlan, point: Point, spec, tag: str, init: Path, mark: float | None) -> list[Stage]:
    point_dir = plan.point_dir(point)
    split = f"{spec.name}{tag}"
    run_dir = point_dir / "finetune" / split
    argv = ["finetune", str(plan.finetune_recipe(spec)), "--set", f"finetune.init={toml_str(init)}",
            "--set", f"run.output_dir={toml_str(point_dir / 'finetune')}", "--set", f"run.name={toml_str(split)}"]
    if spec.train_manifest:
        argv += ["--set", f"data.train_manifest={toml_str(spec.train_manifest)}"]
    for item in spec.set:
        argv += ["--set", item]
    info = {"split": spec.name, "milestone_h": mark}
    stages = [Stage("finetune", point.name, f"finetune/{split}", argv, run_dir, needs="pretrain", info=info)]
    for test in plan.cfg.test:
        out = point_dir / "decode" / split / test.name
        decode = ["decode", str(finetuned_checkpoint(run_dir)), "--manifest", test.manifest, "--out", str(out),
                  *test.decode_args]
        test_info = {**info, "test": test.name}
        stages.append(Stage("decode", point.name, f"decode/{split}/{test.name}", decode, out,
                            needs=f"finetune/{split}", info=test_info))
        stages.append(Stage("score", point.name, f"score/{split}/{test.name}", ["score", str(out)], out,
                            needs=f"decode/{split}/{test.name}", info=test_info))
    return stages
