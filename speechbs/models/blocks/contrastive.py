"""wav2vec 2.0's contrastive task and its auxiliary terms (Baevski et al. 2020, section 3.2).

Legend: N masked frames, K distractors, C final_dim channels, G codebooks, V entries,
B utterances (rows), M masked frames of the row with the most.

All terms are returned as SUMS over targets (masked frames) where they are
per-target quantities, so the step engine can add micro-batches and ranks and
divide once by the global number of targets (DESIGN section 2).
"""

from __future__ import annotations

import torch
from torch.nn import functional as F


def contrastive_logits(pred_NC: torch.Tensor, target_NC: torch.Tensor, b_N: torch.Tensor, num_rows: int,
                       negatives_NK: torch.Tensor, codes_NG: torch.Tensor, temperature: float) -> torch.Tensor:
    """Cosine similarity of each prediction with [its target, K distractors] / temperature: (N, 1+K).

    Frames are the masked frames in (row, frame) order; ``b_N`` is each one's row
    (non-decreasing) and ``negatives_NK`` indexes the distractors among them, all in
    the frame's own row (:func:`~speechbs.models.blocks.masking.sample_negatives`).
    Because they are, the logits are read from one (M, M) similarity block per row
    (M masked frames), computed with a batched matmul of the unit vectors, instead of
    gathering an (N, K, C) tensor of distractors as fairseq does: the same numbers
    (up to float rounding) for O(N M) memory instead of O(N K C), a 10-60x saving
    at the BASE/LARGE settings.

    A distractor with the same codes as the target (the same quantized vector) gets
    -inf, so it is never counted as a competitor of itself: fairseq's ``neg_is_pos``,
    which compares the vectors; codes compare the same without float ties.

    ``num_rows`` is the micro-batch's B: with it the per-row counts need no host sync
    (``bincount`` would read its input's range on the host). The block width, the most
    masked frames in a row, is the one host read left here.
    """
    dtype = torch.promote_types(pred_NC.dtype, torch.float32)  # fp32 at least, also under autocast
    counts_B = torch.zeros(num_rows, dtype=b_N.dtype, device=b_N.device).index_add_(0, b_N, torch.ones_like(b_N))
    first_B = counts_B.cumsum(0) - counts_B
    rank_N = torch.arange(b_N.numel(), device=b_N.device) - first_B[b_N]
    width = int(counts_B.max()) if num_rows else 0  # a host sync, like the masks' nonzero()
    unit_pred_NC = F.normalize(pred_NC.to(dtype), dim=-1, eps=1e-8)
    unit_target_NC = F.normalize(target_NC.to(dtype), dim=-1, eps=1e-8)
    pred_BMC = unit_pred_NC.new_zeros(num_rows, width, pred_NC.shape[-1]).index_put((b_N, rank_N), unit_pred_NC)
    target_BMC = unit_target_NC.new_zeros(num_rows, width, target_NC.shape[-1]).index_put((b_N, rank_N),
                                                                                       unit_target_NC)
    with torch.autocast(pred_NC.device.type, enabled=False):  # autocast would run bmm in bf16/fp16
        sim_BMM = torch.bmm(pred_BMC, target_BMC.transpose(1, 2))
    candidates_NK = torch.cat([rank_N.view(-1, 1), negatives_NK - first_B[b_N].view(-1, 1)], dim=1)
    logits_NK = sim_BMM[b_N.view(-1, 1), rank_N.view(-1, 1), candidates_NK] / temperature
    neg_is_pos_NK = (codes_NG[negatives_NK] == codes_NG.unsqueeze(1)).all(dim=-1)
    neg_is_pos_NK = F.pad(neg_is_pos_NK, (1, 0), value=False)
    return logits_NK.masked_fill(neg_is_pos_NK, float("-inf"))


