"""Cluster launch scripts for a sweep: one script per point, and a SLURM array over them.

``speechbs sweep RECIPE --launch torchrun`` writes ``<root>/launch/points/<point>.sh``:
the point's stage command lines, training stages under ``torchrun
--nproc-per-node $NPROC``. ``--launch slurm`` adds ``<root>/launch/sweep.sbatch``,
a job array with one task per point that runs the point's script and requeues
itself after preemption (exit 75), like ``recipes/launch/slurm.sbatch``.

The batch is in the ``--set batch.seconds=...`` line, never derived from the
number of GPUs: NPROC only changes how each step is split into micro-batches.
Every line is safe to run again (training resumes or says "already complete";
decode and score lines are skipped when their output exists), so a requeued
task finishes only what is missing. Fine-tuning of milestone checkpoints, whose
names are known only after pretraining, is done by a last ``speechbs sweep
--point`` line that runs the point's remaining stages.
"""

from __future__ import annotations

import os
import shlex
from pathlib import Path

from speechbs.atomic import write_text
from speechbs.sweep.plan import Point, SweepPlan
from speechbs.sweep.stages import point_stages
from speechbs.train.preempt import TORCHRUN_SIGNALS

TRAINING = ("pretrain", "finetune")


def write_launch_scripts(plan: SweepPlan, mode: str, nproc_per_node: int) -> list[Path]:
    """Write the per-point scripts (and the SLURM array for ``mode == 'slurm'``); return their paths."""
    assert mode in ("torchrun", "slurm")
    launch_dir = plan.root / "launch"
    (launch_dir / "points").mkdir(parents=True, exist_ok=True)
    paths = []
    for point in plan.points:
        path = launch_dir / "points" / f"{point.name}.sh"
        write_text(path, point_script(plan, point, nproc_per_node))
        path.chmod(0o755)
        paths.append(path)
    if mode == "slurm":
        (plan.root / "logs").mkdir(parents=True, exist_ok=True)  # SLURM does not create --output's folder
        path = launch_dir / "sweep.sbatch"
        write_text(path, slurm_array_script(plan, nproc_per_node))
        paths.append(path)
    return paths


def point_script(plan: SweepPlan, point: Point, nproc_per_node: int) -> str:
    q = shlex.quote
    lines = [
        "#!/bin/bash",
        f"# speechbs sweep {plan.cfg.sweep.name}, point {point.name}: batch {point.batch_s:g} s of audio per step "
        f"({point.batch_s / 60:g} min), {point.num_steps} steps, peak LR {point.peak_lr:.3g}.",
        "# The batch is the --set batch.seconds line: the same global batches for any NPROC",
        "# (NPROC only changes the number of micro-batches per process). Safe to run again.",
        "set -euo pipefail",
        "# SIGUSR1 (preemption) goes to the whole process group; this shell waits for the running",
        "# stage (torchrun passes it on, speechbs saves and exits 75) instead of dying at once.",
        "trap 'echo \"speechbs: SIGUSR1: the running stage checkpoints and stops\" >&2' USR1",
        f"NPROC=${{NPROC:-{nproc_per_node}}}",
        f"cd {q(os.getcwd())}",
        "# torchrun passes on only the signals it is told to (torch >= 2.9); any other kills it and orphans the ranks.",
        f'TRAIN=(torchrun --standalone --nproc-per-node "$NPROC" --signals-to-handle {TORCHRUN_SIGNALS} -m speechbs)',
        "RUN=(python -m speechbs)",
        "",
    ]
    for stage in point_stages(plan, point):
        command = " ".join(q(a) for a in stage.argv)
        if stage.kind in TRAINING:
            lines.append(f'"${{TRAIN[@]}}" {command}')
        elif stage.kind == "decode":
            run_dir = Path(stage.argv[1])
            run_dir = run_dir.parent.parent if run_dir.name == "best.pt" else run_dir
            rest = " ".join(q(a) for a in stage.argv[2:])
            lines.append(f"CKPT={q(str(run_dir / 'checkpoints' / 'best.pt'))}; "
                         f"[[ -f $CKPT ]] || CKPT={q(str(run_dir))}")
            lines.append(f'[[ -f {q(str(stage.out_dir / "decode.json"))} ]] || "${{RUN[@]}}" decode "$CKPT" {rest}')
        else:  # score.json, noise.json and probe.json are written last
            done = stage.out_dir / (f"{stage.kind}.json" if stage.kind in ("noise", "probe") else "score.json")
            lines.append(f'[[ -f {q(str(done))} ]] || "${{RUN[@]}}" {command}')
    if plan.cfg.sweep.finetune_milestones or any(spec.steps for spec in plan.cfg.noise):
        sweep_args = [str(plan.recipe_path), "--out", str(plan.root), "--point", point.name,
                      "--nproc-per-node", "$NPROC"]
        for item in plan.overrides:
            sweep_args += ["--set", item]
        quoted = " ".join('"$NPROC"' if a == "$NPROC" else q(a) for a in sweep_args)
        lines.append("# milestone checkpoints: fine-tune, decode, score and measure each (their names exist only now)")
        lines.append(f'"${{RUN[@]}}" sweep {quoted}')
    return "\n".join(lines) + "\n"


