"""``torch.compile`` for training: which parts of a model are compiled, and how their shapes stay few.

Legend: B rows of a micro-batch, T samples (waveform) or frames, C channels.

This is the one place that decides how a speechbs model is compiled; the training loop
(``train.compile``) and ``bench/throughput.py --compile on`` both call :func:`compile_model`.

**Regions, not the whole model.** The conv feature encoder and each transformer layer are
compiled in place (``nn.Module.compile``: torch's "regional compilation" of a repeated block,
compiled once and reused by every layer); everything between them runs eagerly. Compiling the
whole forward was measured (torch 2.13, CPU) to be worse on three counts:

- the pretraining forwards read sizes from the data (``mask_BT.nonzero()`` for the masked frames,
  the widest row of the contrastive blocks, HuBERT's labelled frames): each is a graph break, and
  the graphs after it see a new number of masked frames every step;
- layer drop chooses the layers in Python each step: traced through, every new drop pattern was
  another graph, until dynamo's limit of 8 sent the frame back to eager for good;
- the whole-model graphs took minutes to compile on a CPU and then ran slower than eager
  (docs/benchmarks.md).

Inside the regions nothing depends on the data: their inputs are ``wav_BT`` (B, T samples) and
``x_BTC`` (B, T frames, C) with the rows' lengths as tensors.

**Shapes.** B changes with every micro-batch; dynamo makes it dynamic after the first change
(a B = 1 graph per length comes on top, as torch specializes size-1 dimensions). T is kept to a few
values instead: inductor's backward of the conv stack fixes the input length in its graph
(measured: one more graph per distinct length, each new length a recompile), so a compiled run
pads every micro-batch up to one of ``train.compile_num_lengths`` lengths
(:meth:`~speechbs.data.batching.BatchPlanner.pad_width_samples`). The padding is masked
everywhere (padding-aware norms, key padding in attention, losses over valid frames), so it
changes neither the loss nor the gradients (tests/train/test_compile.py).

**State dicts.** Compiling in place keeps every parameter's name, so checkpoints of compiled and
eager runs are the same dict and resume each other; ``torch.compile(model)`` would have
prefixed every key with ``_orig_mod.``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ContextManager

import torch
from torch import nn

from speechbs.models.blocks.feature_encoder import ConvFeatureEncoder
from speechbs.models.blocks.transformer import TransformerEncoder, TransformerLayer

REGIONS: tuple[type[nn.Module], ...] = (ConvFeatureEncoder, TransformerLayer)
"""The module types compiled: the parts of every speechbs model whose shapes are (B, T[, C])."""

BACKENDS = ("inductor", "aot_eager", "eager")
"""``inductor`` generates kernels; ``aot_eager`` (forward and backward traced) and ``eager`` only trace."""


def graphs_per_region(num_lengths: int) -> int:
    """Most graphs one region may compile: per length a dynamic-B graph and a B = 1 graph, all of it
    twice when a run also runs the region without autograd (fine-tuning's frozen-encoder steps),
    plus a few (the first, static graph; the layers' frame axis turning dynamic)."""
    return 2 * (2 * num_lengths) + 8


@dataclass(frozen=True)
class CompiledRegions:
    """What :func:`compile_model` compiled, and a count of the graphs compiled since."""

    names: list[str]
    """Module names of the compiled regions, e.g. ``encoder.layers.0``."""
    graphs_before: int
    """:func:`num_compiled_graphs` when they were compiled (dynamo's counter is per process)."""

    def num_graphs(self) -> int:
        """Graphs compiled since (every region and recompile: lazily, in the first steps)."""
        return num_compiled_graphs() - self.graphs_before


def compile_model(model: nn.Module, *, num_lengths: int, backend: str = "inductor") -> CompiledRegions:
    """Compile ``model``'s regions (:data:`REGIONS`) in place and say which.

    ``num_lengths`` is how many input lengths the regions will see (the padded lengths of a
    training run, 1 for a fixed shape). Dynamo's per-function recompile limit (8) is raised to
    :func:`graphs_per_region` so that no region silently falls back to eager before every length
    has its graph.
    """
    if backend not in BACKENDS:
        raise ValueError(f"torch.compile backend {backend!r}: use one of {', '.join(BACKENDS)}")
    if num_lengths < 1:
        raise ValueError(f"num_lengths must be >= 1 (input lengths the compiled regions will see), got {num_lengths}")
    regions = [(name, module) for name, module in model.named_modules() if isinstance(module, REGIONS)]
    if not regions:
        raise ValueError(f"{type(model).__name__} holds no {' or '.join(t.__name__ for t in REGIONS)} to compile")
    config = torch._dynamo.config
    config.recompile_limit = max(config.recompile_limit, graphs_per_region(num_lengths))
    graphs_before = num_compiled_graphs()
    for _, module in regions:
        module.compile(backend=backend)
    for module in model.modules():
        if isinstance(module, TransformerEncoder):  # one input signature: the key mask even when nothing is padded
            module.always_mask = True
    return CompiledRegions([name for name, _ in regions], graphs_before)


def num_compiled_graphs() -> int:
    """Graphs dynamo has compiled in this process so far (every region, every recompile)."""
    return int(torch._dynamo.utils.counters["stats"]["unique_graphs"])


def eager() -> ContextManager[Any]:
    """Run compiled regions as plain Python inside the block (validation: other shapes, no grad)."""
    return torch.compiler.set_stance("force_eager")
