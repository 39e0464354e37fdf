"""The training loop, shared by pretraining and fine-tuning. Read it top to bottom.

build -> restore -> loop (plan, step, account, log, validate, checkpoint).

What differs between pretraining and fine-tuning (the model, how a
micro-batch becomes a loss sum, validation) comes in a task
(:class:`speechbs.tasks.base.Task`); the batch plan, the step engine,
schedules, checkpoints and accounting are the same code for both. Exit
status 75 (EX_TEMPFAIL) after SIGTERM/SIGUSR1 means "checkpoint saved,
requeue me" (speechbs/train/preempt.py).
"""

from __future__ import annotations

import contextlib
import hashlib
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable

import torch
from torch import nn

from speechbs import seeds
from speechbs.checkpoint import best_score, load_checkpoint, save_best, save_checkpoint
from speechbs.configio import dump_toml
from speechbs.data.batching import BatchPlanner
from speechbs.data.loader import StepData, build_planner, iter_steps
from speechbs.data.manifest import check_for_training, read_manifest
from speechbs.dist import DistContext, stall_for_tests
from speechbs.rundir import prepare_run_dir
from speechbs.tasks.base import Task
from speechbs.train.compile import compile_model, eager
from speechbs.train.grad_noise import GradNoiseProbe, NoiseWindow
from speechbs.train.metrics import MetricsLogger
from speechbs.train.optim import build_optimizer, set_lr
from speechbs.train.preempt import EXIT_REQUEUE, StopFlag, torchrun_signal_warning
from speechbs.train.resume import ResumeOptions, begin, divergence_advice, record
from speechbs.train.schedule import at_lr_minimum, lr_scale, peak_lr
from speechbs.train.step import NonFiniteGuard, precision_context, train_step

if TYPE_CHECKING:
    from speechbs.config import Config

TaskFactory = Callable[["Config", DistContext], Task]
"""Builds the task of a run on this rank (e.g. ``SSLTask``); called after the run directory exists."""


@dataclass
class TrainState:
    step: int = 0
    """Optimizer steps taken."""
    hours_seen: float = 0.0
    """Real audio consumed, h (cropped-away audio does not count)."""
    num_skipped: int = 0
    noise: NoiseWindow = field(default_factory=NoiseWindow)
    """The last gradient-noise measurements behind the logged ``noise_*`` values."""
    marks_kept: list[float] = field(default_factory=list)
    """The ``train.milestone_hours`` marks whose checkpoint has been kept."""


def train(cfg: Config, build_task: TaskFactory, ctx: DistContext,
          resume: ResumeOptions = ResumeOptions(), until_step: int | None = None) -> TrainState:
    """Train ``cfg`` to ``cfg.train.num_steps``, resuming from the run directory if it has a checkpoint.

    ``until_step``: stop (with a checkpoint) after that many steps, on the schedules of the whole run:
    the first steps of the recipe, as ``speechbs advise`` probes them.

    ``resume``: planned changes (``--allow-change``) and restarts (``--restart-from``), see train/resume.py.
    From the first line on, SIGTERM/SIGUSR1 makes it save the step in flight and exit with
    :data:`EXIT_REQUEUE`; the data workers and the signal handlers are closed however it ends.
    """
    with contextlib.ExitStack() as scope:
        return _train(cfg, build_task, ctx, resume, scope, min(until_step or cfg.train.num_steps, cfg.train.num_steps))


