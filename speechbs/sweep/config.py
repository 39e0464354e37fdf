"""The typed schema of a sweep recipe: which runs, on what budget, scored how.

A sweep recipe is a TOML file with four parts::

    [sweep]        name, where it lives, the base pretraining recipe, the budget policy
    [grid]         the axes: batch seconds (required), batch schedule, LR rule, model size, seed
    [[finetune]]   one table per labeled split to fine-tune every checkpoint on
    [[test]]       one table per test set to decode and score every fine-tuned model on
    [[noise]]      fixed-state gradient noise (``speechbs noise``) of chosen pretrained checkpoints

Recipe paths (``pretrain_recipe``, ``[[finetune]].recipe``) are relative to the
sweep file, so a sweep travels with its recipes; manifests are relative to the
working directory, as in every other recipe. :func:`speechbs.sweep.plan.load_sweep` loads it
(through :func:`speechbs.configio.load`, as every config).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, Literal

from speechbs.config import Alias, minutes_for
from speechbs.errors import require

BUDGETS = ("steps", "hours", "steps_with_milestones")


@dataclass(kw_only=True)
class SweepSection:
    """``[sweep]``: identity, location, base recipe and the budget every point gets."""

    name: str = "sweep"
    """Sweep name; its root directory is ``<output_dir>/<name>`` (``--out`` replaces both)."""

    output_dir: str = "runs/sweeps"
    """Directory that holds sweep roots (relative to the working directory)."""

    pretrain_recipe: str = ""
    """Base pretraining recipe, relative to the sweep file; every point is this recipe plus its grid values."""

    budget: Literal["steps", "hours", "steps_with_milestones"] = "hours"
    """``steps``: every point trains ``steps`` optimizer steps. ``hours``: every point sees ``hours`` of
    audio, steps = ceil(hours * 3600 / batch.seconds). ``steps_with_milestones``: ``steps`` steps, plus a
    checkpoint kept at each of ``milestone_hours`` so one run gives an hours-seen curve."""

    steps: int = 0
    """Optimizer steps per point for the ``steps`` and ``steps_with_milestones`` budgets, steps."""

    hours: float = 0.0
    """Hours of audio seen per point for the ``hours`` budget, h (nominal: batch.seconds x steps)."""

    milestone_hours: list[float] = field(default_factory=list)
    """Hours seen at which a checkpoint is kept forever (``train.milestone_hours``), h; required by
    ``steps_with_milestones``, allowed with any budget."""

    finetune_milestones: bool = False
    """Also fine-tune (and score) every milestone checkpoint, not only the last one."""

    pretrain_set: list[str] = field(default_factory=list)
    """Extra ``section.key=value`` overrides for every pretraining run (e.g. ``optim.lr_rule=sqrt``)."""

    def __post_init__(self) -> None:
        require(bool(self.name) and "/" not in self.name, "sweep.name", "must be a non-empty name without '/'")
        require(bool(self.pretrain_recipe), "sweep.pretrain_recipe",
                "is required: the pretraining recipe every point starts from (path relative to the sweep file)")
        if self.budget == "hours":
            require(self.hours > 0, "sweep.hours", "must be > 0 with budget = 'hours' (hours of audio per point)")
        else:
            require(self.steps >= 1, "sweep.steps", f"must be >= 1 with budget = {self.budget!r}")
        if self.budget == "steps_with_milestones":
            require(bool(self.milestone_hours), "sweep.milestone_hours",
                    "is required with budget = 'steps_with_milestones' (hours seen to keep checkpoints at)")
        require(all(h > 0 for h in self.milestone_hours), "sweep.milestone_hours", "must all be > 0")
        require(not self.finetune_milestones or bool(self.milestone_hours), "sweep.finetune_milestones",
                "needs sweep.milestone_hours")


@dataclass(kw_only=True)
class GridSection:
    """``[grid]``: the axes of the sweep; every combination is one point."""

    batch_seconds: list[float] = field(default_factory=list)
    """Batch sizes, seconds of audio per optimizer step over all devices (``batch.seconds``), s. A recipe
    may give ``batch_minutes`` instead."""

    batch_schedule: list[Literal["constant", "ramp", "adaptive"]] = field(default_factory=list)
    """Batch schedules to try (``batch.schedule``; a point's ``batch_seconds`` is a ramp's end and an
    adaptive run's first batch); the ramp's and the decisions' settings come from the base recipe's
    ``[batch.ramp]`` / ``[batch.adaptive]`` or ``sweep.pretrain_set``; empty: the base recipe's schedule.
    Compare schedules at equal hours seen (``milestone_hours``): a ramp sees less audio per step."""

    lr_rule: list[Literal["none", "linear", "sqrt"]] = field(default_factory=list)
    """LR scaling rules to try (``optim.lr_rule``); empty: the base recipe's rule."""

    model_size: list[Literal["tiny", "base", "large"]] = field(default_factory=list)
    """Model sizes to try (``model.size``); empty: the base recipe's size."""

    seed: list[int] = field(default_factory=list)
    """Seeds to try (``run.seed``); empty: the base recipe's seed."""

    ALIASES: ClassVar[dict[str, Alias]] = {"batch_minutes": minutes_for("batch_seconds")}

    def __post_init__(self) -> None:
        require(bool(self.batch_seconds), "grid.batch_seconds",
                "is required: a list of batch sizes in seconds of audio, e.g. [87.5, 600, 4800]")
        require(all(s > 0 for s in self.batch_seconds), "grid.batch_seconds", "must all be > 0")
        for key in ("batch_seconds", "batch_schedule", "lr_rule", "model_size", "seed"):
            values = getattr(self, key)
            require(len(set(values)) == len(values), f"grid.{key}", f"has a repeated value: {values}")


@dataclass(kw_only=True)
class FinetuneSpec:
    """``[[finetune]]``: one labeled split every pretrained checkpoint is fine-tuned on."""

    name: str = ""
    """Short name of the split (``10min``, ``1h``, ``train``): names the run directory and table columns."""

    recipe: str = ""
    """Fine-tuning recipe, relative to the sweep file (``speechbs finetune RECIPE``)."""

    train_manifest: str = ""
    """Labeled training manifest (``data.train_manifest``); empty: the recipe's."""

    set: list[str] = field(default_factory=list)
    """Extra ``section.key=value`` overrides for this fine-tuning run."""

    def __post_init__(self) -> None:
        require(bool(self.name) and "/" not in self.name and "@" not in self.name, "finetune.name",
                "is required: a short name without '/' or '@', e.g. '10min'")
        require(bool(self.recipe), "finetune.recipe", "is required (path relative to the sweep file)")


@dataclass(kw_only=True)
class TestSpec:
    """``[[test]]``: one test set every fine-tuned model is decoded and scored on."""

    name: str = ""
    """Short name (``test-clean``): names the decode directory and table columns."""

    manifest: str = ""
    """Manifest to decode; a ``.wrd`` beside it holds the references that ``speechbs score`` reads."""

    decode_args: list[str] = field(default_factory=list)
    """Extra ``speechbs decode`` arguments, e.g. ``["--beam", "50", "--lm", "4gram.arpa"]``."""

    def __post_init__(self) -> None:
        require(bool(self.name) and "/" not in self.name, "test.name",
                "is required: a short name without '/', e.g. 'test-clean'")
        require(bool(self.manifest), "test.manifest", "is required (a .tsv manifest)")


@dataclass(kw_only=True)
class NoiseSpec:
    """``[[noise]]``: gradient noise at fixed states (``speechbs noise``) of pretrained checkpoints."""

    name: str = "noise"
    """Short name: the output goes to ``points/<point>/noise/<name>-step<N>/noise.json``."""

    manifest: str = ""
    """Manifest the independent batches are drawn from (it must hold ``repeats`` disjoint largest batches)."""

    batch_seconds: list[float] = field(default_factory=lambda: [15.0, 30.0, 60.0, 120.0])
    """Batch sizes to measure each checkpoint at, s of audio."""

    repeats: int = 10
    """Independent batches per batch size."""

    steps: list[int] = field(default_factory=list)
    """Checkpoint steps to measure (kept as ``train.milestone_steps``; a point's last step is its final
    checkpoint; steps past a point's end are skipped); empty: each point's final checkpoint."""

    points: list[float] = field(default_factory=list)
    """Batch sizes (``grid.batch_seconds``) of the points to measure, s; empty: every point."""

    seeds: list[int] = field(default_factory=list)
    """Seeds (``grid.seed``) of the points to measure; empty: every seed."""

    set: list[str] = field(default_factory=list)
    """Extra ``--set`` overrides of the checkpoint's config (e.g. ``batch.max_device_seconds=30``)."""

    def measures(self, batch_s: float, seed: int | None) -> bool:
        """Whether the point of this batch (and grid seed, None without a seed axis) is measured."""
        return (not self.points or batch_s in self.points) and (not self.seeds or seed is None or seed in self.seeds)

    def __post_init__(self) -> None:
        require(bool(self.name) and "/" not in self.name, "noise.name", "is required: a short name without '/'")
        require(bool(self.manifest), "noise.manifest", "is required (a .tsv manifest)")
        require(bool(self.batch_seconds) and all(b > 0 for b in self.batch_seconds),
                "noise.batch_seconds", "must be a non-empty list of positive seconds")
        require(self.repeats >= 2, "noise.repeats", "must be >= 2 (10 or more is useful)")
        require(all(k >= 1 for k in self.steps), "noise.steps", "must all be >= 1")


@dataclass(kw_only=True)
class ProbeSpec:
    """A ``[[probe]]`` table: ``speechbs probe`` of each point's final pretraining checkpoint."""

    name: str = ""
    """Task name: the output goes to ``points/<point>/probe/<name>/probe.json``; the report's column."""

    label: str = ""
    """Label file extension beside each manifest (``train.tsv`` + ``spk`` -> ``train.spk``)."""

    train_manifest: str = ""
    """Manifest the head is trained on."""

    test_manifest: str = ""
    """Manifest it is scored on."""

    valid_manifest: str = ""
    """Manifest that selects the epoch; empty: the last epoch."""

    level: Literal["utterance", "frame"] = "utterance"
    """``utterance``: one label per utterance (mean-pooled features); ``frame``: one label per encoder frame."""

    head: Literal["linear", "mlp", "logreg"] = "linear"
    """``linear`` / ``mlp`` on SUPERB's weighted layer sum; ``logreg`` on the last layer (docs/probes.md)."""

    epochs: int = 50
    """Passes over the training set."""

    def __post_init__(self) -> None:
        require(bool(self.name) and "/" not in self.name, "probe.name", "is required: a short name without '/'")
        require(bool(self.label) and "." not in self.label, f"probe[{self.name}].label",
                "is required: the label file extension without the dot (e.g. spk)")
        require(bool(self.train_manifest) and bool(self.test_manifest), f"probe[{self.name}].train_manifest",
                "and test_manifest are required (.tsv manifests with label files beside them)")
        require(self.epochs >= 1, f"probe[{self.name}].epochs", "must be >= 1")


@dataclass(kw_only=True)
class SweepConfig:
    """A whole sweep recipe."""

    sweep: SweepSection = field(default_factory=SweepSection)
    """Name, location, base recipe and budget."""

    grid: GridSection = field(default_factory=GridSection)
    """Batch sizes and the other axes."""

    finetune: list[FinetuneSpec] = field(default_factory=list)
    """Labeled splits to fine-tune on (none: pretraining only)."""

    test: list[TestSpec] = field(default_factory=list)
    """Test sets to decode and score (needs at least one ``[[finetune]]``)."""

    noise: list[NoiseSpec] = field(default_factory=list)
    """Fixed-state gradient-noise measurements of the pretrained checkpoints (none: no noise stage)."""

    probe: list[ProbeSpec] = field(default_factory=list)
    """Frozen-feature probes of each point's final pretrained checkpoint (none: no probe stage)."""

    REQUIRED_TABLES: ClassVar[dict[str, str]] = {
        "sweep": "a sweep recipe needs a [sweep] table (is this a pretraining recipe? run it with `speechbs pretrain`)"}

    def __post_init__(self) -> None:
        for key, items in (("finetune", self.finetune), ("test", self.test), ("noise", self.noise),
                           ("probe", self.probe)):
            names = [item.name for item in items]
            require(len(set(names)) == len(names), key, f"names must differ, got {names}")
        require(not self.test or bool(self.finetune), "test",
                "needs at least one [[finetune]]: test sets are decoded with fine-tuned models")
