"""Gumbel-softmax product quantizer (wav2vec 2.0, section 2 and 3.2; Jang et al. 2016).

Legend: N frames, D input channels, G codebooks (groups), V entries per
codebook, E codevector channels per group.

Each frame picks one entry in each of G codebooks; the chosen E-dim entries
are concatenated (G*E = codevector dim). In training the choice is a hard
one-hot in the forward pass with the gradient of the soft Gumbel-softmax
(straight-through), at a temperature the caller passes in (the schedule is a
pure function of the optimizer step, kept out of the model). In eval mode the
choice is the argmax, as in fairseq and Hugging Face.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass
class QuantizerOutput:
    """Quantized vectors and codebook usage statistics over the given frames."""

    codevectors_NE: torch.Tensor
    """Concatenated chosen entries, (N, G*E)."""
    codes_NG: torch.Tensor
    """Index of the chosen entry in each codebook, int64 (N, G): equal codes mean equal codevectors."""
    prob_perplexity: torch.Tensor
    """Sum over codebooks of exp(entropy) of the mean SOFT distribution (used by the diversity loss)."""
    code_perplexity: torch.Tensor
    """Sum over codebooks of exp(entropy) of the HARD choices' histogram (a log: how many entries are in use)."""


def perplexity(probs_NGV: torch.Tensor) -> torch.Tensor:
    """Sum over groups of exp(entropy of the mean distribution over N)."""
    # Sum / max(N, 1): no NaN for a micro-batch without masked frames.
    avg_GV = probs_NGV.float().sum(dim=0) / max(probs_NGV.shape[0], 1)
    return torch.exp(-torch.xlogy(avg_GV, avg_GV).sum(dim=-1)).sum()


class GumbelQuantizer(nn.Module):
    """``weight_proj`` scores G*V entries; ``codevectors`` holds them, shape (1, G*V, E)."""

    def __init__(self, input_dim: int, num_groups: int, num_entries: int, codevector_dim: int) -> None:
        super().__init__()
        if codevector_dim % num_groups:
            raise ValueError(f"codevector_dim {codevector_dim} is not divisible by the number of codebooks {num_groups}")
        self.num_groups, self.num_entries = num_groups, num_entries
        self.codevectors = nn.Parameter(torch.empty(1, num_groups * num_entries, codevector_dim // num_groups))
        nn.init.uniform_(self.codevectors)
        self.weight_proj = nn.Linear(input_dim, num_groups * num_entries)
        nn.init.normal_(self.weight_proj.weight, mean=0.0, std=1.0)
        nn.init.zeros_(self.weight_proj.bias)

    def forward(self, x_ND: torch.Tensor, *, temperature: float,
                gumbel_NGV: torch.Tensor | None = None) -> QuantizerOutput:
        """Quantize ``x_ND``. ``gumbel_NGV`` (Gumbel(0, 1) noise) is needed in training mode.

        The noise is an argument so the caller can draw it per utterance
        (reproducible in any batch composition) and tests can feed it.
        """
        N = x_ND.shape[0]
        logits_NGV = self.weight_proj(x_ND).view(N, self.num_groups, self.num_entries).float()
        soft_NGV = logits_NGV.softmax(dim=-1)
        if self.training:
            if gumbel_NGV is None:
                raise ValueError("the quantizer needs Gumbel noise in training mode")
            y_soft_NGV = ((logits_NGV + gumbel_NGV.to(logits_NGV.dtype)) / temperature).softmax(dim=-1)
            index_NG1 = y_soft_NGV.argmax(dim=-1, keepdim=True)
            hard_NGV = torch.zeros_like(y_soft_NGV).scatter_(-1, index_NG1, 1.0)
            onehot_NGV = hard_NGV - y_soft_NGV.detach() + y_soft_NGV
        else:
            index_NG1 = logits_NGV.argmax(dim=-1, keepdim=True)
            hard_NGV = torch.zeros_like(logits_NGV).scatter_(-1, index_NG1, 1.0)
            onehot_NGV = hard_NGV
        onehot_NGV = onehot_NGV.to(self.codevectors.dtype)
        # (N, G, V) x (G, V, E) -> (N, G, E): a batched matmul instead of fairseq's broadcast-and-sum.
        book_GVE = self.codevectors.view(self.num_groups, self.num_entries, -1)
        codevectors_NGE = torch.einsum("ngv,gve->nge", onehot_NGV, book_GVE)
        return QuantizerOutput(
            codevectors_NE=codevectors_NGE.reshape(N, book_GVE.shape[0] * book_GVE.shape[2]),
            codes_NG=index_NG1.squeeze(-1),
            prob_perplexity=perplexity(soft_NGV),
            code_perplexity=perplexity(hard_NGV.detach()),
        )
