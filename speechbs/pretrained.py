"""Saved models back from disk: which checkpoint a path means, its config, and the model it holds.

models/ holds architecture only and reads no files; this is the one module that turns a run
directory or a checkpoint file into a model. Fine-tuning's ``finetune.init``, ``speechbs
decode`` (:func:`speechbs.asr.ctc.load_ctc_checkpoint`), ``speechbs noise`` and the layer
features of ``speechbs targets`` all resolve their path here, by one rule:

- a checkpoint file means itself;
- a run directory, or its ``checkpoints/`` folder, means ``best.pt`` when the checkpoint
  index (``checkpoints/index.json``) records one (the model a validation metric selected:
  fine-tuning keeps the lowest dev WER, ``finetune.best_metric``), and otherwise its newest
  ``step_*.pt``. Pretraining selects nothing, so a pretraining run directory means its latest
  checkpoint.

An index that records ``best.pt`` while the file is missing is an error rather than a silent
fall back to the latest step: decoding another model than the selected one would go unseen.
A ``best.pt`` the index does not record (copied in by hand) is ignored; pass the file itself.

Checkpoints are read with ``torch.load(weights_only=True)`` (``speechbs.checkpoint``): no code
in them runs. A file that is not speechbs's but fairseq's (``Wav2Vec2Model``, ``HubertModel``,
``Wav2VecCtc``, ``HubertCtc``), the WavLM repository's or s3prl's is read as the speechbs checkpoint it amounts
to (:func:`speechbs.interop.fairseq_read.read_foreign`, which runs no code of the file either), so
every command that takes a checkpoint takes those too (docs/interop.md).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from speechbs.checkpoint import BEST, latest_checkpoint, load_checkpoint, read_index
from speechbs.errors import DataError


def resolve_checkpoint(path: str | Path) -> Path:
    """The checkpoint file ``path`` means: itself, or a run directory's ``best.pt`` / latest ``step_*.pt``."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"checkpoint {path} does not exist (give a checkpoint file or a run directory)")
    if not path.is_dir():
        return path
    ckpt_dir = path / "checkpoints" if (path / "checkpoints").is_dir() else path
    best = read_index(ckpt_dir).get("best")
    if best:
        found = ckpt_dir / best.get("file", BEST)
        if not found.is_file():
            raise DataError(f"{ckpt_dir / 'index.json'} records {found.name} (step {best.get('step')}, "
                            f"{best.get('metric')} {best.get('value')}) but the file is missing; give a "
                            f"checkpoint file ({ckpt_dir}/step_*.pt) instead of the directory")
        return found
    found = latest_checkpoint(ckpt_dir)
    if found is None:
        raise DataError(f"{path} is a directory without checkpoints (expected {ckpt_dir}/step_*.pt)")
    return found


@dataclass
class SavedModel:
    """A checkpoint as read back: where it was, its contents, and the config it was trained with."""

    path: Path
    """The checkpoint file the given path resolved to."""
    checkpoint: dict[str, Any]
    """Its contents (``model`` state dict, ``config_toml``, ``step``, ...)."""
    config: Any
    """The resolved :class:`speechbs.config.Config` saved with it."""


def read_checkpoint(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> SavedModel:
    """Resolve ``path`` (:func:`resolve_checkpoint`), load the file and rebuild its config (``overrides``:
    ``--set`` items applied to that config)."""
    from speechbs.configio import config_from_toml

    found = resolve_checkpoint(path)
    try:
        ckpt, refused = load_checkpoint(found), None
    except DataError as exc:  # maybe a foreign checkpoint that names classes of its toolkit
        ckpt, refused = None, exc
    if ckpt is None or "config_toml" not in ckpt:
        from speechbs.interop.fairseq_read import read_foreign

        foreign = read_foreign(found, ckpt) if ckpt is not None or _is_torch_file(found) else None
        if foreign is not None:
            cfg = foreign.config
            if overrides:
                cfg = config_from_toml(foreign.checkpoint["config_toml"], source=f"config of {found}",
                                       overrides=overrides)
            return SavedModel(found, foreign.checkpoint, cfg)
        if refused is not None:
            raise refused
    if "config_toml" not in ckpt or "model" not in ckpt:
        raise DataError(f"checkpoint {found} has no saved config or model weights; is it a speechbs, fairseq, "
                        f"WavLM or s3prl checkpoint?")
    cfg = config_from_toml(ckpt["config_toml"], source=f"config saved in {found}", overrides=overrides)
    return SavedModel(found, ckpt, cfg)


def _is_torch_file(path: Path) -> bool:
    """A zip archive (torch >= 1.6) or a pickle (older torch): worth reading as a foreign checkpoint."""
    try:
        with open(path, "rb") as f:
            head = f.read(2)
    except OSError:
        return False
    return head[:2] == b"PK" or head[:1] == b"\x80"


def build_model(model_cfg: Any) -> nn.Module:
    """A randomly initialized model of a config's ``model`` section (its family and architecture)."""
    from speechbs.models.registry import model_entry

    return model_entry(model_cfg.name).model_cls(model_cfg.arch)


def load_encoder(path: str | Path) -> tuple[nn.Module, Any]:
    """The pretraining model of a checkpoint or run directory (CPU, eval mode) and the config it was trained with.

    The weights load strictly: a checkpoint of another model (e.g. a fine-tuned CTC model)
    raises the ``RuntimeError`` of ``load_state_dict``.
    """
    saved = read_checkpoint(path)
    return encoder_of(saved), saved.config


def encoder_of(saved: SavedModel) -> nn.Module:
    """The pretraining model held by an already-read checkpoint (CPU, eval mode; strict load)."""
    model = build_model(saved.config.model)
    model.load_state_dict(saved.checkpoint["model"])
    return model.eval()
