"""wav2vec 2.0 (Baevski et al. 2020): architecture and pretraining loss terms (config: ``wav2vec2_config.py``).

Legend: B utterances, T samples (wav) or frames, C channels, N masked frames
in the micro-batch, K distractors, G codebooks, V entries per codebook.

Inputs are ``wav_BT`` with ``lengths_B`` (valid samples per row). Every random
draw of the pretraining forward (time/channel masks, distractors, Gumbel
noise, and the dropout on the quantizer's input) comes from ``seeds_B``, one
int64 seed per utterance, so an utterance gets the same result in any
micro-batch (``blocks/counter_rng.py``); layer drop comes from
``layerdrop_seed``, one per optimizer step. The other dropouts use the global
RNG (they need not be reproducible per utterance).

The codebook diversity term is a function of the mean code distribution over a
set of frames, not a sum over frames. With ``diversity_scope = "global"`` that
set is the whole global batch: the training step first runs :meth:`code_usage`
(no gradient, no transformer) on every micro-batch, sums it over micro-batches
and ranks, and passes the sum to :meth:`Wav2Vec2Model.forward` as
``step_usage``; each micro-batch then returns its exact share of the step's
diversity gradient (``blocks/contrastive.py``, :func:`diversity_share`). The
quantizer's input dropout is keyed by utterance seed so that this pre-pass sees
the quantizer input the forward sees.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from speechbs.models.blocks import contrastive, counter_rng
from speechbs.models.blocks.masking import sample_negatives
from speechbs.models.blocks.quantizer import CodeUsage, GumbelQuantizer, QuantizerOutput
from speechbs.models.encoder import EncoderOutput, SpeechEncoder
from speechbs.models.wav2vec2_config import Wav2Vec2Config


@dataclass
class Wav2Vec2Loss:
    """One micro-batch's loss as sums over targets, for one global normalization (DESIGN section 2).

    ``loss_sum / num_targets`` summed over the global batch is fairseq's wav2vec
    criterion: contrastive + 0.1 * diversity + 10 * penalty per masked frame.
    """

    loss_sum: torch.Tensor
    """contrastive_sum + diversity_weight * diversity_sum + feature_penalty_weight * penalty_sum."""
    num_targets: torch.Tensor
    """Masked frames in the micro-batch (int64)."""
    contrastive_sum: torch.Tensor
    """Sum over masked frames of the InfoNCE loss, nats."""
    num_correct: torch.Tensor
    """Masked frames whose positive scored highest (accuracy = num_correct / num_targets)."""
    diversity_sum: torch.Tensor
    """(G*V - P)/(G*V) times num_targets, P the soft perplexity over the frames of ``step_usage`` (the whole
    step) or, without it, over this micro-batch's; its gradient is this micro-batch's exact share of that
    pooled term's (:func:`~speechbs.models.blocks.contrastive.diversity_share`)."""
    perplexity_sum: torch.Tensor
    """Soft codebook perplexity (of the step, or of this micro-batch without ``step_usage``) times num_targets."""
    code_perplexity_sum: torch.Tensor
    """Hard (used-entries) perplexity, of the same frames, times num_targets."""
    usage: CodeUsage
    """This micro-batch's own code usage (soft sums with their graph)."""
    penalty_sum: torch.Tensor
    """Sum over utterances of (mean squared encoder feature) x (its masked frames): a per-target sum."""

    def logs(self) -> dict[str, torch.Tensor]:
        """Detached sums for logging; divide by the summed ``num_targets``."""
        names = ("contrastive_sum", "num_correct", "diversity_sum", "perplexity_sum",
                 "code_perplexity_sum", "penalty_sum", "num_targets")
        return {name: getattr(self, name).detach() for name in names}


@dataclass
class Wav2Vec2Output:
    """Pretraining forward: the loss terms and the encoder outputs."""

    loss: Wav2Vec2Loss
    encoder: EncoderOutput
    mask_BT: torch.Tensor
    """Time mask used (True = masked; never in padding)."""
    logits_NK: torch.Tensor = field(repr=False)
    """Contrastive logits, positive first, for the masked frames in (row, frame) order."""


