"""One optimizer step over a list of micro-batches: the single accumulation path.

Pretraining and CTC fine-tuning both call :func:`train_step`; there is no second
copy of accumulation or loss normalization (the torchtune #2307 lesson).
Legend: N = targets in the whole global batch (all micro-batches, all ranks),
W = world size. All tensors here are scalars or per-parameter gradients.

The contract (DESIGN.md 2): a micro-batch forward returns a loss SUM over its
targets and their number. The gradients of all micro-batches on all ranks are
summed and divided once by the global N, so the update is the gradient of the
mean loss over the global batch whatever the partition into ranks and
micro-batches (fairseq ``trainer.py``: ``multiply_grads(numer / sample_size)``).
Dividing each micro-batch by its own count (mean-of-means) weights short
utterances up and is only right for equal-length batches; it is not offered.
"""

from __future__ import annotations

import contextlib
import functools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, ContextManager

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from speechbs.dist import DistContext
from speechbs.train.grad_noise import GradNoiseProbe, GradNoiseStats
from speechbs.errors import SpeechbsError


@dataclass
class StepOutput:
    """What one micro-batch forward returns to the step engine."""

    loss_sum: torch.Tensor
    """Scalar: the loss summed over this micro-batch's targets (not averaged)."""
    num_targets: torch.Tensor
    """Scalar: masked frames (SSL), or tokens or utterances (CTC) in this micro-batch."""
    logs: dict[str, torch.Tensor]
    """Scalars that are SUMS over the micro-batch, e.g. ``real_s``, ``num_correct``.
    The same keys for every micro-batch on every rank (they are packed into one all-reduce), none of
    them one of :data:`STEP_SUMS`."""


STEP_SUMS = ("num_targets", "num_nonfinite", "loss_sum", "num_stop")
"""The engine's own sums, reduced in the same all-reduce as the forwards' logs (so no log may take these names):
targets, micro-batches whose loss was NaN or inf, the loss, ranks asked to stop."""

ForwardFn = Callable[[nn.Module, Any], StepOutput]
PrepareFn = Callable[[nn.Module, Sequence[Any]], Any]
"""prepare(model, micro_batches) -> step-wide inputs, handed to every forward as ``prepared=...``."""
AutocastFactory = Callable[[], ContextManager[Any]]


@dataclass(frozen=True)
class StepReport:
    """What happened in one optimizer step, reduced over all ranks (equal on every rank)."""

    loss: float
    """Global mean loss per target: sum of loss_sum / num_targets; NaN when there were no targets."""
    num_targets: float
    """Targets in the global batch (all micro-batches, all ranks)."""
    log_sums: dict[str, float]
    """Each log summed over the global batch."""
    log_means: dict[str, float]
    """Each log divided by ``num_targets`` (NaN when there were no targets)."""
    grad_norm: float
    """Total L2 norm of the normalized gradient before clipping; NaN when not computed."""
    skipped_nonfinite: bool
    """The update was skipped on every rank because a loss or gradient was NaN/inf."""
    skipped_empty: bool
    """The update was skipped because the global batch had no targets (all padding)."""
    num_micro_batches: int
    """Micro-batches this rank ran (the same on every rank)."""
    nonfinite_in: str = ""
    """``loss`` or ``grad`` when ``skipped_nonfinite``; empty otherwise."""
    stop_requested: bool = False
    """Some rank's ``stop_requested`` was true when the all-reduce was packed (e.g. it got SIGUSR1): all
    ranks stop after this step."""
    grad_noise: GradNoiseStats | None = None
    """The gradient-noise estimate, on steps that measured it (``train_step(..., grad_noise=probe)``)."""

    @property
    def updated(self) -> bool:
        """True when the optimizer changed the parameters (or the grad scaler let it)."""
        return not (self.skipped_nonfinite or self.skipped_empty)


class TrainingDivergedError(SpeechbsError):
    """Too many optimizer steps in a row had a non-finite loss or gradient."""