def _train(cfg: Config, build_task: TaskFactory, ctx: DistContext, resume: ResumeOptions,
           scope: contextlib.ExitStack, last_step: int) -> TrainState:
    # --- build ------------------------------------------------------------------
    stop = scope.enter_context(StopFlag())  # read by train_step when it packs its all-reduce
    # The manifest and the batch plan are checked before the run directory is written, so a
    # mistake in them leaves no run behind whose config would refuse the corrected command.
    manifest = read_manifest(cfg.data.train_manifest)
    check_for_training(manifest, "data.train_manifest")
    # Compiled: regions compiled in place, micro-batches padded to few lengths (train/compile.py).
    planner = build_planner(manifest, cfg.batch, cfg.audio, cfg.run.seed,
                            num_pad_lengths=cfg.train.compile_num_lengths if cfg.train.compile else 0)
    run_dir = prepare_run_dir(cfg, world_size=ctx.world_size, is_main=ctx.is_main,
                              allow_changes=resume.allow_changes, broadcast=ctx.broadcast_object)
    ckpt_dir = run_dir / "checkpoints"
    task = build_task(cfg, ctx)
    compiled = compile_model(task.model, num_lengths=len(planner.pad_lengths_L),
                             backend=cfg.train.compile_backend) if cfg.train.compile else None
    model = ctx.wrap_model(task.model, find_unused_parameters=task.find_unused_parameters)  # DDP outside compile
    optimizer = build_optimizer(task.model, cfg.optim)
    lr_peak = peak_lr(cfg.optim, planner.schedule.seconds(0, 0.0))  # the first step's; it follows the batch
    state = TrainState(noise=NoiseWindow(cfg.train.grad_noise_window))
    log = MetricsLogger(run_dir, enabled=ctx.is_main, total_steps=last_step,
                        log_every=cfg.train.log_every)
    autocast, grad_scaler = precision_context(ctx.device, cfg.train.precision)

    # --- restore ------------------------------------------------------------------
    start = begin(run_dir, cfg, resume, ctx)  # the latest checkpoint, or a restart's (rank 0 decides for all)
    ckpt = load_checkpoint(start.checkpoint) if start.checkpoint is not None else None
    if ckpt is not None:
        state = _restore(ckpt, task.model, optimizer, planner, grad_scaler, state, marks=cfg.train.milestone_hours)
        log.message(f"resumed from {start.checkpoint} at step {state.step} ({state.hours_seen:.3f} h seen)")
    if ctx.is_main:
        record(run_dir, cfg, start, ckpt, state.step, log)  # resumes.jsonl and a "resume" row in metrics.jsonl
    del ckpt
    if state.step >= last_step:
        log.message(f"run {run_dir} is already complete ({state.step} steps)")
        log.close()
        return state
    log.message(f"training {run_dir}: batch {_describe_batch(cfg)}, peak LR "
                f"{lr_peak:.3g} ({cfg.optim.lr_rule} rule), {ctx.world_size} process(es)")
    if compiled is not None:
        log.message(f"torch.compile ({cfg.train.compile_backend}): {len(compiled.names)} regions, micro-batches "
                    f"padded to {len(planner.pad_lengths_L)} lengths; the first steps compile")
    if warning := torchrun_signal_warning():
        log.message(warning)

    guard = NonFiniteGuard(cfg.train.max_nonfinite_in_row,  # rank 0 names the checkpoint and command to restart
                           advice=(lambda first: divergence_advice(run_dir, cfg, resume, first)) if ctx.is_main else None)
    pending_marks = sorted(h for h in cfg.train.milestone_hours if h not in state.marks_kept)
    every = cfg.train.grad_noise_every

    def measures(step: int) -> bool:
        """Whether optimizer step ``step`` (0-based) measures gradient noise."""
        return bool(every) and (step + 1) % every == 0

    def open_steps(first_step: int) -> Any:
        """The step stream from the planner's position (again after an adaptive decision changed the batch:
        the loader plans ahead). A measuring step needs two micro-batch gradients: it gets at least two in all."""
        return scope.enter_context(contextlib.closing(iter_steps(  # closing it stops the workers
            planner, manifest, cfg.audio, rank=ctx.rank, world_size=ctx.world_size, num_workers=cfg.data.num_workers,
            targets=task.targets, partners=task.partners, pin_memory=ctx.device.type == "cuda",
            min_micro_batches=lambda i: 2 if measures(first_step + i) else 1)))

    steps = open_steps(state.step)
    tick = time.monotonic()

    # --- loop ---------------------------------------------------------------------
    while state.step < last_step:
        data = next(steps)
        # The peak LR follows the batch the schedule set for this step through the LR rule.
        lr = peak_lr(cfg.optim, data.batch.target_s) * lr_scale(state.step, cfg.schedule, cfg.train.num_steps)
        set_lr(optimizer, lr)
        # Dropout and other global-RNG draws come from (seed, step, rank): a resume at step k
        # draws what an uninterrupted run draws, with no RNG state to carry across world sizes.
        ctx.seed_everything(seeds.step_seed(cfg.run.seed, state.step), same_on_all_ranks=False)
        probe = GradNoiseProbe(task.model) if measures(state.step) else None
        stall_for_tests(ctx.rank, state.step + 1)  # SPEECHBS_TEST_STALL only (tests/test_multinode.py)
        with ctx.collective(f"step {state.step + 1}"):  # a stalled peer ends the job with rank, step, operation
            report = train_step(model, optimizer, data.micro_batches,
                                lambda m, mb, k=state.step, **kw: task.forward(m, mb, step=k, **kw), ctx,
                                clip_norm=cfg.optim.clip_norm or None, autocast=autocast, grad_scaler=grad_scaler,
                                grad_noise=probe, stop_requested=stop,
                                prepare=lambda m, mbs, k=state.step: task.prepare(m, mbs, step=k))
        state.step += 1
        state.hours_seen += data.stats.real_s / 3600
        state.num_skipped += 0 if report.updated else 1
        guard.update(report, state.step)  # raises after too many non-finite steps in a row

        now = time.monotonic()
        seconds_per_step, tick = now - tick, now
        noise_logs = {}
        if report.grad_noise is not None and report.num_targets > 0:
            noise_logs = state.noise.update(report.grad_noise, data.stats.real_s / report.num_targets,
                                            batch_s=data.stats.real_s)
        log.log_step(state.step, {
            **task.metrics(report), "lr": lr, **task.step_logs(state.step), **_batch_logs(data),
            **({"num_compiled_graphs": compiled.num_graphs()} if compiled is not None else {}),
            "hours_seen": state.hours_seen, "num_skipped": state.num_skipped,
            "audio_s_per_s": data.stats.real_s / seconds_per_step / ctx.world_size,
            "step_s": seconds_per_step, **noise_logs, **_memory(ctx)})

        if planner.schedule.is_decision_step(state.step) and state.step < last_step:
            if _decide_batch(planner, state, ctx, log, cfg.batch.adaptive.factor):
                steps.close()  # its lookahead was planned at the old batch
                steps = open_steps(state.step)

        if task.has_validation and cfg.train.valid_every and state.step % cfg.train.valid_every == 0:
            # Training's precision; eager: validation's whole utterances would be new shapes to compile.
            with ctx.collective(f"validation after step {state.step}"), \
                    autocast() if autocast is not None else contextlib.nullcontext(), eager():
                scores = task.validate(task.model, state.step)
            log.log_step(state.step, scores, kind="valid")
            # Rank 0 reads the recorded best and decides for all: another node may see an older
            # index.json (or none), and ranks that disagreed would wait at different barriers.
            improves = bool(task.best_metric) and ctx.broadcast_object(
                _improves(task, scores, best_score(ckpt_dir)) if ctx.is_main else None)
            if improves:
                if ctx.is_main:
                    save_best(ckpt_dir, state.step,
                              _state_dict(cfg, task.model, optimizer, planner, state, grad_scaler),
                              metric=task.best_metric, value=scores[task.best_metric])
                    log.message(f"new best {task.best_metric} {scores[task.best_metric]:.4g} at step {state.step}")
                ctx.barrier()

        # An hours mark is kept at the first step that reaches it, or with a cyclic
        # schedule at the first LR minimum after that (schedule.at_lr_minimum).
        reached = [h for h in pending_marks if state.hours_seen >= h]
        milestone = bool(reached) and at_lr_minimum(state.step, cfg.schedule, cfg.train.num_steps)
        if milestone:
            state.marks_kept += reached
            pending_marks = pending_marks[len(reached):]
        milestone |= state.step in cfg.train.milestone_steps
        stopping = report.stop_requested  # agreed by every rank inside the step's one all-reduce
        # No rolling checkpoint while steps are skipped: it would hold the weights that gave NaN and
        # prune one from before, which a restart needs (resume.divergence_advice).
        if (milestone or stopping or state.step == last_step
                or (state.step % max(cfg.train.checkpoint_every, 1) == 0 and not guard.num_in_a_row)):
            if ctx.is_main:
                save_checkpoint(ckpt_dir, state.step,
                                _state_dict(cfg, task.model, optimizer, planner, state, grad_scaler),
                                keep_last=cfg.train.keep_last, milestone=milestone)
            with ctx.collective(f"the barrier after rank 0 saved the checkpoint of step {state.step}"):
                ctx.barrier()
        if stopping:
            log.message(f"stopped by {stop.name or 'a signal to another rank'} at step {state.step}; "
                        f"checkpoint saved, exit {EXIT_REQUEUE} to requeue")
            log.close()
            raise SystemExit(EXIT_REQUEUE)

    log.message(f"done: {state.step} steps, {state.hours_seen:.3f} h of audio seen")
    log.close()
    return state


