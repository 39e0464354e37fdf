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
class CodeUsage:
    """How much each codebook entry was used over some frames, as SUMS that add across micro-batches and ranks.

    The diversity loss and the logged perplexities are functions of the MEAN distribution
    over a set of frames (wav2vec 2.0, section 3.2: "the averaged softmax distribution over
    the entries of each codebook across a batch of utterances"); keeping sums and a count
    lets that set be a micro-batch or the whole global batch.
    """

    soft_sum_GV: torch.Tensor
    """Sum over frames of the softmax over each codebook's entries (no Gumbel noise), (G, V)."""
    hard_sum_GV: torch.Tensor
    """Frames that chose each entry (the Gumbel argmax in training, the argmax in eval), (G, V)."""
    num_frames: torch.Tensor
    """Scalar: frames summed over."""

    def soft_perplexity(self) -> torch.Tensor:
        """Sum over codebooks of exp(entropy) of the mean soft distribution (the diversity loss's perplexity)."""
        return perplexity_of_sum(self.soft_sum_GV, self.num_frames)

    def hard_perplexity(self) -> torch.Tensor:
        """Sum over codebooks of exp(entropy) of the chosen entries' histogram (how many entries are in use)."""
        return perplexity_of_sum(self.hard_sum_GV, self.num_frames)

    def detach(self) -> CodeUsage:
        return CodeUsage(self.soft_sum_GV.detach(), self.hard_sum_GV.detach(), self.num_frames.detach())

    def __add__(self, other: CodeUsage) -> CodeUsage:
        return CodeUsage(self.soft_sum_GV + other.soft_sum_GV, self.hard_sum_GV + other.hard_sum_GV,
                         self.num_frames + other.num_frames)

    def pack(self) -> torch.Tensor:
        """One flat tensor [soft (G*V), hard (G*V), num_frames], for a single all-reduce."""
        parts = (self.soft_sum_GV.flatten(), self.hard_sum_GV.flatten(), self.num_frames.view(1))
        dtype = torch.promote_types(self.soft_sum_GV.dtype, torch.float32)
        return torch.cat([part.to(dtype) for part in parts])

    @classmethod
    def unpack(cls, packed: torch.Tensor, num_groups: int, num_entries: int) -> CodeUsage:
        """The inverse of :meth:`pack`."""
        num_gv = num_groups * num_entries
        shape = (num_groups, num_entries)
        return cls(packed[:num_gv].view(shape), packed[num_gv:2 * num_gv].view(shape), packed[-1])

    @classmethod
    def zeros(cls, num_groups: int, num_entries: int, device: torch.device | str | None = None,
              dtype: torch.dtype = torch.float32) -> CodeUsage:
        """No frames (a rank whose micro-batches are all placeholders)."""
        zeros_GV = torch.zeros(num_groups, num_entries, device=device, dtype=dtype)
        return cls(zeros_GV, zeros_GV.clone(), torch.zeros((), device=device, dtype=dtype))


@dataclass
class QuantizerOutput:
    """Quantized vectors and codebook usage over the given frames."""

    codevectors_NE: torch.Tensor
    """Concatenated chosen entries, (N, G*E)."""
    codes_NG: torch.Tensor
    """Index of the chosen entry in each codebook, int64 (N, G): equal codes mean equal codevectors."""
    usage: CodeUsage
    """Soft sums (with their graph: the diversity loss's gradient flows through them) and hard counts."""

    @property
    def prob_perplexity(self) -> torch.Tensor:
        """Perplexity of the mean SOFT distribution over these frames (used by the diversity loss)."""
        return self.usage.soft_perplexity()

    @property
    def code_perplexity(self) -> torch.Tensor:
        """Perplexity of the HARD choices' histogram over these frames (a log: how many entries are in use)."""
        return self.usage.hard_perplexity()


def _stats_dtype(x: torch.Tensor) -> torch.dtype:
    """fp32 at least: half-precision probabilities are too coarse for entropies, and fp64 stays fp64."""
    return torch.promote_types(x.dtype, torch.float32)


def perplexity(probs_NGV: torch.Tensor) -> torch.Tensor:
    """Sum over groups of exp(entropy of the mean distribution over N)."""
    num_frames = torch.tensor(float(probs_NGV.shape[0]), device=probs_NGV.device)
    return perplexity_of_sum(probs_NGV.to(_stats_dtype(probs_NGV)).sum(dim=0), num_frames)


def perplexity_of_sum(sum_GV: torch.Tensor, num_frames: torch.Tensor) -> torch.Tensor:
    """Sum over groups of exp(entropy) of the mean distribution ``sum_GV / num_frames``."""
    # Divided by max(N, 1): no NaN for a micro-batch without masked frames.
    avg_GV = sum_GV.to(_stats_dtype(sum_GV)) / num_frames.clamp(min=1).to(_stats_dtype(sum_GV))
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
        logits_NGV = self.weight_proj(x_ND).view(N, self.num_groups, self.num_entries)
        logits_NGV = logits_NGV.to(_stats_dtype(logits_NGV))
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
            usage=CodeUsage(soft_NGV.sum(dim=0), hard_NGV.detach().sum(dim=0),
                            torch.tensor(float(N), device=x_ND.device, dtype=soft_NGV.dtype)),
        )
