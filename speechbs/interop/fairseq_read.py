"""fairseq, WavLM-repository and s3prl checkpoints read as speechbs checkpoints (``finetune.init``, ...).

:func:`read_foreign`: a fairseq ``Wav2Vec2Model``, ``HubertModel``, ``Wav2VecCtc`` or ``HubertCtc``
checkpoint (``cfg`` or the older ``args``), a WavLM repository checkpoint or an s3prl converted one is read
as a speechbs checkpoint: :func:`speechbs.pretrained.read_checkpoint` calls it for a file that is
not speechbs's, so ``finetune.init``, ``train.init``, ``speechbs decode`` and
``speechbs export`` take these files. They are unpickled with stand-ins for every foreign class
(:mod:`speechbs.interop.pickles`): no code from the file runs and neither fairseq nor omegaconf is
needed. Weights a file lacks (a CTC model's pretraining heads, WavLM.py's heads) are filled with
seeded random values and listed in the checkpoint's ``seeded_heads``.

The other direction is :mod:`speechbs.interop.fairseq`; the names and configs map through
:mod:`speechbs.interop.fairseq_map`.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from speechbs.asr.vocab import SPECIALS, Vocab, read_dict
from speechbs.errors import ConfigError, DataError
from speechbs.interop import fairseq_map as fm
from speechbs.interop.pickles import load_foreign, plain, resolve_interpolations


@dataclass
class Foreign:
    """A foreign checkpoint read as a speechbs one."""

    checkpoint: dict[str, Any]
    """``model`` (speechbs names), ``config_toml``, ``step``, ``source_format``, ``seeded_heads``, ``notes``."""
    config: Any
    """The speechbs :class:`~speechbs.config.Config` it amounts to."""


def read_foreign(path: Path, loaded: Any = None) -> Foreign | None:
    """The fairseq / WavLM / s3prl checkpoint at ``path`` as a speechbs one, or None when it is none of them.

    ``loaded``: its contents when the caller has already read them (a plain fairseq checkpoint
    loads with ``weights_only=True``); otherwise it is read with stand-ins (no code runs).
    """
    try:
        raw = loaded if loaded is not None else load_foreign(path)
    except DataError:  # not a torch file at all: the caller's own message says so
        return None
    sections = _sections(raw)
    if sections is None:
        return None
    source, model, task, criterion, state, symbols, step = sections
    where = f"{path}"
    name = model.get("_name")
    if name in fm.CTC_MODELS:
        return _read_ctc(path, source, fm.CTC_MODELS[name], model, task, state, step, raw)
    if name not in ("wav2vec2", "hubert", "wavlm"):
        raise ConfigError(f"{where}: fairseq model {name!r} is not one speechbs reads (wav2vec2, hubert, "
                          f"wav2vec_ctc, hubert_ctc, or a WavLM checkpoint)")
    family = name
    arch, speechbs_state = _pretrained_state(family, model, task, criterion, state, symbols, where)
    heads = raw.get("speechbs_heads") or {} if family == "wavlm" else {}
    if "label_embs" in heads:  # WavLM.py's config has no head sizes: the heads written by speechbs give them
        arch = replace(arch, num_clusters=heads["label_embs"].shape[0], final_dim=heads["label_embs"].shape[1])
    speechbs_state.update(heads)
    cfg = _speechbs_config(family, _with_provenance(family, arch, raw), task)
    return _finish(path, source, cfg, speechbs_state, step, family)


def _with_provenance(family: str, arch: Any, raw: dict) -> Any:
    """``arch`` with the settings the foreign config has no field for taken from the speechbs config the file
    carries when speechbs wrote it (``speechbs.config_toml``); otherwise as they are (speechbs's BASE values)."""
    from speechbs.configio import config_from_toml

    mark = raw.get("speechbs") or (raw.get("extra_state") or {}).get("speechbs") or {}
    text = mark.get("config_toml") if isinstance(mark, dict) else None
    if not isinstance(text, str):
        return arch
    try:
        saved = config_from_toml(text, source="the speechbs config inside the checkpoint").model
    except ConfigError:
        return arch
    if saved.name != family:
        return arch
    return replace(arch, **{n: getattr(saved.arch, n) for n in fm.NOT_IN_FAIRSEQ[family] if hasattr(saved.arch, n)})


def _sections(raw: Any) -> tuple | None:
    """(format, model cfg, task cfg, criterion cfg, state, label symbols, step) of a foreign checkpoint."""
    if not isinstance(raw, dict):
        return None
    if {"model_cfg", "task_cfg", "model_weight"} <= raw.keys():  # s3prl's converted wav2vec 2.0 / HuBERT
        model = plain(raw["model_cfg"])
        symbols = raw.get("dictionaries_symbols")
        if symbols and "_name" not in model:
            model["_name"] = "hubert"
        return "s3prl", model, plain(raw["task_cfg"]), {}, raw["model_weight"], symbols, None
    if "model" not in raw or not isinstance(raw["model"], dict):
        return None
    cfg, args = plain(raw.get("cfg")), plain(raw.get("args"))
    if isinstance(cfg, dict) and isinstance(cfg.get("model"), dict):
        cfg = resolve_interpolations(cfg)
        model, task, criterion = dict(cfg["model"]), dict(cfg.get("task") or {}), dict(cfg.get("criterion") or {})
        source = "fairseq"
    elif isinstance(cfg, dict) and "encoder_layers" in cfg:  # the WavLM repository's {'cfg', 'model'}
        model, task, criterion, source = {**cfg, "_name": "wavlm"}, cfg, {}, "wavlm"
    elif isinstance(args, dict) and "arch" in args:  # fairseq before hydra: one flat argparse.Namespace
        model, task, criterion, source = {**args, "_name": args["arch"]}, args, args, "fairseq"
    else:
        return None
    history = plain(raw.get("optimizer_history")) or [{}]
    step = history[-1].get("num_updates") if isinstance(history[-1], dict) else None
    dictionaries = (plain(raw.get("task_state")) or {}).get("dictionaries") or []
    symbols = [d["symbols"] if isinstance(d, dict) else d for d in dictionaries] or None
    return source, model, task, criterion, raw["model"], symbols, step


def _pretrained_state(family: str, model: dict, task: dict, criterion: dict, state: dict, symbols: Any,
                      where: str) -> tuple[Any, dict[str, torch.Tensor]]:
    """(speechbs arch, speechbs state) of a pretraining model's fairseq config and weights."""
    state = dict(state)
    label_embs = state.pop("label_embs_concat", None) if family == "hubert" else None
    if family == "hubert" and symbols is not None and len(symbols) != 1:
        raise ConfigError(f"{where}: HuBERT with {len(symbols)} label sets is not supported (speechbs has one)")
    num_clusters = None
    if label_embs is not None:
        rows = _cluster_rows(symbols[0] if symbols else None, label_embs.shape[0], where)
        num_clusters = len(rows)
        label_embs = label_embs[torch.tensor(rows)].clone()
    arch = fm.arch_from_fairseq(family, model, task, criterion, num_clusters=num_clusters, where=where)
    renamed, unknown = fm.to_speechbs_names(family, arch.conv_norm, state)
    if unknown:
        raise DataError(f"{where}: weights {unknown[:5]} have no speechbs name; is it a {family} checkpoint?")
    if label_embs is not None:
        renamed["label_embs"] = label_embs
    if "post_extract_proj.weight" not in renamed:  # fairseq builds none when conv channels = embed_dim
        renamed["post_extract_proj.weight"] = torch.eye(arch.embed_dim)
        renamed["post_extract_proj.bias"] = torch.zeros(arch.embed_dim)
    return arch, renamed


def _cluster_rows(symbols: list[str] | None, num_rows: int, where: str) -> list[int]:
    """Row of ``label_embs_concat`` for each cluster 0..K-1: the dictionary's, or specials-then-clusters."""
    if symbols is None:  # no dictionary in the file: fairseq's k-means example writes clusters 0..K-1 in order
        return list(range(len(SPECIALS), num_rows))
    index = {s: i for i, s in enumerate(symbols)}
    clusters = [s for s in symbols if s not in SPECIALS]
    if sorted(clusters, key=lambda s: int(s) if s.isdigit() else -1) != [str(c) for c in range(len(clusters))]:
        raise ConfigError(f"{where}: HuBERT label dictionary symbols {clusters[:5]}... are not the cluster ids "
                          f"0..{len(clusters) - 1}; speechbs reads k-means labels")
    return [index[str(c)] for c in range(len(clusters))]


def _read_ctc(path: Path, source: str, family: str, model: dict, task: dict, state: dict, step: Any,
              raw: dict) -> Foreign:
    """A fairseq ``Wav2VecCtc`` or ``HubertCtc`` as a speechbs CTC checkpoint (encoder, head and letters).

    The two share their layout (``w2v_encoder.w2v_model.*``, ``w2v_encoder.proj``, the pretraining
    config in ``model.w2v_args``, the encoder fields it overrides); HubertCtc keeps the pretraining
    model's ``label_embs_concat``, read as speechbs's ``label_embs`` as for a pretraining checkpoint.
    """
    inner = model.get("w2v_args")
    if not isinstance(inner, dict):
        raise ConfigError(f"{path}: its pretraining config (w2v_args) is not in the file; fairseq reads it from "
                          f"w2v_path = {model.get('w2v_path')!r}, which speechbs does not follow")
    if isinstance(inner.get("model"), dict):
        inner_model, inner_task = dict(inner["model"]), dict(inner.get("task") or {})
    else:
        inner_model, inner_task = {**inner, "_name": inner.get("arch")}, inner
    if inner_model.get("_name") != family:
        raise ConfigError(f"{path}: a fairseq {model.get('_name')} on a {inner_model.get('_name')!r} model is not "
                          f"supported (speechbs reads it on {family})")
    for key, target in fm.CTC_OVERRIDES.items():
        if model.get(key) is not None:
            inner_model[target] = model[key]
    encoder = {k[len(fm.CTC_PREFIX[0]):]: v for k, v in state.items() if k.startswith(fm.CTC_PREFIX[0])}
    head = {k[len(fm.CTC_HEAD[0]):]: v for k, v in state.items() if k.startswith(fm.CTC_HEAD[0])}
    other = [k for k in state if not k.startswith((fm.CTC_PREFIX[0], fm.CTC_HEAD[0]))]
    if other or set(head) != {"weight", "bias"}:
        raise DataError(f"{path}: weights {other[:5] or sorted(head)} do not fit fairseq's {model.get('_name')}")
    arch, enc_state = _pretrained_state(family, inner_model, inner_task, {}, encoder, None, str(path))
    vocab = _ctc_vocab(path, task, head["weight"].shape[0])
    speechbs_state = {f"encoder.{k}": v for k, v in enc_state.items()}
    speechbs_state.update({"head.weight": head["weight"], "head.bias": head["bias"], "vocab_utf8": vocab.to_tensor()})
    cfg = _speechbs_config(family, arch, {**inner_task, **task})
    cfg = replace(cfg, model=replace(cfg.model, arch=_with_provenance(family, arch, raw)))
    ft = {target: model[key] for key, target in fm.FINETUNE_FIELDS.items() if model.get(key) is not None}
    cfg = replace(cfg, finetune=replace(cfg.finetune, **ft))
    return _finish(path, source, cfg, speechbs_state, step, family, prefix="encoder.")


def _ctc_vocab(path: Path, task: dict, num_classes: int) -> Vocab:
    """The letter dictionary of a fairseq CTC checkpoint: ``dict.<labels>.txt`` beside it or in its ``task.data``
    (or ``task.label_dir``, where HuBERT's task reads it)."""
    labels = task.get("labels") or "ltr"
    if isinstance(labels, (list, tuple)):  # hubert_pretraining: a list of label sets, one when fine-tuning
        labels = labels[0] if len(labels) == 1 else "ltr"
    name = f"dict.{labels}.txt"
    folders = [task.get(key) for key in ("data", "label_dir") if task.get(key)]
    candidates = [path.parent / name] + [Path(str(folder)) / name for folder in folders]
    found = next((c for c in candidates if c.is_file()), None)
    if found is None:
        raise DataError(f"{path} is a fine-tuned CTC checkpoint without its letter dictionary: put its {name} "
                        f"beside it (fairseq keeps the dictionary out of the checkpoint)")
    vocab = read_dict(found)
    if len(vocab) != num_classes:
        raise DataError(f"{found} has {len(vocab)} symbols (with the 4 specials) but {path}'s head has "
                        f"{num_classes} outputs; give the dictionary it was fine-tuned with")
    return vocab


def _speechbs_config(family: str, arch: Any, task: dict) -> Any:
    from speechbs.config import Config, ModelConfig

    cfg = Config()
    audio = replace(cfg.audio, sample_rate_hz=int(task.get("sample_rate") or cfg.audio.sample_rate_hz),
                    normalize=bool(task.get("normalize", False)))
    return replace(cfg, model=ModelConfig(name=family, size="base", arch=arch), audio=audio)


def _finish(path: Path, source: str, cfg: Any, state: dict[str, torch.Tensor], step: Any, family: str,
            prefix: str = "") -> Foreign:
    """Fill the heads the file lacks (seeded), check every weight fits, and dump the config."""
    from speechbs.configio import dump_toml
    from speechbs.models.registry import model_entry

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        fresh = model_entry(family).model_cls(cfg.model.arch).state_dict()
    seeded = sorted({k.split(".")[0] for k in fresh if prefix + k not in state})
    heads = set(fm.HEAD_NAMES[family])
    if not set(seeded) <= heads:
        missing = [k for k in fresh if prefix + k not in state]
        raise DataError(f"{path}: no weights for {missing[:5]}; is it a complete {family} checkpoint?")
    for key, tensor in fresh.items():
        state.setdefault(prefix + key, tensor)
    unexpected = [k for k in state if k.removeprefix(prefix) not in fresh and not k.startswith(("head.", "vocab_"))]
    if unexpected:
        raise DataError(f"{path}: weights {unexpected[:5]} do not fit speechbs's {family}")
    shapes = [k for k, v in fresh.items() if state[prefix + k].shape != v.shape]
    if shapes:
        raise DataError(f"{path}: weights {shapes[:5]} have other shapes than its config gives; is the file intact?")
    checkpoint = {"model": state, "config_toml": dump_toml(cfg), "step": step, "source_format": source,
                  "seeded_heads": seeded}
    return Foreign(checkpoint, cfg)