def _decide_batch(planner: BatchPlanner, state: TrainState, ctx: DistContext, log: MetricsLogger,
                  factor: float) -> bool:
    """An adaptive decision after ``state.step`` steps, recorded in the planner and logged; True when it
    changed the batch. Rank 0 decides for all from the noise window (the same on every rank: its sums
    are all-reduced), so every rank records the same decision."""
    schedule = planner.schedule
    decision = ctx.broadcast_object(schedule.decide(state.step, state.noise.b_simple_s) if ctx.is_main else None)
    before = schedule.num_units(state.step, planner.hours_planned)
    schedule.record(decision)
    log.event(state.step, "batch_decision", {
        "b_simple_s": decision.b_simple_s, "wanted_s": decision.wanted_s,
        "batch_target_s": decision.num_units * planner.unit_s, "previous_batch_target_s": before * planner.unit_s})
    if decision.num_units == before:
        return False
    log.message(f"batch {before * planner.unit_s:g} s -> {decision.num_units * planner.unit_s:g} s from step "
                f"{state.step + 1} (B_simple {decision.b_simple_s:.3g} s x {factor:g}, clamped and rounded)")
    return True


def _describe_batch(cfg: Config) -> str:
    """The batch schedule in one phrase, for the log."""
    batch = cfg.batch
    if batch.schedule == "ramp":
        span = f"{batch.ramp.steps} steps" if batch.ramp.steps else f"{batch.ramp.hours:g} h of audio"
        return (f"ramp ({batch.ramp.shape}) from {batch.ramp.start_seconds:g} s to {batch.seconds:g} s of audio "
                f"per step over {span}")
    if batch.schedule == "adaptive":
        return (f"adaptive from {batch.seconds:g} s of audio per step, set every {batch.adaptive.every_steps} "
                f"steps to {batch.adaptive.factor:g} x B_simple within [{batch.adaptive_min_seconds:g}, "
                f"{batch.adaptive.max_seconds:g}] s")
    return f"{batch.seconds:g} s of audio per step"


