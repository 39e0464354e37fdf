"""speechbs checkpoints as Hugging Face transformers directories (``speechbs export --to hf``).

A pretraining checkpoint becomes

- wav2vec 2.0: ``Wav2Vec2ForPreTraining``, every weight (encoder, quantizer, ``project_q``,
  ``project_hid`` = speechbs ``final_proj``);
- HuBERT / WavLM: ``HubertModel`` / ``WavLMModel``, the encoder only: transformers has no
  HuBERT or WavLM pretraining heads, so ``final_proj`` and ``label_embs`` stay in the
  speechbs checkpoint (the command says so).

A fine-tuned CTC checkpoint (:func:`speechbs.asr.ctc.load_ctc_checkpoint`) becomes
``Wav2Vec2ForCTC`` / ``HubertForCTC`` / ``WavLMForCTC`` with a ``Wav2Vec2CTCTokenizer`` of its
letter vocabulary, so ``transformers.pipeline("automatic-speech-recognition", model=OUT)``
transcribes as ``speechbs decode`` does (greedy).

Every directory gets a ``preprocessor_config.json`` (``Wav2Vec2FeatureExtractor``: the run's
sample rate, ``do_normalize`` = ``audio.normalize``, an attention mask only for the layer-norm
conv stack, as HF's own LARGE checkpoints), which s3prl's ``hf`` upstreams read too.

The names come from the rename table of :mod:`speechbs.models.convert`
(:func:`~speechbs.models.convert.to_hf_state`), the config from
:func:`~speechbs.models.convert.hf_config_kwargs`; the weights load STRICTLY into the HF
model, so a name the table misses is an error here, not a random weight in the output.
The directory is written beside ``OUT`` under a temporary name and renamed into place.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from speechbs.asr.ctc import is_ctc_state
from speechbs.asr.vocab import BLANK, SPECIALS, UNK, Vocab
from speechbs.data.manifest import WORD_BOUNDARY
from speechbs.errors import ConfigError, DataError
from speechbs.models.convert import NOT_IN_HF, hf_config_kwargs, to_hf_state
from speechbs.pretrained import read_checkpoint

# family -> (transformers config class, pretraining model class, CTC model class)
HF_CLASSES: dict[str, tuple[str, str, str]] = {
    "wav2vec2": ("Wav2Vec2Config", "Wav2Vec2ForPreTraining", "Wav2Vec2ForCTC"),
    "hubert": ("HubertConfig", "HubertModel", "HubertForCTC"),
    "wavlm": ("WavLMConfig", "WavLMModel", "WavLMForCTC"),
}
HF_HEADLESS = {"hubert", "wavlm"}
"""Families whose pretraining heads (``final_proj``, ``label_embs``) transformers has no place for."""
PRETRAINING_HEADS = ("quantizer.", "project_q.", "final_proj.", "label_embs")
"""speechbs names of every family's pretraining heads."""
HF_SPECIALS = ("<pad>", "<s>", "</s>", "<unk>")
"""The names HF's wav2vec 2.0 vocabularies give speechbs' four specials: class 0, speechbs' ``<s>``
slot and the CTC blank, is HF's ``<pad>`` (its tokenizer drops the pad token as the blank)."""


@dataclass
class Export:
    """What ``export_hf`` wrote."""

    out: Path
    """The directory written."""
    hf_class: str
    """The transformers model class in it (``config.json``'s ``architectures``)."""
    checkpoint: Path
    """The speechbs checkpoint file the input path resolved to."""
    notes: list[str] = field(default_factory=list)
    """What did not carry over, one line each."""


def export_hf(path: str | Path, out: str | Path, *, force: bool = False) -> Export:
    """Write the checkpoint (file or run directory) ``path`` as an HF directory ``out``."""
    out = Path(out)
    check_out(out, force)
    saved = read_checkpoint(path)
    transformers = _transformers()
    family, arch = saved.config.model.name, saved.config.model.arch
    state = saved.checkpoint["model"]
    ctc = is_ctc_state(state)
    config_cls, pretrain_cls, ctc_cls = HF_CLASSES[family]
    kwargs = hf_config_kwargs(family, arch)
    notes = [f"not in the HF config (training settings; kept in {saved.path.name}): "
             f"{', '.join(n for n in NOT_IN_HF[family] if hasattr(arch, n))}"]
    if ctc:
        vocab = Vocab.from_tensor(state["vocab_utf8"])
        kwargs.update(vocab_size=len(vocab), pad_token_id=BLANK, bos_token_id=1, eos_token_id=2,
                      final_dropout=saved.config.finetune.final_dropout, ctc_zero_infinity=True,
                      ctc_loss_reduction="sum")
        encoder_state = {k.removeprefix("encoder."): v for k, v in state.items() if k.startswith("encoder.")}
    else:
        encoder_state = dict(state)
    hf_class = ctc_cls if ctc else pretrain_cls
    hf_config = getattr(transformers, config_cls)(**kwargs)
    hf_config.architectures = [hf_class]
    model = getattr(transformers, hf_class)(hf_config)
    hf_state, missing, unused = to_hf_state(family, encoder_state, list(model.state_dict()))
    if ctc:
        hf_state.update({"lm_head.weight": state["head.weight"], "lm_head.bias": state["head.bias"]})
    unused = _check_unused(family, arch, unused, ctc, saved.path, notes)
    if missing:
        raise DataError(f"{saved.path}: no weights for the HF names {missing[:5]}; is it a {family} checkpoint "
                        f"written by this speechbs version?")
    model.load_state_dict(hf_state, strict=True)
    model.eval()
    _write_atomic(out, force, lambda tmp: _save(tmp, model, saved, family, vocab if ctc else None))
    return Export(out, hf_class, saved.path, notes)


