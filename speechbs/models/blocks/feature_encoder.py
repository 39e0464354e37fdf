"""Convolutional feature encoder: raw 16 kHz audio -> 50 Hz frames (wav2vec 2.0, section 2).

Legend: B utterances, T samples or frames, C channels, L conv layers.

Seven temporal convolutions (512 channels; kernels 10,3,3,3,3,2,2; strides
5,2,2,2,2,2,2: receptive field 400 samples = 25 ms, hop 320 samples = 20 ms),
each followed by GELU. "group" mode (BASE): a GroupNorm with one group per
channel after the FIRST layer only, i.e. each channel is normalized over time.
"layer" mode (LARGE): a LayerNorm over channels after every layer.

Padding invariance: the first layer's group norm takes its statistics over
the VALID time steps of each utterance only, so a row gives the same output
whatever padding its micro-batch adds. Without padding this is nn.GroupNorm
(up to float rounding), and when no row of the micro-batch is padded and that is
known without a device sync (:func:`no_row_padded`) the fused ``F.group_norm``
runs instead: the masked statistics cost three elementwise passes and autograd's
backward through them about eight, where the fused kernel takes two and one
(measured in docs/benchmarks.md). Every later value at a valid frame depends on
valid input samples only (the frame-length arithmetic of ``models/frames.py``
guarantees it).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch.nn import functional as F

from speechbs.models.frames import ConvSpec, num_frames

class GradMultiply(torch.autograd.Function):
    """Identity forward, gradient times ``scale`` backward (fairseq ``GradMultiply``).

    wav2vec 2.0 scales the feature encoder's gradients by 0.1 for BASE
    (section 4.2) to keep its updates stable; the forward value is untouched.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, scale: float) -> torch.Tensor:  # type: ignore[override]
        ctx.scale = scale
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:  # type: ignore[override]
        return grad * ctx.scale, None


def _stats_dtype(x: torch.Tensor) -> torch.dtype:
    """fp32 for half/bf16 inputs (fairseq's Fp32GroupNorm/Fp32LayerNorm), else the input's dtype."""
    return torch.promote_types(x.dtype, torch.float32)


def no_row_padded(lengths_B: torch.Tensor, num_steps: int) -> bool:
    """True when every row is valid over all ``num_steps``, if that is known for free; else False.

    Free means on the CPU (reading ``lengths_B`` does not wait for a device) and outside
    ``torch.compile`` (a data-dependent branch would break the compiled graph; compiled runs
    pad to a few lengths anyway). Where it is False the padding-aware path runs, which is
    exact for any padding, so the answer only ever chooses the faster of two equal paths.
    """
    if lengths_B.device.type != "cpu" or torch.compiler.is_compiling():
        return False
    return bool((lengths_B >= num_steps).all())


def channel_norm(x_BCT: torch.Tensor, lengths_B: torch.Tensor, norm: nn.GroupNorm) -> torch.Tensor:
    """GroupNorm(C groups, C channels) over each row's valid frames, in >= fp32: fused when no row is padded."""
    if no_row_padded(lengths_B, x_BCT.shape[2]):
        dtype = _stats_dtype(x_BCT)
        return F.group_norm(x_BCT.to(dtype), norm.num_groups, norm.weight.to(dtype), norm.bias.to(dtype),
                            norm.eps).to(x_BCT.dtype)
    return masked_channel_norm(x_BCT, lengths_B, norm)