def _batch_logs(data: StepData) -> dict[str, Any]:
    """Accounting for one global step, plus a fingerprint of which audio it held.

    The fingerprint hashes the (utterance, offset, length) triples of the global
    batch: two runs with the same recipe log the same fingerprints whatever
    their number of processes, which is how world-size invariance is checked.
    """
    stats = data.stats
    segments = sorted((s.index, s.offset_samples, s.num_samples) for s in data.batch.segments)
    digest = hashlib.sha1(repr(segments).encode()).hexdigest()[:12]
    return {
        "epoch": data.batch.epoch, "batch_s": stats.real_s, "batch_target_s": data.batch.target_s,
        "batch_units": data.batch.num_units, "padded_s": stats.padded_s,
        "packing": stats.packing_efficiency, "max_device_padded_s": stats.max_device_padded_s, "cropped_s": stats.cropped_s,
        "num_utterances": stats.num_utterances, "num_micro_batches": stats.num_micro_batches,
        "num_empty_micro_batches": stats.num_empty_micro_batches, "batch_fingerprint": digest,
    }


def _improves(task: Task, scores: dict[str, float], best: dict[str, Any] | None) -> bool:
    """Whether ``scores`` beats the recorded best (the same decision on every rank: scores are reduced)."""
    value = scores.get(task.best_metric)
    if value is None:
        raise KeyError(f"validation returned {sorted(scores)}, not the selection metric {task.best_metric!r}")
    if value != value:  # NaN never wins
        return False
    if best is None:
        return True
    return value < best["value"] if task.best_mode == "min" else value > best["value"]


