"""From micro-batch plans to padded tensors, decoded in DataLoader worker processes.

Legend: B = rows in a micro-batch, T = its padded width in samples at the model rate (its longest
row, or the padded length a compiled run rounds it up to: ``MicroBatch.width_samples``).

The planner decides WHAT each device sees (speechbs.data.batching); this module
only loads it. Each dataset item is one :class:`MicroBatch` plan, so the
DataLoader runs with ``batch_size=None`` and never re-batches. Plans are fed in
order from the main process; workers only decode, so the order of steps never
depends on ``num_workers``.

Workers ignore the stop signals (SIGTERM, SIGUSR1, SIGINT): a cluster sends them to the
whole process group, and a worker that died of one would abort the step in flight
("DataLoader worker ... is killed by signal") before its rank could save a checkpoint.
The rank acts on the signal (speechbs.train.preempt) and shuts its workers down when
the step iterator is closed.
"""

from __future__ import annotations

import atexit
import contextlib
import copy
import itertools
import signal
import weakref
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, fields, is_dataclass, replace
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from speechbs.config import AudioConfig, BatchConfig
from speechbs.data.audio import load_audio
from speechbs.data.batching import BatchPlanner, BatchStats, GlobalBatch, MicroBatch, Segment, row_cost_s
from speechbs.data.manifest import Manifest
from speechbs.data.partners import PartnerDraw

TargetsFn = Callable[[Sequence[Segment]], Any]
"""Targets hook: the segments of a micro-batch (manifest row, offset and length in
samples at the model rate, in row order) -> its targets, e.g. padded character ids
for CTC or the cluster labels of the cropped span for HuBERT."""


@dataclass
class AudioBatch:
    """One micro-batch, ready for the model."""

    wav_BT: torch.Tensor
    """float32, zero-padded after each row's length."""
    lengths_B: torch.Tensor
    """int64, real samples per row."""
    indices_B: torch.Tensor
    """int64, manifest rows (-1 for a placeholder row)."""
    is_empty: bool
    """A placeholder for an empty micro-batch: run it, multiply its loss by 0 (DDP sees every parameter)."""
    targets: Any = None
    """What the targets hook returned for these segments (None without a hook, and for placeholders)."""
    partner_wav_BT: torch.Tensor | None = None
    """float32 (B, T'): each row's mixing partner from the same GLOBAL batch (:mod:`speechbs.data.partners`),
    zero-padded; None when the loader draws no partners (and for placeholders)."""
    partner_lengths_B: torch.Tensor | None = None
    """int64, the partner's real samples per row; 0 for a row that is not mixed."""

    def pin_memory(self) -> AudioBatch:
        """The batch with every tensor in page-locked memory, targets included.

        The DataLoader's pin-memory thread calls this when ``pin_memory=True`` (on a GPU), so that
        the copies of :meth:`to` run beside the compute. It passes objects it does not know
        through untouched: without this method no tensor here would be pinned.
        """
        return _map_tensors(self, lambda t: t.pin_memory())

    def to(self, device: torch.device | str) -> AudioBatch:
        """The batch on ``device``, targets included, copied without waiting for the device (no host sync)."""
        return _map_tensors(self, lambda t: t.to(device, non_blocking=True))


def _map_tensors(value: Any, fn: Callable[[torch.Tensor], torch.Tensor]) -> Any:
    """``value`` with ``fn`` applied to its tensors: a tensor, or a dataclass field by field (others as they are)."""
    if isinstance(value, torch.Tensor):
        return fn(value)
    if is_dataclass(value) and not isinstance(value, type):
        return replace(value, **{f.name: _map_tensors(getattr(value, f.name), fn) for f in fields(value) if f.init})
    return value


@dataclass
class StepData:
    """Everything one device needs for one optimizer step."""

    batch: GlobalBatch
    micro_batches: list[AudioBatch]
    stats: BatchStats


@dataclass(frozen=True)
class _Item:
    """What the main process sends to a worker: a plan and the placeholder length."""

    micro: MicroBatch
    fill_samples: int
    partners: tuple[Segment | None, ...] | None = None
    """Per row of ``micro``, the segment it is mixed with (None: not mixed); None: no partners drawn."""


def build_planner(manifest: Manifest, batch_cfg: BatchConfig, audio_cfg: AudioConfig, seed: int, *,
                  num_pad_lengths: int = 0) -> BatchPlanner:
    """The batch planner over the manifest's lengths at the model's rate: the one way a planner is built
    from a manifest (training, evaluation, ``speechbs noise``).

    ``num_pad_lengths`` > 0 pads micro-batches to that many widths (a compiled run: train/compile.py).
    """
    lengths = manifest.num_model_samples(audio_cfg.sample_rate_hz)
    return BatchPlanner(lengths, batch_cfg, sample_rate_hz=audio_cfg.sample_rate_hz, seed=seed,
                        num_pad_lengths=num_pad_lengths)


