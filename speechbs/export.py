"""``speechbs export RUN_OR_CHECKPOINT --to hf|fairseq|s3prl OUT``: a checkpoint in another toolkit's format.

A run directory means its ``best.pt`` or latest checkpoint, as for ``speechbs decode``
(:func:`speechbs.pretrained.resolve_checkpoint`); a fairseq, WavLM or s3prl checkpoint is read as
the speechbs checkpoint it amounts to, so it can be converted too. The formats (docs/interop.md):

- ``hf``: a Hugging Face transformers directory (:mod:`speechbs.interop.hf`): a pretraining
  checkpoint as ``Wav2Vec2ForPreTraining`` / ``HubertModel`` / ``WavLMModel``, a fine-tuned CTC
  checkpoint as ``...ForCTC`` with its tokenizer. An existing non-empty ``OUT`` is replaced only
  with ``--force``.
- ``fairseq``: a ``.pt`` file fairseq's ``checkpoint_utils.load_model_ensemble_and_task`` loads
  (:mod:`speechbs.interop.fairseq`): ``Wav2Vec2Model``, ``HubertModel`` (+ ``dict.km.txt`` beside
  it), a CTC checkpoint as ``Wav2VecCtc`` or ``HubertCtc`` (+ ``dict.ltr.txt``); WavLM in the WavLM repository's
  format. An existing ``OUT`` is replaced only with ``--force``.
- ``s3prl``: a ``.pt`` file s3prl's ``wav2vec2_local`` / ``hubert_local`` / ``wavlm_local``
  upstreams load (:mod:`speechbs.interop.s3prl`).
"""

from __future__ import annotations

import argparse

FORMATS = ("hf", "fairseq", "s3prl")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", metavar="RUN_OR_CHECKPOINT",
                        help="a speechbs checkpoint file or run directory (best.pt, else the latest step)")
    parser.add_argument("--to", dest="format", choices=FORMATS, required=True,
                        help="output format: hf = a Hugging Face transformers directory; fairseq = a fairseq "
                             "checkpoint file; s3prl = a checkpoint file for s3prl's *_local upstreams")
    parser.add_argument("out", metavar="OUT", help="hf: directory to write (must not exist or be empty); "
                                                   "fairseq, s3prl: the .pt file to write")
    parser.add_argument("--force", action="store_true", help="replace an existing OUT (and its dictionary files)")


def main(args: argparse.Namespace) -> int:
    if args.format == "hf":
        from speechbs.interop.hf import export_hf

        done = export_hf(args.checkpoint, args.out, force=args.force)
        print(f"wrote {done.out} ({done.hf_class}) from {done.checkpoint}")
        notes = done.notes
    else:
        from speechbs.pretrained import read_checkpoint

        if args.format == "fairseq":
            from speechbs.interop.fairseq import check_out_file, export_fairseq as export
        else:
            from speechbs.interop.fairseq import check_out_file
            from speechbs.interop.s3prl import export_s3prl as export
        from pathlib import Path

        check_out_file(Path(args.out), args.force)  # before reading a large checkpoint
        written = export(read_checkpoint(args.checkpoint), args.out, force=args.force)
        beside = "".join(f" + {p.name}" for p in written.extra_files)
        print(f"wrote {written.out}{beside} ({written.model_class}) from {written.checkpoint}")
        notes = written.notes
    for note in notes:
        print(f"  {note}")
    return 0
