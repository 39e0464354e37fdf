"""The config every family's architecture extends: feature encoder, masking, transformer. No torch.

Each family's config (``wav2vec2_config.py``, ``hubert_config.py``, ``wavlm_config.py``)
derives from :class:`EncoderConfig`; the model classes (``encoder.py`` and the family
modules) take one. The configs live apart from the ``nn.Module`` code so that loading a
recipe (:mod:`speechbs.config`) fills in an architecture's defaults without importing torch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from speechbs.models.frames import ConvSpec

BASE_CONV: tuple[ConvSpec, ...] = ((512, 10, 5),) + ((512, 3, 2),) * 4 + ((512, 2, 2),) * 2


@dataclass(kw_only=True)
class EncoderConfig:
    """Feature encoder, masking and transformer: what every family shares. Defaults: BASE.

    wav2vec 2.0, HuBERT and WavLM configs extend it with their pretraining heads
    and losses (and may change a default, e.g. HuBERT's ``mask_prob``).
    """

    conv_layers: tuple[ConvSpec, ...] = BASE_CONV
    """Feature encoder layers as (channels, kernel samples, stride samples); default hop 320 samples = 20 ms."""
    conv_norm: Literal["group", "layer"] = "group"
    """``group``: per-channel GroupNorm after the first conv only (BASE); ``layer``: LayerNorm after every conv (LARGE)."""
    conv_bias: bool = False
    """Bias in the conv layers (False for BASE, True for LARGE)."""
    feature_grad_mult: float = 0.1
    """Factor on gradients flowing into the feature encoder, 1 (forward unchanged; 0.1 for BASE)."""
    embed_dim: int = 768
    """Transformer width, channels."""
    num_layers: int = 12
    """Transformer layers, count."""
    num_heads: int = 12
    """Attention heads, count (the paper says 8; fairseq and the released BASE use 12)."""
    ffn_dim: int = 3072
    """Feed-forward inner width, channels."""
    layer_norm_first: bool = False
    """Pre-norm transformer (LARGE); False: post-norm (BASE)."""
    pos_conv_kernel: int = 128
    """Positional conv kernel, frames."""
    pos_conv_groups: int = 16
    """Positional conv groups, count."""
    dropout: float = 0.1
    """Dropout on transformer residual branches and after the positional embedding, probability."""
    attention_dropout: float = 0.1
    """Dropout on attention weights, probability."""
    activation_dropout: float = 0.0
    """Dropout after the feed-forward GELU, probability."""
    dropout_input: float = 0.1
    """Dropout after the feature projection, probability."""
    layerdrop: float = 0.05
    """Probability of skipping each transformer layer in training (one draw per optimizer step)."""
    layer_norm_eps: float = 1e-5
    """LayerNorm epsilon, dimensionless."""
    final_dim: int = 256
    """Space of the projected outputs and their targets (quantized vectors or cluster embeddings), channels."""
    mask_prob: float = 0.65
    """Expected fraction of frames chosen as span starts times span length, before overlap (~49% masked), probability."""
    mask_length: int = 10
    """Time-mask span, frames."""
    mask_min_spans: int = 2
    """Fewest time-mask spans per utterance, count (fairseq's ``min_masks=2``)."""
    mask_channel_prob: float = 0.0
    """Channel-mask analogue of ``mask_prob``, probability (0 in pretraining)."""
    mask_channel_length: int = 10
    """Channel-mask span, channels."""
    mask_channel_min_spans: int = 0
    """Fewest channel-mask spans per utterance, count."""
    feature_penalty_weight: float = 10.0
    """Weight of the L2 penalty on feature encoder outputs, dimensionless (0 for LARGE)."""

    def __post_init__(self) -> None:
        self.conv_layers = tuple(tuple(int(v) for v in spec) for spec in self.conv_layers)  # type: ignore[assignment]
        if self.embed_dim % self.num_heads:
            raise ValueError(f"model.embed_dim ({self.embed_dim}) must be divisible by model.num_heads ({self.num_heads})")
