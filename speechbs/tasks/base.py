"""The task interface: what the shared training loop asks of pretraining and of fine-tuning.

An abstract base class, not a ``typing.Protocol``, because a task is methods AND data:
the loop reads the model, the loader hooks and the checkpoint selection as attributes,
and most tasks leave several parts at a default (no pre-pass over the global batch, no
schedule logs, no validation set, no loader hooks, no best checkpoint). The base class
holds each default once, and a task that forgets ``forward`` or ``metrics`` fails when
it is built (``TypeError``), not hours into a run. A Protocol would leave every task to
restate every default and the loop to test for missing attributes. A test that wants
to intercept a call overrides the method on the instance or in a subclass.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from typing import Any, Literal

from torch import nn

from speechbs.data.loader import AudioBatch, TargetsFn
from speechbs.data.partners import PartnerDraw
from speechbs.train.step import StepOutput, StepReport


class Task(abc.ABC):
    """The parts of training that depend on what is trained; the loop owns everything else."""

    model: nn.Module
    """The model the loop trains (unwrapped; the loop wraps it in DDP and may compile regions of it)."""
    targets: TargetsFn | None = None
    """Loader hook that attaches each micro-batch's targets (cluster labels, transcripts); runs in workers."""
    partners: PartnerDraw | None = None
    """Loader option: attach to each row a mixing partner drawn from its whole global batch (WavLM)."""
    find_unused_parameters: bool = False
    """DDP must expect parameters without gradients (layer drop skips whole layers, a frozen encoder)."""
    has_validation: bool = False
    """Whether :meth:`validate` has a set to score (``data.valid_manifest`` is set)."""
    best_metric: str = ""
    """Validation metric that selects ``checkpoints/best.pt`` (e.g. ``wer``); empty: no selection."""
    best_mode: Literal["min", "max"] = "min"
    """Whether a lower or a higher ``best_metric`` is better."""

    @abc.abstractmethod
    def forward(self, model: nn.Module, micro_batch: AudioBatch, *, step: int, prepared: Any = None) -> StepOutput:
        """One micro-batch of optimizer step ``step`` (0-based) -> its loss SUM, number of targets and log sums.

        ``model`` is the wrapped model (DDP); ``prepared`` is what :meth:`prepare` returned for this step.
        A placeholder micro-batch (``micro_batch.is_empty``) must still run the model (the engine zeroes it).
        """

    @abc.abstractmethod
    def metrics(self, report: StepReport) -> dict[str, float]:
        """Named per-step metrics from the engine's reduced sums (e.g. accuracy = correct / targets)."""

    def prepare(self, model: nn.Module, micro_batches: Sequence[AudioBatch], *, step: int) -> Any:
        """What every forward of step ``step`` gets as ``prepared``: terms of the whole global batch, computed
        on every rank before its first micro-batch (``train_step(..., prepare=)``). None by default."""
        return None

    def step_logs(self, step: int) -> dict[str, float]:
        """Values logged at ``step`` (steps taken) that come from schedules (e.g. the Gumbel temperature)."""
        return {}

    def validate(self, model: nn.Module, step: int) -> dict[str, float]:
        """Validation metrics of the unwrapped ``model`` after ``step`` steps, the same on every rank
        (reduced over ranks); called on every rank when :attr:`has_validation`, logged by rank 0."""
        raise NotImplementedError(f"{type(self).__name__} has no validation set")
