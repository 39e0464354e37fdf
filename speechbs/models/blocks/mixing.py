"""WavLM utterance mixing: overlap a piece of another utterance of the batch (Chen et al. 2022, section III-B).

Legend: B utterances, T samples.

For denoising masked prediction, each utterance is, with probability
``mix_prob``, overlapped by a segment of ANOTHER utterance of the same
batch: length l < ``max_fraction`` (50%) of the primary's valid length
(and at most the partner's), at a random place in the primary and in the
partner, scaled so that the primary-to-partner energy ratio is r dB, r uniform
in [``ratio_min_db``, ``ratio_max_db``] (-5 to 5 dB). Energies are mean
squares over each utterance's valid samples. The caller keeps the primary's
cluster labels as targets. Padding is never read nor written: the segment
lies inside both valid lengths, and partners are mixed from the UNMIXED batch.

Where the partners come from is the caller's choice. :func:`mix_with_partners`
takes each row's partner audio as given (:class:`MixPartners`): in pretraining the
data loader picks them among the utterances of the whole GLOBAL batch
(``speechbs.data.partners``), so the mixed input does not depend on how the step
is split into micro-batches and ranks. :func:`mix_utterances` draws them among the
rows of the batch passed in (the partner drawn from the utterance's seed), which
makes the result depend on the micro-batch composition; a batch of one utterance
is then never mixed. Where the piece lies and how loud it is (length, both
offsets, ratio) come from the utterance's seed (``counter_rng``) either way.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from speechbs.models.blocks import counter_rng

# counter_rng counters of the mixing draws (stream STREAM_MIX): 0 whether, 1 which row
# (in-batch partners only), 2 length, 3 offset in the primary, 4 offset in the partner, 5 ratio.
_NUM_DRAWS = 6


@dataclass
class MixPartners:
    """Each row's partner: the audio of the utterance it is overlapped with."""

    wav_BT: torch.Tensor
    """Partner audio (B, T'), zero-padded; T' need not be the primaries' T."""
    lengths_B: torch.Tensor
    """int64, the partner's valid samples; 0 for a row that is not mixed."""


def _draws(seeds_B: torch.Tensor, device: torch.device) -> torch.Tensor:
    """(B, 6) uniforms in (0, 1) of the utterances' mixing stream."""
    return counter_rng.uniform_open(seeds_B.to(device).view(-1, 1), counter_rng.STREAM_MIX,
                                    torch.arange(_NUM_DRAWS, device=device).view(1, -1))


def partners_in_batch(wav_BT: torch.Tensor, lengths_B: torch.Tensor, seeds_B: torch.Tensor, *,
                      mix_prob: float) -> MixPartners:
    """Partners among the other rows of this batch: each row mixed with probability ``mix_prob``."""
    B = wav_BT.shape[0]
    device = wav_BT.device
    lengths_B = lengths_B.to(device)
    u_B6 = _draws(seeds_B, device)
    row_B = torch.arange(B, device=device)
    partner_B = torch.floor(u_B6[:, 1] * max(B - 1, 1)).long()
    partner_B = (partner_B + (partner_B >= row_B).long()).clamp(max=B - 1)
    mixed_B = (u_B6[:, 0] < mix_prob) & (B >= 2)
    return MixPartners(wav_BT[partner_B], torch.where(mixed_B, lengths_B[partner_B], torch.zeros_like(lengths_B)))


def mix_utterances(wav_BT: torch.Tensor, lengths_B: torch.Tensor, seeds_B: torch.Tensor, *, mix_prob: float,
                   max_fraction: float = 0.5, ratio_min_db: float = -5.0,
                   ratio_max_db: float = 5.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Mix with partners drawn among this batch's rows: (mixed waveforms (B, T), True where a partner was added)."""
    if wav_BT.shape[0] < 2 or mix_prob <= 0.0:
        return wav_BT, torch.zeros(wav_BT.shape, dtype=torch.bool, device=wav_BT.device)
    partners = partners_in_batch(wav_BT, lengths_B, seeds_B, mix_prob=mix_prob)
    return mix_with_partners(wav_BT, lengths_B, seeds_B, partners, max_fraction=max_fraction,
                             ratio_min_db=ratio_min_db, ratio_max_db=ratio_max_db)


def mix_with_partners(wav_BT: torch.Tensor, lengths_B: torch.Tensor, seeds_B: torch.Tensor,
                      partners: MixPartners, *, max_fraction: float = 0.5, ratio_min_db: float = -5.0,
                      ratio_max_db: float = 5.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Overlap each row that has a partner: (mixed waveforms (B, T), True where the partner was added (B, T))."""
    B, T = wav_BT.shape
    device = wav_BT.device
    lengths_B = lengths_B.to(device)
    partner_wav_BT, partner_lengths_B = partners.wav_BT.to(device), partners.lengths_B.to(device)
    u_B6 = _draws(seeds_B, device)
    # l in [1, ceil(max_fraction * L) - 1]: strictly shorter than max_fraction of the primary.
    num_lengths_B = torch.ceil(max_fraction * lengths_B.double()).long() - 1
    seg_B = 1 + torch.floor(u_B6[:, 2] * num_lengths_B.clamp(min=1)).long()
    seg_B = torch.minimum(seg_B, partner_lengths_B)
    mixed_B = (partner_lengths_B > 0) & (num_lengths_B >= 1) & (seg_B >= 1)
    start_B = torch.floor(u_B6[:, 3] * (lengths_B - seg_B + 1).clamp(min=1)).long()
    src_start_B = torch.floor(u_B6[:, 4] * (partner_lengths_B - seg_B + 1).clamp(min=1)).long()
    ratio_db_B = ratio_min_db + (ratio_max_db - ratio_min_db) * u_B6[:, 5]

    stats_dtype = torch.promote_types(wav_BT.dtype, torch.float32)
    energy_B = _energy(wav_BT, lengths_B, stats_dtype)
    partner_energy_B = _energy(partner_wav_BT, partner_lengths_B, stats_dtype)
    scale_B = torch.where(partner_energy_B > 0,
                          torch.sqrt(energy_B / (10.0 ** (ratio_db_B / 10.0) * partner_energy_B.clamp(min=1e-30))),
                          torch.zeros_like(energy_B))
    pos_BT = torch.arange(T, device=device).view(1, -1)
    region_BT = (mixed_B.view(-1, 1) & (pos_BT >= start_B.view(-1, 1))
                 & (pos_BT < (start_B + seg_B).view(-1, 1)))
    src_BT = (src_start_B.view(-1, 1) + pos_BT - start_B.view(-1, 1)).clamp(0, partner_wav_BT.shape[1] - 1)
    piece_BT = partner_wav_BT[torch.arange(B, device=device).view(-1, 1), src_BT].to(stats_dtype)
    added_BT = torch.where(region_BT, scale_B.view(-1, 1) * piece_BT, torch.zeros_like(piece_BT))
    return (wav_BT.to(stats_dtype) + added_BT).to(wav_BT.dtype), region_BT


def _energy(wav_BT: torch.Tensor, lengths_B: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Mean square over each row's valid samples, (B,) (0 for an empty row); padding is never read."""
    valid_BT = torch.arange(wav_BT.shape[1], device=wav_BT.device).view(1, -1) < lengths_B.view(-1, 1)
    sq_BT = wav_BT.to(dtype).pow(2)
    return torch.where(valid_BT, sq_BT, torch.zeros_like(sq_BT)).sum(dim=1) / lengths_B.clamp(min=1)
