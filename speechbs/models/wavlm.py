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

import torch

from speechbs.models.blocks.mixing import MixPartners, mix_utterances, mix_with_partners
from speechbs.models.encoder import RelativePositionBuckets
from speechbs.models.hubert import ClusterTargets, HubertModel, HubertOutput
from speechbs.models.wavlm_config import WavLMConfig


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
