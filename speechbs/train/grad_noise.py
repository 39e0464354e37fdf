"""Gradient noise from the micro-batch gradients a step already computes (the online instrument).

Legend: M micro-batches with targets in the global batch (all ranks), n_j the
targets of micro-batch j, N = sum n_j, g_j the gradient of micro-batch j's loss
SUM, G = sum g_j / N the step's gradient (the mean loss's gradient), P parameters,
S the step's seconds of audio, spt = S / N seconds per target, W the window.

Each micro-batch mean gradient g_j / n_j is an unbiased estimate of the true
gradient mu with covariance Sigma / n_j, where Sigma is the per-target gradient
covariance. Weighting by n_j makes the scatter exactly unbiased for unequal
micro-batches:

    E[ sum_j n_j |g_j/n_j - G|^2 ] = (M - 1) tr(Sigma)
    E[ |G|^2 ] = |mu|^2 + tr(Sigma) / N

so ``tr_sigma = (sum_j |g_j|^2 / n_j - N |G|^2) / (M - 1)`` and
``grad_sq = |G|^2 - tr_sigma / N`` estimate tr(Sigma) and |mu|^2 (McCandlish et
al. 2018, "An Empirical Model of Large-Batch Training", appendix A).

What is logged, and why it is built this way (docs/pretraining.md has the table):

- Units are seconds of audio. A batch of S seconds holds S / spt targets, so
  its gradient's covariance trace is tr(Sigma) spt / S: ``tr_cov_1s`` =
  tr(Sigma) spt is the covariance trace of a 1-second batch's gradient, and
  B_simple = tr(Sigma) / |mu|^2 targets is B_simple spt seconds.
- A window, not a moving average. Each logged value averages the last W
  measurements (:class:`NoiseWindow`), and B_simple is the ratio of the two
  window means (averaging numerator and denominator before dividing keeps the
  ratio usable at small M, as McCandlish et al. do). An exponential average
  seeded at the first measurement remembers it for ~1 / (1 - decay) x log(ratio)
  measurements, and early in training tr(Sigma) is ~100x its later value, so
  the logged number said more about when the run started than about the model.
  A window forgets everything older than W measurements, which is also all a
  resume needs to carry.
- The gradient std is sqrt(mean variance): sqrt(tr_cov_1s / (P S)), the
  root-mean-square over parameters of the per-parameter std of G at this step's
  batch. The mean over parameters of sqrt(per-parameter variance) would carry
  the c4 bias of a square root of an (M - 1)-degree-of-freedom variance (0.80 at
  M = 2, 0.97 at M = 10), and M grows with the batch under a fixed cap, so the
  per-doubling ratio of that mean is biased towards 1. The windowed mean of the
  unbiased trace has W (M - 1) degrees of freedom before the one square root.
- A measuring step must have M >= 2: the loop asks the loader for at least two
  micro-batches in all on measuring steps (``iter_steps(min_micro_batches=...)``),
  so single-micro-batch steps are measured like the others, not dropped. Only a
  global batch of a single utterance is unmeasurable; it logs M = 1 and NaN.

Micro-batches are groups of whole utterances, so "independent targets" is an
approximation: frames of one utterance are correlated, which makes Sigma per
target an effective quantity. The estimate does not depend on the number of
processes: the same micro-batches give the same estimate on 1 or 64 devices.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

import torch
from torch import nn

DEFAULT_WINDOW = 10
"""Measurements averaged in each logged value (``train.grad_noise_window``)."""


@dataclass(frozen=True)
class GradNoiseStats:
    """One step's estimate, in units of targets (:class:`NoiseWindow` converts to seconds)."""

    tr_sigma: float
    """Estimate of tr(Sigma), the per-target gradient covariance's trace (unbiased; NaN when M < 2)."""
    grad_sq: float
    """Estimate of |mu|^2, the squared norm of the true gradient (unbiased; may be negative when noise dominates)."""
    num_micro_batches: int
    """M: micro-batches with targets that entered the estimate (all ranks)."""
    num_params: int
    """P: parameter elements the estimate covers (those that require a gradient)."""

    @property
    def noise_scale_targets(self) -> float:
        """This step's B_simple = tr_sigma / grad_sq, targets; NaN when grad_sq <= 0."""
        return self.tr_sigma / self.grad_sq if self.grad_sq > 0 else math.nan


