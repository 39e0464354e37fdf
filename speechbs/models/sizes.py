"""Model name -> config class and sizes: the torch-free half of the registry.

:mod:`speechbs.config` fills ``model.arch`` from here (``SIZES[name][size]()``) so that
loading a recipe never imports torch; :mod:`speechbs.models.registry` pairs the same
entries with the model classes.
"""

from __future__ import annotations

from collections.abc import Callable

from speechbs.models import hubert_config, wav2vec2_config, wavlm_config
from speechbs.models.encoder_config import EncoderConfig

CONFIG_CLASSES: dict[str, type[EncoderConfig]] = {
    "wav2vec2": wav2vec2_config.Wav2Vec2Config,
    "hubert": hubert_config.HubertConfig,
    "wavlm": wavlm_config.WavLMConfig,
}
"""Model name -> its architecture config class."""

SIZES: dict[str, dict[str, Callable[..., EncoderConfig]]] = {
    "wav2vec2": {"tiny": wav2vec2_config.tiny, "base": wav2vec2_config.base, "large": wav2vec2_config.large},
    "hubert": {"tiny": hubert_config.tiny, "base": hubert_config.base, "large": hubert_config.large},
    "wavlm": {"tiny": wavlm_config.tiny, "base": wavlm_config.base, "large": wavlm_config.large},
}
"""Model name -> size name -> function returning that size's config (keyword overrides allowed)."""
