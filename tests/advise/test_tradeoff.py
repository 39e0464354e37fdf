"""The advisor's arithmetic against hand-computed values, and its memory estimate on a known model."""

from __future__ import annotations

import math
import random

import pytest
import torch
from torch import nn

from speechbs.advise.memory import BYTES_PER_PARAM, HEADROOM, PEAK_PER_SAVED, max_device_seconds, saved_bytes, static_bytes
from speechbs.advise.tradeoff import Tradeoff, bootstrap_interval, candidate_batches, ratio_of_means, recommend


def test_the_tradeoff_through_one_point_by_hand():
    # B_noise 20 s; the probe took 300 steps of 10 s: S_min = 300 / (1 + 20 / 10) = 100 steps.
    curve = Tradeoff.through(20.0, 10.0, 300)
    assert curve.steps_min == pytest.approx(100.0)
    assert curve.audio_min_s == pytest.approx(2000.0)  # E_min = S_min B_noise
    assert curve.steps(10.0) == pytest.approx(300.0)  # the measured point is on the curve
    assert curve.steps(20.0) == pytest.approx(200.0) and curve.audio_s(20.0) == pytest.approx(4000.0)  # 2x, 2x
    assert curve.steps(40.0) == pytest.approx(150.0) and curve.audio_s(40.0) == pytest.approx(6000.0)
    # (S / S_min - 1)(E / E_min - 1) = 1 at every batch: the hyperbola of McCandlish et al.
    for batch in (1.0, 7.0, 300.0):
        assert (curve.steps(batch) / 100 - 1) * (curve.audio_s(batch) / 2000 - 1) == pytest.approx(1.0)
    with pytest.raises(ValueError):
        Tradeoff.through(0.0, 10.0, 300)


def test_candidates_are_doublings_of_the_recipes_batch():
    assert candidate_batches(7.0, 500.0, 60.0) == [7.5, 15.0, 30.0, 60.0, 120.0, 240.0, 480.0]
    assert candidate_batches(60.0, 60.0, 60.0) == [60.0]


def test_the_recommendation_is_the_candidate_nearest_the_noise_scale_in_log():
    curve = Tradeoff.through(40.0, 10.0, 100)
    assert recommend(curve, [10.0, 20.0, 80.0])[0] == 20.0  # |log 0.5| < |log 2| ties; 20 comes first
    assert recommend(curve, [15.0, 30.0, 60.0, 120.0])[0] == 30.0  # log(40/30) = 0.29 < log(60/40) = 0.41
    chosen, why = recommend(curve, [60.0])
    assert chosen == 60.0 and "B_noise = 40 s" in why and "1.67x the fewest steps" in why


def test_the_noise_scale_of_synthetic_measurements_and_its_interval():
    """Measurements of tr(Sigma) ~ 100 +- 30 and |mu|^2 ~ 5 +- 2 (true B = 20): the ratio of means is near
    20 and the 90% bootstrap interval covers it in about 90% of repeated experiments."""
    rng = random.Random(1)
    covered, trials = 0, 200
    for trial in range(trials):
        tr = [rng.gauss(100.0, 30.0) for _ in range(30)]
        sq = [rng.gauss(5.0, 2.0) for _ in range(30)]
        low, high = bootstrap_interval(tr, sq, num_resamples=300, seed=trial)
        assert low <= ratio_of_means(tr, sq) <= high
        covered += low <= 20.0 <= high
    assert 0.82 <= covered / trials <= 0.97
    assert math.isnan(ratio_of_means([1.0, 2.0], [-1.0, 0.5]))


def test_saved_bytes_counts_the_activations_autograd_keeps_and_not_the_weights():
    model = nn.Sequential(nn.Linear(10, 20), nn.ReLU(), nn.Linear(20, 1))
    x = torch.randn(8, 10)
    # Linear 1 keeps its input (8 x 10), ReLU its output (8 x 20), which Linear 2 keeps too (one storage);
    # the weights they keep are parameters.
    assert saved_bytes(model, lambda: model(x).sum()) == 4 * (8 * 10 + 8 * 20)
    assert all(p.grad is None for p in model.parameters())  # the backward ran and was discarded
    assert static_bytes(model) == BYTES_PER_PARAM * (10 * 20 + 20 + 20 + 1)


def test_the_cap_is_what_fits_in_the_headroom():
    assert max_device_seconds(1.0, 0, 2**20) == pytest.approx(1024 * HEADROOM / PEAK_PER_SAVED)
    assert max_device_seconds(1.0, 2**30, 2**20) < 0  # the weights alone overflow
