"""Gradient noise from the micro-batch gradients a step already computes.

Legend: M micro-batches with targets in the global batch (all ranks), n_j the
targets of micro-batch j, N = sum n_j, g_j the gradient of micro-batch j's loss
SUM, G = sum g_j / N the step's gradient (the mean loss's gradient), P parameters.

Each micro-batch mean gradient g_j / n_j is an unbiased estimate of the true
gradient mu with covariance Sigma / n_j, where Sigma is the per-target gradient
covariance. Weighting by n_j makes the scatter exactly unbiased for unequal
micro-batches:

    E[ sum_j n_j |g_j/n_j - G|^2 ] = (M - 1) tr(Sigma)
    E[ |G|^2 ] = |mu|^2 + tr(Sigma) / N

so ``tr_sigma = (sum_j |g_j|^2 / n_j - N |G|^2) / (M - 1)`` and
``grad_sq = |G|^2 - tr_sigma / N`` estimate tr(Sigma) and |mu|^2, and the simple
noise scale B_simple = tr(Sigma) / |mu|^2 (McCandlish et al. 2018, "An Empirical
Model of Large-Batch Training", section 2.2 and appendix A) is the batch size,
in targets, at which noise and signal in the step's gradient are equal. The
loop converts it to seconds of audio with the step's seconds per target.

The per-parameter variant, averaged over parameters, is the seed study's
"average standard deviation of the gradient of each parameter": the std of the
step's gradient G itself, sqrt(var_j / N) per element, which shrinks as
1/sqrt(batch) while the batch is noise-dominated.

Bias: tr_sigma and grad_sq are unbiased, but their ratio is not, and with few
micro-batches (M - 1 degrees of freedom) tr_sigma is very noisy and grad_sq can
even come out negative. That is why the loop reports the ratio of exponential
moving averages of the two (as McCandlish et al. do), and a single step's ratio
only as ``grad_noise_scale_s_raw``. Micro-batches are groups of whole
utterances, so "independent targets" is an approximation: frames of one
utterance are correlated, which makes Sigma per target an effective quantity.
Neither bias depends on the number of processes: the same micro-batches give
the same estimate on 1 or 64 devices.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class GradNoiseStats:
    """One step's estimate, in units of targets (the loop converts to seconds)."""

    tr_sigma: float
    """Estimate of tr(Sigma), the per-target gradient covariance's trace."""
    grad_sq: float
    """Estimate of |mu|^2, the squared norm of the true gradient (may be negative when noise dominates)."""
    grad_std: float
    """Mean over parameters of the std of the step's gradient G."""
    num_micro_batches: int
    """M: micro-batches with targets that entered the estimate (all ranks)."""

    @property
    def noise_scale_targets(self) -> float:
        """B_simple = tr_sigma / grad_sq, targets; NaN when grad_sq <= 0."""
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
        if num_micro < 2 or num_targets <= 0:
            return GradNoiseStats(math.nan, math.nan, math.nan, num_micro)
        scatter_P = flat[:-1].to(torch.float64)
        g_P = torch.cat([g.flatten().to(torch.float64) for g in summed_grads]) / (grad_scale * num_targets)
        # Per-element unbiased variance of one target's gradient, then of G (a mean over N targets).
        var_target_P = (scatter_P - num_targets * g_P.square()) / (num_micro - 1)
        tr_sigma = float(var_target_P.sum())
        grad_sq = float(g_P.square().sum()) - tr_sigma / num_targets
        grad_std = float((var_target_P.clamp(min=0.0) / num_targets).sqrt().mean())
        return GradNoiseStats(tr_sigma, grad_sq, grad_std, num_micro)


def _dtype(p: torch.Tensor) -> torch.dtype:
    return torch.promote_types(p.dtype, torch.float32)


def _grad(p: torch.Tensor) -> torch.Tensor:
    return p.grad.to(_dtype(p)) if p.grad is not None else torch.zeros_like(p, dtype=_dtype(p))


class NoiseScaleTracker:
    """Exponential moving averages of tr(Sigma) and |mu|^2 in seconds, and their ratio.

    Averaging numerator and denominator separately before dividing is what
    keeps the ratio usable at small M (McCandlish et al. 2018, appendix A.1).
    """

    def __init__(self, decay: float = 0.9) -> None:
        self.decay = decay
        self.tr_sigma_s = math.nan
        self.grad_sq = math.nan

    def update(self, stats: GradNoiseStats, seconds_per_target: float) -> dict[str, float]:
        """Fold in one measurement; return the values to log."""
        # A batch of S seconds holds S / spt targets, so its noise tr(Sigma) / N = tr(Sigma) * spt / S:
        # the per-second covariance trace is tr(Sigma) * spt, and B_simple in seconds is B_targets * spt.
        tr_sigma_s = stats.tr_sigma * seconds_per_target
        if math.isfinite(tr_sigma_s) and math.isfinite(stats.grad_sq):
            if math.isnan(self.tr_sigma_s):
                self.tr_sigma_s, self.grad_sq = tr_sigma_s, stats.grad_sq
            else:
                self.tr_sigma_s = self.decay * self.tr_sigma_s + (1 - self.decay) * tr_sigma_s
                self.grad_sq = self.decay * self.grad_sq + (1 - self.decay) * stats.grad_sq
        raw = stats.noise_scale_targets * seconds_per_target
        smooth = self.tr_sigma_s / self.grad_sq if self.grad_sq > 0 else math.nan
        return {"grad_noise_scale_s": smooth, "grad_noise_scale_s_raw": raw, "grad_std": stats.grad_std,
                "grad_tr_sigma_s": tr_sigma_s, "grad_sq_true": stats.grad_sq,
                "grad_noise_micro_batches": float(stats.num_micro_batches)}

    def state_dict(self) -> dict[str, float]:
        return {"tr_sigma_s": self.tr_sigma_s, "grad_sq": self.grad_sq}

    def load_state_dict(self, state: dict[str, float]) -> None:
        self.tr_sigma_s, self.grad_sq = float(state["tr_sigma_s"]), float(state["grad_sq"])
