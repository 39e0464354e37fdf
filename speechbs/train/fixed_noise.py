"""Gradient noise at a fixed model state: independent batches at each batch size (the offline instrument).

Legend: R independent global batches (repeats) at one batch size S seconds, G_r
the gradient of batch r's mean loss (the step engine's normalized gradient),
n_r its targets, s_r its seconds of audio, P parameters, K the R x R Gram
matrix K_rs = <G_r, G_s>.

The seed study (Vaessen & van Leeuwen 2024) measured "the average standard
deviation of the gradient of each parameter" over batches drawn at one state.
This module does that with the step engine itself (``train_step`` at LR 0, so
the weights never move and accumulation, normalization and the ranks are those
of training), and from the same R gradients estimates, with Var over r unbiased:

    tr Cov(G_S) = sum_p Var_r(G_rp)               = (sum_r K_rr - sum_rs K_rs / R) / (R - 1)
    grad_std    = sqrt(tr Cov(G_S) / P)           RMS over parameters of the per-parameter std
    tr_sigma_1s = S x tr Cov(G_S)                 covariance trace of a 1-second batch's gradient
    g_sq        = mean_r |G_r|^2                  E|G_S|^2 = |mu|^2 + tr_sigma_1s / S
    mu_sq       = |mean_r G_r|^2 - tr Cov(G_S)/R  unbiased |mu|^2
    b_simple_s  = tr_sigma_1s / mu_sq             McCandlish et al. 2018's B_simple, s of audio
    grad_rms    = sqrt(g_sq / P)                  RMS of the batch-mean gradient

At a fixed state grad_std falls exactly 1/sqrt(2) per doubling of S (the
covariance of a mean of independent targets), while grad_rms and the loss
improvement per step stop improving once S passes b_simple_s: that is where
more audio per step stops paying. Intervals are 95% percentile bootstrap
intervals over the R repeats (each resample recomputes every statistic from the
Gram matrix), so they say how far R = 10 batches pin a number down.
``grad_std_mean`` is the seed study's literal mean of per-parameter stds; it is
low by the c4(R) factor of a square root of an (R - 1)-degree-of-freedom
variance, the same factor at every batch size because R is fixed, so its ratios
are right while its level is not.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from functools import cached_property
from typing import Any

import numpy as np
import torch
from torch import nn

from speechbs.dist import DistContext
from speechbs.train.grad_noise import noise_logs
from speechbs.train.step import AutocastFactory, ForwardFn, PrepareFn, train_step

NUM_BOOTSTRAP = 2_000
"""Bootstrap resamples per interval."""

STATISTICS = ("grad_std", "tr_sigma_1s", "g_sq", "mu_sq", "b_simple_s", "grad_rms")
"""The keys of each batch size's entry that carry a ``<key>_ci`` interval."""


@dataclass(frozen=True)
class BatchGradients:
    """The R gradients measured at one batch size (on the CPU, float32: R x P x 4 bytes)."""

    batch_s: float
    """The configured batch size, s of audio per step."""
    grads_RP: torch.Tensor
    """Each repeat's normalized gradient G_r (the gradient of its mean loss), flattened."""
    seconds_R: torch.Tensor
    """Real audio of each repeat, s."""
    targets_R: torch.Tensor
    """Targets of each repeat (masked frames for pretraining)."""
    num_skipped: int = 0
    """Repeats left out because their loss or gradient was not finite."""

    @cached_property
    def gram_RR(self) -> np.ndarray:
        """<G_r, G_s> in float64: every statistic and every resample reads it (computed once)."""
        return gram(self.grads_RP)


@dataclass(frozen=True)
class BatchNoise:
    """One batch size's entry of ``noise.json``."""

    batch_s: float
    real_s_mean: float
    """Mean real audio of the repeats, s (the S used in the formulas)."""
    num_targets_mean: float
    repeats: int
    num_skipped: int
    grad_std: float
    grad_std_ci: tuple[float, float]
    grad_std_mean: float
    tr_sigma_1s: float
    tr_sigma_1s_ci: tuple[float, float]
    g_sq: float
    g_sq_ci: tuple[float, float]
    mu_sq: float
    mu_sq_ci: tuple[float, float]
    b_simple_s: float
    b_simple_s_ci: tuple[float, float]
    grad_rms: float
    grad_rms_ci: tuple[float, float]

    def to_json(self) -> dict[str, Any]:
        return {key: (list(value) if isinstance(value, tuple) else value) for key, value in asdict(self).items()}


