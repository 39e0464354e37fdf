"""The typed configuration tree: one schema, documented defaults, units in every field.

A run is configured by a :class:`Config`. Its defaults are a published setup
(wav2vec 2.0 BASE pretraining on LibriSpeech 960 h, Baevski et al. 2020, with
fairseq's ``wav2vec2_base_librispeech`` batch: 64 GPUs x 87.5 s = 5,600 s of
audio per optimizer step). A recipe is a small TOML file that overrides some of
them; the command line overrides further with ``--set section.key=value``.

Loading, overrides, dumping and hashing are in :mod:`speechbs.configio`; this
module is only the schema. Every field has a docstring under it with its unit;
``speechbs config --help-fields`` prints them.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field, replace
from typing import ClassVar, Literal, NamedTuple

from speechbs.errors import require
from speechbs.models.hubert_config import HubertConfig
from speechbs.models.sizes import CONFIG_CLASSES, SIZES
from speechbs.models.wav2vec2_config import Wav2Vec2Config
from speechbs.models.wavlm_config import WavLMConfig

SECONDS_PER_MINUTE = 60.0


class Alias(NamedTuple):
    """A key a recipe may write in place of a field, in other units (``minutes`` for ``seconds``).

    A schema class lists its aliases in ``ALIASES`` (alias -> :class:`Alias`); the loader
    (:mod:`speechbs.configio`) turns an alias into its field, value times ``factor``, and
    refuses a table that gives both.
    """

    field: str
    """The field the alias stands for."""
    factor: float
    """Field value = alias value x factor (each item of a list)."""


def minutes_for(seconds_field: str) -> Alias:
    """The alias that gives ``seconds_field`` in minutes."""
    return Alias(seconds_field, SECONDS_PER_MINUTE)


@dataclass(kw_only=True)
class RunConfig:
    """Where a run lives and how it is seeded."""

    name: str = "run"
    """Run name; the run directory is ``<output_dir>/<name>``."""

    output_dir: str = "runs"
    """Directory that holds run directories (relative to the working directory)."""

    seed: int = 1
    """Seed for the batch plan, masking and initialization. Same seed, same run."""

    def __post_init__(self) -> None:
        from speechbs.seeds import MAX_RUN_SEED  # torch-free

        require(0 <= self.seed <= MAX_RUN_SEED, "run.seed",
                f"must be in 0..{MAX_RUN_SEED:,} (each utterance's seed is derived from it and must fit int64)")


@dataclass(kw_only=True)
class DataConfig:
    """Manifests (fairseq ``.tsv``) for training and validation."""

    train_manifest: str = "manifests/builtin/train.tsv"
    """Training manifest: root directory on line 1, then ``path<TAB>num_samples``."""

    valid_manifest: str = "manifests/builtin/valid.tsv"
    """Held-out manifest for validation loss/WER; empty string disables validation."""

    labels: str = ""
    """Extension of the label files beside each manifest (fairseq's ``task.labels``): ``ltr`` or
    ``wrd`` transcripts for fine-tuning, a cluster-label extension such as ``km`` for HuBERT and
    WavLM pretraining (``train.tsv`` -> ``train.km``); empty for wav2vec 2.0 pretraining."""

    label_dir: str = ""
    """Directory of the label files when they are not beside the manifests (empty: beside them)."""

    num_workers: int = 2
    """Data-loading worker processes per device (0 loads in the training process)."""

    def __post_init__(self) -> None:
        require(self.num_workers >= 0, "data.num_workers", "must be >= 0")
        require(self.labels == "" or self.labels.replace("_", "").isalnum(), "data.labels",
                f"got {self.labels!r}; give a file extension without the dot, e.g. 'ltr' or 'km'")


@dataclass(kw_only=True)
class AudioConfig:
    """How audio files become model input (one loading path for training and evaluation)."""

    sample_rate_hz: int = 16_000
    """Sample rate the model consumes, Hz (16 kHz for wav2vec 2.0, HuBERT and WavLM)."""

    on_other_rate: Literal["resample", "reject"] = "resample"
    """A file at another rate is resampled with soxr, or rejected by validation."""

    multi_channel: Literal["mix", "reject"] = "mix"
    """Multi-channel audio is mixed down to mono (mean of channels), or rejected."""

    normalize: bool = False
    """Per-utterance zero mean, unit variance (fairseq ``normalize``; False for BASE, True for LARGE)."""

    min_seconds: float = 0.0
    """Shorter utterances are skipped. 0 means: as short as the feature encoder's receptive field (400 samples = 25 ms)."""

    max_seconds: float = 35.0
    """Longer utterances are skipped by validation (LibriSpeech segments are at most ~35 s)."""

    def __post_init__(self) -> None:
        require(self.sample_rate_hz > 0, "audio.sample_rate_hz", "must be > 0")
        require(self.min_seconds >= 0, "audio.min_seconds", "must be >= 0")
        require(self.max_seconds > self.min_seconds, "audio.max_seconds",
                f"must be > audio.min_seconds ({self.min_seconds})")


@dataclass(kw_only=True)
class RampConfig:
    """``batch.schedule = "ramp"``: the batch grows (or shrinks) from ``start_seconds`` to ``batch.seconds``."""

    start_seconds: float = 0.0
    """The batch at step 0, s of audio per optimizer step; required (> 0) by a ramp."""

    steps: int = 0
    """Length of the ramp in optimizer steps; give this or ``hours``; after it every step is ``batch.seconds``."""

    hours: float = 0.0
    """Length of the ramp in hours of real audio seen, h; give this or ``steps``."""

    shape: Literal["linear", "stepwise"] = "linear"
    """``linear``: the batch moves in a straight line with progress, rounded to the planning unit;
    ``stepwise``: ``num_stages`` equal stages whose batches are evenly spaced on a log scale
    (start x ratio ** (i / (num_stages - 1)); doublings when the ratio is 2 ** (num_stages - 1))."""

    num_stages: int = 4
    """Stages of a ``stepwise`` ramp, the last of which is ``batch.seconds``, count (>= 2)."""

    def __post_init__(self) -> None:
        require(self.start_seconds >= 0, "batch.ramp.start_seconds", "must be >= 0")
        require(self.steps >= 0, "batch.ramp.steps", "must be >= 0")
        require(self.hours >= 0, "batch.ramp.hours", "must be >= 0")
        require(self.num_stages >= 2, "batch.ramp.num_stages", "must be >= 2")


@dataclass(kw_only=True)
class AdaptiveConfig:
    """``batch.schedule = "adaptive"``: every ``every_steps`` steps the batch is set from the measured noise scale.

    The new batch is clamp(``factor`` x B_simple, ``min_seconds``, ``max_seconds``) rounded to the
    planning unit, where B_simple is the windowed gradient-noise scale in seconds of audio
    (``noise_b_simple_s``, train/grad_noise.py). McCandlish et al. (2018) put the critical batch near
    B_simple: ``factor`` 1 trains near the knee of the steps/data trade-off.
    """

    every_steps: int = 50
    """Optimizer steps between decisions (the first decision is after this many steps), count."""

    factor: float = 1.0
    """k in clamp(k x B_simple, min_seconds, max_seconds)."""

    min_seconds: float = 0.0
    """Smallest batch a decision may choose, s; 0 = ``batch.seconds`` (the batch never shrinks below the first)."""

    max_seconds: float = 0.0
    """Largest batch a decision may choose, s; required (> 0)."""

    def __post_init__(self) -> None:
        require(self.every_steps >= 1, "batch.adaptive.every_steps", "must be >= 1")
        require(self.factor > 0, "batch.adaptive.factor", "must be > 0")
        require(self.min_seconds >= 0, "batch.adaptive.min_seconds", "must be >= 0")
        require(self.max_seconds >= 0, "batch.adaptive.max_seconds", "must be >= 0")


@dataclass(kw_only=True)
class BatchConfig:
    """The batch, in seconds of audio per optimizer step (DESIGN section 2).

    Everything mechanical (micro-batches per device, accumulation) is derived
    from ``seconds`` and ``max_device_seconds``; the set of utterances in each
    global step never depends on the number of devices.
    """

    seconds: float = 5_600.0
    """Real audio per optimizer step, summed over all devices and micro-batches, s. Recipes may give ``minutes`` instead."""

    max_device_seconds: float = 87.5
    """Padded audio in one forward pass on one device, s: the memory knob (fairseq BASE: 1.4M samples)."""

    crop: Literal["none", "max", "shortest"] = "none"
    """``none``: pad, keep all audio. ``max``: crop each utterance to ``crop_max_seconds``. ``shortest``: fairseq's crop of a micro-batch to its shortest utterance."""

    crop_max_seconds: float = 15.625
    """Longest utterance kept whole when ``crop`` is ``max`` or ``shortest``, s (fairseq: 250,000 samples)."""

    cost: Literal["seconds", "quadratic"] = "seconds"
    """How a micro-batch counts against ``max_device_seconds``: ``seconds`` = padded s; ``quadratic`` = padded s * (1 + longest s / ``cost_length_seconds``), for self-attention's length-squared term."""

    cost_length_seconds: float = 90.0
    """L0 of the ``quadratic`` cost, s: the length at which the attention term equals the linear one (about 90 s for a 768-wide BASE transformer at 50 frames/s)."""

    num_buckets: int = 32
    """Length buckets (equal-count quantiles) the planner draws each global batch from; more buckets, less padding, less randomness in which utterances meet."""

    schedule: Literal["constant", "ramp", "adaptive"] = "constant"
    """How the batch moves during training (docs/batching.md, "Batch-size schedules"): ``constant``:
    every step is ``seconds``; ``ramp``: from ``ramp.start_seconds`` to ``seconds`` (``[batch.ramp]``);
    ``adaptive``: from ``seconds``, reset every ``adaptive.every_steps`` from the measured noise scale
    (``[batch.adaptive]``, needs ``train.grad_noise_every``)."""

    unit_seconds: float = 0.0
    """The planning unit, s: each epoch is cut into units of about this much audio and every step takes a
    whole number of them, so every batch is a multiple of it. 0 = the schedule's smallest batch
    (``seconds`` when constant, where each step is one unit)."""

    ramp: RampConfig = field(default_factory=RampConfig)
    """The ramp of ``schedule = "ramp"``."""

    adaptive: AdaptiveConfig = field(default_factory=AdaptiveConfig)
    """The decisions of ``schedule = "adaptive"``."""

    ALIASES: ClassVar[dict[str, Alias]] = {"minutes": minutes_for("seconds"),
                                           "max_device_minutes": minutes_for("max_device_seconds")}

    def __post_init__(self) -> None:
        require(self.seconds > 0, "batch.seconds", "must be > 0 (seconds of audio per optimizer step)")
        require(self.max_device_seconds > 0, "batch.max_device_seconds", "must be > 0")
        require(self.crop_max_seconds > 0, "batch.crop_max_seconds", "must be > 0")
        require(self.num_buckets >= 1, "batch.num_buckets", "must be >= 1")
        require(self.cost_length_seconds > 0, "batch.cost_length_seconds", "must be > 0")
        require(self.unit_seconds >= 0, "batch.unit_seconds", "must be >= 0 (0: the schedule's smallest batch)")
        if self.schedule == "ramp":
            require(self.ramp.start_seconds > 0, "batch.ramp.start_seconds",
                    "must be > 0 with batch.schedule = \"ramp\" (the batch at step 0, s)")
            require((self.ramp.steps > 0) != (self.ramp.hours > 0), "batch.ramp",
                    "needs exactly one of steps (optimizer steps) and hours (of audio seen) > 0")
        if self.schedule == "adaptive":
            require(self.adaptive.max_seconds > 0, "batch.adaptive.max_seconds",
                    "must be > 0 with batch.schedule = \"adaptive\" (the largest batch a decision may choose, s)")
            require(self.adaptive.max_seconds >= self.adaptive_min_seconds, "batch.adaptive.max_seconds",
                    f"must be >= batch.adaptive.min_seconds ({self.adaptive_min_seconds:g} s)")
        require(self.seconds_range[0] >= self.planning_unit_seconds * (1 - 1e-9), "batch.unit_seconds",
                f"= {self.unit_seconds:g} is larger than the schedule's smallest batch "
                f"({self.seconds_range[0]:g} s): lower it, or set 0 for the smallest batch")

    def constant(self, seconds: float) -> BatchConfig:
        """This config at a constant batch of ``seconds`` (evaluation, ``speechbs noise``): no schedule."""
        return replace(self, seconds=seconds, schedule="constant", unit_seconds=0.0)

    @property
    def adaptive_min_seconds(self) -> float:
        """``adaptive.min_seconds``, or ``seconds`` when it is 0."""
        return self.adaptive.min_seconds or self.seconds

    @property
    def seconds_range(self) -> tuple[float, float]:
        """The smallest and largest batch the schedule can set, s."""
        if self.schedule == "ramp":
            return min(self.ramp.start_seconds, self.seconds), max(self.ramp.start_seconds, self.seconds)
        if self.schedule == "adaptive":
            low = self.adaptive_min_seconds
            return min(low, self.seconds), max(self.adaptive.max_seconds, self.seconds)
        return self.seconds, self.seconds

    @property
    def planning_unit_seconds(self) -> float:
        """The planning unit: ``unit_seconds``, or the schedule's smallest batch when it is 0, s."""
        return self.unit_seconds or self.seconds_range[0]


@dataclass(kw_only=True)
class ModelConfig:
    """Which model and size; ``arch`` holds that architecture's own typed config.

    In a recipe the architecture's fields sit directly in ``[model]`` beside
    ``name`` and ``size``: the size chooses their defaults and any field given
    overrides it, e.g. ``[model] name = "wav2vec2", size = "tiny", mask_prob = 0.5``.
    """

    name: Literal["wav2vec2", "hubert", "wavlm"] = "wav2vec2"
    """Model family (``speechbs.models.registry``)."""

    size: Literal["tiny", "base", "large"] = "base"
    """Preset whose architecture defaults apply: ``tiny`` (CPU tests, demo), ``base``, ``large``."""

    arch: Wav2Vec2Config | HubertConfig | WavLMConfig = None  # type: ignore[assignment]  # None: filled from size
    """The family's config dataclass, filled from ``size`` and the recipe (not a TOML key)."""

    def __post_init__(self) -> None:
        if self.arch is None:
            self.arch = SIZES[self.name][self.size]()
        family = CONFIG_CLASSES[self.name]
        require(type(self.arch) is family, "model.arch",
                f"is a {type(self.arch).__name__}, but model.name = {self.name!r} needs a {family.__name__}")


@dataclass(kw_only=True)
class OptimConfig:
    """AdamW, with the peak learning rate stated once and scaled to the batch by a rule."""

    lr: float = 5e-4
    """Peak learning rate at ``reference_seconds`` of audio per step (wav2vec 2.0 BASE: 5e-4 at 5,600 s)."""

    lr_rule: Literal["none", "linear", "sqrt"] = "none"
    """How the peak LR follows the batch: lr * (batch.seconds / reference_seconds) ** {0, 1, 1/2}."""

    reference_seconds: float = 5_600.0
    """Batch, s, at which ``lr`` is the peak LR (the seed study anchors 5e-4 at 6,000 s = 100 min)."""

    betas: list[float] = field(default_factory=lambda: [0.9, 0.98])
    """Adam beta1, beta2 (wav2vec 2.0: 0.9, 0.98)."""

    eps: float = 1e-6
    """Adam epsilon (fairseq wav2vec 2.0: 1e-6)."""

    weight_decay: float = 0.01
    """Decoupled weight decay (AdamW), applied to weights, not to biases and norms."""

    clip_norm: float = 0.0
    """Clip the global gradient norm to this value; 0 disables (fairseq BASE pretraining: 0)."""

    def __post_init__(self) -> None:
        require(self.lr > 0, "optim.lr", "must be > 0")
        require(self.reference_seconds > 0, "optim.reference_seconds", "must be > 0")
        require(len(self.betas) == 2 and all(0 <= b < 1 for b in self.betas), "optim.betas",
                f"must be two numbers in [0, 1), got {self.betas}")
        require(self.clip_norm >= 0, "optim.clip_norm", "must be >= 0 (0 disables clipping)")


@dataclass(kw_only=True)
class ScheduleConfig:
    """Learning-rate schedule: a pure function of the optimizer step."""

    kind: Literal["polynomial", "tri_stage", "cyclic", "cosine", "constant"] = "polynomial"
    """``polynomial``: linear warm-up then polynomial decay (fairseq BASE). ``tri_stage``: warm-up, hold, exponential decay (fine-tuning). ``cyclic``: triangles between lr/100 and lr (the seed study). ``cosine``: warm-up then cosine decay."""

    warmup_steps: int = 32_000
    """Steps of linear warm-up from 0 (polynomial, cosine) or from ``init_lr_scale * lr`` (tri_stage)."""

    warmup_fraction: float = 0.0
    """Warm-up as a fraction of ``train.num_steps``, in [0, 1); when > 0 it replaces ``warmup_steps``, so sweep
    points with different step counts (an equal-hours budget) share one schedule shape."""

    power: float = 1.0
    """Exponent of the polynomial decay (1 = linear)."""

    end_lr_scale: float = 0.0
    """LR at the last step as a fraction of the peak (polynomial, cosine, tri_stage ``final_lr_scale``; tri_stage needs > 0)."""

    hold_steps: int = 0
    """tri_stage: steps held at the peak after warm-up."""

    init_lr_scale: float = 0.01
    """tri_stage: LR at step 0 as a fraction of the peak."""

    cycle_steps: int = 50_000
    """cyclic: steps per triangle (up half, down half); every multiple is an LR minimum (seed study: 50,000)."""

    cycle_min_scale: float = 0.01
    """cyclic: LR at the bottom of a triangle as a fraction of the peak (seed study: 1/100)."""

    gumbel_start: float = 2.0
    """Gumbel-softmax temperature at step 0 (wav2vec 2.0: 2)."""

    gumbel_end: float = 0.5
    """Floor of the Gumbel temperature (BASE: 0.5; LARGE: 0.1)."""

    gumbel_decay: float = 0.999995
    """Per-step factor of the Gumbel temperature: max(end, start * decay**step)."""

    def __post_init__(self) -> None:
        require(self.warmup_steps >= 0, "schedule.warmup_steps", "must be >= 0")
        require(self.hold_steps >= 0, "schedule.hold_steps", "must be >= 0")
        require(0 <= self.warmup_fraction < 1, "schedule.warmup_fraction",
                "must be in [0, 1) (a fraction of train.num_steps; 0 uses schedule.warmup_steps)")
        require(self.cycle_steps >= 2, "schedule.cycle_steps", "must be >= 2")
        require(0 <= self.end_lr_scale <= 1, "schedule.end_lr_scale", "must be in [0, 1]")
        # An exponential decay never reaches 0: "to 0" would fall 10x every few percent of the
        # decay phase and train nothing after its first steps.
        require(self.kind != "tri_stage" or self.end_lr_scale > 0, "schedule.end_lr_scale",
                "must be > 0 with kind = \"tri_stage\" (its decay is exponential; fairseq's "
                "fine-tuning recipes use 0.05)")


@dataclass(kw_only=True)
class TrainConfig:
    """How long to train, and how often to log, validate and save."""

    num_steps: int = 400_000
    """Optimizer steps to train (wav2vec 2.0 BASE: 400k)."""

    init: str = ""
    """Pretraining only: weights to start from instead of the seeded random ones, a speechbs checkpoint
    file or run directory (every weight, heads included), a fairseq / WavLM / s3prl checkpoint file
    (heads included where the file has them), or a local Hugging Face directory (never downloaded;
    ``Wav2Vec2ForPreTraining`` keeps its quantizer and heads, HuBERT/WavLM and encoder-only
    directories start with the seeded heads). The architecture must match ``[model]``; the optimizer,
    schedule and batch plan start fresh. Read by a new run only: a resumed run continues from its own
    checkpoint. Empty: the seeded random initialization."""

    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    """Autocast dtype of training and validation forwards: ``auto`` is bf16 on a GPU that supports it, fp32
    otherwise; ``fp16`` adds a grad scaler (GPU only, first scale 128). Losses and logits stay fp32."""

    log_every: int = 100
    """Steps between console lines; metrics.jsonl and TensorBoard get every step."""

    valid_every: int = 5_000
    """Steps between validation passes on ``data.valid_manifest`` (0 disables)."""

    checkpoint_every: int = 5_000
    """Steps between checkpoints (the last one is always saved)."""

    keep_last: int = 2
    """Rolling checkpoints kept besides milestones."""

    milestone_steps: list[int] = field(default_factory=list)
    """Steps whose checkpoints are kept forever (e.g. every LR minimum of a cyclic schedule)."""

    milestone_hours: list[float] = field(default_factory=list)
    """Hours of real audio seen at which a checkpoint is saved and kept forever, h: at the first step that
    reaches the mark, or with a cyclic schedule at the first LR minimum after it (a fair point to fine-tune)."""

    max_nonfinite_in_row: int = 20
    """Stop the run after this many consecutive steps skipped for a non-finite loss or gradient."""

    grad_noise_every: int = 0
    """Steps between gradient-noise measurements (0 disables); a measuring step runs >= 2 micro-batches in all."""

    grad_noise_window: int = 10
    """Measurements averaged in each logged ``noise_*`` value (a window of ``grad_noise_window * grad_noise_every`` steps)."""

    compile: bool = False
    """Run the conv feature encoder and each transformer layer of the training forward under
    ``torch.compile`` (docs/pretraining.md, "Compiling"); validation stays eager. Off: all eager."""

    compile_num_lengths: int = 16
    """With ``compile``: each micro-batch's padded length is rounded up to one of this many lengths
    (quantiles of the training set's cropped lengths), so the compiled conv stack sees few shapes, count."""

    compile_backend: Literal["inductor", "aot_eager", "eager"] = "inductor"
    """``torch.compile`` backend: ``inductor`` generates fused kernels; ``aot_eager`` and ``eager``
    only trace (no speed-up; for debugging a compiled run's numbers)."""

    collective_timeout_s: float = 1_800.0
    """How long a rank waits in a collective (all-reduce, barrier) for the other ranks before the
    job ends with an error naming the rank, the step and the operation, s (torch's default: 30 min).
    It must exceed the longest time one rank can be busy alone, e.g. rank 0 saving a checkpoint."""

    def __post_init__(self) -> None:
        require(self.num_steps >= 1, "train.num_steps", "must be >= 1")
        for key in ("log_every", "valid_every", "checkpoint_every", "grad_noise_every"):
            require(getattr(self, key) >= 0, f"train.{key}", "must be >= 0")
        require(self.keep_last >= 1, "train.keep_last", "must be >= 1")
        require(self.grad_noise_window >= 1, "train.grad_noise_window", "must be >= 1 (measurements per logged value)")
        require(self.max_nonfinite_in_row >= 1, "train.max_nonfinite_in_row", "must be >= 1")
        require(self.collective_timeout_s > 0, "train.collective_timeout_s", "must be > 0 seconds")
        require(self.compile_num_lengths >= 1, "train.compile_num_lengths",
                f"must be >= 1 (padded lengths a compiled run rounds up to), got {self.compile_num_lengths}")
        cls = type(self)  # a dataclass keeps each field's default as a class attribute
        if not self.compile and (self.compile_num_lengths != cls.compile_num_lengths
                                 or self.compile_backend != cls.compile_backend):
            warnings.warn("train.compile_num_lengths and train.compile_backend have no effect with "
                          "train.compile = false", stacklevel=2)


@dataclass(kw_only=True)
class FinetuneConfig:
    """CTC fine-tuning of a pretrained encoder on letters (fairseq ``wav2vec_ctc``; defaults: ``base_10h.yaml``).

    The encoder's architecture comes from ``init``; the dropout and masking
    settings here replace the pretraining ones (fairseq's fine-tuning overrides).
    """

    init: str = ""
    """Pretrained encoder: a speechbs checkpoint file or run directory (pretrained or fine-tuned), a
    fairseq / WavLM / s3prl checkpoint file (pretrained, or fairseq's wav2vec 2.0 ``Wav2VecCtc``), or a
    local Hugging Face model directory (``config.json`` + weights; never downloaded). Empty: random
    initialization from ``[model]``."""

    vocab: str = ""
    """fairseq letter dictionary (``dict.ltr.txt``: ``SYMBOL COUNT`` lines); empty: built from the training labels."""

    freeze_steps: int = 10_000
    """Optimizer steps during which only the output layer trains (fairseq ``freeze_finetune_updates``), count."""

    final_dropout: float = 0.0
    """Dropout on the encoder output before the letter classifier, probability (fairseq ``final_dropout``)."""

    mask_prob: float = 0.65
    """Time masking during fine-tuning, expected fraction before overlap (fairseq units), probability."""

    mask_length: int = 10
    """Time-mask span, frames."""

    mask_channel_prob: float = 0.5
    """Channel masking during fine-tuning (fairseq units; 0.25 for 10 min/1 h, 0.5 for 10 h/100 h), probability."""

    mask_channel_length: int = 64
    """Channel-mask span, channels."""

    layerdrop: float = 0.05
    """Probability of skipping each transformer layer during fine-tuning (10 h: 0.05; 10 min, 1 h, 100 h: 0.1)."""

    dropout: float = 0.0
    """Transformer residual dropout during fine-tuning, probability (fairseq ``wav2vec_ctc``: 0)."""

    attention_dropout: float = 0.0
    """Attention-weight dropout during fine-tuning, probability."""

    activation_dropout: float = 0.1
    """Dropout after the feed-forward activation during fine-tuning, probability."""

    dropout_input: float = 0.0
    """Dropout after the feature projection during fine-tuning, probability."""

    normalize: Literal["utterances", "characters"] = "utterances"
    """What the summed CTC loss is divided by: utterances (fairseq ``sentence_avg``, its fine-tuning
    default) or target characters."""

    best_metric: Literal["wer", "cer", "loss"] = "wer"
    """Validation metric (lower is better) that selects ``checkpoints/best.pt``, which decoding uses:
    fairseq's ``wer``; ``cer`` where every model is still near 100% WER (tiny models, short runs)."""

    def __post_init__(self) -> None:
        require(self.freeze_steps >= 0, "finetune.freeze_steps", "must be >= 0")
        for key in ("final_dropout", "mask_prob", "mask_channel_prob", "layerdrop", "dropout",
                    "attention_dropout", "activation_dropout", "dropout_input"):
            require(0.0 <= getattr(self, key) < 1.0, f"finetune.{key}", "must be a probability in [0, 1)")
        require(self.mask_length >= 1 and self.mask_channel_length >= 1, "finetune.mask_length",
                "mask spans must be >= 1")


@dataclass(kw_only=True)
class Config:
    """A whole run. Sections are TOML tables of the same name."""

    run: RunConfig = field(default_factory=RunConfig)
    """Name, output directory and seed."""

    data: DataConfig = field(default_factory=DataConfig)
    """Manifests and loading."""

    audio: AudioConfig = field(default_factory=AudioConfig)
    """Audio decoding, resampling and channel policy."""

    batch: BatchConfig = field(default_factory=BatchConfig)
    """Seconds of audio per optimizer step and the per-device memory cap."""

    model: ModelConfig = field(default_factory=ModelConfig)
    """Architecture: family, size and overrides."""

    optim: OptimConfig = field(default_factory=OptimConfig)
    """Optimizer and the LR scaling rule."""

    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    """Learning-rate schedule."""

    train: TrainConfig = field(default_factory=TrainConfig)
    """Length of training, logging, validation and checkpoint cadence."""

    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    """CTC fine-tuning (``speechbs finetune``); unused by pretraining."""

    def __post_init__(self) -> None:
        if self.batch.schedule == "adaptive":
            every, decide = self.train.grad_noise_every, self.batch.adaptive.every_steps
            require(0 < every <= decide, "train.grad_noise_every",
                    f"must be in 1..batch.adaptive.every_steps ({decide}) with batch.schedule = \"adaptive\": "
                    f"its decisions read the measured noise scale (got {every})")

