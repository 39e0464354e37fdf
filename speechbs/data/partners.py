"""Mixing partners chosen from the whole global batch (WavLM's utterance mixing; Chen et al. 2022, section III-B).

Legend: S = segments (utterances) in one global batch.

WavLM overlaps some utterances of a batch with a piece of another utterance of
the same batch. Drawn among the rows of one forward pass, the partner, and so
the mixed input, would depend on how the step is cut into micro-batches and
ranks, which the batch contract (DESIGN.md 2) does not allow. The global batch
is known here, in the data pipeline, before it is split, so the choice is made
here: which utterances are mixed and with whom depends only on (run seed,
epoch, step in epoch) and the global batch, and the loader attaches each mixed
row's partner audio (the partner's segment as used in the step, decoded a
second time) wherever that partner itself lands. Where the piece goes and how
loud it is stay the model's draws (``speechbs.models.blocks.mixing``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from speechbs import seeds
from speechbs.data.batching import GlobalBatch, Segment


@dataclass(frozen=True)
class PartnerDraw:
    """Which utterances of a global batch are mixed, and with which other utterance of it."""

    probability: float
    """Chance that an utterance is mixed (WavLM's ``mix_prob``)."""
    seed: int
    """Run seed (``run.seed``)."""

    def choose(self, batch: GlobalBatch) -> dict[int, Segment]:
        """Manifest row -> the segment it is mixed with, for the rows chosen to be mixed.

        Each chosen row gets a partner uniformly among the OTHER segments of the batch;
        a batch of one utterance mixes nothing. A manifest row appears at most once in
        a global batch (the planner uses each utterance once per epoch).
        """
        segments = batch.segments
        num_segments = len(segments)
        if num_segments < 2 or self.probability <= 0.0:
            return {}
        rng = np.random.default_rng(seeds.partner_key(self.seed, batch.epoch, batch.unit_in_epoch))
        mixed_S = rng.random(num_segments) < self.probability
        partner_S = rng.integers(0, num_segments - 1, size=num_segments)
        partner_S += partner_S >= np.arange(num_segments)  # skip the row itself
        return {segments[i].index: segments[int(partner_S[i])] for i in np.flatnonzero(mixed_S).tolist()}
