"""WavLM (Chen et al. 2022): HuBERT's masked prediction + gated relative position bias + utterance mixing.

Legend: B utterances, T samples.

The task, heads, loss and encode path are HuBERT's (``hubert.py``), on the shared
encoder (``encoder.py``). Two differences:

- the encoder is built with its ``relative_position`` option: the transformer adds
  WavLM's gated relative position bias to every layer's
  attention scores (``blocks/relpos.py``; 320 buckets up to 800 frames as in
  the released checkpoints and transformers' ``WavLMConfig``; the class
  default in unilm's ``WavLM.py`` is 1280);
- in training, ``mix_prob`` of the utterances are overlapped with a piece of
  another utterance of the batch before the feature encoder
  (``blocks/mixing.py``), while the targets stay the primary's labels:
  denoising masked prediction. Not in eval mode (validation scores clean audio).
  With ``mix_scope = "global"`` the partners are the caller's (``partners``: in
  pretraining the loader draws them from the whole global batch); a forward
  without them, or with ``mix_scope = "micro_batch"``, draws them among its own rows.

Layer drop: in unilm's code the bias is created by the first layer, so a step
that drops layer 0 runs without any position bias; transformers never drops
layer 0. speechbs builds the bias outside the layers, so every layer may be
dropped and the others still get it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from speechbs.models.blocks.mixing import MixPartners, mix_utterances, mix_with_partners
from speechbs.models.encoder import RelativePositionBuckets
from speechbs.models.hubert import (LARGE_SETTINGS, TINY_SETTINGS, ClusterTargets, HubertConfig, HubertModel,
                                    HubertOutput)


@dataclass(kw_only=True)
class WavLMConfig(HubertConfig):
    """HuBERT's fields plus the position bias and utterance mixing. Defaults: WavLM BASE."""

    num_buckets: int = 320
    """Relative position buckets (half per direction), count."""
    max_distance: int = 800
    """Offset beyond which buckets stop growing, frames."""
    mix_prob: float = 0.2
    """Probability that an utterance is overlapped with another one of its batch (paper, section IV-A, as recalled; not verified against the released setup)."""
    mix_scope: Literal["global", "micro_batch"] = "global"
    """Where the partners come from: ``global``, the whole optimizer step's utterances (drawn by the data
    loader; the mixed input does not depend on the split into micro-batches and ranks) or ``micro_batch``,
    the forward's own rows (depends on the split)."""
    mix_max_fraction: float = 0.5
    """The overlapped segment is shorter than this fraction of the primary utterance, fraction."""
    mix_ratio_min_db: float = -5.0
    """Lowest primary-to-overlap energy ratio, dB."""
    mix_ratio_max_db: float = 5.0
    """Highest primary-to-overlap energy ratio, dB."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0.0 <= self.mix_prob <= 1.0 or not 0.0 < self.mix_max_fraction <= 1.0:
            raise ValueError(f"model.mix_prob ({self.mix_prob}) must be in [0, 1] and model.mix_max_fraction "
                             f"({self.mix_max_fraction}) in (0, 1]")
        if self.mix_ratio_min_db > self.mix_ratio_max_db:
            raise ValueError(f"model.mix_ratio_min_db ({self.mix_ratio_min_db}) must be <= "
                             f"model.mix_ratio_max_db ({self.mix_ratio_max_db})")


def base(**overrides) -> WavLMConfig:
    """BASE (HuBERT BASE architecture + position bias; 95 M parameters)."""
    return WavLMConfig(**overrides)


def large(**overrides) -> WavLMConfig:
    """LARGE (HuBERT LARGE architecture + position bias; conv bias off as in the released WavLM Large, unverified)."""
    return WavLMConfig(**{**LARGE_SETTINGS, "conv_bias": False, **overrides})


def tiny(**overrides) -> WavLMConfig:
    """CPU tests and demos."""
    return WavLMConfig(**{**TINY_SETTINGS, **overrides})


class WavLMModel(HubertModel):
    """HuBERT on the encoder with relative position bias, its input mixed in training; same heads and loss."""

    cfg: WavLMConfig

    def __init__(self, cfg: WavLMConfig) -> None:
        super().__init__(cfg, relative_position=RelativePositionBuckets(cfg.num_buckets, cfg.max_distance))

    def forward(self, wav_BT: torch.Tensor, lengths_B: torch.Tensor, *, seeds_B: torch.Tensor,
                targets: ClusterTargets, layerdrop_seed: int | None = None, mask_BT: torch.Tensor | None = None,
                return_layers: bool = False, partners: MixPartners | None = None) -> HubertOutput:
        """HuBERT's pretraining forward on the mixed waveform (training mode only).

        ``partners``: each row's partner audio, e.g. chosen from the whole global batch
        (``mix_scope = "global"``); None: drawn among this micro-batch's rows.
        """
        if partners is not None and self.cfg.mix_scope != "global":
            raise ValueError("partners were given but model.mix_scope is 'micro_batch', which draws them among "
                             "the micro-batch's rows; use mix_scope = 'global' or pass no partners")
        return super().forward(self._mix(wav_BT, lengths_B, seeds_B, partners), lengths_B, seeds_B=seeds_B,
                               targets=targets, layerdrop_seed=layerdrop_seed, mask_BT=mask_BT,
                               return_layers=return_layers)

    def _mix(self, wav_BT: torch.Tensor, lengths_B: torch.Tensor, seeds_B: torch.Tensor,
             partners: MixPartners | None) -> torch.Tensor:
        cfg = self.cfg
        if not self.training or cfg.mix_prob <= 0.0:
            return wav_BT
        shape = dict(max_fraction=cfg.mix_max_fraction, ratio_min_db=cfg.mix_ratio_min_db,
                     ratio_max_db=cfg.mix_ratio_max_db)
        if partners is None:
            return mix_utterances(wav_BT, lengths_B, seeds_B, mix_prob=cfg.mix_prob, **shape)[0]
        return mix_with_partners(wav_BT, lengths_B, seeds_B, partners, **shape)[0]
