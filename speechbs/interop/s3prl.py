"""speechbs checkpoints as s3prl upstream checkpoints (``speechbs export --to s3prl OUT.pt``), for SUPERB.

s3prl's local upstreams read a ``.pt`` path (s3prl 0.4: ``s3prl/upstream/*/expert.py``, ``convert.py``):

- ``wav2vec2_local(ckpt=OUT.pt)``: s3prl's own copy of fairseq's ``Wav2Vec2Model``, from
  ``{'task_cfg', 'model_cfg', 'model_weight'}`` (what its ``convert.py`` makes of a fairseq
  checkpoint; the configs are fairseq's ``cfg.task`` / ``cfg.model`` as plain dicts, the weights
  fairseq's names, loaded strictly);
- ``hubert_local(ckpt=OUT.pt)``: the same plus ``dictionaries_symbols``, the label dictionary's
  symbols, which size ``label_embs_concat``;
- ``wavlm_local(ckpt=OUT.pt)``: the WavLM repository's own format, ``{'cfg', 'model'}``, which is what
  ``speechbs export --to fairseq`` writes for WavLM.

The weights and configs are those of the fairseq export (:func:`speechbs.interop.fairseq.fairseq_parts`),
so the two formats cannot drift apart. s3prl loads these files with ``torch.load``'s default,
``weights_only=True`` on torch >= 2.6: they hold plain containers and tensors only. A fine-tuned CTC
checkpoint exports its encoder (s3prl upstreams are encoders; the letter head is left out).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

from speechbs.interop.fairseq import Written, check_out_file, fairseq_parts, save_atomic


def encoder_view(saved: Any) -> Any:
    """A fine-tuned CTC checkpoint seen as its encoder's pretraining checkpoint (other checkpoints: themselves)."""
    state = saved.checkpoint["model"]
    if "vocab_utf8" not in state:
        return saved
    encoder = {k.removeprefix("encoder."): v for k, v in state.items() if k.startswith("encoder.")}
    return replace(saved, checkpoint={**saved.checkpoint, "model": encoder})


def export_s3prl(saved: Any, out: str | Path, *, force: bool = False) -> Written:
    """Write the already-read speechbs checkpoint ``saved`` as the ``.pt`` its family's s3prl local upstream loads."""
    out = check_out_file(Path(out), force)
    ctc = "vocab_utf8" in saved.checkpoint["model"]
    parts = fairseq_parts(encoder_view(saved))
    family = parts["family"]
    provenance = {"speechbs": {"checkpoint": str(saved.path), "step": saved.checkpoint.get("step"),
                               "config_toml": saved.checkpoint.get("config_toml")}}
    if family == "wavlm":
        contents = {"cfg": {**parts["model_cfg"], "normalize": parts["task_cfg"]["normalize"]},
                    "model": parts["state"], "speechbs_heads": parts["heads"], **provenance}
        upstream = "s3prl wavlm_local"
    else:
        task = {**parts["task_cfg"], "data": str(out.parent.resolve())}
        if family == "hubert":
            task.update(label_rate=parts["model_cfg"]["label_rate"], labels=["km"], fine_tuning=False)
        contents = {"task_cfg": task, "model_cfg": parts["model_cfg"], "model_weight": parts["state"], **provenance}
        if family == "hubert":
            contents["dictionaries_symbols"] = [parts["symbols"]]
        upstream = f"s3prl {family}_local"
    save_atomic(contents, out)
    notes = parts["notes"] + (["a fine-tuned CTC checkpoint: its encoder is written, the letter head is left "
                               "out (s3prl upstreams are encoders)"] if ctc else [])
    return Written(out, upstream, saved.path, [], notes)