SLURM_TEMPLATE = """\
#!/bin/bash
# speechbs sweep {name}: one SLURM array task per point ({num_points} points), one node each.
#
#   sbatch {script}
#
# Edit the #SBATCH lines for your cluster. The batch size of each point is in its script
# (launch/points/<point>.sh) and does not change with --gpus-per-node: speechbs derives the
# accumulation for the number of processes. Preemption: 120 s before the time limit SLURM
# sends SIGUSR1; this script passes it to the point's process group, speechbs saves a
# checkpoint and exits with 75, and the task is requeued. The requeued task runs the same
# script, which skips finished stages and resumes the interrupted one.
#SBATCH --job-name=speechbs-{name}
#SBATCH --array=0-{last_index}
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node={nproc}
#SBATCH --cpus-per-task={cpus}
#SBATCH --time=24:00:00
#SBATCH --signal=B:USR1@120
#SBATCH --requeue
#SBATCH --open-mode=append
#SBATCH --output={logs}/slurm-%A_%a.out

set -uo pipefail

POINTS=({points})
POINT=${{POINTS[$SLURM_ARRAY_TASK_ID]}}
export NPROC=${{SLURM_GPUS_ON_NODE:-{nproc}}}
EX_TEMPFAIL=75  # speechbs's exit status after saving on SIGUSR1/SIGTERM: "resume me"
# torchrun (in the point script, --signals-to-handle) waits this long for the ranks to save before SIGKILL.
export TORCH_ELASTIC_SHUTDOWN_TIMEOUT=100
export OMP_NUM_THREADS=1

preempted=0
forward_usr1() {{
    preempted=1
    echo "speechbs: SIGUSR1 (time limit or preemption): asking point $POINT to checkpoint and stop"
    kill -USR1 -- -"$CHILD" 2>/dev/null  # the point script's process group: torchrun passes it on
}}
trap forward_usr1 USR1

setsid bash {points_dir}/"$POINT".sh &
CHILD=$!
status=0
wait "$CHILD" || status=$?
while kill -0 "$CHILD" 2>/dev/null; do
    status=0
    wait "$CHILD" || status=$?
done

if [[ $preempted == 1 || $status == "$EX_TEMPFAIL" ]]; then
    echo "speechbs: requeueing task ${{SLURM_ARRAY_JOB_ID}}_${{SLURM_ARRAY_TASK_ID}} ($POINT)"
    scontrol requeue "${{SLURM_ARRAY_JOB_ID}}_${{SLURM_ARRAY_TASK_ID}}"
    exit 0
fi
exit "$status"
"""


def slurm_array_script(plan: SweepPlan, nproc_per_node: int) -> str:
    """A SLURM job array over the points; the requeue logic follows recipes/launch/slurm.sbatch."""
    return SLURM_TEMPLATE.format(
        name=plan.cfg.sweep.name, num_points=len(plan.points), script=plan.root / "launch" / "sweep.sbatch",
        last_index=len(plan.points) - 1, nproc=nproc_per_node, cpus=8 * nproc_per_node,
        logs=plan.root / "logs", points=" ".join(shlex.quote(p.name) for p in plan.points),
        points_dir=shlex.quote(str(plan.root / "launch" / "points")))
