"""Gradient-noise estimate: exact against per-micro-batch gradients, unbiased on a known problem."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from speechbs.dist import DistContext
from speechbs.train.grad_noise import GradNoiseProbe
from speechbs.train.step import train_step

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
    assert stats.num_params == sum(p.numel() for p in model.parameters())


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
