"""speechbs checkpoints as fairseq checkpoints (``speechbs export --to fairseq OUT.pt``).

:func:`export_fairseq`: a pretraining checkpoint becomes the ``.pt`` of fairseq's own
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

A fine-tuned wav2vec 2.0 CTC checkpoint becomes ``Wav2VecCtc``, a HuBERT one ``HubertCtc``
(``w2v_encoder.w2v_model.*`` + the letter projection ``w2v_encoder.proj``; the pretraining config
embedded as ``w2v_args``, as fairseq's fine-tuning writes it) with its letter dictionary
``dict.ltr.txt`` beside ``OUT``. ``HubertCtc`` also keeps the pretraining model's
``label_embs_concat`` (fairseq loads it strictly), with its label dictionary's symbols in
``task_state``; its task is ``hubert_pretraining`` with ``fine_tuning`` and labels ``["ltr"]``. The
cfg's ``task.data`` is the folder of ``OUT``, where fairseq's fine-tuning task looks for
``dict.ltr.txt``; moved elsewhere, pass ``arg_overrides={"data": FOLDER}`` to fairseq's loader as
for fairseq's own released fine-tuned models. Every file is plain tensors and containers: fairseq
reads it with torch's default ``weights_only=True``.

The other direction, reading these files, is :mod:`speechbs.interop.fairseq_read`; the names and
configs map through :mod:`speechbs.interop.fairseq_map` (one table per direction pair).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from speechbs.asr.vocab import SPECIALS, Vocab
from speechbs.errors import ConfigError, DataError
from speechbs.interop import fairseq_map as fm

CTC_CLASSES = {"wav2vec2": "Wav2VecCtc", "hubert": "HubertCtc"}
"""fairseq's fine-tuned CTC model class per speechbs family."""

HUBERT_LABELS = "km"
"""The label name of an exported HuBERT (``dict.km.txt``, fairseq's k-means example)."""


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
    label_embs = encoder.get("label_embs") if family == "hubert" else None
    if family == "hubert" and ctc and label_embs is None:  # fairseq's HubertCtc keeps the rows: give it some
        label_embs = torch.zeros(arch.num_clusters, arch.final_dim)
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
    left_out = sorted({k.split(".")[0] for k in encoder if k.split(".")[0] in heads} - {"label_embs"}
                      if family == "hubert" else {k.split(".")[0] for k in encoder if k.split(".")[0] in heads})
    if ctc and left_out:
        notes.append(f"the pretraining heads still in the CTC model's encoder ({', '.join(left_out)}) are left out "
                     f"(fairseq's {CTC_CLASSES.get(family, 'CTC model')} removes them)")
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
    family, ft, audio = parts["family"], saved.config.finetune, saved.config.audio
    pretrain_task = {"data": folder, **parts["task_cfg"]}
    if family == "wav2vec2":
        pretrain_task = {"_name": "audio_pretraining", **pretrain_task, "tpu": False, "seed": 1}
        model = {"_name": "wav2vec_ctc", "ddp_backend": "pytorch_ddp", "blank_weight": 0.0, "blank_mode": "add"}
        task = {"_name": "audio_finetuning", "data": folder, "labels": "ltr", **parts["task_cfg"], "tpu": False,
                "seed": 1, "eval_wer": False}
        task_state: dict[str, Any] = {}
    else:
        # The pretraining task gets its label dictionary from the fine-tuning task's state (HubertEncoder), so
        # no dict.km.txt is needed; the model reads only its size (label_embs_concat's rows). HubertPretrainingConfig
        # has no tpu or seed field, and fairseq sets w2v_args' task up strictly.
        pretrain_task = {"_name": "hubert_pretraining", **pretrain_task, "labels": [HUBERT_LABELS], "label_dir": None,
                         "label_rate": parts["model_cfg"]["label_rate"], "fine_tuning": False}
        model = {"_name": "hubert_ctc"}
        task = {"_name": "hubert_pretraining", "data": folder, "fine_tuning": True, "labels": ["ltr"],
                "label_dir": None, "label_rate": -1.0, **parts["task_cfg"], "single_target": True}
        task_state = {"dictionaries": [parts["symbols"]]}
    w2v_args = {**_common_cfg(), "model": parts["model_cfg"], "task": pretrain_task, "criterion": None}
    model.update({"w2v_path": str(saved.path), "w2v_args": w2v_args, "no_pretrained_weights": False,
                  "data": folder, "normalize": audio.normalize, "apply_mask": True, "final_dropout": ft.final_dropout,
                  "freeze_finetune_updates": ft.freeze_steps, "mask_selection": "static", "mask_other": 0.0,
                  "no_mask_overlap": False, "mask_channel_selection": "static", "mask_channel_other": 0.0,
                  "no_mask_channel_overlap": False})
    for key, target in fm.CTC_OVERRIDES.items():  # the encoder's fine-tuning values: the CTC cfg replaces w2v_args'
        model[key] = parts["model_cfg"][target]
    cfg = {**_common_cfg(), "model": model, "task": task,
           "criterion": {"_name": "ctc", "zero_infinity": True, "post_process": "letter"}}
    state = {fm.CTC_PREFIX[0] + k: v for k, v in parts["state"].items()}
    state.update({fm.CTC_HEAD[0] + k: v.detach().clone().contiguous() for k, v in parts["head"].items()})
    return (_fairseq_file(cfg, state, "CtcCriterion", step, task_state, provenance),
            f"fairseq {CTC_CLASSES[family]}")


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
