"""Running a sweep's stages here and now, and the ``sweep.json`` status file.

Each point's stages run in order; a stage whose output is already complete is
skipped (this is how a killed sweep resumes), a failed stage blocks the stages
that read its output but not the other points, and ``sweep.json`` at the sweep
root is rewritten after every stage so it always says where the sweep stands.
Stage commands run as subprocesses (``python -m speechbs ...``, or
``torchrun ... -m speechbs ...`` for training stages with ``nproc_per_node``);
tests substitute a :class:`StageRunner` of their own.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Protocol

from speechbs.atomic import write_text
from speechbs.sweep.plan import Point, SweepPlan
from speechbs.sweep.stages import Stage, is_done, point_stages
from speechbs.train.preempt import EXIT_REQUEUE, TORCHRUN_SIGNALS


class StageRunner(Protocol):
    def available(self, kind: str) -> bool:
        """Whether this installation can run stages of this kind."""

    def __call__(self, stage: Stage, log_path: Path) -> int:
        """Run the stage, writing its console output to ``log_path``; return its exit status."""


@dataclass
class SubprocessRunner:
    """Runs ``speechbs <argv>`` in a child process (the same Python), output to the stage's log."""

    nproc_per_node: int = 0
    """> 0: pretraining and fine-tuning run under ``torchrun --standalone --nproc-per-node N``."""
    prefixes: dict[str, list[str]] = field(default_factory=dict)
    """Stage kind -> command prefix replacing ``python -m speechbs`` (e.g. a stub for tests)."""

    def available(self, kind: str) -> bool:
        if kind in self.prefixes:
            return True
        from speechbs.cli import COMMANDS

        return kind in COMMANDS

    def command(self, stage: Stage) -> list[str]:
        if stage.kind in self.prefixes:
            return [*self.prefixes[stage.kind], *stage.argv]
        if self.nproc_per_node > 0 and stage.kind in ("pretrain", "finetune"):
            # As the launch scripts: torchrun passes SIGUSR1 on to the ranks only when it is listed.
            return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--signals-to-handle",
                    TORCHRUN_SIGNALS, "--nproc-per-node", str(self.nproc_per_node), "-m", "speechbs", *stage.argv]
        return [sys.executable, "-m", "speechbs", *stage.argv]

    def __call__(self, stage: Stage, log_path: Path) -> int:
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(log_path, "a", encoding="utf-8") as log:
            log.write(f"$ {' '.join(self.command(stage))}\n")
            log.flush()
            child = subprocess.Popen(self.command(stage), stdout=log, stderr=subprocess.STDOUT)
            try:
                return child.wait()
            except BaseException:
                # Interrupted (Ctrl-C, or SIGTERM via stop_on_sigterm): a training stage saves a
                # checkpoint on SIGTERM and exits 75, so the next sweep resumes it.
                child.terminate()
                child.wait()
                raise


def stop_on_sigterm() -> None:
    """Turn SIGTERM into SystemExit, so the running stage is stopped cleanly, not orphaned."""
    def handler(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, handler)


@dataclass
class StageResult:
    status: str
    """``done`` (complete before this run), ``ran`` (completed now), ``failed``, ``blocked``
    (an earlier stage it needs is not complete), ``unavailable`` (this install lacks the command),
    ``pending`` (not run: a dry run)."""
    seconds: float = 0.0
    note: str = ""


class SweepStatus:
    """The content of ``<root>/sweep.json``: every point's planned numbers and stage states."""

    def __init__(self, plan: SweepPlan) -> None:
        self.plan = plan
        self.results: dict[str, dict[str, tuple[Stage, StageResult]]] = {p.name: {} for p in plan.points}

    def record(self, stage: Stage, result: StageResult) -> None:
        self.results[stage.point][stage.key] = (stage, result)

    def counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for stages in self.results.values():
            for _stage, result in stages.values():
                counts[result.status] = counts.get(result.status, 0) + 1
        return counts

    def to_json(self) -> dict:
        plan = self.plan
        return {
            "sweep": plan.cfg.sweep.name, "recipe": str(plan.recipe_path), "overrides": plan.overrides,
            "budget": plan.cfg.sweep.budget, "updated": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "counts": self.counts(),
            "points": [_point_json(plan, p, self.results[p.name]) for p in plan.points],
        }

    def write(self) -> Path:
        self.plan.root.mkdir(parents=True, exist_ok=True)
        return write_text(self.plan.root / "sweep.json", json.dumps(self.to_json(), indent=1) + "\n")


