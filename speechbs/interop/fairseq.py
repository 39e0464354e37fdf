"""fairseq checkpoints in and out of speechbs (``speechbs export --to fairseq``; ``finetune.init`` / ``train.init``).

**Out** (:func:`export_fairseq`): a pretraining checkpoint becomes the ``.pt`` of fairseq's own
model class, every weight included:

- wav2vec 2.0: ``Wav2Vec2Model`` (``quantizer``, ``project_q``, ``final_proj``), task
  ``audio_pretraining``, criterion ``wav2vec``;
- HuBERT: ``HubertModel`` (``final_proj``, ``label_embs_concat``), task ``hubert_pretraining``. fairseq's
  label embeddings have one row per symbol of the label dictionary, its four specials first
  (``<s> <pad> </s> <unk>``, never a target) then clusters ``0 .. K-1``; the export writes
  speechbs's K rows after four rows drawn as fairseq draws them, the dictionary's symbols as a
  plain list in ``task_state`` (fairseq's model reads only their number) and ``dict.km.txt`` beside
  ``OUT`` for a fairseq training that loads the label dictionary itself;
- WavLM: not in fairseq; the WavLM repository's own format (its ``WavLM.py``), ``{'cfg': WavLMConfig
  fields, 'model': state}``, which s3prl's ``wavlm_local`` reads too. ``WavLM.py`` has no pretraining
  heads: speechbs's ``final_proj`` and ``label_embs`` travel under the extra key ``speechbs_heads``.

A fine-tuned wav2vec 2.0 CTC checkpoint becomes ``Wav2VecCtc`` (``w2v_encoder.w2v_model.*`` + the
letter projection ``w2v_encoder.proj``; the pretraining config embedded as ``w2v_args``, as
fairseq's fine-tuning writes it) with its letter dictionary ``dict.ltr.txt`` beside ``OUT``. The
cfg's ``task.data`` is the folder of ``OUT``, where fairseq's ``audio_finetuning`` task looks for
``dict.ltr.txt``; moved elsewhere, pass ``arg_overrides={"data": FOLDER}`` to fairseq's loader as
for fairseq's own released fine-tuned models. Every file is plain tensors and containers: fairseq
reads it with torch's default ``weights_only=True``.

**In** (:func:`read_foreign`): a fairseq ``Wav2Vec2Model``, ``HubertModel`` or ``Wav2VecCtc``
checkpoint (``cfg`` or the older ``args``), a WavLM repository checkpoint or an s3prl converted
one is read as a speechbs checkpoint: :func:`speechbs.pretrained.read_checkpoint` calls it for a
file that is not speechbs's, so ``finetune.init``, ``train.init``, ``speechbs decode`` and
``speechbs export`` take these files. They are unpickled with stand-ins for every foreign class
(:mod:`speechbs.interop.pickles`): no code from the file runs and neither fairseq nor omegaconf is
needed. Weights a file lacks (a CTC model's pretraining heads, WavLM.py's heads) are filled with
seeded random values and listed in the checkpoint's ``seeded_heads``.

The names and configs map through :mod:`speechbs.interop.fairseq_map` (one table per direction pair).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from speechbs.asr.vocab import SPECIALS, Vocab, read_dict
from speechbs.errors import ConfigError, DataError
from speechbs.interop import fairseq_map as fm
from speechbs.interop.pickles import load_foreign, plain, resolve_interpolations

HUBERT_LABELS = "km"
"""The label name of an exported HuBERT (``dict.km.txt``, fairseq's k-means example)."""
CTC_OVERRIDES = {"dropout": "dropout", "attention_dropout": "attention_dropout",
                 "activation_dropout": "activation_dropout", "dropout_input": "dropout_input",
                 "mask_prob": "mask_prob", "mask_length": "mask_length", "mask_channel_prob": "mask_channel_prob",
                 "mask_channel_length": "mask_channel_length", "layerdrop": "encoder_layerdrop",
                 "feature_grad_mult": "feature_grad_mult"}
"""fairseq ``Wav2Vec2AsrConfig`` field -> the encoder field it replaces when fine-tuning (``Wav2VecEncoder``)."""
FINETUNE_FIELDS = {"final_dropout": "final_dropout", "mask_prob": "mask_prob", "mask_length": "mask_length",
                   "mask_channel_prob": "mask_channel_prob", "mask_channel_length": "mask_channel_length",
                   "layerdrop": "layerdrop", "dropout": "dropout", "attention_dropout": "attention_dropout",
                   "activation_dropout": "activation_dropout", "dropout_input": "dropout_input",
                   "freeze_finetune_updates": "freeze_steps"}
"""fairseq ``Wav2Vec2AsrConfig`` field -> speechbs ``[finetune]`` field."""


@dataclass
class Foreign:
    """A foreign checkpoint read as a speechbs one."""

    checkpoint: dict[str, Any]
    """``model`` (speechbs names), ``config_toml``, ``step``, ``source_format``, ``seeded_heads``, ``notes``."""
    config: Any
    """The speechbs :class:`~speechbs.config.Config` it amounts to."""


# ---- in ------------------------------------------------------------------------------------------

def read_foreign(path: Path, loaded: Any = None) -> Foreign | None:
    """The fairseq / WavLM / s3prl checkpoint at ``path`` as a speechbs one, or None when it is none of them.

    ``loaded``: its contents when the caller has already read them (a plain fairseq checkpoint
    loads with ``weights_only=True``); otherwise it is read with stand-ins (no code runs).
    """
    raw = loaded if loaded is not None else load_foreign(path)
    sections = _sections(raw)
    if sections is None:
        return None
    source, model, task, criterion, state, symbols, step = sections
    where = f"{path}"
    name = model.get("_name")
    if name in ("wav2vec_ctc",):
        return _read_ctc(path, source, model, task, state, step, raw)
    if name not in ("wav2vec2", "hubert", "wavlm"):
        raise ConfigError(f"{where}: fairseq model {name!r} is not one speechbs reads (wav2vec2, hubert, "
                          f"wav2vec_ctc, or a WavLM checkpoint)")
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


def _read_ctc(path: Path, source: str, model: dict, task: dict, state: dict, step: Any, raw: dict) -> Foreign:
    """A fairseq ``Wav2VecCtc`` as a speechbs CTC checkpoint (encoder, head and letter vocabulary)."""
    inner = model.get("w2v_args")
    if not isinstance(inner, dict):
        raise ConfigError(f"{path}: its pretraining config (w2v_args) is not in the file; fairseq reads it from "
                          f"w2v_path = {model.get('w2v_path')!r}, which speechbs does not follow")
    if isinstance(inner.get("model"), dict):
        inner_model, inner_task = dict(inner["model"]), dict(inner.get("task") or {})
    else:
        inner_model, inner_task = {**inner, "_name": inner.get("arch")}, inner
    if inner_model.get("_name") != "wav2vec2":
        raise ConfigError(f"{path}: a CTC model on {inner_model.get('_name')!r} is not supported (wav2vec2 only)")
    for key, target in CTC_OVERRIDES.items():
        if model.get(key) is not None:
            inner_model[target] = model[key]
    encoder = {k[len(fm.CTC_PREFIX[0]):]: v for k, v in state.items() if k.startswith(fm.CTC_PREFIX[0])}
    head = {k[len(fm.CTC_HEAD[0]):]: v for k, v in state.items() if k.startswith(fm.CTC_HEAD[0])}
    other = [k for k in state if not k.startswith((fm.CTC_PREFIX[0], fm.CTC_HEAD[0]))]
    if other or set(head) != {"weight", "bias"}:
        raise DataError(f"{path}: weights {other[:5] or sorted(head)} do not fit fairseq's Wav2VecCtc")
    arch, enc_state = _pretrained_state("wav2vec2", inner_model, inner_task, {}, encoder, None, str(path))
    vocab = _ctc_vocab(path, task, head["weight"].shape[0])
    speechbs_state = {f"encoder.{k}": v for k, v in enc_state.items()}
    speechbs_state.update({"head.weight": head["weight"], "head.bias": head["bias"], "vocab_utf8": vocab.to_tensor()})
    cfg = _speechbs_config("wav2vec2", arch, {**inner_task, **task})
    cfg = replace(cfg, model=replace(cfg.model, arch=_with_provenance("wav2vec2", arch, raw)))
    ft = {target: model[key] for key, target in FINETUNE_FIELDS.items() if model.get(key) is not None}
    cfg = replace(cfg, finetune=replace(cfg.finetune, **ft))
    return _finish(path, source, cfg, speechbs_state, step, "wav2vec2", prefix="encoder.")


def _ctc_vocab(path: Path, task: dict, num_classes: int) -> Vocab:
    """The letter dictionary of a fairseq CTC checkpoint: ``dict.<labels>.txt`` beside it or in its ``task.data``."""
    name = f"dict.{task.get('labels') or 'ltr'}.txt"
    candidates = [path.parent / name] + ([Path(str(task["data"])) / name] if task.get("data") else [])
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


# ---- out -----------------------------------------------------------------------------------------

@dataclass
class Written:
    """What an export wrote."""

    out: Path
    """The checkpoint file written."""
    model_class: str
    """The other toolkit's model class it holds."""
    checkpoint: Path
    """The speechbs checkpoint it came from."""
    extra_files: list[Path] = field(default_factory=list)
    """Files written beside it (label dictionaries)."""
    notes: list[str] = field(default_factory=list)
    """What did not carry over, one line each."""


def fairseq_parts(saved: Any) -> dict[str, Any]:
    """The pieces of a speechbs checkpoint in fairseq's terms (shared by the fairseq and s3prl exports).

    Keys: ``family``, ``ctc``, ``model_cfg``, ``task_cfg``, ``criterion_cfg``, ``state`` (fairseq
    names of the pretraining model, or of the CTC model's encoder), ``head`` (CTC), ``vocab`` (CTC),
    ``symbols`` (HuBERT's label dictionary), ``notes``.
    """
    family, arch = saved.config.model.name, saved.config.model.arch
    state = saved.checkpoint["model"]
    ctc = "vocab_utf8" in state
    notes = []
    dropped = [n for n in fm.NOT_IN_FAIRSEQ[family]
               if hasattr(arch, n) and getattr(arch, n) != fm.FIXED.get(n, not getattr(arch, n))]
    if dropped:
        notes.append(f"not in the {'WavLM.py' if family == 'wavlm' else 'fairseq'} config (training settings; kept "
                     f"in {saved.path.name}): {', '.join(dropped)}")
    model_cfg = fm.fairseq_model_cfg(family, arch)
    audio = saved.config.audio
    task_cfg = {"sample_rate": audio.sample_rate_hz, "normalize": audio.normalize}
    if ctc:
        encoder = {k.removeprefix("encoder."): v for k, v in state.items() if k.startswith("encoder.")}
        head = {"weight": state["head.weight"], "bias": state["head.bias"]}
        vocab = Vocab.from_tensor(state["vocab_utf8"])
    else:
        encoder, head, vocab = dict(state), None, None
    heads = fm.HEAD_NAMES[family]
    kept = {k: v for k, v in encoder.items() if k.split(".")[0] not in heads} if (ctc or family == "wavlm") else encoder
    label_embs = encoder.get("label_embs") if family == "hubert" and not ctc else None
    kept = {k: v for k, v in kept.items() if k != "label_embs"}
    renamed, unknown = fm.to_fairseq_names(family, arch.conv_norm, kept)
    if unknown:
        raise DataError(f"{saved.path}: weights {unknown[:5]} have no fairseq name; is it a {family} checkpoint "
                        f"written by this speechbs version?")
    renamed = {k: v.detach().clone().contiguous() for k, v in renamed.items()}
    symbols = None
    if label_embs is not None:
        # fairseq's rows for the dictionary's four specials: never a target, drawn as fairseq draws them.
        specials = torch.rand(len(SPECIALS), label_embs.shape[1], generator=torch.Generator().manual_seed(0))
        renamed["label_embs_concat"] = torch.cat([specials.to(label_embs.dtype), label_embs.detach()])
        symbols = list(SPECIALS) + [str(c) for c in range(label_embs.shape[0])]
    if ctc and any(k.split(".")[0] in heads for k in encoder):
        notes.append("the pretraining heads still in the CTC model's encoder are left out (fairseq's Wav2VecCtc "
                     "removes them)")
    return {"family": family, "ctc": ctc, "model_cfg": model_cfg, "task_cfg": task_cfg,
            "criterion_cfg": fm.fairseq_criterion_cfg(family, arch) if family != "wavlm" else {},
            "state": renamed, "head": head, "vocab": vocab, "symbols": symbols, "notes": notes,
            "heads": {k: v for k, v in encoder.items() if k.split(".")[0] in heads} if family == "wavlm" else {}}


def export_fairseq(saved: Any, out: str | Path, *, force: bool = False) -> Written:
    """Write the already-read speechbs checkpoint ``saved`` (:class:`speechbs.pretrained.SavedModel`) as ``out``."""
    out = check_out_file(Path(out), force)
    parts = fairseq_parts(saved)
    family, step = parts["family"], saved.checkpoint.get("step")
    folder = str(out.parent.resolve())
    provenance = {"speechbs": {"checkpoint": str(saved.path), "step": step,
                               "config_toml": saved.checkpoint.get("config_toml")}}
    extra: list[tuple[Path, str]] = []
    if family == "wavlm":
        if parts["ctc"]:
            raise ConfigError(f"{saved.path} is a fine-tuned WavLM CTC model: neither fairseq nor the WavLM "
                              f"repository has a format for it; export it with --to hf")
        contents = {"cfg": {**parts["model_cfg"], "normalize": parts["task_cfg"]["normalize"]},
                    "model": parts["state"], "speechbs_heads": parts["heads"], **provenance}
        model_class = "WavLM (the WavLM repository's WavLM.py)"
    elif parts["ctc"]:
        if family != "wav2vec2":
            raise ConfigError(f"{saved.path} is a fine-tuned {family} CTC model; speechbs writes fairseq's "
                              f"Wav2VecCtc for wav2vec 2.0 only: export the encoder it was fine-tuned from, or "
                              f"use --to hf")
        contents, model_class = _ctc_contents(saved, parts, folder, step, provenance)
        extra.append((out.parent / "dict.ltr.txt", _dict_text(parts["vocab"].letters, descending=True)))
    else:
        contents, model_class = _pretrained_contents(parts, folder, step, provenance)
        if family == "hubert":
            extra.append((out.parent / f"dict.{HUBERT_LABELS}.txt", _dict_text(parts["symbols"][len(SPECIALS):])))
    for path, text in extra:
        if path.is_file() and path.read_text(encoding="utf-8") != text and not force:
            raise ConfigError(f"{path} exists with other contents; remove it or add --force to replace it")
    save_atomic(contents, out)
    from speechbs.atomic import write_text

    for path, text in extra:
        write_text(path, text)
    return Written(out, model_class, saved.path, [p for p, _ in extra], parts["notes"])


def _common_cfg() -> dict[str, Any]:
    """The sections fairseq's dataclasses interpolate from (``common.seed``, ``distributed_training.ddp_backend``)."""
    return {"common": {"fp16": False, "tpu": False, "seed": 1, "cpu": False},
            "distributed_training": {"ddp_backend": "pytorch_ddp"}}


def _pretrained_contents(parts: dict, folder: str, step: Any, provenance: dict) -> tuple[dict, str]:
    family = parts["family"]
    task = {"data": folder, **parts["task_cfg"], "tpu": False, "seed": 1}
    if family == "wav2vec2":
        task = {"_name": "audio_pretraining", **task}
        model_class = "fairseq Wav2Vec2Model"
        task_state: dict[str, Any] = {}
    else:
        task = {"_name": "hubert_pretraining", **task, "labels": [HUBERT_LABELS], "label_dir": folder,
                "label_rate": parts["model_cfg"]["label_rate"], "fine_tuning": False}
        model_class = "fairseq HubertModel"
        task_state = {"dictionaries": [parts["symbols"]]}  # the model reads len() of each
    cfg = {**_common_cfg(), "model": parts["model_cfg"], "task": task, "criterion": parts["criterion_cfg"]}
    contents = _fairseq_file(cfg, parts["state"], parts["criterion_cfg"]["_name"], step, task_state, provenance)
    return contents, model_class


def _ctc_contents(saved: Any, parts: dict, folder: str, step: Any, provenance: dict) -> tuple[dict, str]:
    ft, audio = saved.config.finetune, saved.config.audio
    pretrain_task = {"_name": "audio_pretraining", "data": folder, **parts["task_cfg"], "tpu": False, "seed": 1}
    w2v_args = {**_common_cfg(), "model": parts["model_cfg"], "task": pretrain_task, "criterion": None}
    model = {"_name": "wav2vec_ctc", "w2v_path": str(saved.path), "w2v_args": w2v_args, "no_pretrained_weights": False,
             "data": folder, "normalize": audio.normalize, "apply_mask": True, "ddp_backend": "pytorch_ddp",
             "blank_weight": 0.0, "blank_mode": "add", "final_dropout": ft.final_dropout,
             "freeze_finetune_updates": ft.freeze_steps, "mask_selection": "static", "mask_other": 0.0,
             "no_mask_overlap": False, "mask_channel_selection": "static", "mask_channel_other": 0.0,
             "no_mask_channel_overlap": False}
    for key, target in CTC_OVERRIDES.items():  # the encoder's fine-tuning values: the CTC cfg replaces w2v_args'
        model[key] = parts["model_cfg"][target]
    task = {"_name": "audio_finetuning", "data": folder, "labels": "ltr", **parts["task_cfg"], "tpu": False,
            "seed": 1, "eval_wer": False}
    cfg = {**_common_cfg(), "model": model, "task": task,
           "criterion": {"_name": "ctc", "zero_infinity": True, "post_process": "letter"}}
    state = {fm.CTC_PREFIX[0] + k: v for k, v in parts["state"].items()}
    state.update({fm.CTC_HEAD[0] + k: v.detach().clone().contiguous() for k, v in parts["head"].items()})
    return _fairseq_file(cfg, state, "CtcCriterion", step, {}, provenance), "fairseq Wav2VecCtc"


def _fairseq_file(cfg: dict, state: dict, criterion: str, step: Any, task_state: dict, provenance: dict) -> dict:
    """What fairseq's trainer saves, without optimizer state (fairseq's loader needs ``extra_state``)."""
    return {"args": None, "cfg": cfg, "model": state, "criterion": None,
            "optimizer_history": [{"criterion_name": criterion, "optimizer_name": "speechbs",
                                   "lr_scheduler_state": {}, "num_updates": int(step or 0)}],
            "task_state": task_state, "extra_state": {"train_iterator": None, **provenance}}


def _dict_text(symbols: Any, descending: bool = False) -> str:
    """A fairseq dictionary file (``SYMBOL COUNT`` lines); counts keep the order when fairseq sorts by them."""
    symbols = list(symbols)
    return "".join(f"{s} {len(symbols) - i if descending else 1}\n" for i, s in enumerate(symbols))


def check_out_file(out: Path, force: bool) -> Path:
    """Refuse a directory, or an existing file without ``force``."""
    if out.is_dir():
        raise ConfigError(f"OUT {out} is a directory; give the checkpoint file to write (e.g. {out / 'model.pt'})")
    if out.exists() and not force:
        raise ConfigError(f"OUT {out} exists; give a new file name or add --force to replace it")
    return out


def save_atomic(contents: dict, out: Path) -> None:
    """``torch.save`` to a temporary name beside ``out``, then rename (a crash never leaves half a file)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    try:
        torch.save(contents, tmp)
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
