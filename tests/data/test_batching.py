"""The batch planner's contract: cap, equal micro-batch counts, world-size invariance, coverage, resume."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from speechbs.config import BatchConfig
from speechbs.data.batching import (
    EMPTY_MICRO_BATCH, BatchPlanner, BatchStats, GlobalBatch, MicroBatch, Segment,
)
from speechbs.errors import PlanError

RATE = 16_000
WORLD_SIZES = [1, 2, 3, 4, 8]
# Large batches on the 3000-utterance corpus give few steps per epoch; the warning has its own test.
pytestmark = pytest.mark.filterwarnings("ignore:batch.seconds")


def librispeech_like(num_utts: int, seed: int = 0) -> np.ndarray:
    """Lengths in samples with LibriSpeech's shape: long left tail, sharp edge near 16 s, rare long ones."""
    quantiles = [0, .05, .10, .25, .5, .75, .9, .95, .995, 1.0]
    seconds = [1.6, 3.7, 5.3, 11.3, 14.1, 15.1, 15.8, 16.3, 17.5, 30.0]
    u = np.random.default_rng(seed).random(num_utts)
    return (np.interp(u, quantiles, seconds) * RATE).astype(np.int64)


def planner(lengths: np.ndarray, seed: int = 1, num_pad_lengths: int = 0, **batch) -> BatchPlanner:
    cfg = BatchConfig(**{"seconds": 600.0, "max_device_seconds": 87.5, **batch})
    return BatchPlanner(lengths, cfg, sample_rate_hz=RATE, seed=seed, num_pad_lengths=num_pad_lengths)


def cost_s(p: BatchPlanner, mb: MicroBatch) -> float:
    longest = max(s.num_samples for s in mb.segments)
    return len(mb.segments) * float(p._unit_cost_s(longest))


def key(segments) -> Counter:
    return Counter((s.index, s.offset_samples, s.num_samples) for s in segments)


@pytest.fixture(scope="module")
def lengths() -> np.ndarray:
    return librispeech_like(3000)


@pytest.mark.parametrize("batch", [
    {}, {"cost": "quadratic", "cost_length_seconds": 30.0}, {"crop": "max"}, {"crop": "shortest"},
    {"seconds": 90.0, "max_device_seconds": 40.0}, {"seconds": 3000.0, "max_device_seconds": 150.0},
])
def test_split_respects_cap_counts_and_keeps_the_global_set(lengths, batch):
    p = planner(lengths, **batch)
    for gb in p.plan_epoch(0)[:12]:
        for world_size in WORLD_SIZES:
            split = p.split(gb, world_size)
            assert len(split) == world_size
            assert len({len(micro) for micro in split}) == 1, "every rank must run as many micro-batches"
            flat = [mb for micro in split for mb in micro]
            for mb in flat:
                if mb.is_empty:
                    assert mb == MicroBatch((), 0)
                    continue
                assert cost_s(p, mb) <= p.cfg.max_device_seconds + 1e-9
                assert mb.padded_samples == len(mb.segments) * max(s.num_samples for s in mb.segments)
            assert key(s for mb in flat for s in mb.segments) == key(gb.segments)


def test_global_sequence_and_accounting_do_not_depend_on_world_size(lengths):
    p = planner(lengths)
    reference = [p.next_batch() for _ in range(5)]
    for world_size in WORLD_SIZES:
        q = planner(lengths)
        for gb in reference:
            got = q.next_batch()
            assert got == gb
            stats = BatchStats.from_split(got, q.split(got, world_size), RATE)
            assert stats.real_s == pytest.approx(gb.real_samples / RATE)
            assert stats.padded_s >= stats.real_s


@pytest.mark.parametrize("crop", ["none", "max", "shortest"])
def test_every_utterance_exactly_once_per_epoch(lengths, crop):
    p = planner(lengths, crop=crop)
    for epoch in (0, 1):
        rows = [s.index for gb in p.plan_epoch(epoch) for s in gb.segments]
        assert sorted(rows) == list(range(len(lengths)))


@pytest.mark.parametrize("seconds", [60.0, 600.0, 2400.0])
def test_realized_seconds_within_one_utterance_and_unbiased(lengths, seconds):
    p = planner(lengths, seconds=seconds)
    real = np.array([gb.real_samples for gb in p.plan_epoch(0)], dtype=np.float64)
    target = seconds * RATE
    # The epoch's remainder is spread over all K steps: per-step goal total/K, within target/(2K).
    slack = target / (2 * p.steps_per_epoch)
    assert np.abs(real - target).max() < lengths.max() + slack
    assert abs(real.mean() - target) / target <= 1 / (2 * p.steps_per_epoch) + 1e-12