def load_micro_batch(manifest: Manifest, audio_cfg: AudioConfig, micro: MicroBatch, fill_samples: int,
                     targets: TargetsFn | None = None,
                     partners: Sequence[Segment | None] | None = None) -> AudioBatch:
    """Decode and pad one micro-batch; an empty plan becomes one zero row of ``fill_samples``.

    ``partners`` (one per row, None for a row that is not mixed) are decoded into
    ``partner_wav_BT`` / ``partner_lengths_B``.
    """
    if micro.is_empty:
        return AudioBatch(torch.zeros(1, fill_samples), torch.tensor([fill_samples]),
                          torch.tensor([-1]), is_empty=True)
    wav_BT, lengths_B = _load_rows(manifest, audio_cfg, micro.segments, micro.width_samples)
    indices = np.asarray([s.index for s in micro.segments], dtype=np.int64)
    batch = AudioBatch(wav_BT, lengths_B, torch.from_numpy(indices), is_empty=False,
                       targets=None if targets is None else targets(micro.segments))
    if partners is not None:
        assert len(partners) == len(micro.segments)
        batch.partner_wav_BT, batch.partner_lengths_B = _load_rows(manifest, audio_cfg, partners)
    return batch


def _load_rows(manifest: Manifest, audio_cfg: AudioConfig, segments: Sequence[Segment | None],
               width_samples: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(zero-padded audio (B, T) at least one sample wide, real samples per row); a None row stays empty.
    T is ``width_samples`` when given (the planner's padded width), else the longest row."""
    width = width_samples or max([s.num_samples for s in segments if s is not None], default=1)
    wav_BT = torch.zeros(len(segments), width)
    lengths_B = torch.zeros(len(segments), dtype=torch.int64)
    for row, seg in enumerate(segments):
        if seg is None:
            continue
        wav_T = load_audio(manifest.audio_path(seg.index), audio_cfg,
                           offset_samples=seg.offset_samples, num_samples=seg.num_samples)
        # A resampled file can be a sample shorter than the manifest's rounded length.
        wav_T = wav_T[: seg.num_samples]
        wav_BT[row, : len(wav_T)] = torch.from_numpy(wav_T)
        lengths_B[row] = len(wav_T)
    return wav_BT, lengths_B


class MicroBatchDataset(Dataset):
    """Map-style dataset whose "index" is a micro-batch plan (sent by :class:`_PlanStream`)."""

    def __init__(self, manifest: Manifest, audio_cfg: AudioConfig, targets: TargetsFn | None = None) -> None:
        self.manifest = manifest
        self.audio_cfg = audio_cfg
        self.targets = targets

    def __getitem__(self, item: _Item) -> AudioBatch:
        return load_micro_batch(self.manifest, self.audio_cfg, item.micro, item.fill_samples, self.targets,
                                item.partners)


class _PlanStream:
    """The plans of one rank from a starting position, on a private copy of the planner.

    The DataLoader pulls from this ahead of the training loop (prefetch); the
    copy keeps that lookahead from moving the position that is checkpointed.
    Mixing partners are drawn here, from the whole global batch, before it is split.
    """

    def __init__(self, planner: BatchPlanner, rank: int, world_size: int,
                 split: Callable[[BatchPlanner, GlobalBatch, int], list[list[MicroBatch]]],
                 partners: PartnerDraw | None) -> None:
        self.cursor = copy.copy(planner)
        self.rank = rank
        self.world_size = world_size
        self.split = split
        self.partners = partners

    def __iter__(self) -> Iterator[_Item]:
        for step in itertools.count():
            batch = self.cursor.next_batch()
            chosen = None if self.partners is None else self.partners.choose(batch)
            yield from _items(batch, self.split(self.cursor, batch, step)[self.rank], self.cursor, chosen)


def _items(batch: GlobalBatch, micro_batches: list[MicroBatch], planner: BatchPlanner,
           partners: dict[int, Segment] | None = None) -> Iterator[_Item]:
    """Plans for the workers; a placeholder is as long as the batch's shortest segment (padded as the
    planner pads), so the model runs on it."""
    fill = int(planner.pad_width_samples(min(s.num_samples for s in batch.segments)))
    for micro in micro_batches:
        rows = None if partners is None or micro.is_empty else tuple(partners.get(s.index) for s in micro.segments)
        yield _Item(micro, fill, rows)


def iter_steps(planner: BatchPlanner, manifest: Manifest, audio_cfg: AudioConfig, *, rank: int,
               world_size: int, num_workers: int, targets: TargetsFn | None = None,
               num_steps: int | None = None, pin_memory: bool = False,
               min_micro_batches: Callable[[int], int] | None = None,
               partners: PartnerDraw | None = None) -> Iterator[StepData]:
    """Steps for one rank, from the planner's position on (forever, or ``num_steps``).

    With ``partners`` each micro-batch carries its rows' mixing partners, drawn from the
    whole global batch (:mod:`speechbs.data.partners`).

    The planner advances when a step is handed out, not when it is prefetched:
    after receiving step k, ``planner.state_dict()`` resumes at step k + 1.
    ``min_micro_batches(i)`` (i counts the steps handed out by this call, from 0) is
    the fewest micro-batches of that step over all ranks; a gradient-noise step needs 2.
    It repartitions the same global batch, so what the step trains on is unchanged.
    """
    assert 0 <= rank < world_size

    def split(cursor: BatchPlanner, batch: GlobalBatch, step: int) -> list[list[MicroBatch]]:
        return cursor.split(batch, world_size, min_micro_batches(step) if min_micro_batches else 1)

    loader = DataLoader(MicroBatchDataset(manifest, audio_cfg, targets), batch_size=None,
                        sampler=_PlanStream(planner, rank, world_size, split, partners), num_workers=num_workers,
                        pin_memory=pin_memory, prefetch_factor=2 if num_workers else None,
                        worker_init_fn=_ignore_stop_signals if num_workers else None)
    with _stop_signals_blocked():  # held back from workers until they ignore them; the rank gets them after
        loaded = iter(loader)
    _live_iterators.add(loaded)
    done = 0
    try:
        while num_steps is None or done < num_steps:
            batch = planner.next_batch()
            split_R = split(planner, batch, done)
            micro_batches = [next(loaded) for _ in split_R[rank]]
            for plan, audio in zip(split_R[rank], micro_batches):
                assert audio.is_empty == plan.is_empty, "loader and planner out of step"
            yield StepData(batch, micro_batches, BatchStats.from_split(batch, split_R, planner.sample_rate_hz))
            done += 1
    finally:
        _shut_down(loaded)  # now, not when the iterator is collected: a traceback may hold it


_live_iterators: weakref.WeakSet = weakref.WeakSet()
"""DataLoader iterators whose workers may be alive (see :func:`_shut_down_at_exit`)."""


def _shut_down(loaded: Any) -> None:
    """Stop a DataLoader iterator's workers and wait for them (a no-op without workers)."""
    shutdown = getattr(loaded, "_shutdown_workers", None)  # torch has no public close()
    if shutdown is not None:
        shutdown()


@atexit.register
def _shut_down_at_exit() -> None:
    """Workers ignore SIGTERM, and multiprocessing's own exit handler SIGTERMs daemonic children and
    then joins them without a timeout: shut down any still running first. (Registered after
    multiprocessing's handler and torch's, so it runs before both.)"""
    for loaded in list(_live_iterators):
        _shut_down(loaded)


STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT)
"""Signals a DataLoader worker ignores: its rank decides what they mean."""


def _ignore_stop_signals(worker_id: int) -> None:
    """``worker_init_fn``: ignore :data:`STOP_SIGNALS` (torch's own worker SIGTERM handler would exit),
    then let through those the rank held back while it forked."""
    for sig in STOP_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)


