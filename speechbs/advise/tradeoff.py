"""The steps/data trade-off of McCandlish et al. (2018), in seconds of audio. Pure arithmetic, torch-free.

Legend: B = a batch, s of audio per step; B_noise = the measured noise scale B_simple, s; S = optimizer
steps and E = audio, s, to reach a given loss; S_min and E_min their limits (infinite and vanishing batch).

"An Empirical Model of Large-Batch Training" (McCandlish, Kaplan, Amodei et al. 2018, eq. 2.11) finds
that the steps and the data needed to reach a loss trade off as

    S = S_min (1 + B_noise / B),   E = E_min (1 + B / B_noise),   E_min = S_min B_noise,

so at B = B_noise a run takes twice the fewest steps and twice the least data: the critical batch.
One measured point (a probe run of S0 steps at a batch B0 that reached some loss) fixes S_min =
S0 / (1 + B_noise / B0), and with it the whole curve for that loss. The curve holds for the loss the
probe reached; B_noise grows as the loss falls, so for the rest of a run it is an extrapolation.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass


@dataclass(frozen=True)
class Tradeoff:
    """The trade-off curve through one measured point, for the loss that point reached."""

    b_noise_s: float
    """B_noise = B_simple, s of audio."""
    steps_min: float
    """S_min: the steps an infinitely large batch would need, steps."""

    @classmethod
    def through(cls, b_noise_s: float, batch_s: float, num_steps: float) -> Tradeoff:
        """The curve on which ``num_steps`` steps of ``batch_s`` reach the probe's loss."""
        if not (b_noise_s > 0 and batch_s > 0 and num_steps > 0):
            raise ValueError(f"the trade-off needs a positive noise scale, batch and step count "
                             f"(got {b_noise_s}, {batch_s}, {num_steps})")
        return cls(b_noise_s, num_steps / (1.0 + b_noise_s / batch_s))

    @property
    def audio_min_s(self) -> float:
        """E_min = S_min B_noise: the least audio (a vanishing batch) that reaches the loss, s."""
        return self.steps_min * self.b_noise_s

    def steps(self, batch_s: float) -> float:
        """S(B) = S_min (1 + B_noise / B)."""
        return self.steps_min * (1.0 + self.b_noise_s / batch_s)

    def audio_s(self, batch_s: float) -> float:
        """E(B) = E_min (1 + B / B_noise), s of audio."""
        return self.audio_min_s * (1.0 + batch_s / self.b_noise_s)


def candidate_batches(low_s: float, high_s: float, anchor_s: float) -> list[float]:
    """Doublings of ``anchor_s`` (the recipe's batch) that lie in [low_s, high_s], the anchor included."""
    batches, batch = [], anchor_s
    while batch / 2 >= low_s * (1 - 1e-9):
        batch /= 2
    while batch <= high_s * (1 + 1e-9):
        batches.append(batch)
        batch *= 2
    return batches


def recommend(tradeoff: Tradeoff, candidates: list[float]) -> tuple[float, str]:
    """The candidate nearest (in log) the critical batch B_noise, and why."""
    if not candidates:
        raise ValueError("no candidate batches")
    nearest = min(candidates, key=lambda b: abs(math.log(b / tradeoff.b_noise_s)))
    return nearest, (f"the candidate nearest the critical batch B_noise = {tradeoff.b_noise_s:.3g} s: "
                     f"{tradeoff.steps(nearest) / tradeoff.steps_min:.2f}x the fewest steps and "
                     f"{tradeoff.audio_s(nearest) / tradeoff.audio_min_s:.2f}x the least audio")


def ratio_of_means(tr_sigma: list[float], mu_sq: list[float]) -> float:
    """B_simple of a set of measurements: mean tr(Sigma) over mean |mu|^2 (NaN when the mean |mu|^2 <= 0)."""
    sq = math.fsum(mu_sq) / len(mu_sq)
    return math.fsum(tr_sigma) / len(tr_sigma) / sq if sq > 0 else math.nan


def bootstrap_interval(tr_sigma: list[float], mu_sq: list[float], *, num_resamples: int = 2_000,
                       level: float = 0.9, seed: int = 0) -> tuple[float, float]:
    """A percentile bootstrap interval of :func:`ratio_of_means` over the measurements (resampled in pairs);
    resamples whose mean |mu|^2 is not positive are left out (the interval is then only as wide as those kept)."""
    rng = random.Random(seed)
    pairs = list(zip(tr_sigma, mu_sq))
    values = []
    for _ in range(num_resamples):
        draw = [pairs[rng.randrange(len(pairs))] for _ in pairs]
        value = ratio_of_means([t for t, _ in draw], [s for _, s in draw])
        if math.isfinite(value):
            values.append(value)
    if not values:
        return math.nan, math.nan
    values.sort()
    tail = (1 - level) / 2
    return values[int(tail * (len(values) - 1))], values[int((1 - tail) * (len(values) - 1))]
