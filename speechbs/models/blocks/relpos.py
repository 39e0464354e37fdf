"""WavLM's gated relative position bias (Chen et al. 2022, section III-A; unilm ``WavLM.py``).

Legend: B utterances, T frames, C channels, H heads, D = C / H channels per head.

Every attention score (query i, key j) gets a learned bias per head that
depends on the bucketed offset j - i (T5-style buckets: 320 in all, half per
direction, exact up to 80 frames, log-spaced up to ``max_distance`` frames and
clipped beyond). The bias table is ONE embedding shared by all layers (in the
reference it sits in the first layer and its output is passed on). Each layer
scales it per query frame and head by a gate computed from that layer's
attention input ("gru_rel_pos"):

    g_a, g_b = sigmoid(sum of 4-groups of Linear_D->8(x_i per head)) split in two
    gate_i = g_a * (g_b * c - 1) + 2            (c: one learned scalar per head)
    bias_ij = gate_i * d(j - i)

This follows the reference's fast path and transformers' ``WavLMAttention``:
the gate reads the attention INPUT split into heads (not the projected query).
Offsets, not absolute positions, enter, so padding never changes the bias
between two valid frames.
"""

from __future__ import annotations

import math
from functools import partial

import torch
from torch import nn

from speechbs.models.blocks.transformer import BiasFn


def relative_position_buckets(num_frames: int, num_buckets: int, max_distance: int,
                              device: torch.device | None = None) -> torch.Tensor:
    """Bucket id (T, T) of the offset key - query, as in WavLM.py / transformers."""
    pos_T = torch.arange(num_frames, dtype=torch.long, device=device)
    rel_TT = pos_T.view(1, -1) - pos_T.view(-1, 1)
    half = num_buckets // 2
    buckets_TT = (rel_TT > 0).long() * half
    dist_TT = rel_TT.abs()
    max_exact = half // 2
    # clamp(min=1): the log of 0 is never used (those offsets are "exact"), but must not make NaNs.
    log_ratio_TT = torch.log(dist_TT.clamp(min=1).float() / max_exact) / math.log(max_distance / max_exact)
    far_TT = (max_exact + log_ratio_TT * (half - max_exact)).long().clamp(max=half - 1)
    return buckets_TT + torch.where(dist_TT < max_exact, dist_TT, far_TT)


class RelPosGate(nn.Module):
    """One layer's query-dependent gate on the shared bias."""

    def __init__(self, embed_dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.linear = nn.Linear(embed_dim // num_heads, 8)
        self.const = nn.Parameter(torch.ones(1, num_heads, 1, 1))

    def forward(self, h_BTC: torch.Tensor, base_1HTT: torch.Tensor) -> torch.Tensor:
        B, T, C = h_BTC.shape
        h_BHTD = h_BTC.view(B, T, self.num_heads, C // self.num_heads).transpose(1, 2)
        g_BHT2 = torch.sigmoid(self.linear(h_BHTD).view(B, self.num_heads, T, 2, 4).sum(dim=-1))
        gate_a_BHT1, gate_b_BHT1 = g_BHT2.chunk(2, dim=-1)
        gate_BHT1 = gate_a_BHT1 * (gate_b_BHT1 * self.const - 1.0) + 2.0
        return gate_BHT1 * base_1HTT


class GatedRelativePositionBias(nn.Module):
    """The shared bucket embedding and one gate per layer; plugs into ``TransformerEncoder(attention_bias=...)``."""

    def __init__(self, num_layers: int, embed_dim: int, num_heads: int, num_buckets: int,
                 max_distance: int) -> None:
        super().__init__()
        if num_buckets < 4 or max_distance <= num_buckets // 4:
            raise ValueError(f"relative position buckets need num_buckets >= 4 and max_distance > num_buckets/4, "
                             f"got {num_buckets} and {max_distance}")
        self.num_buckets, self.max_distance = num_buckets, max_distance
        self.embed = nn.Embedding(num_buckets, num_heads)
        nn.init.normal_(self.embed.weight, mean=0.0, std=0.02)  # fairseq init_bert_params
        self.gates = nn.ModuleList(RelPosGate(embed_dim, num_heads) for _ in range(num_layers))

    def base_bias(self, num_frames: int) -> torch.Tensor:
        """Ungated bias (1, H, T, T)."""
        buckets_TT = relative_position_buckets(num_frames, self.num_buckets, self.max_distance,
                                               self.embed.weight.device)
        return self.embed(buckets_TT).permute(2, 0, 1).unsqueeze(0)

    def layer_bias_fns(self, num_frames: int) -> list[BiasFn]:
        """One function per layer: its attention input (B, T, C) -> its bias (B, H, T, T)."""
        base_1HTT = self.base_bias(num_frames)
        return [partial(gate, base_1HTT=base_1HTT) for gate in self.gates]
