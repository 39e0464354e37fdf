"""Encoders from a LOCAL Hugging Face model directory (no download), through speechbs converters.

Read by ``finetune.init`` and by pretraining's ``train.init``. The directory's model class
(``architectures`` in ``config.json``) decides what is read: a ``Wav2Vec2ForPreTraining``
gives the encoder, the quantizer, ``project_q`` and ``project_hid`` (speechbs
``final_proj``); a ``...Model`` or ``...ForCTC`` directory gives the encoder (a CTC head is
left out). The other direction is :mod:`speechbs.interop.hf`.

``model_type`` in ``config.json`` picks the converter in
:mod:`speechbs.models.convert`: ``from_hf_wav2vec2`` and, where they exist,
``from_hf_hubert`` / ``from_hf_wavlm`` (looked up by name, so a family
works here as soon as its converter lands). Each returns (speechbs arch
config, state dict for the registry's model class).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from speechbs.errors import ConfigError

# HF model_type -> (speechbs registry name, converter function name in speechbs.models.convert)
FAMILIES: dict[str, tuple[str, str]] = {
    "wav2vec2": ("wav2vec2", "from_hf_wav2vec2"),
    "hubert": ("hubert", "from_hf_hubert"),
    "wavlm": ("wavlm", "from_hf_wavlm"),
}
PRETRAINING_CLASS: dict[str, str] = {"wav2vec2": "Wav2Vec2ForPreTraining"}
"""HF model_type -> its pretraining model class (transformers has none for HuBERT and WavLM)."""


def is_hf_dir(path: str | Path) -> bool:
    """A directory with a ``config.json`` (and no speechbs ``checkpoints/``)."""
    path = Path(path)
    return path.is_dir() and (path / "config.json").is_file() and not (path / "checkpoints").is_dir()


def load_hf_encoder(path: str | Path, key: str = "finetune.init") -> tuple[str, Any, dict[str, torch.Tensor]]:
    """(registry model name, arch config, speechbs state dict) of a local HF encoder directory.

    ``key`` is the setting that named the directory, for the messages.
    """
    check_weights_only(Path(path), key)
    try:
        import transformers
    except ImportError:
        raise ConfigError(f"{key}={path} is a Hugging Face directory; reading it needs "
                          f"transformers (pip install 'speechbs[hf]')") from None
    from speechbs.models import convert
    from speechbs.models.registry import MODELS

    hf_config = transformers.AutoConfig.from_pretrained(str(path), local_files_only=True)
    model_type = getattr(hf_config, "model_type", "")
    family = FAMILIES.get(model_type)
    converter = getattr(convert, family[1], None) if family else None
    if family is None or converter is None or family[0] not in MODELS:
        known = [t for t, (name, fn) in FAMILIES.items() if name in MODELS and hasattr(convert, fn)]
        raise ConfigError(f"{key}={path}: Hugging Face model_type {model_type!r} has no speechbs "
                          f"converter; supported here: {', '.join(known)}")
    # A pretraining directory keeps its heads; AutoModel would give the bare encoder.
    with_heads = PRETRAINING_CLASS.get(model_type, "") in (getattr(hf_config, "architectures", None) or [])
    model_cls = getattr(transformers, PRETRAINING_CLASS[model_type]) if with_heads else transformers.AutoModel
    hf_model = model_cls.from_pretrained(str(path), local_files_only=True)
    arch, state = converter(hf_model, hf_config)
    return family[0], arch, state


def check_weights_only(path: Path, key: str = "finetune.init") -> None:
    """Refuse a directory whose only weights are a ``pytorch_model*.bin`` that holds more than tensors.

    Such a file needs full unpickling, which runs code from the file; speechbs
    loads weights only (``torch.load(weights_only=True)``), so the user converts
    it once, where they trust its source. safetensors files need no check.
    """
    from speechbs.checkpoint import load_failure

    if next(path.glob("*.safetensors"), None) is not None:
        return
    for weights in sorted(path.glob("pytorch_model*.bin")):
        try:
            try:
                torch.load(weights, map_location="cpu", weights_only=True, mmap=True)
            except RuntimeError as exc:
                if "mmap" not in str(exc):
                    raise
                torch.load(weights, map_location="cpu", weights_only=True)  # the legacy (pre-zip) format
        except Exception as exc:  # noqa: BLE001 - whatever unpickling refused, the fix is the same
            reason = load_failure(exc)
            raise ConfigError(
                f"{key} = {str(path)!r}: {weights.name} is a pickle with more than weights ({reason}); "
                f"speechbs loads weights only, because unpickling runs code from the file. If you trust its "
                f"source, convert it once to safetensors: python -c \"import torch; from safetensors.torch import "
                f"save_file; sd = torch.load('{weights}', weights_only=False); save_file({{k: v.contiguous() for k, v "
                f"in sd.items() if isinstance(v, torch.Tensor)}}, '{path / 'model.safetensors'}')\"") from None