class GradNoiseProbe:
    """Collects sum_j g_j^2 / n_j per element while the step engine accumulates.

    Call :meth:`after_backward` after each micro-batch's backward (with the
    accumulated local gradients in ``param.grad``), :meth:`reduce` once after the
    last to sum over ranks, then :meth:`finish` with the global target count.
    It costs two elementwise passes over the gradients per micro-batch and, in
    a multi-process run, one extra all-reduce of that size per measured step.
    """

    def __init__(self, model: nn.Module) -> None:
        self.params = [p for p in model.parameters() if p.requires_grad]
        # fp32 at least: bf16/fp16 squares of small gradients would underflow.
        self.previous = [torch.zeros_like(p, dtype=_dtype(p)) for p in self.params]
        self.scatter = [torch.zeros_like(p, dtype=_dtype(p)) for p in self.params]
        self.num_micro = torch.zeros((), dtype=torch.float64, device=self.params[0].device)

    def after_backward(self, num_targets: torch.Tensor, grad_scale: float = 1.0) -> None:
        """Account micro-batch j: its gradient is the change of the accumulated gradient."""
        current = [_grad(p) for p in self.params]
        diff = torch._foreach_sub(current, self.previous)
        if grad_scale != 1.0:
            torch._foreach_div_(diff, grad_scale)
        n = torch.as_tensor(num_targets, dtype=torch.float64, device=self.num_micro.device)
        # A placeholder (n = 0) has a zero gradient: it adds nothing and is not counted.
        weight = 1.0 / n.clamp(min=1.0)
        torch._foreach_mul_(diff, diff)
        torch._foreach_mul_(diff, weight.to(diff[0].dtype))
        torch._foreach_add_(self.scatter, diff)
        self.num_micro += (n > 0).to(torch.float64)
        for prev, cur in zip(self.previous, current):
            prev.copy_(cur)

    def reduce(self, all_reduce_sum) -> None:
        """Sum the scatter and the micro-batch count over ranks (``DistContext.all_reduce_sum``)."""
        flat = torch.cat([s.flatten().to(torch.float64) for s in self.scatter] + [self.num_micro.view(1)])
        all_reduce_sum(flat)
        self._flat = flat

    def finish(self, summed_grads: list[torch.Tensor], num_targets: float, grad_scale: float = 1.0) -> GradNoiseStats:
        """The estimate, given the global gradient SUM (over micro-batches and ranks) and N."""
        flat = self._flat
        num_micro = int(round(float(flat[-1])))
        num_params = flat.numel() - 1
        if num_micro < 2 or num_targets <= 0:
            return GradNoiseStats(math.nan, math.nan, num_micro, num_params)
        scatter_P = flat[:-1]
        g_P = torch.cat([g.flatten().to(torch.float64) for g in summed_grads]) / (grad_scale * num_targets)
        g_sq = float(g_P.square().sum())
        tr_sigma = (float(scatter_P.sum()) - num_targets * g_sq) / (num_micro - 1)
        return GradNoiseStats(tr_sigma, g_sq - tr_sigma / num_targets, num_micro, num_params)


def _dtype(p: torch.Tensor) -> torch.dtype:
    return torch.promote_types(p.dtype, torch.float32)


def _grad(p: torch.Tensor) -> torch.Tensor:
    return p.grad.to(_dtype(p)) if p.grad is not None else torch.zeros_like(p, dtype=_dtype(p))


