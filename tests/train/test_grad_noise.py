"""Gradient-noise estimate: exact against per-micro-batch gradients, unbiased on a known problem."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from speechbs.dist import DistContext
from speechbs.train.grad_noise import GradNoiseProbe, GradNoiseStats, NoiseScaleTracker
from speechbs.train.step import StepOutput, train_step

from .dist_worker import frame_forward, load_utterances, make_model, params_of, rank_micro_batches

CTX = DistContext()


def flat_grad(model: nn.Module) -> torch.Tensor:
    return torch.cat([p.grad.flatten() for p in model.parameters()])


def test_estimate_matches_the_per_micro_batch_gradients():
    utts = load_utterances(None)
    micro_batches = rank_micro_batches(utts, 0, 1, 4, 0)
    # Brute force: each micro-batch's loss-sum gradient from a fresh copy of the model.
    sums, counts = [], []
    for mb in micro_batches:
        model = make_model()
        out = frame_forward(model, mb)
        out.loss_sum.backward()
        sums.append(flat_grad(model))
        counts.append(float(out.num_targets))
    n = sum(counts)
    g = sum(sums) / n
    scatter = sum(s.square() / c for s, c in zip(sums, counts))
    var = (scatter - n * g.square()) / (len(sums) - 1)
    want_tr = float(var.sum())

    model = make_model()
    report = train_step(model, torch.optim.SGD(model.parameters(), lr=0.0), micro_batches, frame_forward, CTX,
                        grad_noise=GradNoiseProbe(model))
    stats = report.grad_noise
    assert stats.num_micro_batches == 4
    assert stats.tr_sigma == pytest.approx(want_tr, rel=1e-9)
    assert stats.grad_sq == pytest.approx(float(g.square().sum()) - want_tr / n, rel=1e-9)
    assert stats.grad_std == pytest.approx(float((var.clamp(min=0) / n).sqrt().mean()), rel=1e-9)


def test_measuring_does_not_change_the_update():
    utts = load_utterances(None)
    micro_batches = rank_micro_batches(utts, 1, 1, 3, 0)
    results = []
    for probe in (False, True):
        model = make_model()
        opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
        train_step(model, opt, micro_batches, frame_forward, CTX, grad_noise=GradNoiseProbe(model) if probe else None)
        results.append(params_of(model))
    assert all(torch.equal(results[0][k], results[1][k]) for k in results[0])


class Mean(nn.Module):
    """loss per target = |w - x|^2 / 2: per-target gradient w - x, so Sigma = cov(x) exactly."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.zeros(dim, dtype=torch.float64))


def mean_forward(model: Mean, x_ND: torch.Tensor) -> StepOutput:
    return StepOutput(0.5 * (model.w - x_ND).square().sum(), torch.tensor(float(x_ND.shape[0])), {})


def test_estimators_are_unbiased_on_a_known_problem():
    """tr(Sigma) = dim * sigma^2 and |mu|^2 = |m|^2 are known; unequal micro-batches, few per step."""
    dim, sigma, generator = 8, 0.5, torch.Generator().manual_seed(0)
    m = torch.full((dim,), 0.25, dtype=torch.float64)
    tr, sq = [], []
    for _ in range(2_000):
        sizes = torch.randint(1, 12, (3,), generator=generator).tolist()
        micro = [m + sigma * torch.randn(n, dim, generator=generator, dtype=torch.float64) for n in sizes]
        model = Mean(dim)
        report = train_step(model, torch.optim.SGD(model.parameters(), lr=0.0), micro, mean_forward, CTX,
                            grad_noise=GradNoiseProbe(model))
        tr.append(report.grad_noise.tr_sigma)
        sq.append(report.grad_noise.grad_sq)
    assert sum(tr) / len(tr) == pytest.approx(dim * sigma**2, rel=0.05)
    assert sum(sq) / len(sq) == pytest.approx(float(m.square().sum()), rel=0.1)


def test_one_micro_batch_gives_no_estimate():
    model = Mean(2)
    report = train_step(model, torch.optim.SGD(model.parameters(), lr=0.0), [torch.ones(3, 2)], mean_forward, CTX,
                        grad_noise=GradNoiseProbe(model))
    assert report.grad_noise.num_micro_batches == 1 and math.isnan(report.grad_noise.tr_sigma)


def test_tracker_reports_seconds_and_averages_before_dividing():
    tracker = NoiseScaleTracker(decay=0.5)
    # 0.04 s per target (25 targets per second): B_simple of 100 targets is 4 s of audio.
    logs = tracker.update(GradNoiseStats(tr_sigma=100.0, grad_sq=1.0, grad_std=0.1, num_micro_batches=4), 0.04)
    assert logs["grad_noise_scale_s"] == pytest.approx(4.0) and logs["grad_noise_scale_s_raw"] == pytest.approx(4.0)
    # A noisy measurement with a negative |mu|^2 estimate: no raw ratio, the averages carry on.
    logs = tracker.update(GradNoiseStats(tr_sigma=100.0, grad_sq=-0.5, grad_std=0.1, num_micro_batches=2), 0.04)
    assert math.isnan(logs["grad_noise_scale_s_raw"])
    assert logs["grad_noise_scale_s"] == pytest.approx(4.0 / 0.25)


class _TwinRanks(DistContext):
    """Two ranks whose other rank holds the same values: an all-reduce doubles a tensor in place."""

    def __init__(self) -> None:
        super().__init__(rank=0, world_size=2)

    @property
    def is_distributed(self) -> bool:
        return False  # no process group; all_reduce_sum below stands in for it

    def all_reduce_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        return tensor.mul_(2)


def test_measuring_step_keeps_parameters_without_gradient_gradient_free_on_several_ranks() -> None:
    """A dropped layer has grad None on every rank; after the measuring step's hand-made all-reduce
    it must still be None (AdamW steps a zero gradient's parameter by momentum and weight decay)."""
    from speechbs.train.step import _all_reduce_mean_grads

    used, dropped = nn.Parameter(torch.ones(3)), nn.Parameter(torch.ones(2))
    used.grad = torch.tensor([1.0, 2.0, 3.0])
    _all_reduce_mean_grads([used, dropped], _TwinRanks())
    assert dropped.grad is None
    torch.testing.assert_close(used.grad, torch.tensor([1.0, 2.0, 3.0]))  # the mean of two equal ranks
