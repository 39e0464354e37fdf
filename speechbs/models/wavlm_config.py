"""WavLM's architecture config and its sizes (tiny, base, large). No torch: see ``encoder_config.py``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from speechbs.models.hubert_config import LARGE_SETTINGS, TINY_SETTINGS, HubertConfig


@dataclass(kw_only=True)
class WavLMConfig(HubertConfig):
    """HuBERT's fields plus the position bias and utterance mixing. Defaults: WavLM BASE."""

    num_buckets: int = 320
    """Relative position buckets (half per direction), count."""
    max_distance: int = 800
    """Offset beyond which buckets stop growing, frames."""
    mix_prob: float = 0.2
    """Probability that an utterance is overlapped with another one of its batch (paper, section IV-A, as recalled; not verified against the released setup)."""
    mix_scope: Literal["global", "micro_batch"] = "global"
    """Where the partners come from: ``global``, the whole optimizer step's utterances (drawn by the data
    loader; the mixed input does not depend on the split into micro-batches and ranks) or ``micro_batch``,
    the forward's own rows (depends on the split)."""
    mix_max_fraction: float = 0.5
    """The overlapped segment is shorter than this fraction of the primary utterance, fraction."""
    mix_ratio_min_db: float = -5.0
    """Lowest primary-to-overlap energy ratio, dB."""
    mix_ratio_max_db: float = 5.0
    """Highest primary-to-overlap energy ratio, dB."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0.0 <= self.mix_prob <= 1.0 or not 0.0 < self.mix_max_fraction <= 1.0:
            raise ValueError(f"model.mix_prob ({self.mix_prob}) must be in [0, 1] and model.mix_max_fraction "
                             f"({self.mix_max_fraction}) in (0, 1]")
        if self.mix_ratio_min_db > self.mix_ratio_max_db:
            raise ValueError(f"model.mix_ratio_min_db ({self.mix_ratio_min_db}) must be <= "
                             f"model.mix_ratio_max_db ({self.mix_ratio_max_db})")


def base(**overrides) -> WavLMConfig:
    """BASE (HuBERT BASE architecture + position bias; 95 M parameters)."""
    return WavLMConfig(**overrides)


def large(**overrides) -> WavLMConfig:
    """LARGE (HuBERT LARGE architecture + position bias; conv bias off as in the released WavLM Large, unverified)."""
    return WavLMConfig(**{**LARGE_SETTINGS, "conv_bias": False, **overrides})


def tiny(**overrides) -> WavLMConfig:
    """CPU tests and demos."""
    return WavLMConfig(**{**TINY_SETTINGS, **overrides})