def masked_channel_norm(x_BCT: torch.Tensor, lengths_B: torch.Tensor, norm: nn.GroupNorm) -> torch.Tensor:
    """GroupNorm(C groups, C channels) with statistics over the valid frames of each row, in >= fp32.

    Three passes over the (large: first conv layer) activation instead of GroupNorm's two, and
    one fused multiply-add for normalization and affine: sums of x and x^2 over valid frames,
    then ``x * scale + shift``. The one-pass variance is safe here: the statistics are in fp32
    at least, and the first layer's outputs are O(1) with a mean not far from 0.
    """
    x32_BCT = x_BCT.to(_stats_dtype(x_BCT))
    valid_B1T = (torch.arange(x_BCT.shape[2], device=x_BCT.device).view(1, 1, -1)
                 < lengths_B.view(-1, 1, 1)).to(x32_BCT.dtype)
    num_B11 = valid_B1T.sum(dim=2, keepdim=True).clamp(min=1)
    masked_BCT = x32_BCT * valid_B1T
    mean_BC1 = masked_BCT.sum(dim=2, keepdim=True) / num_B11
    var_BC1 = ((masked_BCT * x32_BCT).sum(dim=2, keepdim=True) / num_B11 - mean_BC1.square()).clamp(min=0.0)
    scale_BC1 = torch.rsqrt(var_BC1 + norm.eps) * norm.weight.to(x32_BCT.dtype).view(1, -1, 1)
    shift_BC1 = norm.bias.to(x32_BCT.dtype).view(1, -1, 1) - mean_BC1 * scale_BC1
    return torch.addcmul(shift_BC1, x32_BCT, scale_BC1).to(x_BCT.dtype)


class ConvLayer(nn.Module):
    """Conv1d -> (norm) -> GELU. ``norm`` is "group", "layer" or "none"."""

    def __init__(self, in_channels: int, spec: ConvSpec, norm: str, bias: bool) -> None:
        super().__init__()
        out_channels, kernel, stride = spec
        self.conv = nn.Conv1d(in_channels, out_channels, kernel, stride=stride, bias=bias)
        nn.init.kaiming_normal_(self.conv.weight)
        self.norm_kind = norm
        if norm == "group":
            self.norm: nn.Module = nn.GroupNorm(out_channels, out_channels, affine=True)
        elif norm == "layer":
            self.norm = nn.LayerNorm(out_channels, elementwise_affine=True)
        else:
            self.norm = nn.Identity()

    def forward(self, x_BCT: torch.Tensor, out_lengths_B: torch.Tensor) -> torch.Tensor:
        x_BCT = self.conv(x_BCT)
        if self.norm_kind == "group":
            x_BCT = channel_norm(x_BCT, out_lengths_B, self.norm)  # type: ignore[arg-type]
        elif self.norm_kind == "layer":
            # fp32 statistics like fairseq's Fp32LayerNorm, also under autocast.
            ln = self.norm
            dtype = _stats_dtype(x_BCT)
            x_BTC = F.layer_norm(x_BCT.transpose(1, 2).to(dtype), ln.normalized_shape,  # type: ignore[arg-type]
                                 ln.weight.to(dtype), ln.bias.to(dtype), ln.eps)  # type: ignore[union-attr]
            x_BCT = x_BTC.transpose(1, 2).to(x_BCT.dtype)
        return F.gelu(x_BCT)


class ConvFeatureEncoder(nn.Module):
    """The conv stack: ``(wav_BT, lengths_B) -> (feats_BCT, frame_lengths_B)``."""

    def __init__(self, conv_layers: Sequence[ConvSpec], mode: str, bias: bool) -> None:
        super().__init__()
        if mode not in ("group", "layer"):
            raise ValueError(f"conv norm mode must be 'group' or 'layer', got {mode!r}")
        self.specs = [tuple(spec) for spec in conv_layers]
        layers, in_channels = [], 1
        for i, spec in enumerate(self.specs):
            norm = "layer" if mode == "layer" else ("group" if i == 0 else "none")
            layers.append(ConvLayer(in_channels, spec, norm, bias))  # type: ignore[arg-type]
            in_channels = spec[0]
        self.conv_layers = nn.ModuleList(layers)

    def forward(self, wav_BT: torch.Tensor, lengths_B: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x_BCT = wav_BT.unsqueeze(1)
        for layer, spec in zip(self.conv_layers, self.specs):
            lengths_B = num_frames(lengths_B, [spec])  # type: ignore[list-item]
            x_BCT = layer(x_BCT, lengths_B)
        return x_BCT, lengths_B
