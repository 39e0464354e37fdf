"""Every seed of a run, derived from the one number ``run.seed``. The only place that does seed arithmetic.

World-size invariance (DESIGN.md 2) needs each random draw to be keyed by what it is
about, never by where it happens to run: the batch plan by (seed, epoch), an utterance's
masks, distractors, Gumbel noise and mixing by (seed, step, manifest row), a step's
LayerDrop by (seed, step). A resume then needs nothing but the step number, and a run
on 64 GPUs draws what a run on one draws. Only dropout and other draws from the global
generators also depend on the rank (:func:`rank_seed`): they are per-element noise whose
placement does not matter.

The strides are large odd numbers that keep the (seed, step, row) triples apart inside
int64; ``tests/test_seeds.py`` pins the formulas to known values, so changing a constant
(which would change every run's masks) fails a test. Torch is not imported here:
:func:`utterance_seeds` works on whatever int tensor it is given. Generators that are not
drawn from the run seed (the synthetic corpus's, k-means', the noise bootstrap's) belong
to their own tools' settings and stay with them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

RUN_STRIDE = 1_000_003
"""Spreads run seeds apart so that (seed, step) pairs do not collide for steps below it."""
UTTERANCE_STRIDE = 10_000_019
"""Spreads (seed, step) apart so that manifest rows below it can be added."""
STEP_MULTIPLIER = 4_099
"""Sets a step's global-generator seed apart from its LayerDrop seed (the same (seed, step) pair)."""
REPEAT_MULTIPLIER = 1_009
"""Spreads (seed, batch size) apart so that ``speechbs noise`` repeats below it can be added."""
MAX_RUN_SEED = (2**63 - 1) // (RUN_STRIDE * UTTERANCE_STRIDE) - 1
"""The largest ``run.seed`` whose utterance seeds fit int64 (steps and rows below their strides): 922,331."""
PARTNER_STREAM = 0x6D6978
"""'mix': keeps the mixing-partner draws apart from the batch planner's generator of (seed, epoch)."""


def init_seed(run_seed: int) -> int:
    """The seed of the model's initialization: the run seed itself, the same on every rank."""
    return run_seed


def rank_seed(seed: int, rank: int) -> int:
    """``seed`` made distinct per rank, for draws from the global generators (dropout)."""
    return seed + RUN_STRIDE * rank


def step_seed(run_seed: int, step: int) -> int:
    """The global-generator seed of optimizer step ``step`` (0-based), before :func:`rank_seed`.

    Reseeding every step from (seed, step) replaces RNG state in checkpoints: a resume at
    step k draws what an uninterrupted run draws, at any world size.
    """
    return (run_seed * RUN_STRIDE + step) * STEP_MULTIPLIER


def layerdrop_seed(run_seed: int, step: int) -> int:
    """The seed of step ``step``'s LayerDrop choice: every micro-batch on every rank drops the same layers."""
    return run_seed * RUN_STRIDE + step


def utterance_seed(run_seed: int, step: int, row: int) -> int:
    """The seed of manifest row ``row`` at step ``step``: its masks, distractors, Gumbel noise and mixing.

    It depends on nothing else, so the same utterance at the same step draws the same in
    any micro-batch on any rank: the heart of world-size invariance. Distinct for
    ``step < RUN_STRIDE`` and ``row < UTTERANCE_STRIDE``; it fits int64 for run seeds
    below about 9 * 10**5.
    """
    return (run_seed * RUN_STRIDE + step) * UTTERANCE_STRIDE + row


def utterance_seeds(run_seed: int, step: int, indices_B: torch.Tensor) -> torch.Tensor:
    """:func:`utterance_seed` of every row of a micro-batch (``indices_B``: manifest rows) as int64."""
    return utterance_seed(run_seed, step, 0) + indices_B.long()


def epoch_plan_key(run_seed: int, epoch: int) -> list[int]:
    """The entropy of the batch planner's generator for ``epoch`` (numpy ``default_rng``).

    One generator per (seed, epoch): any epoch can be planned without planning the ones before.
    """
    return [run_seed, epoch]


def partner_key(run_seed: int, epoch: int, unit_in_epoch: int) -> list[int]:
    """The entropy of the generator that draws a global batch's mixing partners (WavLM, data/partners.py)."""
    return [run_seed, epoch, unit_in_epoch, PARTNER_STREAM]


def noise_repeat_seed(seed: int, batch_s: float, repeat: int) -> int:
    """Dropout seed of one ``speechbs noise`` repeat: distinct per (seed, batch, repeat), the same at any world size."""
    return (seed * RUN_STRIDE + int(round(batch_s * 1000))) * REPEAT_MULTIPLIER + repeat