def test_padding_is_small_with_buckets(lengths):
    p = planner(lengths, seconds=1200.0)
    stats = [BatchStats.from_split(gb, p.split(gb, 4), RATE) for gb in p.plan_epoch(0)]
    assert np.mean([s.packing_efficiency for s in stats]) > 0.98


def test_crop_max_counts_used_and_cropped_audio(lengths):
    p = planner(lengths, crop="max", crop_max_seconds=10.0)
    crop = 10 * RATE
    for gb in p.plan_epoch(0):
        for s in gb.segments:
            full = int(lengths[s.index])
            assert s.num_samples == min(full, crop)
            assert 0 <= s.offset_samples and s.offset_samples + s.num_samples <= full
        assert gb.real_samples == sum(s.num_samples for s in gb.segments)
        assert gb.real_samples + gb.cropped_samples == sum(int(lengths[s.index]) for s in gb.segments)
    offsets = {s.offset_samples for gb in p.plan_epoch(0) for s in gb.segments if lengths[s.index] > crop}
    assert len(offsets) > 10, "crop starts are random, not always 0"


def test_crop_shortest_cuts_each_group_to_its_shortest(lengths):
    p = planner(lengths, crop="shortest", seconds=300.0, max_device_seconds=80.0)
    capped = np.minimum(lengths, round(p.cfg.crop_max_seconds * RATE))
    total_cropped = 0
    for gb in p.plan_epoch(0):
        used = np.array([s.num_samples for s in gb.segments])
        assert np.all(used <= capped[[s.index for s in gb.segments]])
        assert gb.real_samples + gb.cropped_samples == sum(int(lengths[s.index]) for s in gb.segments)
        # Groups share one length, so the batch has far fewer distinct lengths than utterances.
        assert len(set(used.tolist())) < len(used) / 2
        total_cropped += gb.cropped_samples
    assert total_cropped > (lengths - capped).sum(), "crop-to-shortest cuts more than crop-to-max"


def test_same_seed_and_epoch_same_plan_other_epoch_or_seed_differs(lengths):
    a, b = planner(lengths, seed=7), planner(lengths, seed=7)
    assert a.plan_epoch(3) == b.plan_epoch(3)
    assert a.plan_epoch(3)[0].segments != a.plan_epoch(4)[0].segments
    assert planner(lengths, seed=8).plan_epoch(3)[0].segments != a.plan_epoch(3)[0].segments


def test_split_is_deterministic_and_balanced(lengths):
    p = planner(lengths, seconds=3000.0, max_device_seconds=150.0)
    gb = p.plan_epoch(0)[0]
    assert p.split(gb, 4) == p.split(gb, 4)
    stats = BatchStats.from_split(gb, p.split(gb, 4), RATE)
    # LPT: the busiest device has at most one bin more than an even share.
    assert stats.max_device_padded_s <= stats.padded_s / 4 + p.cfg.max_device_seconds
    assert stats.max_device_padded_s <= 1.15 * stats.padded_s / 4


def test_few_segments_give_empty_micro_batches():
    p = planner(np.full(40, 5 * RATE), seconds=10.0, max_device_seconds=10.0)
    gb = p.next_batch()
    assert len(gb.segments) == 2
    split = p.split(gb, 8)
    assert all(len(micro) == 1 for micro in split)
    assert sum(micro[0] == EMPTY_MICRO_BATCH for micro in split) == 6
    assert BatchStats.from_split(gb, split, RATE).num_empty_micro_batches == 6


def test_state_round_trip_mid_epoch_and_across_epochs(lengths):
    p = planner(lengths, seconds=2400.0)
    for _ in range(p.steps_per_epoch - 2):
        p.next_batch()
    state = p.state_dict()
    q = planner(lengths, seconds=2400.0)
    q.load_state_dict(state)
    ahead = [p.next_batch() for _ in range(4)]
    assert [q.next_batch() for _ in range(4)] == ahead
    assert ahead[2].epoch == 1 and ahead[2].unit_in_epoch == 0


def test_resume_with_another_plan_is_refused(lengths):
    state = planner(lengths).state_dict()
    with pytest.raises(PlanError, match="same data and batch settings"):
        planner(lengths, seconds=900.0).load_state_dict(state)
    # The cap only changes the split, so a resume on other hardware is allowed.
    planner(lengths, max_device_seconds=150.0).load_state_dict(state)


