"""``speechbs demo``: the whole study in miniature on a laptop CPU.

1. builds the built-in synthetic corpus when it is missing (a no-op when it is there);
2. runs the sweep ``recipes/sweeps/demo.toml``: a tiny wav2vec 2.0 pretrained at three
   batch sizes on the same hours of audio (the fair budget), each fine-tuned with CTC on
   the corpus's labeled train split, decoded and scored on its test split, each point's
   frozen encoder probed for its voice family (male / female / Klatt, ``speechbs probe``), and the 30 s
   point's final checkpoint measured for gradient noise at three batch sizes;
3. prints the report table (batch, peak LR, steps, hours seen, losses, gradient noise,
   WER/CER, probe accuracy) and where the plots are.

Started again, it reuses the corpus and every finished stage. Stages this install
cannot run (e.g. no ``speechbs finetune``) are reported as such, and the table
says what is missing instead of inventing numbers.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

from speechbs.data.corpus import DEFAULT_AUDIO_DIR, DEFAULT_MANIFEST_DIR, DEFAULT_MINUTES, build_corpus
from speechbs.errors import SpeechbsError
from speechbs.report import collect, markdown, write_report
from speechbs.sweep import SubprocessRunner, SweepPlan, load_sweep, plan_sweep, run_sweep
from speechbs.sweep.command import describe_plan, format_status
from speechbs.sweep.runner import stop_on_sigterm
from speechbs.sweep.plan import toml_str

DEMO_RECIPE = Path(__file__).resolve().parents[1] / "recipes" / "sweeps" / "demo.toml"

CAVEAT = """\
How to read this: a tiny model (0.3 M parameters) on 48 minutes of synthetic speech. Every
point saw the same hours of audio, so the larger batches took fewer, larger steps (sqrt-scaled
LR). Read CER: a model this small spells few whole words right, so WER stays near 100%.
Fine-tuning alone moves a point's dev CER by about 5-8 points from seed to seed (measured at
15 s and 60 s); add seeds with grid.seed. The table's grad noise B and grad std are each run's
online values at the end of its run: equal hours seen, but different models, so they do not
show what the batch alone does. grad_noise_fixed_state.png does: the 30 s point's final
checkpoint measured at 15, 30 and 60 s (speechbs noise). There the std falls about 1/sqrt(2)
per doubling (less where batches from different length buckets differ in mean gradient,
docs/lab.md), and a B_simple below a batch says that batch is past what this model can use.
The probe column is each frozen encoder's voice-family accuracy (male / female / Klatt) on test's
three unheard voices, chance 39.4%: one of those voices alone moved it by 14 points between two
encoders, so it shows a probe at work, not a ranking (docs/probes.md). The seed study's effects
need BASE models and LibriSpeech (recipes/librispeech/); this corpus is for plumbing and relative
comparisons (docs/corpus.md)."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--minutes", type=float, default=DEFAULT_MINUTES,
                        help=f"size of the built-in corpus, minutes of audio (default {DEFAULT_MINUTES:g})")
    parser.add_argument("--seed", type=int, default=1, help="corpus seed")
    parser.add_argument("--audio-dir", default=DEFAULT_AUDIO_DIR, help="where the corpus audio goes")
    parser.add_argument("--manifest-dir", default=DEFAULT_MANIFEST_DIR,
                        help="where its manifests go (the sweep reads them from there)")
    parser.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1),
                        help="worker processes for synthesis")
    parser.add_argument("--force", action="store_true",
                        help="replace a corpus built there with other settings")
    parser.add_argument("--recipe", default=str(DEMO_RECIPE), help="sweep recipe (default: recipes/sweeps/demo.toml)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a sweep recipe field, e.g. --set sweep.hours=1 (repeatable)")
    parser.add_argument("--out", help="sweep root (default: runs/sweeps/demo)")
    parser.add_argument("--corpus-only", action="store_true", help="build the corpus and stop")