def _state_dict(cfg: Config, model: nn.Module, optimizer: torch.optim.Optimizer, planner: BatchPlanner,
                state: TrainState, grad_scaler: torch.amp.GradScaler | None) -> dict:
    # No RNG state: every step reseeds from (seed, step, rank), and masks, distractors and
    # Gumbel noise are keyed by per-utterance seeds, so the step number is all a resume needs.
    return {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "planner": planner.state_dict(),
        "step": state.step,
        "hours_seen": state.hours_seen,
        "num_skipped": state.num_skipped,
        "grad_noise": state.noise.state_dict(),
        "milestone_marks_kept": list(state.marks_kept),
        # fp16 only: the loss scale it has settled on (bf16 and fp32 need none).
        "grad_scaler": grad_scaler.state_dict() if grad_scaler is not None else {},
        "config_toml": dump_toml(cfg),
    }


def _restore(ckpt: dict, model: nn.Module, optimizer: torch.optim.Optimizer, planner: BatchPlanner,
             grad_scaler: torch.amp.GradScaler | None, fresh: TrainState | None = None,
             marks: list[float] = ()) -> TrainState:
    model.load_state_dict(ckpt["model"])
    # The moments come from the checkpoint, the settings from the config (a planned change, e.g. of
    # optim.weight_decay, takes effect; the LR is set before every step anyway).
    settings = [{key: value for key, value in group.items() if key != "params"} for group in optimizer.param_groups]
    optimizer.load_state_dict(ckpt["optimizer"])
    for group, kept in zip(optimizer.param_groups, settings):
        group.update(kept)
    planner.load_state_dict(ckpt["planner"])
    if "step" not in ckpt["planner"]:  # written before batch schedules (a constant batch): the run's own count
        planner.step = int(ckpt["step"])
        planner.real_samples_planned = round(float(ckpt["hours_seen"]) * 3600 * planner.sample_rate_hz)
    if grad_scaler is not None and ckpt.get("grad_scaler"):
        grad_scaler.load_state_dict(ckpt["grad_scaler"])
    state = TrainState(step=int(ckpt["step"]), hours_seen=float(ckpt["hours_seen"]),
                       num_skipped=int(ckpt["num_skipped"]), noise=fresh.noise if fresh else NoiseWindow())
    if "grad_noise" in ckpt:
        state.noise.load_state_dict(ckpt["grad_noise"])
    if "milestone_marks_kept" in ckpt:
        state.marks_kept = [float(h) for h in ckpt["milestone_marks_kept"]]
    else:  # written before marks were recorded: each mark was kept at the step that reached it
        state.marks_kept = [h for h in marks if h <= state.hours_seen]
    return state


def _memory(ctx: DistContext) -> dict[str, float]:
    if ctx.device.type != "cuda":
        return {}
    peak_gib = torch.cuda.max_memory_allocated(ctx.device) / 2**30
    torch.cuda.reset_peak_memory_stats(ctx.device)
    return {"peak_memory_gib": peak_gib}
