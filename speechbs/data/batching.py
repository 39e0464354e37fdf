"""The global batch planner: a batch is seconds of real audio per optimizer step (DESIGN section 2).

Legend: N = utterances in the manifest, K = planning units in an epoch (one per step when the batch
is constant),
S = segments in one global batch, W = world size (devices), M = micro-batches per device,
L = padded lengths a micro-batch may take (``num_pad_lengths``).

Two stages, kept apart on purpose. :meth:`BatchPlanner.next_batch` chooses the
GLOBAL set of utterances for every step from (lengths, seed, epoch, config, the
schedule's decisions) alone, so the experiment is the same on 1 or 64 devices:
each epoch is cut into K planning units of about ``batch.planning_unit_seconds``
of audio, shuffled, and a step takes as many consecutive units as its batch
schedule (data/batch_schedule.py) asks for; the last step of an epoch takes
what is left of it, so every utterance is used once per epoch. With a constant
batch a unit is the batch and every step is one unit. :meth:`BatchPlanner.split`
then cuts one global batch into per-device micro-batches that fit the memory
cap, with the same number of micro-batches on every device (DDP needs every rank
to run the same number of backward passes). docs/batching.md is the user contract.
"""

from __future__ import annotations

import hashlib
import math
import warnings
from dataclasses import dataclass

import numpy as np

from speechbs import seeds
from speechbs.config import BatchConfig
from speechbs.data.batch_schedule import BatchSchedule
from speechbs.errors import PlanError


@dataclass(frozen=True, slots=True)
class Segment:
    """The part of one utterance used in a step."""

    index: int
    """Row in the manifest."""
    offset_samples: int
    """Crop start, at the model rate."""
    num_samples: int
    """Samples used (after the crop), at the model rate."""


@dataclass(frozen=True, slots=True)
class MicroBatch:
    """One forward pass on one device; may be empty when a device has nothing left to run."""

    segments: tuple[Segment, ...]
    padded_samples: int
    """``len(segments) * width``: the longest segment, or the padded length that holds it (0 when empty)."""

    @property
    def width_samples(self) -> int:
        """Padded length of every row, samples."""
        return self.padded_samples // len(self.segments) if self.segments else 0

    @property
    def is_empty(self) -> bool:
        return not self.segments


EMPTY_MICRO_BATCH = MicroBatch((), 0)


@dataclass(frozen=True)
class GlobalBatch:
    """Everything one optimizer step sees, over all devices and accumulation."""

    epoch: int
    unit_in_epoch: int
    """The epoch's planning unit the batch starts at (the step in the epoch when the batch is constant)."""
    num_units: int
    """Planning units in the batch (fewer than the schedule asked for only at the end of an epoch)."""
    target_s: float
    """The batch the schedule set for this step, s: what the LR rule follows (``real_samples`` is within
    a longest utterance per unit of ``num_units`` units)."""
    segments: tuple[Segment, ...]
    real_samples: int
    """Audio used, at the model rate."""
    cropped_samples: int
    """Audio of these utterances cut away by the crop policy (not counted as seen)."""


@dataclass(frozen=True)
class BatchStats:
    """Per-step accounting that the training loop logs (DESIGN section 2, honest accounting)."""

    real_s: float
    padded_s: float
    """Padded audio computed over all devices (placeholder rows of empty micro-batches excluded)."""
    packing_efficiency: float
    """real_s / padded_s."""
    num_micro_batches: int
    """Per device (the same on every device)."""
    num_empty_micro_batches: int
    """Over all devices: placeholders that run with loss weight 0."""
    max_device_padded_s: float
    """Padded seconds on the busiest device: the step's wall time is set by it."""
    cropped_s: float
    num_utterances: int

    @classmethod
    def from_split(cls, batch: GlobalBatch, split: list[list[MicroBatch]], sample_rate_hz: int) -> BatchStats:
        per_device = [sum(mb.padded_samples for mb in micro) for micro in split]
        padded = sum(per_device)
        return cls(
            real_s=batch.real_samples / sample_rate_hz,
            padded_s=padded / sample_rate_hz,
            packing_efficiency=batch.real_samples / padded if padded else 1.0,
            num_micro_batches=len(split[0]) if split else 0,
            num_empty_micro_batches=sum(mb.is_empty for micro in split for mb in micro),
            max_device_padded_s=max(per_device, default=0) / sample_rate_hz,
            cropped_s=batch.cropped_samples / sample_rate_hz,
            num_utterances=len(batch.segments),
        )


