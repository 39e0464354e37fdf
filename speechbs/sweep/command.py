"""``speechbs sweep RECIPE``: pretrain, fine-tune, decode and score a grid of batch sizes.

Runs every point of the sweep here (``--launch local``, the default), or writes
launch scripts for a cluster (``--launch torchrun|slurm``), or only shows the
plan (``--dry-run``). Started again, it runs only what is missing.
"""

from __future__ import annotations

import argparse

from speechbs.errors import ConfigError
from speechbs.sweep.launch import write_launch_scripts
from speechbs.sweep.plan import SweepPlan, plan_sweep
from speechbs.sweep.runner import SubprocessRunner, SweepStatus, dry_run, run_sweep, stop_on_sigterm


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("recipe", help="sweep recipe (TOML with [sweep], [grid], [[finetune]], [[test]]; "
                                       "see docs/sweep.md)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a sweep recipe field, e.g. --set sweep.hours=2 or "
                             "--set 'grid.batch_seconds=[60, 600]' (repeatable)")
    parser.add_argument("--dry-run", action="store_true", help="print the points and stages; run nothing")
    parser.add_argument("--launch", choices=["local", "torchrun", "slurm"], default="local",
                        help="local: run the stages now, one after another (default); torchrun / slurm: "
                             "write one launch script per point (and a SLURM job array) instead")
    parser.add_argument("--nproc-per-node", type=int, default=0, metavar="N",
                        help="processes (GPUs) per training stage: local runs use torchrun when N > 0; "
                             "scripts default to 1. Never changes the batch")
    parser.add_argument("--point", action="append", default=[], metavar="NAME",
                        help="run only this point (repeatable), e.g. --point bs600s")
    parser.add_argument("--out", help="sweep root directory (default: <sweep.output_dir>/<sweep.name>)")


def main(args: argparse.Namespace) -> int:
    plan = plan_sweep(args.recipe, args.overrides, out=args.out)
    unknown = sorted(set(args.point) - {p.name for p in plan.points})
    if unknown:
        raise ConfigError(f"--point {', '.join(unknown)}: not in this sweep; its points are "
                          f"{', '.join(p.name for p in plan.points)}")
    print(describe_plan(plan))
    if args.dry_run:
        print(format_status(dry_run(plan)))
        return 0
    if args.launch != "local":
        paths = write_launch_scripts(plan, args.launch, max(args.nproc_per_node, 1))
        print(f"wrote {len(paths)} launch script(s) under {plan.root / 'launch'}:")
        for path in paths:
            print(f"  {path}")
        if args.launch == "slurm":
            print(f"submit with: sbatch {plan.root / 'launch' / 'sweep.sbatch'}")
        return 0
    stop_on_sigterm()
    status = run_sweep(plan, SubprocessRunner(nproc_per_node=args.nproc_per_node), points=args.point or None)
    print(format_status(status))
    print(f"status: {plan.root / 'sweep.json'}; table and plots: speechbs report {plan.root}")
    return 1 if status.counts().get("failed") else 0


def describe_plan(plan: SweepPlan) -> str:
    section = plan.cfg.sweep
    budget = {"steps": f"{section.steps} steps per point",
              "hours": f"{section.hours:g} h of audio per point",
              "steps_with_milestones": f"{section.steps} steps per point, checkpoints kept at "
                                       f"{', '.join(f'{h:g}' for h in section.milestone_hours)} h seen"}[section.budget]
    lines = [f"sweep {section.name}: {len(plan.points)} point(s), {budget}",
             f"  root     {plan.root}", f"  pretrain {plan.pretrain_recipe}"]
    for spec in plan.cfg.finetune:
        lines.append(f"  finetune {spec.name}: {plan.finetune_recipe(spec)}")
    for test in plan.cfg.test:
        lines.append(f"  test     {test.name}: {test.manifest}")
    lines.append(f"  {'point':<22} {'batch s':>9} {'batch min':>9} {'steps':>8} {'hours':>9} {'peak LR':>9}")
    for p in plan.points:
        lines.append(f"  {p.name:<22} {p.batch_s:>9g} {p.batch_s / 60:>9.3g} {p.num_steps:>8d} "
                     f"{p.batch_s * p.num_steps / 3600:>9.4g} {p.peak_lr:>9.3g}")
    return "\n".join(lines)


def format_status(status: SweepStatus) -> str:
    lines = ["stages:"]
    for point, stages in status.results.items():
        for key, (_stage, result) in stages.items():
            note = f"  ({result.note})" if result.note else ""
            lines.append(f"  {point:<22} {key:<40} {result.status}{note}")
    counts = ", ".join(f"{n} {s}" for s, n in sorted(status.counts().items()))
    lines.append(f"total: {counts or 'no stages'}")
    return "\n".join(lines)