class NonFiniteGuard:
    """Counts updates skipped for NaN/inf in a row; raises after ``max_in_a_row`` of them.

    One skipped step is a glitch (a bad batch); many in a row mean the run has
    diverged, and going on would only burn compute (DESIGN.md 8). With fp16 and a
    grad scaler the first steps may overflow while the scale calibrates; keep
    ``max_in_a_row`` above ~20 there.
    """

    def __init__(self, max_in_a_row: int, advice: Callable[[int], str] | None = None) -> None:
        if max_in_a_row < 1:
            raise SpeechbsError(f"max non-finite steps in a row must be >= 1, got {max_in_a_row}")
        self.max_in_a_row = max_in_a_row
        self.advice = advice
        """advice(first_bad_step) -> what to do, ending the error (the loop names the checkpoint and command)."""
        self.num_in_a_row = 0
        self.num_total = 0
        self.first_bad_step = 0
        """The first step of the current run of skipped steps: its forward ran on the last weights that
        were updated, so those weights (and any checkpoint saved since) already give NaN or inf."""

    def update(self, report: StepReport, step: int) -> None:
        """Record optimizer step ``step``; raise :class:`TrainingDivergedError` when it is one too many."""
        if report.skipped_nonfinite:
            self.num_in_a_row += 1
            self.num_total += 1
            if self.num_in_a_row == 1:
                self.first_bad_step = step
        elif report.updated:
            self.num_in_a_row = 0
        if self.num_in_a_row >= self.max_in_a_row:
            advice = (self.advice(self.first_bad_step) if self.advice is not None else
                      "lower the learning rate, lengthen the warmup, set gradient clipping, or use bf16 instead "
                      "of fp16; then restart from a checkpoint saved before the first skipped step")
            raise TrainingDivergedError(
                f"the {report.nonfinite_in or 'loss'} was NaN or inf in {self.num_in_a_row} optimizer steps "
                f"in a row (steps {self.first_bad_step}-{step}; {self.num_total} skipped in all). The run has "
                f"diverged: {advice}")


def train_step(model: nn.Module, optimizer: torch.optim.Optimizer, micro_batches: Sequence[Any],
               forward: ForwardFn, ctx: DistContext, *, clip_norm: float | None = None,
               autocast: AutocastFactory | None = None, grad_scaler: torch.amp.GradScaler | None = None,
               grad_noise: GradNoiseProbe | None = None, stop_requested: bool | Callable[[], bool] = False,
               prepare: PrepareFn | None = None) -> StepReport:
    """Accumulate gradients over ``micro_batches``, normalize by the global target count, clip, step.

    ``model`` is DDP-wrapped when ``ctx.world_size > 1`` (:meth:`DistContext.wrap_model`).
    ``forward(model, micro_batch)`` returns a :class:`StepOutput`; for a placeholder
    micro-batch (``micro_batch.is_empty``) it must still run the model, whose outputs
    are then multiplied by zero so every rank joins every gradient all-reduce.
    ``autocast`` is a factory of the precision context (e.g. bf16 on GPU), entered
    around each forward. The learning rate is set by the caller before this call.
    ``stop_requested`` rides along in the step's all-reduce, so a preemption signal
    that reached the ranks at different moments still stops them all after the same step.
    A callable (the loop's :class:`~speechbs.train.preempt.StopFlag`) is read when the
    all-reduce is packed, after the last backward: a signal that came while this step
    computed stops the run after this step, not the next.
    With ``grad_noise`` the step also measures gradient noise (``speechbs.train.grad_noise``):
    every micro-batch then runs without DDP's sync and the gradients are all-reduced once at
    the end, so each micro-batch's own gradient is visible; the update is the same.
    ``prepare`` computes what a loss term needs from the WHOLE global batch before any
    micro-batch runs (wav2vec 2.0's code usage for its diversity term: DESIGN.md 2); it runs
    once, under ``autocast``, on every rank (it may all-reduce), and its result reaches each
    forward as ``forward(model, micro_batch, prepared=result)``.
    """
    if ctx.world_size > 1 and not isinstance(model, DistributedDataParallel):
        raise RuntimeError("train_step with world_size > 1 needs the DDP-wrapped model (ctx.wrap_model)")
    assert len(micro_batches) > 0, "the batch plan gives every rank at least one micro-batch"
    optimizer.zero_grad(set_to_none=True)
    if prepare is not None:
        with ctx.collective("the pre-pass over the global batch"), \
                autocast() if autocast is not None else contextlib.nullcontext():
            prepared = prepare(model, micro_batches)
        forward = functools.partial(forward, prepared=prepared)
    with ctx.collective("the gradient all-reduce of the micro-batches' backward"):
        step_sums, logs = _accumulate(model, micro_batches, forward, ctx, autocast, grad_scaler, grad_noise)
    step_sums["num_stop"] = float(stop_requested() if callable(stop_requested) else stop_requested)
    with ctx.collective("the all-reduce of the step's target count and loss sums"):
        totals = ctx.all_reduce_sums({**step_sums, **logs})  # the one host sync so far
    num_targets, num_nonfinite, loss_sum, num_stop = [totals.pop(key) for key in STEP_SUMS]
    noise_stats = None
    if grad_noise is not None and num_nonfinite == 0:
        summed = [_grad_or_zeros(p) * ctx.world_size for p in grad_noise.params]  # DDP-style mean -> sum
        noise_stats = grad_noise.finish(summed, num_targets, _scale(grad_scaler))
    log_sums = totals  # what is left: each log of the forwards, summed over the global batch
    denominator = num_targets if num_targets > 0 else math.nan
    report = functools.partial(
        StepReport, loss=loss_sum / denominator, num_targets=num_targets, log_sums=log_sums,
        log_means={key: value / denominator for key, value in log_sums.items()},
        num_micro_batches=len(micro_batches), stop_requested=num_stop > 0, grad_noise=noise_stats)
    if num_nonfinite > 0 or num_targets == 0:
        optimizer.zero_grad(set_to_none=True)  # leave no NaN gradients behind for a reader
        return report(grad_norm=math.nan, skipped_nonfinite=num_nonfinite > 0, skipped_empty=num_nonfinite == 0,
                      nonfinite_in="loss" if num_nonfinite > 0 else "")
    # DDP averaged over ranks (a factor 1/W); undo it and divide by the global count.
    grad_norm = _normalize_and_clip(model, optimizer, ctx.world_size / num_targets, clip_norm, grad_scaler)
    finite = math.isfinite(grad_norm)
    if grad_scaler is not None:
        grad_scaler.step(optimizer)  # skips the update itself when unscale_ found inf
        grad_scaler.update()
    elif finite:
        optimizer.step()
    if not finite:
        optimizer.zero_grad(set_to_none=True)
    return report(grad_norm=grad_norm, skipped_nonfinite=not finite, skipped_empty=False,
                  nonfinite_in="" if finite else "grad")