def _point_json(plan: SweepPlan, point: Point, stages: dict[str, tuple[Stage, StageResult]]) -> dict:
    return {
        "name": point.name, "dir": str(plan.point_dir(point)), "batch_s": point.batch_s,
        "num_steps": point.num_steps, "peak_lr": point.peak_lr, "config_hash": point.config_hash,
        "axes": point.axes,
        "stages": [{"key": s.key, "kind": s.kind, "status": r.status, "seconds": round(r.seconds, 2),
                    "note": r.note, "out": str(s.out_dir), "argv": s.argv, "info": s.info}
                   for s, r in stages.values()],
    }


def log_path(plan: SweepPlan, stage: Stage) -> Path:
    return plan.root / "logs" / stage.point / (stage.key.replace("/", "__") + ".log")


def run_point(plan: SweepPlan, point: Point, runner: StageRunner, status: SweepStatus,
              say: Callable[[str], None] = print) -> None:
    """Run the point's missing stages in order; stop at nothing but the end of what can run."""
    settled: set[str] = set()  # keys decided in this call (done, ran, failed, blocked, unavailable)
    complete: set[str] = set()
    while True:
        ran_one = False
        for stage in point_stages(plan, point):  # re-listed after each run: milestones appear
            if stage.key in settled:
                continue
            if is_done(stage):
                settled.add(stage.key)
                complete.add(stage.key)
                if stage.key not in status.results[point.name]:
                    status.record(stage, StageResult("done"))
                continue
            settled.add(stage.key)
            if stage.needs and stage.needs not in complete:
                status.record(stage, StageResult("blocked", note=f"needs {stage.needs}"))
                continue
            if not runner.available(stage.kind):
                status.record(stage, StageResult("unavailable", note=f"`speechbs {stage.kind}` is not in this install"))
                continue
            result = _run_one(plan, stage, runner, say)
            status.record(stage, result)
            status.write()
            if result.status == "ran":
                complete.add(stage.key)
            ran_one = True
            break
        if not ran_one:
            return


def _run_one(plan: SweepPlan, stage: Stage, runner: StageRunner, say: Callable[[str], None]) -> StageResult:
    log = log_path(plan, stage)
    say(f"  {stage.point} {stage.key}: running (log: {log})")
    start = time.monotonic()
    code = runner(stage, log)
    seconds = time.monotonic() - start
    if code == 0 and is_done(stage):
        say(f"  {stage.point} {stage.key}: done in {seconds:.1f} s")
        return StageResult("ran", seconds)
    if code == EXIT_REQUEUE:
        note = "preempted (exit 75): checkpoint saved; run the sweep again to resume"
    elif code == 0:
        note = f"exited 0 but its output in {stage.out_dir} is incomplete"
    else:
        note = f"exited with status {code}"
    say(f"  {stage.point} {stage.key}: FAILED ({note}); last lines of {log}:")
    for line in _tail(log, 15):
        say(f"    | {line}")
    return StageResult("failed", seconds, note)


def _tail(path: Path, num_lines: int) -> list[str]:
    if not path.is_file():
        return []
    return path.read_text(encoding="utf-8", errors="replace").splitlines()[-num_lines:]


def run_sweep(plan: SweepPlan, runner: StageRunner | None = None, *, points: list[str] | None = None,
              say: Callable[[str], None] = print) -> SweepStatus:
    """Run every missing stage of every point (or of ``points``), rewriting sweep.json as it goes."""
    runner = runner or SubprocessRunner()
    status = SweepStatus(plan)
    for point in plan.points:
        if points and point.name not in points:
            continue
        say(f"point {point.name}: batch {point.batch_s:g} s, {point.num_steps} steps, peak LR {point.peak_lr:.3g}")
        run_point(plan, point, runner, status, say)
        status.write()
    status.write()
    return status


def dry_run(plan: SweepPlan) -> SweepStatus:
    """What a run would do now: every known stage as ``done`` or ``pending``; nothing is written."""
    status = SweepStatus(plan)
    for point in plan.points:
        for stage in point_stages(plan, point):
            status.record(stage, StageResult("done" if is_done(stage) else "pending"))
    return status