def contrastive_sum(logits_NK: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(sum over frames of -log softmax(positive), number of frames where the positive wins).

    A frame counts as correct when the positive is the argmax and not also the
    argmin (all logits equal), like fairseq's wav2vec criterion.
    """
    target_N = torch.zeros(logits_NK.shape[0], dtype=torch.long, device=logits_NK.device)
    loss = F.cross_entropy(logits_NK, target_N, reduction="sum")
    is_max_N = logits_NK.argmax(dim=-1) == 0
    is_min_N = logits_NK.argmin(dim=-1) == 0
    return loss, (is_max_N & ~is_min_N).sum()


def diversity_fraction(prob_perplexity: torch.Tensor, num_groups: int, num_entries: int) -> torch.Tensor:
    """(G*V - perplexity) / (G*V): 0 when every entry is used equally, near 1 when one is (section 3.2)."""
    num_codevectors = num_groups * num_entries
    return (num_codevectors - prob_perplexity) / num_codevectors


def diversity_share(soft_sum_GV: torch.Tensor, num_targets: torch.Tensor,
                    step_soft_sum_GV: torch.Tensor, step_num_frames: torch.Tensor) -> torch.Tensor:
    """This micro-batch's share of N * D(step), the diversity loss of the whole step, with its exact gradient.

    D = (G*V - P) / (G*V), P the perplexity of the step's mean soft distribution
    a = S / N (S = ``step_soft_sum_GV``, summed over every micro-batch and rank; N its
    frames). N * D is not a sum over frames, but its gradient is linear in the
    micro-batches' soft sums: d(N D) = sum_gv c_gv dS_gv with

        c_gv = exp(H_g) (log a_gv + 1) / (G*V),   H_g = -sum_v a_gv log a_gv,

    so a micro-batch that returns ``c . soft_sum_GV`` (c held constant) contributes
    exactly its part of the step's gradient, and the parts add up over micro-batches
    and ranks like every other loss sum. The VALUE returned is ``num_targets * D``:
    summed over the step and divided by N it is D itself, so the logged term keeps
    its meaning. With ``step_soft_sum_GV`` = this micro-batch's own (detached) sum,
    this is the per-micro-batch loss of fairseq, gradient included.

    An entry that no frame uses (its mean is exactly 0 after float underflow) gets
    c = 0 instead of -inf: every frame's softmax gradient for it is 0 either way.
    """
    num_gv = soft_sum_GV.numel()
    step_S_GV = step_soft_sum_GV.detach().to(torch.promote_types(soft_sum_GV.dtype, torch.float32))
    avg_GV = step_S_GV / step_num_frames.detach().clamp(min=1).to(step_S_GV.dtype)
    log_avg_GV = torch.where(avg_GV > 0, avg_GV.log(), torch.zeros_like(avg_GV))
    exp_entropy_G = torch.exp(-(avg_GV * log_avg_GV).sum(dim=-1))
    step_diversity = (num_gv - exp_entropy_G.sum()) / num_gv
    coef_GV = exp_entropy_G.view(-1, 1) * (log_avg_GV + 1) / num_gv
    linear = (coef_GV * soft_sum_GV).sum()
    return num_targets * step_diversity + (linear - linear.detach())


def feature_penalty_per_row(feats_BCT: torch.Tensor, frame_lengths_B: torch.Tensor) -> torch.Tensor:
    """Mean of squared encoder features over each row's valid frames and channels, (B,).

    fairseq's ``features_pen`` is ``features.pow(2).mean()`` over the whole
    (crop-to-shortest, unpadded) batch; per row over valid frames is the same
    quantity made independent of padding.
    """
    valid_B1T = (torch.arange(feats_BCT.shape[2], device=feats_BCT.device).view(1, 1, -1)
                 < frame_lengths_B.view(-1, 1, 1))
    sq_sum_B = (feats_BCT.to(torch.promote_types(feats_BCT.dtype, torch.float32)).pow(2) * valid_B1T).sum(dim=(1, 2))
    return sq_sum_B / (frame_lengths_B.clamp(min=1) * feats_BCT.shape[1])
