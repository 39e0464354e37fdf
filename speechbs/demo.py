"""``speechbs demo``: build the built-in corpus and show what comes next.

This first version only prepares data: it builds the synthetic corpus when it
is missing (a no-op when it is there), prints where the manifests are and what
is in them, and says plainly that pretraining and batch-size sweeps are not
part of the demo yet.
"""

from __future__ import annotations

import argparse
import os

from speechbs.data.corpus import DEFAULT_AUDIO_DIR, DEFAULT_MANIFEST_DIR, DEFAULT_MINUTES, build_corpus

NEXT_STEPS = """\
next steps:
  The demo stops here: pretraining, fine-tuning and batch-size sweeps are not
  part of it yet. The manifests above are fairseq-style (.tsv + .rates, with
  .ltr/.wrd labels) and are the defaults of data.train_manifest and
  data.valid_manifest (see `speechbs config`).
  This corpus is synthetic speech with a small vocabulary: use it for plumbing
  and relative comparisons, not for word error rates about real speech
  (docs/corpus.md)."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--minutes", type=float, default=DEFAULT_MINUTES,
                        help=f"size of the built-in corpus, minutes of audio (default {DEFAULT_MINUTES:g})")
    parser.add_argument("--seed", type=int, default=1, help="corpus seed")
    parser.add_argument("--audio-dir", default=DEFAULT_AUDIO_DIR, help="where the corpus audio goes")
    parser.add_argument("--manifest-dir", default=DEFAULT_MANIFEST_DIR, help="where its manifests go")
    parser.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1),
                        help="worker processes for synthesis")
    parser.add_argument("--force", action="store_true",
                        help="replace a corpus built there with other settings")


def main(args: argparse.Namespace) -> int:
    print(f"[1/1] built-in corpus ({args.minutes:g} min of synthetic speech)", flush=True)
    summary = build_corpus(args.audio_dir, args.manifest_dir, minutes=args.minutes, seed=args.seed,
                           num_workers=args.workers, force=args.force,
                           log=lambda message: print(f"  {message}", flush=True))
    if summary.built_now:
        print(f"  built in {summary.metadata['build_s']:.1f} s")
    else:
        print("  already built; reusing it")
    print(summary.describe())
    print("manifests:")
    for split, tsv in summary.manifests.items():
        print(f"  {split:5s} {tsv}  (labels: {tsv.with_suffix('.ltr').name}, {tsv.with_suffix('.wrd').name})")
    print(NEXT_STEPS)
    return 0