def measure_gradients(model: nn.Module, batches: Iterable[Sequence[Any]], forward: ForwardFn, ctx: DistContext, *,
                      batch_s: float, autocast: AutocastFactory | None = None, prepare: PrepareFn | None = None,
                      before_batch: Callable[[int], None] | None = None) -> BatchGradients:
    """The normalized gradient of each global batch, through ``train_step`` at LR 0 (kept on rank 0 only).

    ``batches`` yields each repeat's micro-batches for this rank (``model`` DDP-wrapped
    when ``ctx.world_size > 1``); ``forward`` must log ``real_s``, the micro-batch's real
    audio in seconds (the pretraining forward does); ``prepare`` is the task's global-batch
    pre-pass, as in training. ``before_batch(r)`` runs before repeat r (e.g. to seed dropout).
    """
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=0.0)  # LR 0: the state never moves
    grads, secs, targets, skipped = [], [], [], 0
    before = [p.detach().clone() for p in params] if ctx.is_main else None
    for index, micro_batches in enumerate(batches):
        if before_batch is not None:
            before_batch(index)
        report = train_step(model, optimizer, micro_batches, forward, ctx, autocast=autocast, prepare=prepare)
        if "real_s" not in report.log_sums:
            raise RuntimeError("the forward logs no real_s: the seconds of audio per batch are unknown")
        if not report.updated:
            skipped += 1
            continue
        if ctx.is_main:  # the gradients are all-reduced: one copy is enough (R x P floats of host memory)
            grads.append(torch.cat([_flat_grad(p) for p in params]).to("cpu", torch.float32))
        secs.append(report.log_sums["real_s"])
        targets.append(report.num_targets)
    if before is not None:
        assert all(torch.equal(b, p.detach()) for b, p in zip(before, params)), "LR 0 moved the weights"
    empty = torch.zeros(0, sum(p.numel() for p in params), dtype=torch.float32)
    return BatchGradients(batch_s, torch.stack(grads) if grads else empty,
                          torch.tensor(secs, dtype=torch.float64), torch.tensor(targets, dtype=torch.float64),
                          skipped)


def _flat_grad(p: torch.Tensor) -> torch.Tensor:
    return (p.grad if p.grad is not None else torch.zeros_like(p)).flatten()


def gram(grads_RP: torch.Tensor, chunk: int = 1 << 22) -> np.ndarray:
    """<G_r, G_s> in float64, accumulated over column chunks (no float64 copy of the whole R x P)."""
    out = torch.zeros(grads_RP.shape[0], grads_RP.shape[0], dtype=torch.float64)
    for start in range(0, grads_RP.shape[1], chunk):
        block = grads_RP[:, start:start + chunk].to(torch.float64)
        out += block @ block.T
    return out.numpy()


def _statistics(gram_XRR: np.ndarray, real_s: float, num_params: int) -> dict[str, np.ndarray]:
    """Every statistic of the module docstring from Gram matrices (X resamples, possibly with repeats)."""
    num = gram_XRR.shape[-1]
    trace_X = np.trace(gram_XRR, axis1=-2, axis2=-1)
    total_X = gram_XRR.sum(axis=(-2, -1))
    tr_cov_X = (trace_X - total_X / num) / (num - 1)
    tr_sigma_1s_X = real_s * tr_cov_X
    mu_sq_X = total_X / num**2 - tr_cov_X / num
    g_sq_X = trace_X / num
    with np.errstate(divide="ignore", invalid="ignore"):
        b_simple_X = np.where(mu_sq_X > 0, tr_sigma_1s_X / mu_sq_X, np.nan)
        grad_std_X = np.sqrt(np.where(tr_cov_X >= 0, tr_cov_X / num_params, np.nan))
    return {"grad_std": grad_std_X, "tr_sigma_1s": tr_sigma_1s_X, "g_sq": g_sq_X, "mu_sq": mu_sq_X,
            "b_simple_s": b_simple_X, "grad_rms": np.sqrt(g_sq_X / num_params)}


def _resamples(gram_RR: np.ndarray, rng: np.random.Generator, num_bootstrap: int) -> np.ndarray:
    """Gram matrices of ``num_bootstrap`` resamples of the repeats with replacement, (X, R, R)."""
    num = gram_RR.shape[0]
    pick_XR = rng.integers(0, num, (num_bootstrap, num))
    spread_X = (pick_XR != pick_XR[:, :1]).any(axis=1)  # one batch repeated R times has no spread
    pick_XR = pick_XR[spread_X]
    return gram_RR[pick_XR[:, :, None], pick_XR[:, None, :]]


def summarize(measured: BatchGradients, *, seed: int = 0, num_bootstrap: int = NUM_BOOTSTRAP) -> BatchNoise:
    """Estimates and 95% bootstrap intervals at one batch size; needs >= 2 finite repeats."""
    grads_RP = measured.grads_RP
    num, num_params = grads_RP.shape
    if num < 2:
        raise ValueError(f"batch {measured.batch_s:g} s: {num} usable repeat(s); the std needs at least 2")
    gram_RR = measured.gram_RR
    real_s = float(measured.seconds_R.mean())
    point = {key: float(value) for key, value in _statistics(gram_RR, real_s, num_params).items()}
    draws = _statistics(_resamples(gram_RR, np.random.default_rng(seed), num_bootstrap), real_s, num_params)
    ci = {f"{key}_ci": _interval(_centered(draws[key], point[key]), num) for key in STATISTICS}
    std_mean = _mean_std(grads_RP)
    return BatchNoise(batch_s=measured.batch_s, real_s_mean=real_s,
                      num_targets_mean=float(measured.targets_R.mean()), repeats=num,
                      num_skipped=measured.num_skipped, grad_std_mean=std_mean, **point, **ci)


