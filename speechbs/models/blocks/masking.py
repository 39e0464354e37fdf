"""Span masking (time and channels) and distractor sampling, reproducible per utterance.

Legend: B utterances, T frames (padded), C channels, N masked frames in the
micro-batch, K distractors per masked frame.

Semantics follow fairseq's / Hugging Face's ``_compute_mask_indices``
(wav2vec 2.0, Baevski et al. 2020, section 3.3): an utterance of L frames gets
``int(mask_prob * L / span + u)`` span starts (u uniform in [0, 1):
probabilistic rounding), at least ``min_spans``, at most what fits; the starts
are drawn WITHOUT replacement from [0, L - span], spans of ``span`` frames may
overlap (fairseq ``no_overlap=False``), so about 49% of frames are masked for
mask_prob 0.65 and span 10. Deliberate differences, both for the batch
contract (an utterance is masked the same in any micro-batch): every draw
comes from the utterance's own seed (:mod:`counter_rng`) instead of a global
RNG, and fairseq's ``require_same_masks`` (trimming every row to the batch's
smallest mask count) is not applied.
"""

from __future__ import annotations

import torch

from speechbs.models.blocks import counter_rng


def num_mask_spans(lengths_B: torch.Tensor, mask_prob: float, span: int, min_spans: int,
                   round_u_B: torch.Tensor) -> torch.Tensor:
    """Number of span starts per utterance (HF/fairseq ``compute_num_masked_span``)."""
    num_B = torch.floor(mask_prob * lengths_B.to(torch.float64) / span + round_u_B).to(torch.int64)
    num_B = num_B.clamp(min=min_spans)
    # At most as many spans as fit end to end, and as there are start positions.
    num_B = torch.minimum(num_B, torch.div(lengths_B, span, rounding_mode="floor"))
    return torch.minimum(num_B, (lengths_B - span + 1).clamp(min=0))


def span_mask(lengths_B: torch.Tensor, max_len: int, *, mask_prob: float, span: int,
              min_spans: int, seeds_B: torch.Tensor, stream: int) -> torch.Tensor:
    """Boolean mask (B, max_len) of overlapping spans inside each row's first ``lengths_B`` positions.

    Vectorized: every candidate start gets a hash key from (seed, position), the
    ``num`` smallest keys among valid starts are the starts (a uniform draw
    without replacement), and spans are painted with a cumulative sum.
    """
    if mask_prob <= 0.0 or max_len < span:
        return torch.zeros(lengths_B.shape[0], max_len, dtype=torch.bool, device=lengths_B.device)
    seeds_B1 = seeds_B.to(lengths_B.device).view(-1, 1)
    counter_0 = torch.zeros(1, 1, dtype=torch.int64, device=lengths_B.device)
    round_u_B = counter_rng.uniform_open(seeds_B1, stream, counter_0).view(-1)
    num_B = num_mask_spans(lengths_B, mask_prob, span, min_spans, round_u_B)
    pos_T = torch.arange(max_len, device=lengths_B.device)
    keys_BT = counter_rng.hash32(seeds_B1, stream, 1 + pos_T.view(1, -1))
    valid_start_BT = pos_T.view(1, -1) <= (lengths_B - span).view(-1, 1)
    keys_BT = torch.where(valid_start_BT, keys_BT, torch.full_like(keys_BT, 2**32))
    order_BT = keys_BT.argsort(dim=1, stable=True)
    chosen_BT = pos_T.view(1, -1) < num_B.view(-1, 1)
    starts_BT = torch.zeros_like(chosen_BT, dtype=torch.int64).scatter(1, order_BT, chosen_BT.long())
    # Frame t is masked when a span starts in [t - span + 1, t].
    csum_BT = starts_BT.cumsum(dim=1)
    before_BT = torch.nn.functional.pad(csum_BT, (span, 0))[:, :max_len]
    return (csum_BT - before_BT) > 0


def sample_negatives(mask_BT: torch.Tensor, num_negatives: int, seeds_B: torch.Tensor,
                     masked: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
    """Distractor indices (N, K) into the flattened masked frames ``x_BTC[mask_BT]``.

    Each masked frame draws K distractors uniformly, with replacement, from the
    OTHER masked frames of the SAME utterance (fairseq ``sample_negatives``
    with ``negatives_from_everywhere=False``: never itself, never padding,
    never another utterance). An utterance with a single masked frame has no
    candidate; its distractors point at itself and the loss masks them out
    (fairseq's ``neg_is_pos``). ``masked`` is ``mask_BT.nonzero(as_tuple=True)`` when the
    caller has it already (each ``nonzero`` is a host sync on a GPU).
    """
    b_N, t_N = mask_BT.nonzero(as_tuple=True) if masked is None else masked
    num_masked_B = mask_BT.sum(dim=1)
    first_B = num_masked_B.cumsum(0) - num_masked_B
    rank_N = mask_BT.long().cumsum(dim=1)[b_N, t_N] - 1
    counters_NK = t_N.view(-1, 1) * num_negatives + torch.arange(num_negatives, device=mask_BT.device)
    high_N1 = (num_masked_B[b_N] - 1).clamp(min=1).view(-1, 1)
    pick_NK = counter_rng.randint_below(seeds_B.to(mask_BT.device)[b_N].view(-1, 1),
                                        counter_rng.STREAM_NEGATIVES, counters_NK, high_N1)
    # Skip over the positive itself, keeping the distribution uniform over the others.
    pick_NK = pick_NK + (pick_NK >= rank_N.view(-1, 1)).long()
    pick_NK = torch.where(num_masked_B[b_N].view(-1, 1) > 1, pick_NK, rank_N.view(-1, 1))
    return first_B[b_N].view(-1, 1) + pick_NK