class Wav2Vec2Model(SpeechEncoder):
    """The shared encoder (``encoder.py``) with the quantizer and the heads of the contrastive task."""

    heads = ("quantizer", "project_q", "final_proj")
    cfg: Wav2Vec2Config

    def __init__(self, cfg: Wav2Vec2Config) -> None:
        super().__init__(cfg)
        conv_dim = cfg.conv_layers[-1][0]
        self.quantizer = GumbelQuantizer(conv_dim, cfg.num_codebooks, cfg.codebook_size, cfg.codevector_dim)
        self.project_q = nn.Linear(cfg.codevector_dim, cfg.final_dim)
        self.final_proj = nn.Linear(cfg.embed_dim, cfg.final_dim)

    def forward(self, wav_BT: torch.Tensor, lengths_B: torch.Tensor, *, seeds_B: torch.Tensor,
                gumbel_temperature: float, mask_BT: torch.Tensor | None = None,
                layerdrop_seed: int | None = None, return_layers: bool = False,
                step_usage: CodeUsage | None = None) -> Wav2Vec2Output:
        """Pretraining forward: mask, contextualize, quantize, score against K distractors.

        ``seeds_B`` (int64, one per utterance, e.g. a hash of (run seed, epoch,
        utterance id)) drives every random draw; ``mask_BT`` overrides the time
        mask (it is intersected with the valid frames). ``gumbel_temperature``
        comes from the caller's schedule (2 -> 0.5 for BASE). ``step_usage`` is
        the code usage of the whole global batch (:meth:`code_usage` summed over
        its micro-batches and ranks), for ``diversity_scope = "global"``; without
        it the diversity term is this micro-batch's own.
        """
        self.check_inputs(wav_BT, lengths_B)
        if step_usage is not None and self.cfg.diversity_scope != "global":
            raise ValueError("step_usage was given but model.diversity_scope is "
                             f"{self.cfg.diversity_scope!r}; it is used with 'global' only")
        cfg = self.cfg
        feats_BCT, frame_lengths_B = self.conv_features(wav_BT, lengths_B)
        penalty_B = contrastive.feature_penalty_per_row(feats_BCT, frame_lengths_B)
        feats_BTC = self.local_features(feats_BCT)
        enc = self.contextualize(feats_BTC, frame_lengths_B, seeds_B=seeds_B, mask_BT=mask_BT,
                                 layerdrop_seed=layerdrop_seed, return_layers=return_layers)
        mask_BT = enc.mask_BT
        assert mask_BT is not None  # seeds_B were given: the masks were drawn

        b_N, t_N = mask_BT.nonzero(as_tuple=True)
        pred_NC = self.final_proj(enc.features_BTC[b_N, t_N])
        quant = self._quantize(feats_BTC, b_N, t_N, seeds_B, gumbel_temperature)
        target_NC = self.project_q(quant.codevectors_NE)
        negatives_NK = sample_negatives(mask_BT, cfg.num_negatives, seeds_B, masked=(b_N, t_N))
        logits_NK = contrastive.contrastive_logits(pred_NC, target_NC, b_N, mask_BT.shape[0], negatives_NK,
                                                   quant.codes_NG, cfg.logit_temperature)
        loss = self._loss(logits_NK, mask_BT, penalty_B, quant.usage, step_usage)
        return Wav2Vec2Output(loss=loss, encoder=enc, mask_BT=mask_BT, logits_NK=logits_NK)

    def code_usage(self, wav_BT: torch.Tensor, lengths_B: torch.Tensor, *, seeds_B: torch.Tensor,
                   gumbel_temperature: float, mask_BT: torch.Tensor | None = None) -> CodeUsage:
        """The quantizer's code usage over the masked frames, exactly as :meth:`forward` computes it.

        The pre-pass of ``diversity_scope = "global"``: the feature encoder and the
        quantizer only (no transformer), to be run under ``torch.no_grad()`` on every
        micro-batch of a step before the first backward. The same arguments as the
        forward give the same masks, dropout and Gumbel noise, so the same numbers.
        """
        self.check_inputs(wav_BT, lengths_B)
        feats_BCT, frame_lengths_B = self.conv_features(wav_BT, lengths_B)
        feats_BTC = self.local_features(feats_BCT)
        mask_BT, _ = self.masks(frame_lengths_B, feats_BTC.shape[1], seeds_B, mask_BT)
        b_N, t_N = mask_BT.nonzero(as_tuple=True)
        return self._quantize(feats_BTC, b_N, t_N, seeds_B, gumbel_temperature).usage.detach()

    def _quantize(self, feats_BTC: torch.Tensor, b_N: torch.Tensor, t_N: torch.Tensor, seeds_B: torch.Tensor,
                  gumbel_temperature: float) -> QuantizerOutput:
        """Quantize the masked frames' (unmasked) features, after dropout keyed by utterance seed."""
        x_NC = feats_BTC[b_N, t_N]
        p = self.cfg.dropout_features
        if self.training and p > 0.0:
            # fairseq's dropout_features, drawn per (utterance, frame, channel) rather than from the
            # global RNG, so that code_usage() and forward() quantize the same input.
            num_channels = x_NC.shape[-1]
            counters_NC = t_N.view(-1, 1) * num_channels + torch.arange(num_channels, device=t_N.device)
            u_NC = counter_rng.uniform_open(seeds_B.to(t_N.device)[b_N].view(-1, 1),
                                            counter_rng.STREAM_FEATURE_DROPOUT, counters_NC)
            x_NC = torch.where(u_NC >= p, x_NC / (1.0 - p), torch.zeros_like(x_NC))
        gumbel_NGV = self._gumbel_noise(seeds_B, b_N, t_N) if self.training else None
        return self.quantizer(x_NC, temperature=gumbel_temperature, gumbel_NGV=gumbel_NGV)

    def _gumbel_noise(self, seeds_B: torch.Tensor, b_N: torch.Tensor, t_N: torch.Tensor) -> torch.Tensor:
        """Gumbel(0, 1) noise (N, G, V) keyed by (utterance seed, frame index, entry)."""
        num_gv = self.cfg.num_codebooks * self.cfg.codebook_size
        counters_NJ = t_N.view(-1, 1) * num_gv + torch.arange(num_gv, device=t_N.device)
        u_NJ = counter_rng.uniform_open(seeds_B.to(t_N.device)[b_N].view(-1, 1), counter_rng.STREAM_GUMBEL,
                                        counters_NJ)
        return (-torch.log(-torch.log(u_NJ))).float().view(-1, self.cfg.num_codebooks, self.cfg.codebook_size)

    def _loss(self, logits_NK: torch.Tensor, mask_BT: torch.Tensor, penalty_B: torch.Tensor,
              usage: CodeUsage, step_usage: CodeUsage | None) -> Wav2Vec2Loss:
        cfg = self.cfg
        contrastive_sum, num_correct = contrastive.contrastive_sum(logits_NK)
        num_targets = mask_BT.sum()
        penalty_sum = (penalty_B * mask_BT.sum(dim=1)).sum()
        pooled = usage.detach() if step_usage is None else step_usage  # the frames the perplexity is of
        diversity_sum = contrastive.diversity_share(usage.soft_sum_GV, num_targets, pooled.soft_sum_GV,
                                                    pooled.num_frames)
        loss_sum = (contrastive_sum + cfg.diversity_weight * diversity_sum
                    + cfg.feature_penalty_weight * penalty_sum)
        return Wav2Vec2Loss(
            loss_sum=loss_sum, num_targets=num_targets, contrastive_sum=contrastive_sum,
            num_correct=num_correct, diversity_sum=diversity_sum,
            perplexity_sum=pooled.soft_perplexity() * num_targets,
            code_perplexity_sum=pooled.hard_perplexity() * num_targets, penalty_sum=penalty_sum, usage=usage)


def num_parameters(model: nn.Module) -> int:
    """Trainable parameter count."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
