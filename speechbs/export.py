"""``speechbs export RUN_OR_CHECKPOINT --to hf OUT``: a checkpoint in another toolkit's format.

A run directory means its ``best.pt`` or latest checkpoint, as for ``speechbs decode``
(:func:`speechbs.pretrained.resolve_checkpoint`). ``--to hf`` writes a Hugging Face
transformers directory (:mod:`speechbs.interop.hf`; docs/interop.md): a pretraining
checkpoint as ``Wav2Vec2ForPreTraining`` / ``HubertModel`` / ``WavLMModel``, a fine-tuned CTC
checkpoint as ``...ForCTC`` with its tokenizer. An existing non-empty ``OUT`` is replaced only
with ``--force``.
"""

from __future__ import annotations

import argparse

FORMATS = ("hf",)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", metavar="RUN_OR_CHECKPOINT",
                        help="a speechbs checkpoint file or run directory (best.pt, else the latest step)")
    parser.add_argument("--to", dest="format", choices=FORMATS, required=True,
                        help="output format: hf = a Hugging Face transformers directory")
    parser.add_argument("out", metavar="OUT", help="directory to write (must not exist or be empty)")
    parser.add_argument("--force", action="store_true", help="replace a non-empty OUT")


def main(args: argparse.Namespace) -> int:
    from speechbs.interop.hf import export_hf

    done = export_hf(args.checkpoint, args.out, force=args.force)
    print(f"wrote {done.out} ({done.hf_class}) from {done.checkpoint}")
    for note in done.notes:
        print(f"  {note}")
    return 0
