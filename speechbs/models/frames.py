"""Conv frame arithmetic: how many frames the conv feature encoder makes of so many samples.

The one home of this arithmetic: the feature encoder (each layer's valid output length, for
its padding-aware norm), HuBERT's label alignment (the model frame rate), fine-tuning's
label report (which transcripts are too long for CTC) and feature extraction for k-means
(the frame rate of a layer's features) all ask here.

A conv layer with kernel k and stride s turns n valid samples into floor((n - k) / s) + 1
valid frames (0 when n < k): valid frames read valid input only, so a row's frames do not
depend on the padding of its batch. For the wav2vec 2.0 stack (kernels 10,3,3,3,3,2,2,
strides 5,2,2,2,2,2,2) that is floor((n - 400) / 320) + 1 for n >= 400: a receptive field
of 400 samples (25 ms) and a hop of 320 samples (20 ms) at 16 kHz.

No torch import: the functions take an int, a numpy array or a torch tensor of sample
counts and return the same kind.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeVar

ConvSpec = tuple[int, int, int]
"""(out_channels, kernel_samples, stride_samples) of one conv layer."""

Counts = TypeVar("Counts")
"""An int, a numpy integer array or an integer torch tensor."""


def num_frames(num_samples: Counts, conv_layers: Sequence[ConvSpec]) -> Counts:
    """Valid output frames of ``conv_layers`` for inputs of ``num_samples`` samples (0 if too short)."""
    frames = num_samples
    for _, kernel, stride in conv_layers:
        frames = _at_least_zero((frames - kernel) // stride + 1)  # type: ignore[operator]
    return frames


def hop_samples(conv_layers: Sequence[ConvSpec]) -> int:
    """Samples between two frames: the product of the strides (320 for the wav2vec 2.0 stack)."""
    hop = 1
    for _, _, stride in conv_layers:
        hop *= int(stride)
    return hop


def frame_rate_hz(conv_layers: Sequence[ConvSpec], sample_rate_hz: float) -> float:
    """Frames per second of audio at ``sample_rate_hz`` (50 for the wav2vec 2.0 stack at 16 kHz)."""
    return sample_rate_hz / hop_samples(conv_layers)


def receptive_field_samples(conv_layers: Sequence[ConvSpec]) -> int:
    """Shortest input that yields one frame (400 samples for the wav2vec 2.0 stack)."""
    field = 1
    for _, kernel, stride in reversed(conv_layers):
        field = (field - 1) * stride + kernel
    return field


def _at_least_zero(frames: Counts) -> Counts:
    if hasattr(frames, "clamp"):  # torch
        return frames.clamp(min=0)  # type: ignore[union-attr]
    if hasattr(frames, "clip"):  # numpy
        return frames.clip(min=0)  # type: ignore[union-attr]
    return max(frames, 0)  # type: ignore[call-overload]