def _accumulate(model: nn.Module, micro_batches: Sequence[Any], forward: ForwardFn, ctx: DistContext,
                autocast: AutocastFactory | None, grad_scaler: torch.amp.GradScaler | None,
                grad_noise: GradNoiseProbe | None) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Forward and backward every micro-batch; return this rank's sums: the engine's own
    (``num_targets``, ``num_nonfinite``, ``loss_sum``) and the forwards' logs, by name in sorted order.

    Sums stay on the device as tensors: no host sync inside the loop (DESIGN.md 7).
    """
    totals = torch.zeros(3, dtype=torch.float64, device=ctx.device)
    log_sums: dict[str, torch.Tensor] = {}
    last = len(micro_batches) - 1
    for index, micro_batch in enumerate(micro_batches):
        # Gradients are all-reduced only in the last backward (nanoGPT's no_sync trick);
        # a noise-measuring step keeps every backward local and all-reduces once below.
        with ctx.no_sync(model, enabled=index < last or grad_noise is not None):
            with autocast() if autocast is not None else contextlib.nullcontext():
                out = forward(model, micro_batch)
            if getattr(micro_batch, "is_empty", False):
                out = _times_zero(out)
            if not out.loss_sum.requires_grad:
                raise RuntimeError("forward returned a loss_sum without a graph; it must run the model on "
                                   "every micro-batch (also a placeholder) so that DDP sees every parameter")
            loss_sum = out.loss_sum.detach()
            parts = (torch.as_tensor(out.num_targets).detach(), ~torch.isfinite(loss_sum), loss_sum)
            totals[:3] += torch.stack([part.to(device=ctx.device, dtype=torch.float64) for part in parts])
            (grad_scaler.scale(out.loss_sum) if grad_scaler is not None else out.loss_sum).backward()
        if index > 0 and out.logs.keys() != log_sums.keys():
            raise RuntimeError(f"micro-batch {index} logs {sorted(out.logs)}, the first {sorted(log_sums)}; "
                               f"every micro-batch must return the same log keys")
        if clash := sorted(out.logs.keys() & set(STEP_SUMS)):
            raise RuntimeError(f"forward logs {clash}: those names are the step engine's own sums; rename them")
        for key, value in out.logs.items():
            value = value.detach().to(device=ctx.device, dtype=torch.float64)
            log_sums[key] = log_sums[key] + value if key in log_sums else value
        if grad_noise is not None:
            grad_noise.after_backward(parts[0], _scale(grad_scaler))
    if grad_noise is not None:
        _all_reduce_mean_grads(grad_noise.params, ctx)
        grad_noise.reduce(ctx.all_reduce_sum)
    return dict(zip(STEP_SUMS[:3], totals[:3])), {key: log_sums[key] for key in sorted(log_sums)}


def _scale(grad_scaler: torch.amp.GradScaler | None) -> float:
    return float(grad_scaler.get_scale()) if grad_scaler is not None else 1.0


def _grad_or_zeros(p: torch.Tensor) -> torch.Tensor:
    return p.grad if p.grad is not None else torch.zeros_like(p)


def _all_reduce_mean_grads(params: list[torch.Tensor], ctx: DistContext) -> None:
    """What DDP's synced backward does (mean over ranks), done by hand after unsynced backwards.

    A parameter that no rank gave a gradient (a dropped layer, a frozen encoder) keeps
    ``grad = None``, as it does in one process: AdamW would move a zero gradient's parameter
    by its momentum and weight decay, and the update would then depend on the world size.
    """
    if ctx.world_size == 1:
        return
    has_grad = torch.tensor([p.grad is not None for p in params], dtype=torch.float32, device=ctx.device)
    ctx.all_reduce_sum(has_grad)
    params = [p for p, count in zip(params, has_grad.tolist()) if count > 0]
    if not params:
        return
    grads = [_grad_or_zeros(p) for p in params]
    flat = torch.cat([g.flatten() for g in grads])
    ctx.all_reduce_sum(flat)
    flat /= ctx.world_size
    offset = 0
    for p, g in zip(params, grads):
        p.grad = flat[offset: offset + g.numel()].view_as(g).clone()
        offset += g.numel()


def _times_zero(out: StepOutput) -> StepOutput:
    """A placeholder's output times zero: no contribution, but the full graph for DDP."""
    return StepOutput(loss_sum=out.loss_sum * 0, num_targets=torch.as_tensor(out.num_targets) * 0,
                      logs={key: value * 0 for key, value in out.logs.items()})