def _check_unused(family: str, arch: Any, unused: list[str], ctc: bool, path: Path, notes: list[str]) -> list[str]:
    """The speechbs weights that have no HF name: the expected ones become notes, others an error."""
    # A CTC model's encoder still holds the pretraining heads it was initialised with; CTC never uses them.
    heads = (PRETRAINING_HEADS if ctc else ("final_proj.", "label_embs")) if ctc or family in HF_HEADLESS else ()
    no_mask = arch.mask_prob <= 0 and arch.mask_channel_prob <= 0  # HF builds no masked_spec_embed then
    expected = [n for n in unused if n.startswith(heads) or (no_mask and n == "mask_emb") or n == "vocab_utf8"]
    if family in HF_HEADLESS and not ctc:
        dropped = sorted({n.split(".")[0] for n in expected if n.startswith(heads)})
        notes.append(f"transformers has no {family} pretraining heads: {' and '.join(dropped)} stay in "
                     f"{path.name} (continue pretraining from it, not from the export, to keep them)")
    if ctc and any(n.startswith(heads) for n in expected):
        notes.append("the pretraining heads still in the CTC model's encoder are left out (CTC does not use them)")
    if no_mask and "mask_emb" in expected:
        notes.append("mask_emb dropped: the HF model builds no mask embedding when both mask probabilities are 0")
    other = [n for n in unused if n not in expected and not (ctc and n.startswith(("head.", "vocab_utf8")))]
    if other:
        raise DataError(f"{path}: weights {other[:5]} have no Hugging Face name; is it a {family} checkpoint "
                        f"written by this speechbs version?")
    return expected


def _save(tmp: Path, model: Any, saved: Any, family: str, vocab: Vocab | None) -> None:
    transformers = _transformers()
    model.save_pretrained(tmp)  # transformers 5 writes model.safetensors only (no pickle)
    arch, audio = saved.config.model.arch, saved.config.audio
    extractor = transformers.Wav2Vec2FeatureExtractor(
        feature_size=1, sampling_rate=audio.sample_rate_hz, padding_value=0.0, do_normalize=audio.normalize,
        # HF's group-norm models take statistics over padding and must not be given a mask (docs/models.md).
        return_attention_mask=arch.conv_norm == "layer")
    extractor.save_pretrained(tmp)
    if vocab is not None:
        (tmp / "vocab.json").write_text(json.dumps(hf_vocab(vocab), ensure_ascii=False, indent=1) + "\n",
                                        encoding="utf-8")
        tokenizer = transformers.Wav2Vec2CTCTokenizer(
            str(tmp / "vocab.json"), bos_token=HF_SPECIALS[1], eos_token=HF_SPECIALS[2], unk_token=HF_SPECIALS[UNK],
            pad_token=HF_SPECIALS[BLANK], word_delimiter_token=WORD_BOUNDARY, do_lower_case=False)
        tokenizer.save_pretrained(tmp)
        # transformers 5 keeps these in tokenizer_config.json; older readers (4.x, s3prl) look here.
        specials = {"bos_token": HF_SPECIALS[1], "eos_token": HF_SPECIALS[2], "unk_token": HF_SPECIALS[UNK],
                    "pad_token": HF_SPECIALS[BLANK]}
        (tmp / "special_tokens_map.json").write_text(json.dumps(specials, indent=1) + "\n", encoding="utf-8")
    (tmp / "speechbs_export.json").write_text(json.dumps({
        "checkpoint": str(saved.path), "step": saved.checkpoint.get("step"), "family": family,
        "config_toml": saved.checkpoint["config_toml"]}, indent=1) + "\n", encoding="utf-8")


def hf_vocab(vocab: Vocab) -> dict[str, int]:
    """``vocab.json`` of a speechbs vocabulary: class i keeps index i; the specials get HF's names."""
    names = dict(zip(SPECIALS, HF_SPECIALS))
    table = {names.get(symbol, symbol): i for i, symbol in enumerate(vocab.symbols)}
    assert len(table) == len(vocab), "a letter is named like an HF special"
    return table


def check_out(out: Path, force: bool) -> None:
    """Refuse a non-empty ``out`` without ``force``, and a file where the directory should go."""
    if out.is_file():
        raise ConfigError(f"OUT {out} is a file; give a directory (created when missing)")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise ConfigError(f"OUT {out} exists and is not empty; give a new directory or add --force to replace it")


def _write_atomic(out: Path, force: bool, write: Any) -> None:
    """``write(tmp)`` into a temporary directory beside ``out``, then rename it to ``out``.

    A replaced ``out`` is first renamed aside and removed only after the new one is in place,
    so a crash leaves the old directory or the new one, never a half-written one at ``out``.
    """
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    old = out.parent / f".{out.name}.old-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        write(tmp)
        if out.exists():
            check_out(out, force)
            os.replace(out, old)
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)


def _transformers() -> Any:
    try:
        import transformers
    except ImportError:
        raise ConfigError("writing a Hugging Face directory needs transformers (pip install 'speechbs[hf]')") from None
    transformers.utils.logging.disable_progress_bar()  # one line per export, not tqdm bars per shard
    return transformers

