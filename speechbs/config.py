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

from dataclasses import dataclass, field
from typing import Literal

from speechbs.errors import ConfigError


def _require(condition: bool, key: str, message: str) -> None:
    if not condition:
        raise ConfigError(f"{key}: {message}")


@dataclass(kw_only=True)
class RunConfig:
    """Where a run lives and how it is seeded."""

    name: str = "run"
    """Run name; the run directory is ``<output_dir>/<name>``."""

    output_dir: str = "runs"
    """Directory that holds run directories (relative to the working directory)."""

    seed: int = 1
    """Seed for the batch plan, masking and initialization. Same seed, same run."""


@dataclass(kw_only=True)
class DataConfig:
    """Manifests (fairseq ``.tsv``) for training and validation."""

    train_manifest: str = "manifests/builtin/train.tsv"
    """Training manifest: root directory on line 1, then ``path<TAB>num_samples``."""

    valid_manifest: str = "manifests/builtin/valid.tsv"
    """Held-out manifest for validation loss/WER; empty string disables validation."""

    labels: str = ""
    """Label file extension for fine-tuning (``ltr`` or ``wrd``); empty for pretraining."""

    num_workers: int = 2
    """Data-loading worker processes per device (0 loads in the training process)."""

    def __post_init__(self) -> None:
        _require(self.num_workers >= 0, "data.num_workers", "must be >= 0")
        _require(self.labels in ("", "ltr", "wrd"), "data.labels",
                 f"got {self.labels!r}; allowed: '', 'ltr', 'wrd'")


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
        _require(self.sample_rate_hz > 0, "audio.sample_rate_hz", "must be > 0")
        _require(self.min_seconds >= 0, "audio.min_seconds", "must be >= 0")
        _require(self.max_seconds > self.min_seconds, "audio.max_seconds",
                 f"must be > audio.min_seconds ({self.min_seconds})")


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

    def __post_init__(self) -> None:
        _require(self.seconds > 0, "batch.seconds", "must be > 0 (seconds of audio per optimizer step)")
        _require(self.max_device_seconds > 0, "batch.max_device_seconds", "must be > 0")
        _require(self.crop_max_seconds > 0, "batch.crop_max_seconds", "must be > 0")
        _require(self.num_buckets >= 1, "batch.num_buckets", "must be >= 1")
        _require(self.cost_length_seconds > 0, "batch.cost_length_seconds", "must be > 0")


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


# Keys a recipe may use in place of the canonical one: alias -> (canonical key, factor).
ALIASES: dict[str, tuple[str, float]] = {
    "batch.minutes": ("batch.seconds", 60.0),
    "batch.max_device_minutes": ("batch.max_device_seconds", 60.0),
}
