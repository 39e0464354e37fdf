"""The seed formulas (speechbs/seeds.py): pinned values, independence of placement, no collisions.

Every run's masks, distractors, Gumbel noise, LayerDrop and dropout come from these
formulas, so an edit of a constant silently changes every experiment (and breaks the
resume of every run in flight): the known values below fail first.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from speechbs import seeds


def test_known_values_pin_every_formula() -> None:
    # Worked by hand from the formulas in the docstrings of speechbs/seeds.py.
    assert seeds.init_seed(5) == 5
    assert seeds.utterance_seed(1, 2, 3) == 10_000_069_000_098  # (1 * 1_000_003 + 2) * 10_000_019 + 3
    assert seeds.step_seed(7, 5) == 28_693_106_574  # (7 * 1_000_003 + 5) * 4_099
    assert seeds.layerdrop_seed(7, 5) == 7_000_026  # 7 * 1_000_003 + 5
    assert seeds.rank_seed(3, 2) == 2_000_009  # 3 + 1_000_003 * 2
    assert seeds.noise_repeat_seed(2, 1.5, 4) == 2_019_519_558  # (2 * 1_000_003 + 1500) * 1_009 + 4
    assert seeds.epoch_plan_key(4, 9) == [4, 9]
    assert seeds.partner_key(4, 9, 2) == [4, 9, 2, 0x6D6978]


def test_utterance_seeds_match_the_scalar_formula_as_int64() -> None:
    rows_B = torch.tensor([0, 17, 9_999], dtype=torch.int32)
    seeds_B = seeds.utterance_seeds(3, 41, rows_B)
    assert seeds_B.dtype == torch.int64
    assert seeds_B.tolist() == [seeds.utterance_seed(3, 41, row) for row in rows_B.tolist()]


def test_utterance_seeds_do_not_depend_on_micro_batch_order_or_rank_placement() -> None:
    """A global batch's rows cut into micro-batches and ranks in any way get the seeds of the whole batch."""
    rows = np.random.default_rng(0).permutation(200)[:24]
    whole = dict(zip(rows.tolist(), seeds.utterance_seeds(1, 7, torch.from_numpy(rows)).tolist()))
    for num_ranks, num_micro in ((1, 1), (2, 3), (4, 2), (3, 5)):
        order = np.random.default_rng(num_ranks * 10 + num_micro).permutation(rows)
        for part in np.array_split(order, num_ranks * num_micro):  # one rank's micro-batch each
            got = seeds.utterance_seeds(1, 7, torch.from_numpy(part)).tolist()
            assert got == [whole[row] for row in part.tolist()]


def test_distinct_triples_give_distinct_utterance_seeds() -> None:
    grid = list(itertools.product(range(4), range(60), range(120)))  # (run seed, step, row)
    assert len({seeds.utterance_seed(*triple) for triple in grid}) == len(grid)


def test_step_seeds_of_every_rank_are_distinct_and_apart_from_layerdrop_seeds() -> None:
    grid = list(itertools.product(range(3), range(400), range(8)))  # (run seed, step, rank)
    dropout = {seeds.rank_seed(seeds.step_seed(seed, step), rank) for seed, step, rank in grid}
    assert len(dropout) == len(grid)
    layerdrop = {seeds.layerdrop_seed(seed, step) for seed, step, _ in grid}
    assert len(layerdrop) == 3 * 400


def test_utterance_seeds_fit_int64_for_large_run_seeds() -> None:
    largest = seeds.utterance_seed(seeds.MAX_RUN_SEED, seeds.RUN_STRIDE - 1, seeds.UTTERANCE_STRIDE - 1)
    assert largest < 2**63
    assert seeds.utterance_seed(seeds.MAX_RUN_SEED + 1, seeds.RUN_STRIDE - 1, seeds.UTTERANCE_STRIDE - 1) >= 2**63
    assert int(seeds.utterance_seeds(900_000, 0, torch.tensor([1]))[0]) == seeds.utterance_seed(900_000, 0, 1)


def test_a_run_seed_whose_utterance_seeds_overflow_is_refused() -> None:
    from speechbs.config import RunConfig
    from speechbs.errors import ConfigError

    RunConfig(seed=seeds.MAX_RUN_SEED)
    with pytest.raises(ConfigError, match=r"run.seed: must be in 0..922,331"):
        RunConfig(seed=seeds.MAX_RUN_SEED + 1)
