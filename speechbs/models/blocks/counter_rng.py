"""Counter-based random numbers keyed by (utterance seed, stream, counter).

Legend: B utterances, N selected items (e.g. masked frames), K draws per item.

Why not torch.Generator: the masks, distractor indices and Gumbel noise of an
utterance must be the same whatever micro-batch it is packed in (speechbs'
batch contract), so a draw may depend only on the utterance's own seed and
on a position-based counter (frame index, draw index), never on the batch
size, the padded length or the order of rows. A stateless hash gives exactly
that, runs on any device, needs no Python loop over utterances and is the
same on CPU and GPU (integer arithmetic only).

The mixer is Chris Wellons' "lowbias32" 32-bit hash, applied in int64 with
the multiplications split into 16-bit halves so nothing ever overflows int64.
"""

from __future__ import annotations

import torch

MASK32 = 0xFFFFFFFF

# Fixed stream ids: one per kind of draw, so two kinds never share numbers.
STREAM_TIME_MASK = 1
STREAM_CHANNEL_MASK = 2
STREAM_NEGATIVES = 3
STREAM_GUMBEL = 4
STREAM_MIX = 5  # WavLM utterance mixing (blocks/mixing.py)
STREAM_FEATURE_DROPOUT = 6  # wav2vec 2.0's dropout on the quantizer input (dropout_features)


def _mul32(x: torch.Tensor, m: int) -> torch.Tensor:
    """(x * m) mod 2**32 for 0 <= x < 2**32 without int64 overflow."""
    lo, hi = m & 0xFFFF, m >> 16
    return (x * lo + (((x * hi) & 0xFFFF) << 16)) & MASK32


def mix32(x: torch.Tensor) -> torch.Tensor:
    """lowbias32: a bijective 32-bit hash with good avalanche (int64 in, int64 in [0, 2**32) out)."""
    x = x & MASK32
    x = x ^ (x >> 16)
    x = _mul32(x, 0x7FEB352D)
    x = x ^ (x >> 15)
    x = _mul32(x, 0x846CA68B)
    return x ^ (x >> 16)


def hash32(seeds: torch.Tensor, stream: int, counters: torch.Tensor) -> torch.Tensor:
    """32-bit hash of (seed, stream, counter); ``seeds`` broadcasts against ``counters``.

    ``seeds`` are int64 (all 64 bits are used); ``counters`` are int64 in
    [0, 2**32). Returns int64 values in [0, 2**32).
    """
    seeds = seeds.to(torch.int64)
    key = mix32(mix32((seeds >> 32) ^ mix32(torch.full_like(seeds, stream))) ^ seeds)
    return mix32(mix32(counters.to(torch.int64) ^ key) ^ key)


def randint_below(seeds: torch.Tensor, stream: int, counters: torch.Tensor,
                  high: torch.Tensor) -> torch.Tensor:
    """Integers uniform in [0, high) (high >= 1, < 2**31), via the multiply-shift map of a 32-bit hash."""
    return (hash32(seeds, stream, counters) * high.to(torch.int64)) >> 32


def uniform_open(seeds: torch.Tensor, stream: int, counters: torch.Tensor) -> torch.Tensor:
    """float64 uniform in the open interval (0, 1): safe for -log(-log(u)) Gumbel noise."""
    return (hash32(seeds, stream, counters).to(torch.float64) + 0.5) / 2.0**32
