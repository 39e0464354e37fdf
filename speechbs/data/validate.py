"""``speechbs validate``: find every utterance training would trip over, before training.

:func:`validate_manifest` is the library entry point (training calls it to
refuse bad data early); it reads headers only (no decoding unless asked) and
returns a :class:`ValidationReport`. Each problem names the file and the rule.
A rule's outcome is one of:

- ``skip``: the utterance cannot be used; the cleaned manifest leaves it out.
- ``fix``: :func:`~speechbs.data.audio.load_audio` repairs it at load time
  (resampling, mixing down channels); it is counted as a warning and kept.

The rules, their outcomes and the settings that change them are in
``RULES`` below and in docs/data.md.
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import soundfile as sf

from speechbs.atomic import write_text
from speechbs.config import AudioConfig
from speechbs.configio import load_config
from speechbs.data.audio import AudioInfo, read_infos
from speechbs.data.manifest import (WORD_BOUNDARY, Manifest, label_path, letters_to_words,
                                    read_labels, read_manifest, write_manifest)
from speechbs.errors import DataError
from speechbs.textio import read_text, require_file

RECEPTIVE_FIELD_SAMPLES = 400
"""Receptive field of the wav2vec 2.0 feature encoder (Baevski et al. 2020, sec. 2), in
model-rate samples: 25 ms at 16 kHz. Shorter input gives zero frames. Written out because
data/ does not import models/; a test checks it against ``models.frames.receptive_field_samples``
of the BASE conv stack."""

DEFAULT_LETTERS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZ'")
"""The letter vocabulary of LibriSpeech-style CTC targets (plus space / ``|`` between words)."""

LABEL_EXTS = ("ltr", "wrd", "km")
"""Label files carried along (subset line by line) when a cleaned manifest is written."""

RULES: dict[str, str] = {
    "unreadable": "the header cannot be read (missing, corrupt or not audio), or --decode failed",
    "non_finite": "with --decode: samples that are NaN or infinite (a float file written by a broken process)",
    "header_mismatch": "the header's sample count or rate differs from the manifest's",
    "empty": "the file holds 0 samples",
    "other_rate": "the file's rate differs from audio.sample_rate_hz",
    "multi_channel": "the file has more than one channel",
    "too_short": "shorter than audio.min_seconds, or than the encoder's 400-sample receptive field",
    "too_long": "longer than audio.max_seconds",
    "duplicate_id": "an utterance id (relative path without extension) seen earlier in the manifest",
    "missing_transcript": "no transcript, or one that is empty after normalization",
    "unknown_chars": "the transcript holds symbols outside the vocabulary",
}
ALWAYS_RULES = frozenset({"unreadable", "missing_transcript"})
"""Rules a manifest build applies even without --check: without them the files cannot line up."""


@dataclass(frozen=True)
class Problem:
    index: int
    """Utterance index in the manifest (0-based; the .tsv line is index + 2)."""
    path: str
    rule: str
    detail: str
    fixed_at_load: bool = False
    """True: load_audio repairs it (a warning); False: the utterance is skipped."""

    def __str__(self) -> str:
        outcome = "fixed at load" if self.fixed_at_load else "skipped"
        return f"{self.path}: {self.rule}: {self.detail} ({outcome})"


@dataclass
class ValidationReport:
    source: str
    num_items: int
    problems: list[Problem] = field(default_factory=list)
    infos: list[AudioInfo | None] = field(default_factory=list)
    """Header of each utterance (None where unreadable or not read)."""
    notes: list[str] = field(default_factory=list)
    """Manifest-wide remarks that are not about one utterance."""

    @property
    def skipped(self) -> list[Problem]:
        return [p for p in self.problems if not p.fixed_at_load]

    @property
    def warnings(self) -> list[Problem]:
        return [p for p in self.problems if p.fixed_at_load]

    @property
    def ok(self) -> bool:
        """No utterance has to be skipped (warnings are allowed)."""
        return not self.skipped

    def keep_indices(self) -> list[int]:
        bad = {p.index for p in self.skipped}
        return [i for i in range(self.num_items) if i not in bad]

    def counts(self) -> dict[tuple[str, bool], int]:
        """(rule, fixed_at_load) -> number of problems."""
        counts: dict[tuple[str, bool], int] = {}
        for p in self.problems:
            counts[(p.rule, p.fixed_at_load)] = counts.get((p.rule, p.fixed_at_load), 0) + 1
        return counts

    def format(self, max_listed: int = 20, list_warnings: bool = False) -> str:
        num_kept = len(self.keep_indices())
        lines = [f"{self.source}: {self.num_items} utterances, {num_kept} usable, "
                 f"{self.num_items - num_kept} skipped, {len(self.warnings)} warnings (fixed at load)"]
        for (rule, fixed), num in sorted(self.counts().items()):
            lines.append(f"  {rule:<19}{num:>8}  {'fixed at load' if fixed else 'skipped'}")
        listed = self.problems if list_warnings else self.skipped
        shown = listed if max_listed <= 0 else listed[:max_listed]
        lines.extend(f"  note: {note}" for note in self.notes)
        lines.extend(f"  {p}" for p in shown)
        if len(shown) < len(listed):
            lines.append(f"  ... and {len(listed) - len(shown)} more (--max-listed 0 lists all)")
        return "\n".join(lines)

    def raise_if_bad(self) -> None:
        """For training: refuse data that has a skip-level problem, before any compute."""
        if not self.ok:
            raise DataError(f"{self.format(max_listed=10)}\nfix the data or run `speechbs validate "
                            f"{self.source}` to write a cleaned manifest without them")


@dataclass(frozen=True)
class Vocabulary:
    """Allowed label symbols: single letters (letter vocabulary) or whole words."""

    symbols: frozenset[str]
    source: str = "default letters A-Z and '"

    @property
    def is_letters(self) -> bool:
        return all(len(s) == 1 for s in self.symbols)

    def unknown(self, line: str, kind: str) -> list[str]:
        """Symbols of ``line`` (a .ltr or .wrd line) that are not in the vocabulary."""
        if self.is_letters:
            units = [c for c in line if not c.isspace()] if kind == "wrd" else line.split()
            units = [u for u in units if u != WORD_BOUNDARY] if kind == "ltr" else units
        else:
            units = (letters_to_words(line) if kind == "ltr" else line).split()
        return sorted({u for u in units if u not in self.symbols})


DEFAULT_VOCAB = Vocabulary(DEFAULT_LETTERS)


def read_vocab(path: str | Path) -> Vocabulary:
    """A fairseq dictionary (``dict.ltr.txt``: ``SYMBOL COUNT`` per line)."""
    path = require_file(path, "vocabulary", "(give a fairseq dict such as dict.ltr.txt)")
    symbols = {line.split()[0] for line in read_text(path, "vocabulary").splitlines()
               if line.strip() and not line.startswith("#fairseq")}
    symbols.discard(WORD_BOUNDARY)
    if not symbols:
        raise DataError(f"vocabulary {path} is empty; expected 'SYMBOL COUNT' lines")
    return Vocabulary(frozenset(symbols), str(path))


def validate_manifest(
    manifest: Manifest,
    cfg: AudioConfig,
    *,
    labels: list[str] | None = None,
    label_kind: str = "ltr",
    vocab: Vocabulary = DEFAULT_VOCAB,
    infos: list[AudioInfo | DataError] | None = None,
    decode: bool = False,
    rules: frozenset[str] | None = None,
    num_threads: int = 8,
) -> ValidationReport:
    """Check every utterance of ``manifest`` against ``cfg`` (and ``labels`` when given).

    ``infos`` are headers already read (a manifest build passes them; otherwise
    they are read here). ``rules`` limits the checks (all by default).
    """
    assert labels is None or len(labels) == len(manifest)
    source = str(manifest.source) if manifest.source else str(manifest.root)
    if infos is None:
        infos = read_infos([manifest.audio_path(i) for i in range(len(manifest))], num_threads)
    report = ValidationReport(source, len(manifest))
    active = frozenset(RULES) if rules is None else rules
    seen_ids: dict[str, int] = {}
    for i, (rel, uid) in enumerate(zip(manifest.paths, manifest.ids())):
        found: list[Problem] = []
        info = infos[i]
        report.infos.append(info if isinstance(info, AudioInfo) else None)
        if isinstance(info, DataError):
            found.append(Problem(i, rel, "unreadable", _strip_path(str(info), manifest.audio_path(i))))
        else:
            found += _audio_problems(i, rel, info, manifest, cfg, decode)
        if uid in seen_ids:
            found.append(Problem(i, rel, "duplicate_id", f"id {uid!r} first seen at line {seen_ids[uid] + 2}"))
        seen_ids.setdefault(uid, i)
        if labels is not None:
            found += _label_problems(i, rel, labels[i], label_kind, vocab)
        report.problems += [p for p in found if p.rule in active]
    file_rates = {i.sample_rate_hz for i in report.infos if i is not None}
    if manifest.sample_rates_hz is None and file_rates - {cfg.sample_rate_hz}:
        report.notes.append(f"no .rates sidecar, so durations are computed as if every file were at "
                            f"{cfg.sample_rate_hz} Hz, but some are at {sorted(file_rates)} Hz; the "
                            f"cleaned manifest records the rates")
    return report


def _audio_problems(i: int, rel: str, info: AudioInfo, manifest: Manifest, cfg: AudioConfig,
                    decode: bool) -> list[Problem]:
    if decode:
        rule, error = _decode_error(manifest.audio_path(i), info)
        if error:
            return [Problem(i, rel, rule, error)]
    found: list[Problem] = []
    listed_rate = None if manifest.sample_rates_hz is None else int(manifest.sample_rates_hz[i])
    if int(manifest.num_samples[i]) != info.num_samples or listed_rate not in (None, info.sample_rate_hz):
        rate_text = f" at {listed_rate} Hz" if listed_rate else ""
        found.append(Problem(i, rel, "header_mismatch",
                             f"manifest says {manifest.num_samples[i]} samples{rate_text}, the header "
                             f"{info.num_samples} at {info.sample_rate_hz} Hz; rebuild the manifest"))
    if info.sample_rate_hz != cfg.sample_rate_hz:
        resample = cfg.on_other_rate == "resample"
        found.append(Problem(i, rel, "other_rate",
                             f"{info.sample_rate_hz} Hz, the model needs {cfg.sample_rate_hz} Hz "
                             f"(audio.on_other_rate = {cfg.on_other_rate!r})", fixed_at_load=resample))
    if info.num_channels > 1:
        found.append(Problem(i, rel, "multi_channel",
                             f"{info.num_channels} channels (audio.multi_channel = {cfg.multi_channel!r})",
                             fixed_at_load=cfg.multi_channel == "mix"))
    if info.num_samples == 0:
        return found + [Problem(i, rel, "empty", "0 samples")]
    num_model = int(np.floor(info.num_samples * cfg.sample_rate_hz / info.sample_rate_hz + 0.5))
    min_samples = (round(cfg.min_seconds * cfg.sample_rate_hz) if cfg.min_seconds > 0
                   else RECEPTIVE_FIELD_SAMPLES)
    if num_model < min_samples:
        found.append(Problem(i, rel, "too_short",
                             f"{info.seconds:.3f} s = {num_model} samples at {cfg.sample_rate_hz} Hz, "
                             f"less than {min_samples} (audio.min_seconds = {cfg.min_seconds})"))
    if info.seconds > cfg.max_seconds:
        found.append(Problem(i, rel, "too_long",
                             f"{info.seconds:.2f} s > audio.max_seconds = {cfg.max_seconds}"))
    return found


def _decode_error(path: Path, info: AudioInfo) -> tuple[str, str]:
    """Decode the whole file (catches corrupt data behind a valid header, and NaN or infinite
    samples): (rule, detail), or ("", "") when fine."""
    num_read = num_bad = 0
    first_bad = -1
    try:
        with sf.SoundFile(str(path)) as f:
            for block in f.blocks(blocksize=1 << 16, dtype="float32", always_2d=True):
                bad_T = ~np.isfinite(block).all(axis=1)
                if bad_T.any():
                    first_bad = first_bad if first_bad >= 0 else num_read + int(np.argmax(bad_T))
                    num_bad += int(bad_T.sum())
                num_read += len(block)
    except (RuntimeError, OSError, ValueError, TypeError) as exc:
        return "unreadable", f"decoding failed after {num_read} samples ({str(exc).strip() or type(exc).__name__})"
    if num_read != info.num_samples:
        return "unreadable", f"decoded {num_read} samples, the header says {info.num_samples} (truncated?)"
    if num_bad:
        return "non_finite", (f"{num_bad} of {num_read} samples are NaN or infinite (first at sample {first_bad}); "
                              f"training on it would diverge: replace the file or leave it out")
    return "", ""


def _label_problems(i: int, rel: str, line: str, kind: str, vocab: Vocabulary) -> list[Problem]:
    if not line.replace(WORD_BOUNDARY, " ").strip():
        return [Problem(i, rel, "missing_transcript", f"no transcript (label line {i + 1} is empty)")]
    unknown = vocab.unknown(line, kind)
    if unknown:
        return [Problem(i, rel, "unknown_chars",
                        f"{' '.join(repr(u) for u in unknown[:10])} not in the vocabulary ({vocab.source})")]
    return []


def _strip_path(message: str, path: Path) -> str:
    prefix = f"{path}: "
    return message[len(prefix):] if message.startswith(prefix) else message


def write_cleaned(manifest: Manifest, report: ValidationReport, out_path: str | Path,
                  label_dir: str | Path = "") -> list[Path]:
    """Write the usable utterances to ``out_path`` (with rates from the headers) and subset every label
    file of the input manifest that lines up with it.

    Labels are read and written where training looks for them (:func:`~speechbs.data.manifest.label_path`):
    beside the manifests, or in ``label_dir`` (``train.ltr`` -> ``<label_dir>/train.clean.ltr``).
    """
    keep = report.keep_indices()
    if not keep:
        raise DataError(f"{report.source}: no usable utterance left; see the problems above")
    rates = [report.infos[i].sample_rate_hz for i in keep]  # type: ignore[union-attr]
    counts = [report.infos[i].num_samples for i in keep]  # type: ignore[union-attr]
    cleaned = Manifest(manifest.root, [manifest.paths[i] for i in keep], np.asarray(counts), np.asarray(rates))
    written = [write_manifest(cleaned, out_path)]
    for ext in LABEL_EXTS if manifest.source else ():
        if not label_path(manifest.source, ext, label_dir).is_file():
            continue
        try:
            lines = read_labels(manifest, ext, label_dir)
        except DataError as exc:
            print(f"not carried over: {exc}", file=sys.stderr)
            continue
        written.append(write_text(label_path(out_path, ext, label_dir), "".join(f"{lines[i]}\n" for i in keep)))
    return written


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("manifest", help="fairseq .tsv manifest (root on line 1, then path<TAB>num_samples)")
    parser.add_argument("--labels", choices=("ltr", "wrd"),
                        help="also check this label file, beside the manifest or in the label directory")
    parser.add_argument("--label-dir", help="directory of the label files when they are not beside the manifest "
                                            "(default: the recipe's data.label_dir, else beside it)")
    parser.add_argument("--vocab", help="fairseq dictionary (dict.ltr.txt); default letters A-Z and '")
    parser.add_argument("--strict", action="store_true",
                        help="exit 2 listing the problems if any utterance would be skipped; write nothing")
    parser.add_argument("--decode", action="store_true", help="decode every file too (slower; finds corrupt data)")
    parser.add_argument("--output", help="cleaned manifest path (default: <stem>.clean.tsv beside the input)")
    parser.add_argument("--no-write", action="store_true", help="report only; write no cleaned manifest")
    parser.add_argument("--recipe", help="TOML recipe whose [audio] section sets the rules (and [data] label_dir)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config field, e.g. --set audio.on_other_rate=reject")
    parser.add_argument("--max-listed", type=int, default=20, help="problems listed (0: all)")
    parser.add_argument("--verbose", "-v", action="store_true", help="list warnings as well as skips")
    parser.add_argument("--threads", type=int, default=8, help="threads reading headers")


def main(args: argparse.Namespace) -> int:
    cfg = load_config(args.recipe, args.overrides)
    label_dir = cfg.data.label_dir if args.label_dir is None else args.label_dir
    manifest = read_manifest(args.manifest)
    labels = read_labels(manifest, args.labels, label_dir) if args.labels else None
    vocab = read_vocab(args.vocab) if args.vocab else DEFAULT_VOCAB
    report = validate_manifest(manifest, cfg.audio, labels=labels, label_kind=args.labels or "ltr",
                               vocab=vocab, decode=args.decode, num_threads=args.threads)
    print(report.format(max_listed=args.max_listed, list_warnings=args.verbose))
    if not report.keep_indices():  # nothing to train on, whatever the flags: never exit 0
        what = ("holds no utterances" if not report.num_items else
                f"has no usable utterance (all {report.num_items} would be skipped, see above)")
        raise DataError(f"manifest {args.manifest} {what}; nothing written")
    if args.strict:
        if not report.ok:
            print(f"speechbs validate: --strict: {len(report.skipped)} problems; nothing written",
                  file=sys.stderr)
            return 2
        return 0
    if not args.no_write:
        stem, _ = os.path.splitext(args.manifest)
        out = Path(args.output or f"{stem}.clean.tsv")
        written = write_cleaned(manifest, report, out, label_dir)
        print(f"wrote {', '.join(str(p) for p in written)}")
    return 0