@dataclass(frozen=True)
class _EpochPlan:
    """One epoch as arrays; GlobalBatch objects are built on demand (N can be 281k)."""

    order_N: np.ndarray
    """Manifest rows in stream order (length buckets, shuffled within each)."""
    offsets_N: np.ndarray
    used_N: np.ndarray
    bounds_K1: np.ndarray
    """Unit k is stream[bounds[k]:bounds[k + 1]]."""
    unit_order_K: np.ndarray
    """Which unit comes at each position of the epoch: units are shuffled."""


def row_cost_s(num_samples: np.ndarray | float, sample_rate_hz: int, cfg: BatchConfig) -> np.ndarray | float:
    """Cost of one row of this length in a micro-batch, in cap seconds (``batch.cost``)."""
    length_s = np.asarray(num_samples, dtype=np.float64) / sample_rate_hz
    if cfg.cost == "quadratic":
        return length_s * (1.0 + length_s / cfg.cost_length_seconds)
    return length_s


class BatchPlanner:
    """Deterministic plan of global batches, and their split into micro-batches per device."""

    def __init__(self, num_samples: np.ndarray, cfg: BatchConfig, *, sample_rate_hz: int, seed: int,
                 num_pad_lengths: int = 0) -> None:
        """``num_pad_lengths`` > 0 rounds every micro-batch's padded length up to one of that many
        lengths (:meth:`pad_width_samples`); it changes the split only, never a global batch."""
        self.num_samples_N = np.asarray(num_samples, dtype=np.int64)
        self.cfg = cfg
        self.sample_rate_hz = sample_rate_hz
        self.seed = seed
        self.schedule = BatchSchedule(cfg)
        self.unit_s = self.schedule.unit_s
        crop = cfg.crop != "none"
        self._crop_samples = round(cfg.crop_max_seconds * sample_rate_hz) if crop else None
        self._validate()
        self.capped_N = (self.num_samples_N if self._crop_samples is None
                         else np.minimum(self.num_samples_N, self._crop_samples))
        # Equal-count quantile buckets: rank by length, then cut the ranks into num_buckets parts.
        rank_N = np.empty(len(self.capped_N), dtype=np.int64)
        rank_N[np.argsort(self.capped_N, kind="stable")] = np.arange(len(self.capped_N))
        self.bucket_N = rank_N * cfg.num_buckets // len(self.capped_N)
        self.pad_lengths_L = _pad_lengths(self.capped_N, num_pad_lengths)
        total = int(self.capped_N.sum())
        self.units_per_epoch = max(1, round(total / (self.unit_s * sample_rate_hz)))
        unit_s = total / self.units_per_epoch / sample_rate_hz
        if abs(unit_s - self.unit_s) > 0.01 * self.unit_s:
            what = "steps" if cfg.schedule == "constant" and not cfg.unit_seconds else "planning units"
            warnings.warn(f"{self._unit_key()} = {self.unit_s:g}: the training set ({total / sample_rate_hz:.1f} s) "
                          f"gives {self.units_per_epoch} {what} per epoch of {unit_s:.1f} s each (every "
                          f"utterance once per epoch); use a larger manifest or a {self._unit_key()} that "
                          f"divides it more evenly", stacklevel=2)
        # The position: the next step, where it starts in its epoch, and the audio planned before it.
        self.epoch = 0
        self.unit_in_epoch = 0
        self.step = 0
        self.real_samples_planned = 0
        self._cache: tuple[int, _EpochPlan] | None = None

    @property
    def steps_per_epoch(self) -> int:
        """Steps in an epoch at the schedule's first batch (all of them when the batch is constant)."""
        return math.ceil(self.units_per_epoch / self.schedule.num_units(0, 0.0))

    @property
    def hours_planned(self) -> float:
        """Real audio of the steps handed out so far, h (what a ramp in hours reads)."""
        return self.real_samples_planned / self.sample_rate_hz / 3600

    def _unit_key(self) -> str:
        """The setting that fixes the planning unit, for messages."""
        if self.cfg.unit_seconds:
            return "batch.unit_seconds"
        return {"constant": "batch.seconds", "ramp": "batch.ramp.start_seconds"}.get(
            self.cfg.schedule, "batch.adaptive.min_seconds")

    # ----------------------------------------------------------------- checks
    def _unit_cost_s(self, num_samples: np.ndarray | float) -> np.ndarray | float:
        return row_cost_s(num_samples, self.sample_rate_hz, self.cfg)

    def _validate(self) -> None:
        n, cfg, rate = self.num_samples_N, self.cfg, self.sample_rate_hz
        if n.ndim != 1 or len(n) == 0:
            raise PlanError("the training manifest has no utterances; nothing to plan")
        if int(n.min()) <= 0:
            row = int(np.argmin(n))
            raise PlanError(f"manifest row {row} has no audio (0 samples); run `speechbs validate` "
                            f"on the manifest and drop empty files")
        longest = int(n.max())
        used_longest = longest if self._crop_samples is None else min(longest, self._crop_samples)
        need_s = float(self._unit_cost_s(used_longest))
        if need_s > cfg.max_device_seconds:
            if self._crop_samples is None:
                raise PlanError(
                    f"the longest utterance (manifest row {int(np.argmax(n))}, {longest / rate:.2f} s) "
                    f"does not fit in one forward pass of batch.max_device_seconds = {cfg.max_device_seconds} "
                    f"(cost {need_s:.2f} s): raise batch.max_device_seconds to >= {_ceil1(need_s)} "
                    f"or set batch.crop = \"max\" with batch.crop_max_seconds <= {_floor1(self._fit_s())}")
            raise PlanError(
                f"batch.crop_max_seconds = {cfg.crop_max_seconds} does not fit in one forward pass of "
                f"batch.max_device_seconds = {cfg.max_device_seconds} (cost {need_s:.2f} s): raise "
                f"batch.max_device_seconds to >= {_ceil1(need_s)} or lower batch.crop_max_seconds "
                f"to <= {_floor1(self._fit_s())}")
        unit_key, unit_s = self._unit_key(), self.unit_s
        if used_longest > unit_s * rate:
            raise PlanError(
                f"{unit_key} = {unit_s} is shorter than the longest utterance "
                f"({used_longest / rate:.2f} s, manifest row {int(np.argmax(n))}): raise {unit_key} "
                f"{'(or batch.minutes) ' if unit_key == 'batch.seconds' else ''}"
                f"to >= {_ceil1(used_longest / rate)}, or set batch.crop = \"max\" "
                f"with a smaller batch.crop_max_seconds")
        capped_total = n.sum() if self._crop_samples is None else np.minimum(n, self._crop_samples).sum()
        largest = cfg.seconds_range[1]
        if capped_total + 0.5 < largest * rate:  # half a sample: float rounding of a whole-set batch
            key = "batch.seconds" if largest == cfg.seconds else "the schedule's largest batch"
            raise PlanError(
                f"{key} = {largest} is more than the whole training set "
                f"({capped_total / rate:.1f} s of usable audio): lower it to <= "
                f"{_floor1(capped_total / rate)} or use a larger manifest")

    def _fit_s(self) -> float:
        """Longest single utterance, s, whose cost fits the cap (inverse of the unit cost)."""
        cap, length0 = self.cfg.max_device_seconds, self.cfg.cost_length_seconds
        if self.cfg.cost == "quadratic":
            return (math.sqrt(1.0 + 4.0 * cap / length0) - 1.0) * length0 / 2.0
        return cap

    # ---------------------------------------------------------------- planning
    def _epoch_plan(self, epoch: int) -> _EpochPlan:
        if self._cache is not None and self._cache[0] == epoch:
            return self._cache[1]
        rng = np.random.default_rng(seeds.epoch_plan_key(self.seed, epoch))
        num_utts = len(self.num_samples_N)
        order_N = np.lexsort((rng.random(num_utts), self.bucket_N))
        crop_u_N = rng.random(num_utts)
        used_N = self.capped_N[order_N]
        bounds_K1 = self._cut(used_N)
        if self.cfg.crop == "shortest":
            used_N = self._crop_to_shortest(used_N, bounds_K1)
        full_N = self.num_samples_N[order_N]
        # Random crop start, as fairseq's RawAudioDataset.crop_to_max_size does.
        offsets_N = np.floor(crop_u_N * (full_N - used_N + 1)).astype(np.int64)
        plan = _EpochPlan(order_N, offsets_N, used_N, bounds_K1, rng.permutation(len(bounds_K1) - 1))
        self._cache = (epoch, plan)
        return plan

    def _cut(self, used_N: np.ndarray) -> np.ndarray:
        """Cut the stream into K units at the cumulative sum nearest k * (total / K).

        Cutting at multiples of the epoch's own per-unit target spreads the
        epoch's remainder over all K units instead of leaving one short unit
        (every utterance is used once; no unit is a fraction of a unit), and
        each unit is within one longest utterance of the target.
        """
        cum_N = np.cumsum(used_N)
        num_steps = self.units_per_epoch
        goals = np.arange(1, num_steps) * (cum_N[-1] / num_steps)
        j = np.searchsorted(cum_N, goals)
        before = np.where(j > 0, cum_N[np.maximum(j - 1, 0)], 0)
        ends = np.where(cum_N[j] - goals <= goals - before, j + 1, j)
        bounds = np.concatenate([[0], ends, [len(used_N)]]).astype(np.int64)
        if np.any(np.diff(bounds) <= 0):
            raise PlanError(f"{self._unit_key()} = {self.unit_s:g} is too close to the longest utterance "
                            f"to give every planning unit at least one utterance: raise {self._unit_key()}")
        return bounds

    def _crop_to_shortest(self, used_N: np.ndarray, bounds_K1: np.ndarray) -> np.ndarray:
        """fairseq's crop: group each batch by length under the cap, cut each group to its shortest.

        The groups are formed here, from the global batch alone, so what is
        cropped does not depend on the number of devices.
        """
        out_N = used_N.copy()
        cap = self.cfg.max_device_seconds
        for start, end in zip(bounds_K1[:-1].tolist(), bounds_K1[1:].tolist()):
            local = np.argsort(-used_N[start:end], kind="stable")
            lengths = used_N[start:end][local]
            for a, b in _greedy_bins(self._unit_cost_s(lengths), cap):
                out_N[start + local[a:b]] = lengths[b - 1]
        return out_N

    def batch_at(self, epoch: int, unit_in_epoch: int, num_units: int = 1,
                 target_s: float | None = None) -> GlobalBatch:
        """The global batch of ``num_units`` units from ``unit_in_epoch`` on; pure (does not move the position).
        With a constant batch, ``batch_at(epoch, k)`` is step k of the epoch."""
        assert 0 <= unit_in_epoch and 1 <= num_units and unit_in_epoch + num_units <= self.units_per_epoch
        plan = self._epoch_plan(epoch)
        pieces = [(int(plan.bounds_K1[k]), int(plan.bounds_K1[k + 1]))
                  for k in plan.unit_order_K[unit_in_epoch:unit_in_epoch + num_units].tolist()]
        positions = np.concatenate([np.arange(a, b) for a, b in pieces])
        rows, used = plan.order_N[positions], plan.used_N[positions]
        segments = tuple(Segment(i, o, u) for i, o, u in
                         zip(rows.tolist(), plan.offsets_N[positions].tolist(), used.tolist()))
        real = int(used.sum())
        return GlobalBatch(epoch, unit_in_epoch, num_units, num_units * self.unit_s if target_s is None else target_s,
                           segments, real, int(self.num_samples_N[rows].sum()) - real)

    def plan_epoch(self, epoch: int) -> list[GlobalBatch]:
        """Every unit of one epoch as a batch, in order (each step's batch when the batch is constant and
        one unit); deterministic in (seed, epoch, lengths, cfg)."""
        return [self.batch_at(epoch, unit) for unit in range(self.units_per_epoch)]

    def real_samples_per_unit(self, epoch: int) -> np.ndarray:
        """Real samples of every unit of an epoch in order, without building the batches (for reports)."""
        plan = self._epoch_plan(epoch)
        return np.add.reduceat(plan.used_N, plan.bounds_K1[:-1])[plan.unit_order_K]

    def next_batch(self) -> GlobalBatch:
        """The batch of the next step, as the schedule sets it; then advance (rolling over to the next epoch)."""
        wanted = self.schedule.num_units(self.step, self.hours_planned)
        num_units = min(wanted, self.units_per_epoch - self.unit_in_epoch)
        batch = self.batch_at(self.epoch, self.unit_in_epoch, num_units, target_s=wanted * self.unit_s)
        self.unit_in_epoch += num_units
        if self.unit_in_epoch == self.units_per_epoch:
            self.epoch, self.unit_in_epoch = self.epoch + 1, 0
        self.step += 1
        self.real_samples_planned += batch.real_samples
        return batch

    # ------------------------------------------------------------------ split
    def pad_width_samples(self, num_samples: np.ndarray) -> np.ndarray:
        """The padded length of a micro-batch whose longest row has ``num_samples``: itself, or the
        shortest of ``pad_lengths_L`` that holds it (the longest of them is the longest row there is)."""
        num_samples = np.asarray(num_samples, dtype=np.int64)
        if len(self.pad_lengths_L) == 0:
            return num_samples
        return self.pad_lengths_L[np.searchsorted(self.pad_lengths_L, num_samples)]

    def split(self, batch: GlobalBatch, world_size: int, min_micro_batches: int = 1) -> list[list[MicroBatch]]:
        """Per-device micro-batches ``[rank][micro]``; depends only on (batch, world_size, cfg, min_micro_batches).

        Sort by length, find the fewest contiguous bins under the cap (B), give
        every device M = max(ceil(B / W), ceil(``min_micro_batches`` / W)) slots (a gradient-noise
        step asks for 2 in all: it needs two micro-batch gradients; when B is at most 2 that is the same
        two micro-batches on 1 or 2 devices), re-cut into at most W * M bins with
        the smallest largest-bin cost (balanced work), then assign bins to
        devices longest-processing-time first, at most M per device; leftover
        slots are empty micro-batches. A bin costs its padded width (:meth:`pad_width_samples`)
        times its rows, so rounded-up micro-batches stay under the cap too.
        """
        assert world_size >= 1
        segments = sorted(batch.segments, key=lambda s: -s.num_samples)
        widths_S = self.pad_width_samples(np.asarray([s.num_samples for s in segments], dtype=np.int64))
        unit_S = self._unit_cost_s(widths_S)
        cap = self.cfg.max_device_seconds
        num_slots = max(math.ceil(len(_greedy_bins(unit_S, cap)) / world_size),
                        math.ceil(min_micro_batches / world_size)) * world_size
        bins = _balanced_bins(unit_S, num_slots, cap)
        micro = [MicroBatch(tuple(segments[a:b]), (b - a) * int(widths_S[a])) for a, b in bins]
        costs = [(b - a) * float(unit_S[a]) for a, b in bins]
        micro += [EMPTY_MICRO_BATCH] * (num_slots - len(micro))
        costs += [0.0] * (num_slots - len(costs))
        return _assign(micro, costs, world_size, num_slots // world_size)

    # ------------------------------------------------------------------ state
    def _fingerprint(self) -> str:
        """What the global sequence depends on (not the world size, not the cap unless it crops)."""
        cfg = self.cfg
        # The unit, not the batch: with a constant batch they are the same number (older checkpoints
        # hashed batch.seconds here), and a schedule's batches are whole numbers of units.
        keys = [self.unit_s, cfg.crop, cfg.crop_max_seconds, cfg.num_buckets, self.sample_rate_hz]
        if cfg.crop == "shortest":
            keys += [cfg.max_device_seconds, cfg.cost, cfg.cost_length_seconds]
        digest = hashlib.sha256(repr(keys).encode())
        digest.update(self.num_samples_N.tobytes())
        return digest.hexdigest()[:16]

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "unit_in_epoch": self.unit_in_epoch, "step": self.step,
                "real_samples_planned": self.real_samples_planned, "seed": self.seed,
                "fingerprint": self._fingerprint(), "schedule": self.schedule.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        if state.get("seed") != self.seed or state.get("fingerprint") != self._fingerprint():
            raise PlanError("the checkpoint's batch plan was made for another manifest, seed or batch "
                            "setting (batch.seconds, batch.unit_seconds, batch.crop, ...): resume with the "
                            "same data and batch settings, or start a new run")
        # Checkpoints from before batch schedules held a constant batch: one unit per step, no step count.
        unit = int(state.get("unit_in_epoch", state.get("step_in_epoch", 0)))
        if not 0 <= unit < self.units_per_epoch:
            raise PlanError(f"the checkpoint's position {unit} is outside this plan's "
                            f"{self.units_per_epoch} planning units per epoch")
        self.epoch, self.unit_in_epoch = int(state["epoch"]), unit
        self.step, self.real_samples_planned = int(state.get("step", 0)), int(state.get("real_samples_planned", 0))
        self.schedule.load_state_dict(state.get("schedule", {}))


def _pad_lengths(capped_N: np.ndarray, num_lengths: int) -> np.ndarray:
    """Upper quantiles of the (cropped) lengths, the longest included; empty for ``num_lengths`` 0.

    A compiled conv stack is compiled once per input length, so a compiled run pads each
    micro-batch up to one of few lengths; quantiles put them where the utterances are, as
    fairseq's ``BucketPadLengthDataset`` does for TPUs (``num_batch_buckets``).
    """
    if num_lengths <= 0:
        return np.zeros(0, dtype=np.int64)
    quantiles = np.arange(1, num_lengths + 1) / num_lengths
    return np.unique(np.quantile(capped_N, quantiles, method="higher")).astype(np.int64)


def _greedy_bins(unit_S: np.ndarray, limit: float) -> list[tuple[int, int]]:
    """Fewest contiguous bins of a length-sorted (descending) run whose cost stays <= limit.

    A bin's cost is its count times its first (longest) row's unit cost, so
    greedy filling from the left is optimal for contiguous bins.
    """
    bins: list[tuple[int, int]] = []
    start, num_rows = 0, len(unit_S)
    while start < num_rows:
        count = max(1, int(limit * (1 + 1e-9) / float(unit_S[start])))
        bins.append((start, min(num_rows, start + count)))
        start += count
    return bins


def _balanced_bins(unit_S: np.ndarray, max_bins: int, cap: float) -> list[tuple[int, int]]:
    """At most ``max_bins`` contiguous bins with the smallest largest-bin cost (bisection on it)."""
    if len(unit_S) == 0:
        return []
    low, high = float(unit_S[0]), cap
    if len(_greedy_bins(unit_S, low)) <= max_bins:
        return _greedy_bins(unit_S, low)
    for _ in range(40):
        mid = (low + high) / 2
        if len(_greedy_bins(unit_S, mid)) <= max_bins:
            high = mid
        else:
            low = mid
    return _greedy_bins(unit_S, high)


def _assign(micro: list[MicroBatch], costs: list[float], world_size: int,
            per_device: int) -> list[list[MicroBatch]]:
    """Longest-processing-time first onto the least-loaded device that has a free slot."""
    loads = np.zeros(world_size)
    counts = np.zeros(world_size, dtype=np.int64)
    out: list[list[MicroBatch]] = [[] for _ in range(world_size)]
    for k in sorted(range(len(micro)), key=lambda k: -costs[k]):
        rank = int(np.argmin(np.where(counts < per_device, loads, np.inf)))
        out[rank].append(micro[k])
        loads[rank] += costs[k]
        counts[rank] += 1
    return out


def _ceil1(value: float) -> float:
    return math.ceil(value * 10 - 1e-9) / 10


def _floor1(value: float) -> float:
    return math.floor(value * 10 + 1e-9) / 10
