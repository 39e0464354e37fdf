"""Model name -> (config class, model class, size functions): a plain dict, no decorators.

The config classes and sizes come from the torch-free table in ``sizes.py``; this module
adds the model classes (and so imports torch).

A recipe names a model (``model.name = "wav2vec2"``) and a size; the training
code looks both up here. ``needs_labels``: the pretraining forward takes
cluster targets (``ClusterTargets``), so the task must attach label files.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

from speechbs.models import hubert, wav2vec2, wavlm
from speechbs.models.sizes import CONFIG_CLASSES, SIZES


class ModelEntry(NamedTuple):
    config_cls: type
    model_cls: type
    sizes: dict[str, Callable[..., Any]]
    """Size name -> function returning a config (keyword overrides allowed)."""
    needs_labels: bool = False
    """Pretraining needs cluster labels per frame (HuBERT, WavLM)."""


MODELS: dict[str, ModelEntry] = {
    "wav2vec2": ModelEntry(CONFIG_CLASSES["wav2vec2"], wav2vec2.Wav2Vec2Model, SIZES["wav2vec2"]),
    "hubert": ModelEntry(CONFIG_CLASSES["hubert"], hubert.HubertModel, SIZES["hubert"], needs_labels=True),
    "wavlm": ModelEntry(CONFIG_CLASSES["wavlm"], wavlm.WavLMModel, SIZES["wavlm"], needs_labels=True),
}


def model_entry(name: str) -> ModelEntry:
    """The entry for ``name``, or a ValueError listing the known names."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; known models: {', '.join(sorted(MODELS))}")
    return MODELS[name]
