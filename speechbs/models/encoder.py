"""What every pretrained speech encoder offers fine-tuning and feature extraction.

wav2vec 2.0, HuBERT and WavLM differ in their pretraining losses, not in how a
downstream task uses them: each model class has

    encode(wav_BT, lengths_B, *, seeds_B=None, mask_BT=None, layerdrop_seed=None,
           return_layers=False) -> EncoderOutput

which runs the feature encoder and the transformer without any pretraining
head (masks are applied when ``seeds_B`` or ``mask_BT`` is given, as in
fine-tuning). :func:`load_pretrained` rebuilds such a model from a speechbs
checkpoint, whatever its family.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from speechbs.errors import DataError


@dataclass
class EncoderOutput:
    """What fine-tuning and feature extraction use."""

    features_BTC: torch.Tensor
    """Transformer output (padded frames zeroed), (B, T, embed_dim)."""
    padding_BT: torch.Tensor
    """True at padded frames (fairseq's ``padding_mask`` convention)."""
    frame_lengths_B: torch.Tensor
    """Valid frames per row, from the conv arithmetic."""
    layer_outputs: list[torch.Tensor] | None = None
    """Each transformer layer's output (for HuBERT targets and layer-weighted heads), when requested."""


def load_pretrained(path: str | Path) -> tuple[nn.Module, Any]:
    """The model of a speechbs checkpoint (on the CPU, in eval mode) and the config it was trained with.

    ``path`` is a checkpoint file or a run directory (its latest checkpoint).
    """
    from speechbs.checkpoint import latest_checkpoint, load_checkpoint
    from speechbs.configio import config_from_toml
    from speechbs.models.registry import MODELS

    path = Path(path)
    if path.is_dir():
        found = latest_checkpoint(path / "checkpoints") or latest_checkpoint(path)
        if found is None:
            raise DataError(f"{path} is a directory without checkpoints (expected {path}/checkpoints/step_*.pt)")
        path = found
    ckpt = load_checkpoint(path)
    if "config_toml" not in ckpt or "model" not in ckpt:
        raise DataError(f"checkpoint {path} has no saved config or model weights; is it a speechbs checkpoint?")
    cfg = config_from_toml(ckpt["config_toml"], source=f"config saved in {path}")
    model = MODELS[cfg.model.name].model_cls(cfg.model.arch)
    model.load_state_dict(ckpt["model"])
    return model.eval(), cfg
