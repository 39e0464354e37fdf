"""WavLM: utterance mixing (where, what, how loud, reproducible, never padding) and its place in the model."""

from __future__ import annotations

import math

import torch

from speechbs.models import wavlm, wavlm_config
from speechbs.models.blocks.mixing import mix_utterances
from speechbs.models.hubert import ClusterTargets

LENGTHS = [4_000, 2_500, 3_300, 1_800]


def _batch() -> tuple[torch.Tensor, torch.Tensor]:
    """Rows of distinct random audio; padding holds NaN, so any read of it would show."""
    gen = torch.Generator().manual_seed(0)
    wav_BT = torch.full((len(LENGTHS), max(LENGTHS)), float("nan"), dtype=torch.float64)
    for b, n in enumerate(LENGTHS):
        wav_BT[b, :n] = (b + 1) * torch.randn(n, generator=gen, dtype=torch.float64)
    return wav_BT, torch.tensor(LENGTHS)


def _find_source(added_N: torch.Tensor, wav_BT: torch.Tensor, lengths_B: torch.Tensor,
                 row: int) -> tuple[int, int, float]:
    """(partner row, partner offset, scale) such that added == scale * partner[offset:offset+len], by search."""
    n = added_N.shape[0]
    for j, length in enumerate(lengths_B.tolist()):
        for t in range(length - n + 1):
            seg_N = wav_BT[j, t:t + n]
            scale = float(added_N @ seg_N / (seg_N @ seg_N))
            if torch.allclose(added_N, scale * seg_N, rtol=1e-9, atol=1e-9):
                return j, t, scale
    raise AssertionError(f"row {row}: the added signal is no scaled piece of any utterance")


def test_mixing_adds_a_short_scaled_piece_of_another_utterance_inside_valid_samples() -> None:
    wav_BT, lengths_B = _batch()
    mixed_BT, region_BT = mix_utterances(wav_BT, lengths_B, torch.tensor([3, 1, 4, 1]), mix_prob=1.0)
    valid_BT = torch.arange(wav_BT.shape[1]).view(1, -1) < lengths_B.view(-1, 1)
    assert not (region_BT & ~valid_BT).any()
    assert torch.isnan(mixed_BT[~valid_BT]).all() and torch.isfinite(mixed_BT[valid_BT]).all()
    assert torch.equal(mixed_BT[valid_BT & ~region_BT], wav_BT[valid_BT & ~region_BT])  # untouched outside
    energy_B = torch.stack([wav_BT[b, :n].pow(2).mean() for b, n in enumerate(LENGTHS)])
    for b, n in enumerate(LENGTHS):
        where_N = region_BT[b].nonzero().view(-1)
        assert 1 <= where_N.numel() < 0.5 * n, "every row mixed (mix_prob 1), with less than half its length"
        assert torch.equal(where_N, torch.arange(int(where_N[0]), int(where_N[-1]) + 1))  # one segment
        j, _, scale = _find_source(mixed_BT[b, where_N] - wav_BT[b, where_N], wav_BT, lengths_B, b)
        assert j != b
        ratio_db = 10 * math.log10(energy_B[b] / (scale**2 * energy_B[j]))
        assert -5.0 - 1e-9 <= ratio_db <= 5.0 + 1e-9


def test_mixing_is_reproducible_and_follows_the_probability() -> None:
    wav_BT, lengths_B = _batch()
    seeds_B = torch.tensor([10, 11, 12, 13])
    a = mix_utterances(wav_BT, lengths_B, seeds_B, mix_prob=0.5)
    b = mix_utterances(wav_BT, lengths_B, seeds_B, mix_prob=0.5)
    assert torch.equal(a[1], b[1]) and torch.allclose(a[0], b[0], equal_nan=True)
    none = mix_utterances(wav_BT, lengths_B, seeds_B, mix_prob=0.0)
    assert not none[1].any()
    alone = mix_utterances(wav_BT[:1], lengths_B[:1], seeds_B[:1], mix_prob=1.0)
    assert not alone[1].any()  # no partner in a micro-batch of one
    seeds = torch.arange(4_000)
    wav2_BT = torch.randn(2, 800).repeat(2_000, 1)
    frac = mix_utterances(wav2_BT, torch.full((4_000,), 800), seeds, mix_prob=0.2)[1].any(dim=1).float().mean()
    assert abs(float(frac) - 0.2) < 0.03


def _targets() -> ClusterTargets:
    labels_BL = torch.randint(0, 100, (2, 48), generator=torch.Generator().manual_seed(0))
    return ClusterTargets(labels_BL, torch.tensor([48, 30]), 100.0, 100)


def test_model_mixes_in_training_only_and_keeps_the_targets() -> None:
    torch.manual_seed(0)
    model = wavlm.WavLMModel(wavlm_config.tiny(dropout=0.0, attention_dropout=0.0, dropout_input=0.0, mix_prob=1.0))
    gen = torch.Generator().manual_seed(1)
    wav_BT = torch.randn(2, 8_000, generator=gen)
    lengths_B = torch.tensor([8_000, 6_000])
    wav_BT[1, 6_000:] = 0.0
    seeds_B = torch.tensor([7, 8])
    mixed = model.train()(wav_BT, lengths_B, seeds_B=seeds_B, targets=_targets())
    model.cfg.mix_prob = 0.0
    clean = model(wav_BT, lengths_B, seeds_B=seeds_B, targets=_targets())
    model.cfg.mix_prob = 1.0
    assert torch.equal(mixed.labels_BT, clean.labels_BT) and torch.equal(mixed.mask_BT, clean.mask_BT)
    assert not torch.allclose(mixed.encoder.features_BTC, clean.encoder.features_BTC)
    evaluated = model.eval()(wav_BT, lengths_B, seeds_B=seeds_B, targets=_targets())
    model.cfg.mix_prob = 0.0
    evaluated_clean = model(wav_BT, lengths_B, seeds_B=seeds_B, targets=_targets())
    torch.testing.assert_close(evaluated.encoder.features_BTC, evaluated_clean.encoder.features_BTC)
