"""Transformer context network with a convolutional positional embedding (wav2vec 2.0, section 2).

Legend: B utterances, T frames, C model channels, H heads, L layers.

Post-norm layers (BASE, ``layer_norm_first=False``) normalize after each
residual add and apply one LayerNorm before the first layer; pre-norm layers
(LARGE, "stable layer norm") normalize each sublayer's input and apply one
LayerNorm after the last layer (fairseq ``TransformerEncoder``). Padded frames
are zeroed before the positional conv and excluded as keys in attention, so
valid frames never see padding.

An encoder may carry an ``attention_bias`` module (WavLM's gated relative
position bias, ``relpos.py``): it gives each layer a function from that
layer's attention input to an additive bias (B, H, T, T), which goes to
``scaled_dot_product_attention`` as a float ``attn_mask`` with padded keys at
-inf. Without it the encoder is the plain wav2vec 2.0 / HuBERT one.

A caller that knows for free that no row is padded (``unpadded=True``: the speech encoder
on the CPU, ``blocks/feature_encoder.py``, ``no_row_padded``) skips the key mask and the
zeroing of padded frames: attention then runs its unmasked kernel, with the same result.
Compiled layers (``speechbs.train.compile`` sets ``always_mask``) always get the mask, so
that they see one input signature and compile no second graph for it.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

BiasFn = Callable[[torch.Tensor], torch.Tensor]
"""Attention input (B, T, C) -> additive attention bias (B, H, T, T) of one layer."""


@dataclass(kw_only=True)
class TransformerShape:
    """Sizes and regularization of the context network (units in each field's name)."""

    embed_dim: int
    num_layers: int
    num_heads: int
    ffn_dim: int
    layer_norm_first: bool
    pos_conv_kernel: int
    pos_conv_groups: int
    dropout: float
    attention_dropout: float
    activation_dropout: float
    layerdrop: float
    layer_norm_eps: float = 1e-5


class PositionalConv(nn.Module):
    """Grouped conv over time, weight-normalized, "same" length, then GELU (wav2vec 2.0, section 2; Mohamed et al. 2019)."""

    def __init__(self, embed_dim: int, kernel: int, groups: int) -> None:
        super().__init__()
        conv = nn.Conv1d(embed_dim, embed_dim, kernel, padding=kernel // 2, groups=groups)
        nn.init.normal_(conv.weight, mean=0.0, std=math.sqrt(4.0 / (kernel * embed_dim)))
        nn.init.zeros_(conv.bias)
        self.conv = nn.utils.parametrizations.weight_norm(conv, name="weight", dim=2)
        # An even kernel with padding k//2 yields one extra frame: drop the last one.
        self.num_remove = 1 if kernel % 2 == 0 else 0

    def forward(self, x_BTC: torch.Tensor) -> torch.Tensor:
        y_BCT = self.conv(x_BTC.transpose(1, 2))
        if self.num_remove:
            y_BCT = y_BCT[:, :, : -self.num_remove]
        return F.gelu(y_BCT).transpose(1, 2)


class SelfAttention(nn.Module):
    """Multi-head self-attention through ``scaled_dot_product_attention`` with a key padding mask."""

    def __init__(self, embed_dim: int, num_heads: int, dropout: float) -> None:
        super().__init__()
        if embed_dim % num_heads:
            raise ValueError(f"embed_dim {embed_dim} is not divisible by num_heads {num_heads}")
        self.num_heads, self.dropout = num_heads, dropout
        self.q_proj = nn.Linear(embed_dim, embed_dim)
        self.k_proj = nn.Linear(embed_dim, embed_dim)
        self.v_proj = nn.Linear(embed_dim, embed_dim)
        self.out_proj = nn.Linear(embed_dim, embed_dim)

    def forward(self, x_BTC: torch.Tensor, keep_B11T: torch.Tensor | None,
                bias_BHTT: torch.Tensor | None = None) -> torch.Tensor:
        B, T, C = x_BTC.shape
        def heads(proj: nn.Linear) -> torch.Tensor:
            return proj(x_BTC).view(B, T, self.num_heads, C // self.num_heads).transpose(1, 2)
        q_BHTD = heads(self.q_proj)
        attn_mask = keep_B11T
        if bias_BHTT is not None:
            # A float mask is added to the scaled scores; padded keys get -inf like a boolean mask.
            attn_mask = bias_BHTT.to(q_BHTD.dtype)
            if keep_B11T is not None:
                attn_mask = attn_mask.masked_fill(~keep_B11T, float("-inf"))
        y_BHTD = F.scaled_dot_product_attention(
            q_BHTD, heads(self.k_proj), heads(self.v_proj), attn_mask=attn_mask,
            dropout_p=self.dropout if self.training else 0.0)
        return self.out_proj(y_BHTD.transpose(1, 2).reshape(B, T, C))


class TransformerLayer(nn.Module):
    """One encoder layer; post-norm or pre-norm by ``layer_norm_first``."""

    def __init__(self, shape: TransformerShape) -> None:
        super().__init__()
        self.layer_norm_first = shape.layer_norm_first
        self.attn = SelfAttention(shape.embed_dim, shape.num_heads, shape.attention_dropout)
        self.attn_norm = nn.LayerNorm(shape.embed_dim, eps=shape.layer_norm_eps)
        self.fc1 = nn.Linear(shape.embed_dim, shape.ffn_dim)
        self.fc2 = nn.Linear(shape.ffn_dim, shape.embed_dim)
        self.ffn_norm = nn.LayerNorm(shape.embed_dim, eps=shape.layer_norm_eps)
        self.dropout = nn.Dropout(shape.dropout)
        self.activation_dropout = nn.Dropout(shape.activation_dropout)

    def _ffn(self, x_BTC: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.fc2(self.activation_dropout(F.gelu(self.fc1(x_BTC)))))

    def _attn(self, h_BTC: torch.Tensor, keep_B11T: torch.Tensor | None, bias_fn: BiasFn | None) -> torch.Tensor:
        return self.attn(h_BTC, keep_B11T, None if bias_fn is None else bias_fn(h_BTC))

    def forward(self, x_BTC: torch.Tensor, keep_B11T: torch.Tensor | None,
                bias_fn: BiasFn | None = None) -> torch.Tensor:
        if self.layer_norm_first:
            x_BTC = x_BTC + self.dropout(self._attn(self.attn_norm(x_BTC), keep_B11T, bias_fn))
            return x_BTC + self._ffn(self.ffn_norm(x_BTC))
        x_BTC = self.attn_norm(x_BTC + self.dropout(self._attn(x_BTC, keep_B11T, bias_fn)))
        return self.ffn_norm(x_BTC + self._ffn(x_BTC))


@dataclass
class TransformerOutput:
    """Context vectors and, on request, every layer's output."""

    x_BTC: torch.Tensor
    """Last layer's output (after the final LayerNorm in pre-norm mode); padded frames zeroed."""
    layer_outputs: list[torch.Tensor] | None
    """Output of each layer 1..L (fairseq ``layer_results``; a dropped layer repeats its input)."""


class TransformerEncoder(nn.Module):
    """Positional conv + L layers with DDP-consistent layer drop (Fan et al. 2019)."""

    def __init__(self, shape: TransformerShape, attention_bias: nn.Module | None = None) -> None:
        """``attention_bias``: optional module with ``layer_bias_fns(num_frames) -> list[BiasFn]`` (one per layer)."""
        super().__init__()
        self.shape = shape
        self.attention_bias = attention_bias
        self.pos_conv = PositionalConv(shape.embed_dim, shape.pos_conv_kernel, shape.pos_conv_groups)
        self.layer_norm = nn.LayerNorm(shape.embed_dim, eps=shape.layer_norm_eps)
        self.dropout = nn.Dropout(shape.dropout)
        self.layers = nn.ModuleList(TransformerLayer(shape) for _ in range(shape.num_layers))
        self.always_mask = False
        """Pass the key mask to the layers even when no row is padded (set for compiled layers)."""
        self.apply(_init_bert_linear)

    def dropped_layers(self, layerdrop_seed: int | None) -> list[bool]:
        """Which layers to skip this step.

        The decision comes from ``layerdrop_seed`` (a CPU generator, no global
        RNG, no device sync), so the caller can give every rank and every
        micro-batch of one optimizer step the same seed: the global batch is
        then computed by one sub-network, as on a single device.
        """
        if not self.training or self.shape.layerdrop <= 0.0:
            return [False] * self.shape.num_layers
        if layerdrop_seed is None:
            raise ValueError("layerdrop > 0 in training needs layerdrop_seed (e.g. the optimizer step), "
                             "so that every rank drops the same layers")
        gen = torch.Generator().manual_seed(int(layerdrop_seed))
        return (torch.rand(self.shape.num_layers, generator=gen) < self.shape.layerdrop).tolist()

    def forward(self, x_BTC: torch.Tensor, padding_BT: torch.Tensor | None, *,
                layerdrop_seed: int | None = None, return_layers: bool = False,
                unpadded: bool = False) -> TransformerOutput:
        """``unpadded``: the caller knows that ``padding_BT`` is all False (no mask is needed)."""
        if unpadded and not self.always_mask:
            padding_BT = None
        keep_B11T = None
        if padding_BT is not None:
            x_BTC = x_BTC.masked_fill(padding_BT.unsqueeze(-1), 0.0)
            keep_B11T = ~padding_BT.view(padding_BT.shape[0], 1, 1, -1)
        x_BTC = x_BTC + self.pos_conv(x_BTC)
        if not self.shape.layer_norm_first:
            x_BTC = self.layer_norm(x_BTC)
        x_BTC = self.dropout(x_BTC)
        layer_outputs: list[torch.Tensor] = []
        bias_fns: list[BiasFn | None] = [None] * len(self.layers)
        if self.attention_bias is not None:
            bias_fns = list(self.attention_bias.layer_bias_fns(x_BTC.shape[1]))
        for layer, drop, bias_fn in zip(self.layers, self.dropped_layers(layerdrop_seed), bias_fns):
            if not drop:
                x_BTC = layer(x_BTC, keep_B11T, bias_fn)
            if return_layers:
                layer_outputs.append(x_BTC)
        if self.shape.layer_norm_first:
            x_BTC = self.layer_norm(x_BTC)
        if padding_BT is not None:
            x_BTC = x_BTC.masked_fill(padding_BT.unsqueeze(-1), 0.0)
        return TransformerOutput(x_BTC, layer_outputs if return_layers else None)


def _init_bert_linear(module: nn.Module) -> None:
    """BERT initialization of the transformer's linear layers (fairseq ``init_bert_params``)."""
    if isinstance(module, nn.Linear):
        nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