def make_runner() -> SubprocessRunner:
    """The stage runner (a function, so tests can swap in stub stages)."""
    return SubprocessRunner()


def _manifest_overrides(args: argparse.Namespace) -> list[str]:
    """Pretraining reads the corpus from --manifest-dir (the recipes name the default one)."""
    if Path(args.manifest_dir) == Path(DEFAULT_MANIFEST_DIR):
        return []
    cfg = load_sweep(args.recipe, args.overrides)
    extra = [f"data.{split}_manifest={toml_str(Path(args.manifest_dir) / f'{split}.tsv')}"
             for split in ("train", "valid")]
    return ["sweep.pretrain_set=[" + ", ".join(toml_str(s) for s in [*cfg.sweep.pretrain_set, *extra]) + "]"]


def _point_tests_at(plan: SweepPlan, manifest_dir: Path) -> None:
    """Fine-tuning, test, noise and probe manifests from --manifest-dir, by split name."""
    if manifest_dir == Path(DEFAULT_MANIFEST_DIR):
        return
    for spec in plan.cfg.finetune:
        spec.train_manifest = str(manifest_dir / "train.tsv")
        spec.set = [*spec.set, f"data.valid_manifest={toml_str(manifest_dir / 'valid.tsv')}"]
    for test in plan.cfg.test:
        test.manifest = str(manifest_dir / f"{Path(test.manifest).stem}.tsv")
    for noise in plan.cfg.noise:
        noise.manifest = str(manifest_dir / f"{Path(noise.manifest).stem}.tsv")
    for probe in plan.cfg.probe:
        for field in ("train_manifest", "valid_manifest", "test_manifest"):
            if getattr(probe, field):
                setattr(probe, field, str(manifest_dir / f"{Path(getattr(probe, field)).stem}.tsv"))


def main(args: argparse.Namespace) -> int:
    start = time.monotonic()
    print(f"[1/3] built-in corpus ({args.minutes:g} min of synthetic speech)", flush=True)
    summary = build_corpus(args.audio_dir, args.manifest_dir, minutes=args.minutes, seed=args.seed,
                           num_workers=args.workers, force=args.force,
                           log=lambda message: print(f"  {message}", flush=True))
    print("  built now" if summary.built_now else "  already built; reusing it")
    print(summary.describe())
    if args.corpus_only:
        return 0
    if not Path(args.recipe).is_file():
        raise SpeechbsError(f"--recipe {args.recipe}: not found (the demo recipe ships in the source tree's "
                            f"recipes/sweeps/; run from a checkout or give --recipe)")

    print(f"[2/3] batch-size sweep ({args.recipe})", flush=True)
    plan = plan_sweep(args.recipe, [*args.overrides, *_manifest_overrides(args)], out=args.out)
    _point_tests_at(plan, Path(args.manifest_dir))
    print(describe_plan(plan), flush=True)
    sweep_start = time.monotonic()
    stop_on_sigterm()
    status = run_sweep(plan, make_runner(), say=lambda message: print(message, flush=True))
    print(format_status(status))
    print(f"  sweep took {time.monotonic() - sweep_start:.0f} s")

    print("[3/3] report", flush=True)
    collected = collect([plan.root])
    unavailable = sorted({s.kind for stages in status.results.values() for s, r in stages.values()
                          if r.status == "unavailable"})
    if unavailable:
        collected.notes.append(f"this install has no `speechbs {'`/`speechbs '.join(unavailable)}`: those stages "
                               f"did not run, so the table has no WER for them")
    out_dir = plan.root / "report"
    paths = write_report(collected, out_dir)
    print(markdown(collected))
    print(f"plots and table in {out_dir}:")
    for path in paths:
        print(f"  {path}")
    print(CAVEAT)
    print(f"demo finished in {time.monotonic() - start:.0f} s")
    return 1 if status.counts().get("failed") else 0
