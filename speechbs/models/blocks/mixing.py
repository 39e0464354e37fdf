"""WavLM utterance mixing: overlap a piece of another utterance of the batch (Chen et al. 2022, section III-B).

Legend: B utterances, T samples.

For denoising masked prediction, each utterance is, with probability
``mix_prob``, overlapped by a segment of ANOTHER utterance of the same
micro-batch: length l < ``max_fraction`` (50%) of the primary's valid length
(and at most the partner's), at a random place in the primary and in the
partner, scaled so that the primary-to-partner energy ratio is r dB, r uniform
in [``ratio_min_db``, ``ratio_max_db``] (-5 to 5 dB). Energies are mean
squares over each utterance's valid samples. The caller keeps the primary's
cluster labels as targets. Padding is never read nor written: the segment
lies inside both valid lengths, and partners are mixed from the UNMIXED batch.

Every choice (whether, partner, length, both offsets, ratio) comes from the
utterance's seed (``counter_rng``), so it is reproducible; but the partner is
drawn among the rows of the micro-batch, so the result depends on the
micro-batch composition (like wav2vec 2.0's diversity term, it is not
invariant to world size or micro-batch size). A micro-batch of one utterance
is never mixed.
"""

from __future__ import annotations

import torch

from speechbs.models.blocks import counter_rng

"""counter_rng stream of the mixing draws (counters 0..5), far from the ids of ``counter_rng``'s own streams."""


def mix_utterances(wav_BT: torch.Tensor, lengths_B: torch.Tensor, seeds_B: torch.Tensor, *, mix_prob: float,
                   max_fraction: float = 0.5, ratio_min_db: float = -5.0,
                   ratio_max_db: float = 5.0) -> tuple[torch.Tensor, torch.Tensor]:
    """(mixed waveforms (B, T), True where a partner's samples were added (B, T))."""
    B, T = wav_BT.shape
    device = wav_BT.device
    region_BT = torch.zeros(B, T, dtype=torch.bool, device=device)
    if B < 2 or mix_prob <= 0.0:
        return wav_BT, region_BT
    lengths_B = lengths_B.to(device)
    u_B6 = counter_rng.uniform_open(seeds_B.to(device).view(-1, 1), counter_rng.STREAM_MIX,
                                    torch.arange(6, device=device).view(1, -1))
    row_B = torch.arange(B, device=device)
    partner_B = torch.floor(u_B6[:, 1] * (B - 1)).long()
    partner_B = partner_B + (partner_B >= row_B).long()
    # l in [1, ceil(max_fraction * L) - 1]: strictly shorter than max_fraction of the primary.
    num_lengths_B = torch.ceil(max_fraction * lengths_B.double()).long() - 1
    seg_B = 1 + torch.floor(u_B6[:, 2] * num_lengths_B.clamp(min=1)).long()
    seg_B = torch.minimum(seg_B, lengths_B[partner_B])
    mixed_B = (u_B6[:, 0] < mix_prob) & (num_lengths_B >= 1) & (seg_B >= 1)
    start_B = torch.floor(u_B6[:, 3] * (lengths_B - seg_B + 1).clamp(min=1)).long()
    src_start_B = torch.floor(u_B6[:, 4] * (lengths_B[partner_B] - seg_B + 1).clamp(min=1)).long()
    ratio_db_B = ratio_min_db + (ratio_max_db - ratio_min_db) * u_B6[:, 5]

    pos_BT = torch.arange(T, device=device).view(1, -1)
    valid_BT = pos_BT < lengths_B.view(-1, 1)
    stats_dtype = torch.promote_types(wav_BT.dtype, torch.float32)
    sq_BT = wav_BT.to(stats_dtype).pow(2)
    energy_B = torch.where(valid_BT, sq_BT, torch.zeros_like(sq_BT)).sum(dim=1) / lengths_B.clamp(min=1)
    partner_energy_B = energy_B[partner_B]
    scale_B = torch.where(partner_energy_B > 0,
                          torch.sqrt(energy_B / (10.0 ** (ratio_db_B / 10.0) * partner_energy_B.clamp(min=1e-30))),
                          torch.zeros_like(energy_B))
    region_BT = (mixed_B.view(-1, 1) & (pos_BT >= start_B.view(-1, 1))
                 & (pos_BT < (start_B + seg_B).view(-1, 1)))
    src_BT = (src_start_B.view(-1, 1) + pos_BT - start_B.view(-1, 1)).clamp(0, T - 1)
    partner_BT = wav_BT[partner_B.view(-1, 1), src_BT].to(stats_dtype)
    added_BT = torch.where(region_BT, scale_B.view(-1, 1) * partner_BT, torch.zeros_like(partner_BT))
    return (wav_BT.to(stats_dtype) + added_BT).to(wav_BT.dtype), region_BT