def noise_logs(tr_cov_1s: float, grad_sq: float, num_params: int, batch_s: float) -> dict[str, float]:
    """B_simple, the gradient std and the gradient RMS at a batch of ``batch_s`` seconds.

    From a per-second covariance trace and |mu|^2 (both unbiased): the std of a
    batch-mean gradient per parameter, sqrt(tr_cov_1s / (P S)), falls 1/sqrt(2) per
    doubling of S at any model state; its RMS, sqrt((|mu|^2 + tr_cov_1s / S) / P),
    stops falling where S passes B_simple. Shared by the online and offline instruments.
    """
    var_mean = tr_cov_1s / (num_params * batch_s) if batch_s > 0 else math.nan
    sq_mean = grad_sq / num_params + var_mean
    return {"b_simple_s": tr_cov_1s / grad_sq if grad_sq > 0 else math.nan,
            "grad_std": math.sqrt(var_mean) if var_mean >= 0 else math.nan,
            "grad_rms": math.sqrt(sq_mean) if sq_mean >= 0 else math.nan}


class NoiseWindow:
    """The last ``size`` measurements in seconds of audio, and the values logged from them.

    Every logged value is a function of the window alone, so it does not depend on
    when the run started (past the first ``size`` measurements, which log
    ``noise_window`` < ``size``).
    """

    def __init__(self, size: int = DEFAULT_WINDOW) -> None:
        if size < 1:
            raise ValueError(f"the gradient-noise window must hold >= 1 measurement, got {size}")
        self.size = size
        self.measurements: deque[tuple[float, float]] = deque(maxlen=size)
        """(tr_cov_1s, grad_sq) of the last measurements that had M >= 2."""

    def update(self, stats: GradNoiseStats, seconds_per_target: float, batch_s: float) -> dict[str, float]:
        """Fold in one measurement at a batch of ``batch_s`` seconds; return the ``noise_*`` values to log."""
        tr_cov_1s = stats.tr_sigma * seconds_per_target
        measured = math.isfinite(tr_cov_1s) and math.isfinite(stats.grad_sq)
        if measured:
            self.measurements.append((tr_cov_1s, stats.grad_sq))
        step = noise_logs(tr_cov_1s, stats.grad_sq, stats.num_params, batch_s)
        logs = {"noise_b_simple_s_step": step["b_simple_s"], "noise_tr_sigma_1s_step": tr_cov_1s,
                "noise_mu_sq_step": stats.grad_sq, "noise_micro_batches": float(stats.num_micro_batches),
                "noise_batch_s": batch_s, "noise_window": float(len(self.measurements))}
        if measured:  # an unmeasurable step (a one-utterance batch) logs M and NaN, not the old window
            tr_mean = math.fsum(t for t, _ in self.measurements) / len(self.measurements)
            sq_mean = math.fsum(s for _, s in self.measurements) / len(self.measurements)
            window = noise_logs(tr_mean, sq_mean, stats.num_params, batch_s)
            logs.update({"noise_b_simple_s": window["b_simple_s"], "noise_tr_sigma_1s": tr_mean,
                         "noise_mu_sq": sq_mean, "noise_grad_std_at_batch": window["grad_std"],
                         "noise_grad_rms_at_batch": window["grad_rms"]})
        return logs

    @property
    def b_simple_s(self) -> float:
        """B_simple of the window, s of audio (the logged ``noise_b_simple_s``); NaN before any measurement
        or while the window's mean |mu|^2 is not positive."""
        if not self.measurements:
            return math.nan
        sq_mean = math.fsum(s for _, s in self.measurements) / len(self.measurements)
        tr_mean = math.fsum(t for t, _ in self.measurements) / len(self.measurements)
        return tr_mean / sq_mean if sq_mean > 0 else math.nan

    def state_dict(self) -> dict[str, list[list[float]]]:
        return {"window": [list(m) for m in self.measurements]}

    def load_state_dict(self, state: dict) -> None:
        if "window" not in state:  # a checkpoint of the earlier moving average: start a fresh window
            self.measurements.clear()
            return
        self.measurements = deque(((float(t), float(s)) for t, s in state["window"]), maxlen=self.size)
