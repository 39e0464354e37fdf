"""HuBERT's architecture config and its sizes (tiny, base, large). No torch: see ``encoder_config.py``."""

from __future__ import annotations

from dataclasses import dataclass

from speechbs.models import frames
from speechbs.models.encoder_config import BASE_CONV, EncoderConfig


@dataclass(kw_only=True)
class HubertConfig(EncoderConfig):
    """HuBERT architecture and loss. Defaults: BASE (fairseq ``hubert_base_librispeech.yaml``), iteration 1 labels."""

    sample_rate_hz: int = 16_000
    """Input sample rate the conv strides are meant for, Hz (sets the model frame rate for label alignment)."""
    mask_prob: float = 0.8
    """Span starts per frame times span length, before overlap, probability (HuBERT BASE: 0.8, i.e. p = 8%, l = 10)."""
    label_rate_hz: float = 100.0
    """Cluster label frames per second: 100 (iteration 1, MFCC k-means) or 50 (iteration 2, HuBERT features)."""
    num_clusters: int = 100
    """K, cluster ids in [0, K): 100 for iteration 1, 500 for iteration 2."""
    logit_temperature: float = 0.1
    """Temperature of the cosine-similarity logits, dimensionless."""
    pred_masked_weight: float = 1.0
    """Weight of the cross-entropy on masked frames, dimensionless."""
    pred_nomask_weight: float = 0.0
    """Weight of the cross-entropy on unmasked frames, dimensionless."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.label_rate_hz <= 0 or self.num_clusters < 2:
            raise ValueError(f"model.label_rate_hz ({self.label_rate_hz}) must be > 0 and model.num_clusters "
                             f"({self.num_clusters}) >= 2")

    def frame_rate_hz(self) -> float:
        """Model frames per second (50 for the BASE conv stack at 16 kHz)."""
        return frames.frame_rate_hz(self.conv_layers, self.sample_rate_hz)


LARGE_SETTINGS = dict(conv_norm="layer", conv_bias=True, feature_grad_mult=1.0, embed_dim=1024,
                      num_layers=24, num_heads=16, ffn_dim=4096, layer_norm_first=True, dropout=0.0,
                      attention_dropout=0.0, dropout_input=0.0, layerdrop=0.0, final_dim=768,
                      label_rate_hz=50.0, num_clusters=500)
"""LARGE (fairseq ``hubert_large_ll60k.yaml``): pre-norm, layer-norm convs, no dropout; labels from BASE it. 2."""

TINY_SETTINGS = dict(conv_layers=tuple((64, k, s) for _, k, s in BASE_CONV), embed_dim=96, num_layers=2,
                     num_heads=4, ffn_dim=192, pos_conv_kernel=16, pos_conv_groups=4, final_dim=64,
                     layerdrop=0.0)
"""CPU-test size: the BASE conv geometry (50 Hz frames) at 64 channels, 2 x 96-dim layers."""


def base(**overrides) -> HubertConfig:
    """BASE, LibriSpeech 960 h (95 M parameters)."""
    return HubertConfig(**overrides)


def large(**overrides) -> HubertConfig:
    """LARGE, Libri-Light 60 k h (317 M parameters)."""
    return HubertConfig(**{**LARGE_SETTINGS, **overrides})


def tiny(**overrides) -> HubertConfig:
    """CPU tests and demos."""
    return HubertConfig(**{**TINY_SETTINGS, **overrides})