def _normalize_and_clip(model: nn.Module, optimizer: torch.optim.Optimizer, factor: float,
                        clip_norm: float | None, grad_scaler: torch.amp.GradScaler | None) -> float:
    """Scale the summed gradients by ``factor``, clip them, and return the norm before clipping."""
    if grad_scaler is not None:
        grad_scaler.unscale_(optimizer)  # records inf/NaN per device for grad_scaler.step
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    if grads:
        torch._foreach_mul_(grads, factor)
    params = [p for p in model.parameters() if p.grad is not None]
    max_norm = clip_norm if clip_norm is not None else math.inf
    # Identical on every rank: the gradients were all-reduced, so every rank skips or steps alike.
    return float(torch.nn.utils.clip_grad_norm_(params, max_norm))


FP16_INIT_SCALE = 128.0
"""First loss scale of fp16 training (fairseq's ``fp16_init_scale``); the scaler grows it from there."""


def precision_context(device: torch.device, precision: str) -> tuple[AutocastFactory | None,
                                                                      torch.amp.GradScaler | None]:
    """The autocast factory and grad scaler for ``precision`` (``auto``, ``fp32``, ``bf16`` or ``fp16``).

    ``auto`` is bf16 on a CUDA device that supports it and fp32 otherwise. bf16 needs no scaler (same exponent range as fp32); fp16 does, to keep small
    gradients from flushing to zero (Micikevicius et al. 2018, "Mixed precision training").
    """
    if precision == "auto":
        precision = "bf16" if device.type == "cuda" and torch.cuda.is_bf16_supported() else "fp32"
    if precision == "fp32":
        return None, None
    if precision not in ("bf16", "fp16"):
        raise SpeechbsError(f"precision {precision!r}: use 'auto', 'fp32', 'bf16' or 'fp16'")
    if precision == "fp16" and device.type != "cuda":
        raise SpeechbsError("precision 'fp16' needs a CUDA device; use 'bf16' or 'fp32' on CPU")
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    autocast = functools.partial(torch.autocast, device_type=device.type, dtype=dtype)
    if precision == "bf16":
        return autocast, None
    # The loss is a SUM over targets (thousands per micro-batch), so its gradients are large: start
    # the scale at fairseq's 128 (its fp16_init_scale) rather than torch's 65536, which would
    # overflow and skip the first few steps while the scale halves its way down.
    return autocast, torch.amp.GradScaler(device.type, init_scale=FP16_INIT_SCALE)
