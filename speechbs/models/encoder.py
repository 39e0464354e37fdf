"""What every pretrained speech encoder offers fine-tuning and feature extraction.

wav2vec 2.0, HuBERT and WavLM differ in their pretraining losses, not in how a
downstream task uses them: each model class has

    encode(wav_BT, lengths_B, *, seeds_B=None, mask_BT=None, layerdrop_seed=None,
           return_layers=False) -> EncoderOutput

which runs the feature encoder and the transformer without any pretraining
head (masks are applied when ``seeds_B`` or ``mask_BT`` is given, as in
fine-tuning). :func:`load_pretrained` rebuilds such a model from a speechbs
checkpoint, whatever its family.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from speechbs.errors import DataError
from speechbs.models.blocks.feature_encoder import ConvSpec
from speechbs.models.blocks.transformer import TransformerShape

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

    def transformer_shape(self) -> TransformerShape:
        return TransformerShape(
            embed_dim=self.embed_dim, num_layers=self.num_layers, num_heads=self.num_heads,
            ffn_dim=self.ffn_dim, layer_norm_first=self.layer_norm_first,
            pos_conv_kernel=self.pos_conv_kernel, pos_conv_groups=self.pos_conv_groups,
            dropout=self.dropout, attention_dropout=self.attention_dropout,
            activation_dropout=self.activation_dropout, layerdrop=self.layerdrop,
            layer_norm_eps=self.layer_norm_eps)


@dataclass
class EncoderOutput:
    """What fine-tuning and feature extraction use."""

    features_BTC: torch.Tensor
    """Transformer output (padded frames zeroed), (B, T, embed_dim)."""
    padding_BT: torch.Tensor
    """True at padded frames (fairseq's ``padding_mask`` convention)."""
    frame_lengths_B: torch.Tensor
    """Valid frames per row, from the conv arithmetic."""
    layer_outputs: list[torch.Tensor] | None = None
    """Each transformer layer's output (for HuBERT targets and layer-weighted heads), when requested."""


def load_pretrained(path: str | Path) -> tuple[nn.Module, Any]:
    """The model of a speechbs checkpoint (on the CPU, in eval mode) and the config it was trained with.

    ``path`` is a checkpoint file or a run directory (its latest checkpoint).
    """
    from speechbs.checkpoint import latest_checkpoint, load_checkpoint
    from speechbs.configio import config_from_toml
    from speechbs.models.registry import MODELS

    path = Path(path)
    if path.is_dir():
        found = latest_checkpoint(path / "checkpoints") or latest_checkpoint(path)
        if found is None:
            raise DataError(f"{path} is a directory without checkpoints (expected {path}/checkpoints/step_*.pt)")
        path = found
    ckpt = load_checkpoint(path)
    if "config_toml" not in ckpt or "model" not in ckpt:
        raise DataError(f"checkpoint {path} has no saved config or model weights; is it a speechbs checkpoint?")
    cfg = config_from_toml(ckpt["config_toml"], source=f"config saved in {path}")
    model = MODELS[cfg.model.name].model_cls(cfg.model.arch)
    model.load_state_dict(ckpt["model"])
    return model.eval(), cfg