@pytest.mark.parametrize("lengths_s, batch, words", [
    ([31.2, 5.0] * 10, {"max_device_seconds": 20.0},
     ["manifest row 0", "raise batch.max_device_seconds to >= 31.2", 'set batch.crop = "max"']),
    ([31.2, 5.0] * 10, {"max_device_seconds": 20.0, "crop": "max", "crop_max_seconds": 25.0},
     ["batch.crop_max_seconds = 25.0", ">= 25.0", "lower batch.crop_max_seconds to <= 20.0"]),
    ([20.0] * 10, {"max_device_seconds": 30.0, "cost": "quadratic", "cost_length_seconds": 20.0},
     ["cost 40.00 s", ">= 40.0"]),
    ([12.0] * 10, {"seconds": 10.0, "max_device_seconds": 20.0},
     ["batch.seconds = 10.0 is shorter than the longest utterance", ">= 12.0"]),
    ([12.0] * 10, {"seconds": 200.0}, ["more than the whole training set", "<= 120.0"]),
    ([], {}, ["no utterances"]),
    ([1.0, 0.0], {"seconds": 1.0}, ["manifest row 1 has no audio"]),
])
def test_impossible_plans_say_what_to_change(lengths_s, batch, words):
    lengths = (np.asarray(lengths_s, dtype=np.float64) * RATE).astype(np.int64)
    with pytest.raises(PlanError) as err:
        planner(lengths, **batch)
    for word in words:
        assert word in str(err.value)


def test_types_are_the_published_api():
    seg = Segment(index=3, offset_samples=0, num_samples=10)
    gb = GlobalBatch(epoch=0, unit_in_epoch=0, num_units=1, target_s=1.0, segments=(seg,), real_samples=10, cropped_samples=0)
    assert MicroBatch((seg,), 10).padded_samples == 10 and gb.segments[0].index == 3


def test_real_samples_per_unit_matches_the_batches(lengths):
    p = planner(lengths, crop="shortest")
    assert p.real_samples_per_unit(2).tolist() == [gb.real_samples for gb in p.plan_epoch(2)]


def test_uneven_epoch_warns_with_the_realized_step():
    lengths = np.full(10, 6 * RATE)  # 60 s: 150 s would not fit; 40 s gives 2 steps of 30 s
    with pytest.warns(UserWarning, match="2 steps per epoch of 30.0 s"):
        p = planner(lengths, seconds=40.0, max_device_seconds=20.0)
    assert [gb.real_samples for gb in p.plan_epoch(0)] == [30 * RATE] * 2


@pytest.mark.parametrize("world_size", [1, 2, 3])
def test_a_noise_step_gets_two_micro_batches_from_the_same_global_batch(world_size):
    """A gradient-noise step needs two micro-batch gradients: a batch that fits one forward pass is cut
    in two (one per device on two devices), and the set of segments does not change."""
    p = planner(librispeech_like(400), seconds=120.0, max_device_seconds=200.0)
    batch = p.batch_at(0, 0)
    assert all(len(rank) == 1 for rank in p.split(batch, world_size))
    split = p.split(batch, world_size, min_micro_batches=2)
    assert all(len(rank) == max(1, 2 // world_size) for rank in split)
    assert sum(not mb.is_empty for rank in split for mb in rank) >= 2
    assert key(s for rank in split for mb in rank for s in mb.segments) == key(batch.segments)
    # The two micro-batches are the same on one device and on two.
    one, two = p.split(batch, 1, min_micro_batches=2), p.split(batch, 2, min_micro_batches=2)
    assert {mb.segments for mb in one[0]} == {rank[0].segments for rank in two}


@pytest.mark.parametrize("batch", [{}, {"crop": "max"}, {"cost": "quadratic", "cost_length_seconds": 30.0}])
def test_pad_lengths_round_widths_up_under_the_cap_and_change_only_the_split(lengths, batch):
    """A compiled run's micro-batches take one of few widths, still fit the cap, and the run's global
    batches and resume position are those of an eager run (its checkpoints resume each other)."""
    eager, padded = planner(lengths, **batch), planner(lengths, num_pad_lengths=6, **batch)
    assert 1 <= len(padded.pad_lengths_L) <= 6 and padded.pad_lengths_L[-1] == padded.capped_N.max()
    widths = set()
    for _ in range(8):
        gb = padded.next_batch()
        assert gb == eager.next_batch()
        for world_size in (1, 3):
            flat = [mb for micro in padded.split(gb, world_size) for mb in micro if not mb.is_empty]
            assert key(s for mb in flat for s in mb.segments) == key(gb.segments)
            for mb in flat:
                assert mb.width_samples in padded.pad_lengths_L
                assert mb.width_samples >= max(s.num_samples for s in mb.segments)
                cost = len(mb.segments) * float(padded._unit_cost_s(mb.width_samples))
                assert cost <= padded.cfg.max_device_seconds + 1e-9
                widths.add(mb.width_samples)
    assert len(widths) <= 6
    assert padded.state_dict() == eager.state_dict()
