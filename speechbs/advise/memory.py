"""How much audio one forward pass may hold on a device of a given memory: a measured estimate.

Legend: P = parameter elements; s = padded seconds of audio in one micro-batch.

Training memory on a device is about

    static + activations(s),   static = P x (4 weight + 4 gradient + 8 AdamW moments) bytes (fp32),

and activations grow linearly with the padded audio of the micro-batch while self-attention's
length-squared term is small (docs/batching.md, ``batch.cost``). The activations are what autograd
saves for the backward pass: :func:`saved_bytes` runs the task's real forward on real micro-batches
under ``torch.autograd.graph.saved_tensors_hooks`` and adds up the distinct storages it saves
(parameters left out), which works the same on any device and in the run's precision (bf16 autocast
saves bf16). At its peak the backward pass holds more: the gradients of the activations it is
working through. :data:`PEAK_PER_SAVED` scales the saved bytes to the step's peak; it is the largest
ratio measured against the peak resident memory of a real training step (``bench/memory.py`` on a
CPU: 15.3 MiB per padded second for the tiny wav2vec 2.0 against 5.8 MiB saved, 2.6x; BASE 98-107
against 87, 1.2x), so the cap is about right for small models and conservative for BASE. The cap
then fills :data:`HEADROOM` of the device. It is an estimate to start from, not a guarantee: the
first steps of a real run show ``peak_memory_gib`` on a GPU (it has not been checked on one).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

BYTES_PER_PARAM = 16
"""fp32 weight, gradient and AdamW's two moments."""
PEAK_PER_SAVED = 2.6
"""A training step's peak activation memory over the bytes autograd saves (the largest ratio measured)."""
HEADROOM = 0.8
"""Fraction of the device's memory the estimate plans to fill (the rest: the backward's transients,
the allocator's fragmentation, the CUDA context)."""


def static_bytes(model: nn.Module) -> int:
    """Weights, gradients and AdamW state of the trainable parameters, bytes."""
    return BYTES_PER_PARAM * sum(p.numel() for p in model.parameters() if p.requires_grad)


def saved_bytes(model: nn.Module, run_forward: Callable[[], Any]) -> int:
    """Bytes of the distinct tensors autograd saves for backward while ``run_forward()`` runs, parameters
    left out; ``run_forward`` returns the loss (a scalar), whose backward is then run and discarded."""
    param_storages = {p.untyped_storage().data_ptr() for p in model.parameters()}
    saved: dict[int, int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        with contextlib.suppress(RuntimeError):  # tensors without a storage (e.g. of a wrapper subclass)
            storage = tensor.untyped_storage()
            if storage.data_ptr() not in param_storages:
                saved.setdefault(storage.data_ptr(), storage.nbytes())
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        loss = run_forward()
    loss.backward()
    model.zero_grad(set_to_none=True)
    return sum(saved.values())


def max_device_seconds(memory_gb: float, static: int, saved_bytes_per_second: float) -> float:
    """The padded seconds one micro-batch may hold in ``HEADROOM`` of ``memory_gb`` GiB, given the bytes autograd
    saves per padded second (scaled to the step's peak by ``PEAK_PER_SAVED``); <= 0 when the weights and
    optimizer state alone do not fit."""
    return (memory_gb * 2**30 * HEADROOM - static) / (PEAK_PER_SAVED * saved_bytes_per_second)
