"""Mixing partners: a function of the global batch alone, another utterance of it, at the asked rate."""

from __future__ import annotations

from speechbs.data.batching import GlobalBatch, Segment
from speechbs.data.partners import PartnerDraw


def _batch(num_segments: int, unit_in_epoch: int = 0, first: int = 0) -> GlobalBatch:
    segments = tuple(Segment(first + i, 10 * i, 1_000 + i) for i in range(num_segments))
    return GlobalBatch(0, unit_in_epoch, 1, 1.0, segments, sum(s.num_samples for s in segments), 0)


def test_partners_are_other_utterances_of_the_batch_drawn_by_seed_and_step() -> None:
    draw = PartnerDraw(probability=0.5, seed=3)
    batch = _batch(40)
    chosen = draw.choose(batch)
    assert chosen == draw.choose(_batch(40))  # a function of (seed, epoch, step, batch): nothing else
    assert all(index != partner.index for index, partner in chosen.items())
    assert set(chosen.values()) <= set(batch.segments)  # the partner's segment as the step uses it
    assert chosen != draw.choose(_batch(40, unit_in_epoch=1)) != PartnerDraw(probability=0.5, seed=4).choose(batch)


def test_partner_rate_and_edge_cases() -> None:
    chosen = PartnerDraw(probability=0.2, seed=0).choose(_batch(5_000))
    assert abs(len(chosen) / 5_000 - 0.2) < 0.03
    assert PartnerDraw(probability=1.0, seed=0).choose(_batch(1)) == {}  # nobody to mix with
    assert PartnerDraw(probability=0.0, seed=0).choose(_batch(10)) == {}
    assert len(PartnerDraw(probability=1.0, seed=0).choose(_batch(2))) == 2
