"""The speech encoder every family shares: conv feature encoder -> projection -> masking -> transformer.

Legend: B utterances, T samples (wav) or frames, C channels.

wav2vec 2.0, HuBERT and WavLM differ in their pretraining heads and losses, not in the
encoder: each family's model class is a :class:`SpeechEncoder` plus its own heads
(wav2vec 2.0: quantizer, ``project_q``, ``final_proj``; HuBERT and WavLM: ``final_proj``,
``label_embs``) and loss. What downstream tasks use is the same for all three:

    encode(wav_BT, lengths_B, *, seeds_B=None, mask_BT=None, layerdrop_seed=None,
           return_layers=True) -> EncoderOutput

the transformer output and every layer's output, without any pretraining head (masks are
applied when ``seeds_B`` or ``mask_BT`` is given, as in fine-tuning). A pretraining forward
runs the same path in steps (:meth:`SpeechEncoder.conv_features`, :meth:`~SpeechEncoder.local_features`,
:meth:`~SpeechEncoder.contextualize`), so that it can read what its loss needs on the way:
the conv features for the feature penalty, the normalized features for wav2vec 2.0's
quantizer, HuBERT's label-aligned frame lengths.

WavLM's gated relative position bias is an option of this encoder
(``relative_position``, :class:`RelativePositionBuckets`), not a subclass hook; its
utterance mixing changes the waveform before the encoder and stays WavLM's own part
(``blocks/mixing.py``).

**Why a base class and not a held part.** The shared parts sit at the top of every family's
state dict (``feature_encoder.*``, ``layer_norm.*``, ``post_extract_proj.*``, ``mask_emb``,
``encoder.*``), as in fairseq and in every checkpoint written so far (and, under ``encoder.``,
in every fine-tuned CTC checkpoint); a held ``SpeechEncoder`` would prefix all of them. So a
family derives from :class:`SpeechEncoder` and signs a contract that is checked: it builds
the shared parts only through ``SpeechEncoder.__init__``, never redefines the encoder path
(:data:`ENCODER_PATH`: a subclass that does is refused when its class is created), and names
its heads in ``heads``, so the top-level names of its state dict are :data:`SHARED_PARTS` plus
``heads`` (tests/models/test_encoder.py).

No file I/O here: loading a checkpoint or a run directory is ``speechbs/pretrained.py``'s.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from speechbs.models.blocks import counter_rng
from speechbs.models.blocks.feature_encoder import ConvFeatureEncoder, GradMultiply, no_row_padded
from speechbs.models.blocks.masking import span_mask
from speechbs.models.blocks.relpos import GatedRelativePositionBias
from speechbs.models.blocks.transformer import TransformerEncoder, TransformerShape
from speechbs.models.encoder_config import EncoderConfig


def transformer_shape(cfg: EncoderConfig) -> TransformerShape:
    """The transformer part of an encoder config, as the transformer block takes it."""
    return TransformerShape(
        embed_dim=cfg.embed_dim, num_layers=cfg.num_layers, num_heads=cfg.num_heads,
        ffn_dim=cfg.ffn_dim, layer_norm_first=cfg.layer_norm_first,
        pos_conv_kernel=cfg.pos_conv_kernel, pos_conv_groups=cfg.pos_conv_groups,
        dropout=cfg.dropout, attention_dropout=cfg.attention_dropout,
        activation_dropout=cfg.activation_dropout, layerdrop=cfg.layerdrop,
        layer_norm_eps=cfg.layer_norm_eps)


@dataclass
class EncoderOutput:
    """What fine-tuning, feature extraction and the pretraining heads read."""

    features_BTC: torch.Tensor
    """Transformer output (padded frames zeroed), (B, T, embed_dim)."""
    padding_BT: torch.Tensor
    """True at padded frames (fairseq's ``padding_mask`` convention)."""
    frame_lengths_B: torch.Tensor
    """Valid frames per row, from the conv arithmetic."""
    layer_outputs: list[torch.Tensor] | None = None
    """Each transformer layer's output 1..L (HuBERT's feature targets, layer-weighted heads); None when not asked for."""
    mask_BT: torch.Tensor | None = None
    """The time mask applied (True = masked; never in padding), or None when the input was not masked."""


@dataclass(frozen=True)
class RelativePositionBuckets:
    """The encoder option of WavLM: a gated relative position bias in every layer (``blocks/relpos.py``)."""

    num_buckets: int
    """Relative position buckets (half per direction), count."""
    max_distance: int
    """Offset beyond which buckets stop growing, frames."""


SHARED_PARTS = ("feature_encoder", "layer_norm", "post_extract_proj", "dropout_input", "mask_emb", "encoder")
"""The modules and parameters :class:`SpeechEncoder` builds, by their (state-dict) names."""

ENCODER_PATH = ("encode", "conv_features", "local_features", "contextualize", "masks", "check_inputs")
"""The methods of the shared encoder path; a family may call them, not redefine them."""


class SpeechEncoder(nn.Module):
    """Conv feature encoder, LayerNorm, projection, time/channel masking and transformer.

    A family's model class derives from it and adds its heads (named in ``heads``) after
    ``super().__init__``; the shared parts are created first, in this order, so a seeded
    initialization does not depend on the family's heads.
    """

    heads: tuple[str, ...] = ()
    """Top-level names of the family's own modules and parameters (its pretraining head)."""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        redefined = [name for name in ENCODER_PATH if name in vars(cls)]
        if redefined:
            raise TypeError(f"{cls.__name__} redefines {', '.join(redefined)} of SpeechEncoder: a family adds its "
                            f"heads and loss on the shared encoder path and does not change it (models/encoder.py)")
        clashes = sorted(set(cls.heads) & set(SHARED_PARTS))
        if clashes:
            raise TypeError(f"{cls.__name__}.heads names shared parts {clashes}")

    def __init__(self, cfg: EncoderConfig, *, relative_position: RelativePositionBuckets | None = None) -> None:
        super().__init__()
        self.cfg = cfg
        conv_dim = cfg.conv_layers[-1][0]
        self.feature_encoder = ConvFeatureEncoder(cfg.conv_layers, cfg.conv_norm, cfg.conv_bias)
        self.layer_norm = nn.LayerNorm(conv_dim, eps=cfg.layer_norm_eps)
        self.post_extract_proj = nn.Linear(conv_dim, cfg.embed_dim)
        self.dropout_input = nn.Dropout(cfg.dropout_input)
        self.mask_emb = nn.Parameter(torch.empty(cfg.embed_dim).uniform_())
        bias = None
        if relative_position is not None:
            bias = GatedRelativePositionBias(cfg.num_layers, cfg.embed_dim, cfg.num_heads,
                                             relative_position.num_buckets, relative_position.max_distance)
        # The transformer, under the name fairseq's (and every speechbs) checkpoint gives it.
        self.encoder = TransformerEncoder(transformer_shape(cfg), attention_bias=bias)

    def check_inputs(self, wav_BT: torch.Tensor, lengths_B: torch.Tensor) -> None:
        """Shapes only: a length check would sync with the device; utterances shorter than the
        receptive field (400 samples) are refused by data validation (``audio.min_seconds``)."""
        if wav_BT.dim() != 2 or lengths_B.shape != wav_BT.shape[:1]:
            raise ValueError(f"expected wav_BT (B, T) and lengths_B (B,), got {tuple(wav_BT.shape)} "
                             f"and {tuple(lengths_B.shape)}")

    def conv_features(self, wav_BT: torch.Tensor, lengths_B: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(conv features (B, C, T frames) with the gradient scale ``feature_grad_mult``, valid frames per row)."""
        if self.cfg.feature_grad_mult <= 0.0:
            with torch.no_grad():
                feats_BCT, frame_lengths_B = self.feature_encoder(wav_BT, lengths_B)
        else:
            feats_BCT, frame_lengths_B = self.feature_encoder(wav_BT, lengths_B)
            if self.cfg.feature_grad_mult != 1.0:
                feats_BCT = GradMultiply.apply(feats_BCT, self.cfg.feature_grad_mult)
        return feats_BCT, frame_lengths_B

    def local_features(self, feats_BCT: torch.Tensor) -> torch.Tensor:
        """The LayerNorm'd conv features (B, T, C): the projection's input, and wav2vec 2.0's quantizer's."""
        return self.layer_norm(feats_BCT.transpose(1, 2))

    def masks(self, frame_lengths_B: torch.Tensor, num_frames: int, seeds_B: torch.Tensor,
              mask_BT: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(time mask (B, T), channel mask (B, C)) drawn from the utterance seeds; ``mask_BT``, when
        given, replaces the drawn time mask (within the valid frames)."""
        cfg = self.cfg
        if mask_BT is None:
            mask_BT = span_mask(frame_lengths_B, num_frames, mask_prob=cfg.mask_prob, span=cfg.mask_length,
                                min_spans=cfg.mask_min_spans, seeds_B=seeds_B, stream=counter_rng.STREAM_TIME_MASK)
        else:
            mask_BT = mask_BT.to(torch.bool) & _valid(frame_lengths_B, num_frames)
        full_B = torch.full_like(frame_lengths_B, cfg.embed_dim)
        channel_BC = span_mask(full_B, cfg.embed_dim, mask_prob=cfg.mask_channel_prob,
                               span=cfg.mask_channel_length, min_spans=cfg.mask_channel_min_spans,
                               seeds_B=seeds_B, stream=counter_rng.STREAM_CHANNEL_MASK)
        return mask_BT, channel_BC

    def contextualize(self, feats_BTC: torch.Tensor, frame_lengths_B: torch.Tensor, *,
                      seeds_B: torch.Tensor | None = None, mask_BT: torch.Tensor | None = None,
                      layerdrop_seed: int | None = None, return_layers: bool = True) -> EncoderOutput:
        """Projection, input dropout, masks (drawn when ``seeds_B`` is given; ``mask_BT`` replaces the
        time mask) and the transformer, on :meth:`local_features` with ``frame_lengths_B`` valid frames."""
        x_BTC = self.dropout_input(self.post_extract_proj(feats_BTC))
        num_frames = x_BTC.shape[1]
        channel_BC = None
        if seeds_B is not None:
            mask_BT, channel_BC = self.masks(frame_lengths_B, num_frames, seeds_B, mask_BT)
        elif mask_BT is not None:
            mask_BT = mask_BT.to(torch.bool) & _valid(frame_lengths_B, num_frames)
        if mask_BT is not None:
            # Time mask first (learned embedding), then channels (zeros), as in fairseq's apply_mask.
            x_BTC = torch.where(mask_BT.unsqueeze(-1), self.mask_emb.to(x_BTC.dtype), x_BTC)
            if channel_BC is not None:
                x_BTC = x_BTC.masked_fill(channel_BC.unsqueeze(1), 0.0)
        padding_BT = ~_valid(frame_lengths_B, num_frames)
        out = self.encoder(x_BTC, padding_BT, layerdrop_seed=layerdrop_seed, return_layers=return_layers,
                           unpadded=no_row_padded(frame_lengths_B, num_frames))
        return EncoderOutput(out.x_BTC, padding_BT, frame_lengths_B, out.layer_outputs, mask_BT)

    def encode(self, wav_BT: torch.Tensor, lengths_B: torch.Tensor, *, seeds_B: torch.Tensor | None = None,
               mask_BT: torch.Tensor | None = None, layerdrop_seed: int | None = None,
               return_layers: bool = True) -> EncoderOutput:
        """Fine-tuning / feature-extraction path: no pretraining head; every layer's output unless
        ``return_layers=False``.

        Masks (time and channel) are applied when ``seeds_B`` or ``mask_BT`` is
        given, as in fine-tuning; otherwise the input is unmasked.
        """
        self.check_inputs(wav_BT, lengths_B)
        feats_BCT, frame_lengths_B = self.conv_features(wav_BT, lengths_B)
        return self.contextualize(self.local_features(feats_BCT), frame_lengths_B, seeds_B=seeds_B,
                                  mask_BT=mask_BT, layerdrop_seed=layerdrop_seed, return_layers=return_layers)


def _valid(frame_lengths_B: torch.Tensor, num_frames: int) -> torch.Tensor:
    """True at the valid frames (B, T)."""
    return torch.arange(num_frames, device=frame_lengths_B.device).view(1, -1) < frame_lengths_B.view(-1, 1)
