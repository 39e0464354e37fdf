"""Model name -> (config class, model class, size functions): a plain dict, no decorators.

A recipe names a model (``model.name = "wav2vec2"``) and a size; the training
code looks both up here. HuBERT and WavLM add their entries when they land.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

from speechbs.models import wav2vec2


class ModelEntry(NamedTuple):
    config_cls: type
    model_cls: type
    sizes: dict[str, Callable[..., Any]]
    """Size name -> function returning a config (keyword overrides allowed)."""


MODELS: dict[str, ModelEntry] = {
    "wav2vec2": ModelEntry(wav2vec2.Wav2Vec2Config, wav2vec2.Wav2Vec2Model,
                           {"tiny": wav2vec2.tiny, "base": wav2vec2.base, "large": wav2vec2.large}),
}


def model_entry(name: str) -> ModelEntry:
    """The entry for ``name``, or a ValueError listing the known names."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; known models: {', '.join(sorted(MODELS))}")
    return MODELS[name]
