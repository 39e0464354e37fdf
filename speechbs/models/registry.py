"""Model name -> (config class, model class, size functions): a plain dict, no decorators.

A recipe names a model (``model.name = "wav2vec2"``) and a size; the training
code looks both up here. ``needs_labels``: the pretraining forward takes
cluster targets (``ClusterTargets``), so the task must attach label files.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

from speechbs.models import hubert, wav2vec2, wavlm


class ModelEntry(NamedTuple):
    config_cls: type
    model_cls: type
    sizes: dict[str, Callable[..., Any]]
    """Size name -> function returning a config (keyword overrides allowed)."""
    needs_labels: bool = False
    """Pretraining needs cluster labels per frame (HuBERT, WavLM)."""


MODELS: dict[str, ModelEntry] = {
    "wav2vec2": ModelEntry(wav2vec2.Wav2Vec2Config, wav2vec2.Wav2Vec2Model,
                           {"tiny": wav2vec2.tiny, "base": wav2vec2.base, "large": wav2vec2.large}),
    "hubert": ModelEntry(hubert.HubertConfig, hubert.HubertModel,
                         {"tiny": hubert.tiny, "base": hubert.base, "large": hubert.large}, needs_labels=True),
    "wavlm": ModelEntry(wavlm.WavLMConfig, wavlm.WavLMModel,
                        {"tiny": wavlm.tiny, "base": wavlm.base, "large": wavlm.large}, needs_labels=True),
}


def model_entry(name: str) -> ModelEntry:
    """The entry for ``name``, or a ValueError listing the known names."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; known models: {', '.join(sorted(MODELS))}")
    return MODELS[name]