@contextlib.contextmanager
def _stop_signals_blocked() -> Iterator[None]:
    """Block :data:`STOP_SIGNALS` in this thread while workers are forked (they inherit the mask), so
    none can kill a worker before :func:`_ignore_stop_signals` runs; pending ones arrive at the end."""
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def eval_micro_batches(manifest: Manifest, batch_cfg: BatchConfig, audio_cfg: AudioConfig, *,
                       rank: int, world_size: int, targets: TargetsFn | None = None) -> Iterator[AudioBatch]:
    """Every utterance of ``manifest`` once, uncropped, packed under the per-device cap: this rank's share.

    The whole manifest is planned as ONE global batch and split like a training
    step, so evaluation pads as little as training does and every rank runs the
    same number of micro-batches (empty ones become placeholders).
    """
    lengths = manifest.num_model_samples(audio_cfg.sample_rate_hz)
    # Uncropped, so a forward pass must hold the longest utterance even when training crops below it.
    longest_cost_s = float(row_cost_s(lengths.max(), audio_cfg.sample_rate_hz, batch_cfg))
    cfg = replace(batch_cfg.constant(max(float(lengths.sum()) / audio_cfg.sample_rate_hz, 1e-3)), crop="none",
                  max_device_seconds=max(batch_cfg.max_device_seconds, longest_cost_s * (1 + 1e-9)))
    planner = build_planner(manifest, cfg, audio_cfg, seed=0)
    batch = planner.batch_at(0, 0)
    dataset = MicroBatchDataset(manifest, audio_cfg, targets)
    for item in _items(batch, planner.split(batch, world_size)[rank], planner):
        yield dataset[item]