def _mean_std(grads_RP: torch.Tensor, chunk: int = 1 << 22) -> float:
    """Mean over parameters of the per-parameter std over the repeats (float64 per chunk)."""
    total = 0.0
    for start in range(0, grads_RP.shape[1], chunk):
        total += float(grads_RP[:, start:start + chunk].to(torch.float64).std(dim=0, unbiased=True).sum())
    return total / grads_RP.shape[1]


def _centered(draws_X: np.ndarray, point: float) -> np.ndarray:
    """The bootstrap draws shifted so that their median is the estimate ``point``.

    A resample of R repeats with replacement holds repeated batches, so it has (R - 1) / R of
    the sample's spread: the draws of every variance-type statistic centre below the unbiased
    estimate (the std by sqrt(0.9) = -5% at R = 10). With many parameters the draws are narrow,
    and on a real checkpoint the estimate fell above its own 95% interval. The percentile
    interval assumes draws centred on the estimate; this shift makes it so and keeps their
    spread. Non-finite draws (B_simple when a resample's |G|^2 estimate is <= 0) stay
    unbounded above; without a finite median the draws are returned as they are.
    """
    unbounded_X = np.where(np.isfinite(draws_X), draws_X, np.inf)
    if len(unbounded_X) == 0 or not math.isfinite(point):
        return draws_X
    median = float(np.median(unbounded_X))
    return draws_X + (point - median) if math.isfinite(median) else draws_X


def _interval(values: np.ndarray, num_repeats: int) -> tuple[float, float]:
    """Hesterberg's expanded percentile interval (2015, "What teachers should know about the bootstrap",
    section 5): percentiles at Phi(sqrt(n / (n - 1)) t_{n-1}), so that the plain percentile interval's
    narrowness at small n (71% coverage of a nominal 95% for B_simple at n = 10, measured) is undone."""
    if len(values) == 0:  # no resamples asked for
        return (math.nan, math.nan)
    z = -math.sqrt(num_repeats / (num_repeats - 1)) * _t_quantile_975(num_repeats - 1)
    tail = 100 * 0.5 * (1 + math.erf(z / math.sqrt(2)))  # the normal cdf, percent
    finite = values[np.isfinite(values)]
    if len(finite) < (1 - tail / 100) * len(values):  # e.g. mu_sq <= 0 in many resamples: B_simple unbounded above
        return (float(np.percentile(finite, tail)) if len(finite) else math.nan, math.inf)
    return (float(np.percentile(finite, tail)), float(np.percentile(finite, 100 - tail)))


def _t_quantile_975(dof: int) -> float:
    """Student's t 97.5% quantile: tabled up to dof = 3, then the Cornish-Fisher series in 1/dof
    (Abramowitz & Stegun 26.7.5), within 1e-5 of the exact value from dof = 4 on."""
    if dof <= 3:
        return {1: 12.7062, 2: 4.3027, 3: 3.1824}[dof]
    z, nu = 1.959963984540054, float(dof)
    return (z + (z**3 + z) / (4 * nu) + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * nu**2)
            + (3 * z**7 + 19 * z**5 + 17 * z**3 - 15 * z) / (384 * nu**3)
            + (79 * z**9 + 776 * z**7 + 1482 * z**5 - 1920 * z**3 - 945 * z) / (92160 * nu**4))


def std_per_doubling(entries: Sequence[BatchNoise], measured: Sequence[BatchGradients], *, seed: int = 0,
                     num_bootstrap: int = NUM_BOOTSTRAP) -> tuple[float, tuple[float, float]]:
    """2**slope of the least-squares line through log2(grad_std) against log2(real_s), with a 95% interval.

    1/sqrt(2) = 0.707 at a fixed state. The interval resamples the repeats of every
    batch size independently (the batch sizes' draws are independent).
    """
    if len(entries) < 2:
        return math.nan, (math.nan, math.nan)
    x = np.log2([e.real_s_mean for e in entries])
    point = 2 ** _slope(x, np.log2([e.grad_std for e in entries])[None, :])[0]
    rng = np.random.default_rng(seed + 1)
    num_params = measured[0].grads_RP.shape[1]
    ys = []
    for m, entry in zip(measured, entries):
        gram_RR = m.gram_RR
        pick_XR = rng.integers(0, gram_RR.shape[0], (num_bootstrap, gram_RR.shape[0]))
        ys.append(_statistics(gram_RR[pick_XR[:, :, None], pick_XR[:, None, :]], entry.real_s_mean,
                              num_params)["grad_std"])
    ys_XB = np.stack(ys, axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        keep = (ys_XB > 0).all(axis=1)
        draws = 2 ** _slope(x, np.log2(ys_XB[keep]))
    return float(point), _interval(_centered(draws, float(point)), min(m.grads_RP.shape[0] for m in measured))


def _slope(x_B: np.ndarray, y_XB: np.ndarray) -> np.ndarray:
    """Least-squares slopes of each row of ``y_XB`` against ``x_B``."""
    x_centered = x_B - x_B.mean()
    return ((y_XB - y_XB.mean(axis=1, keepdims=True)) * x_centered).sum(axis=1) / (x_centered**2).sum()
