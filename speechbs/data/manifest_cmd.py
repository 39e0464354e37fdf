"""``speechbs manifest``: build fairseq manifests (.tsv + .rates) and labels (.ltr, .wrd).

Sources: a directory of audio (recursive, optional Kaldi-style transcripts), a
LibriSpeech tree, a ``path<TAB>transcript`` list, or an existing .tsv (re-counted).
Sample counts come from the file headers; nothing is decoded. Splits: one
named split, a seeded random validation fraction (fairseq's
``wav2vec_manifest.py --valid-percent``), or a column of a table.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from speechbs.atomic import output_dir, write_text
from speechbs.configio import load_config
from speechbs.data.audio import AudioInfo, read_infos
from speechbs.data.manifest import Manifest, label_path, write_labels, write_manifest
from speechbs.data.sources import (DEFAULT_EXTS, KINDS, Collected, check_fraction, collect, match_by_id,
                                   normalize_transcript, read_split_table, split_by_fraction)
from speechbs.data.text_labels import RESERVED_EXTS, TextRule, derive, parse_rule
from speechbs.data.validate import (ALWAYS_RULES, DEFAULT_VOCAB, ValidationReport, read_vocab,
                                    validate_manifest)
from speechbs.errors import DataError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("source", help="audio directory, LibriSpeech tree, list file (path<TAB>text) or .tsv")
    parser.add_argument("--from", dest="kind", choices=KINDS, default="auto",
                        help="source kind (auto: .tsv file -> tsv, other file -> list, directory with "
                             "*.trans.txt -> librispeech, other directory -> dir)")
    parser.add_argument("--ext", default=",".join(DEFAULT_EXTS),
                        help="audio extensions to collect, comma-separated (librispeech default: flac)")
    parser.add_argument("--transcripts", help="Kaldi-style 'utt_id TEXT' file for a directory source")
    parser.add_argument("--keep-text", action="store_true",
                        help="write transcripts as they are (default: upper-case, drop punctuation but ')")
    parser.add_argument("--out", help="output directory (default: manifests/<source name>)")
    parser.add_argument("--name", default="train", help="split name when writing one split (default: train)")
    parser.add_argument("--valid-percent", type=float, default=0.0,
                        help="fraction in [0, 1) (as fairseq's: 0.01 = 1%%) of files drawn into the validation split")
    parser.add_argument("--valid-name", default="valid", help="name of the drawn validation split")
    parser.add_argument("--seed", type=int, default=42, help="seed of the --valid-percent draw (fairseq: 42)")
    parser.add_argument("--split-file", help="table giving each utterance's split (TSV with a header "
                                             "holding utt_id/path and --split-column, or 'utt_id split')")
    parser.add_argument("--split-column", default="split", help="column of --split-file (default: split)")
    parser.add_argument("--label-column", action="append", default=[], metavar="COLUMN:EXT",
                        help="also write a label file per split from a column of --split-file, e.g. "
                             "speaker:spk writes train.spk (one label per line; for `speechbs probe --label spk`)")
    parser.add_argument("--label-from-text", action="append", default=[], metavar="RULE:EXT",
                        help="also write a label file per split derived from each transcript: word=N (the N-th "
                             "word), count=WORD, has=WORD, most=WORD,WORD (the one said most; tie/none), e.g. "
                             "most=YES,NO:most writes train.most (docs/probes.md)")
    parser.add_argument("--check", action="store_true",
                        help="apply all validation rules while building (as `speechbs validate`)")
    parser.add_argument("--strict", action="store_true",
                        help="with --check: exit 2 listing the problems instead of skipping; write nothing")
    parser.add_argument("--vocab", help="fairseq dictionary for --check (default: letters A-Z and ')")
    parser.add_argument("--recipe", help="TOML recipe whose [audio] section sets the --check rules")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config field, e.g. --set audio.max_seconds=20")
    parser.add_argument("--max-listed", type=int, default=20, help="problems listed (0: all)")
    parser.add_argument("--threads", type=int, default=8, help="threads reading headers")


def main(args: argparse.Namespace) -> int:
    cfg = load_config(args.recipe, args.overrides).audio
    vocab = read_vocab(args.vocab) if args.vocab else DEFAULT_VOCAB
    if args.strict and not args.check:
        raise DataError("--strict needs --check (without it only unreadable files and missing "
                        "transcripts are looked for, and they are always skipped)")
    if args.valid_percent and args.split_file:
        raise DataError("give either --valid-percent or --split-file, not both")
    check_fraction(args.valid_percent)
    label_columns = _label_columns(args.label_column, args.split_file)
    text_rules = [parse_rule(spec) for spec in args.label_from_text]
    label_exts = [ext for _, ext in label_columns] + [rule.ext for rule in text_rules]
    if len(set(label_exts)) != len(label_exts):
        twice = next(ext for ext in label_exts if label_exts.count(ext) > 1)
        raise DataError(f"--label-column / --label-from-text name the extension {twice!r} twice; "
                        f"give each label file its own")
    out_dir = output_dir(Path(args.out) if args.out else Path("manifests") / Path(args.source).resolve().name,
                         "--out", create=False)
    exts = tuple(e.strip().lstrip(".") for e in args.ext.split(",") if e.strip())
    collected = collect(args.source, args.kind, exts, args.transcripts)
    for note in collected.notes:
        print(f"note: {note}")
    start_s = time.perf_counter()
    infos = read_infos([collected.root / p for p in collected.rel_paths], args.threads)
    print(f"read {len(infos)} headers in {time.perf_counter() - start_s:.2f} s")
    manifest = _manifest_from_headers(collected, infos)
    words = _words(collected, args.keep_text)
    report = validate_manifest(manifest, cfg, labels=words, label_kind="wrd", vocab=vocab, infos=infos,
                               rules=None if args.check else ALWAYS_RULES)
    if report.problems:
        print(report.format(max_listed=args.max_listed))
    if args.strict and not report.ok:
        print(f"speechbs manifest: --strict: {len(report.skipped)} problems; nothing written")
        return 2
    splits = _splits(args, collected, report)
    columns = {ext: _column_values(args.split_file, column, collected, splits) for column, ext in label_columns}
    columns.update({rule.ext: _text_values(rule, words, args.source, collected, splits) for rule in text_rules})
    output_dir(out_dir)
    for name, indices in splits.items():
        tsv = out_dir / f"{name}.tsv"
        _write_split(manifest.subset(indices), words, indices, tsv, name)
        for ext, values in columns.items():
            write_text(label_path(tsv, ext), "".join(f"{values[i]}\n" for i in indices))
        if columns:
            print(f"{name}: labels {', '.join(str(label_path(tsv, ext).name) for ext in columns)}")
    return 0


def _label_columns(specs: list[str], split_file: str | None) -> list[tuple[str, str]]:
    """``COLUMN:EXT`` items -> (column, extension), checked before anything is read."""
    pairs = []
    for spec in specs:
        column, _, ext = spec.partition(":")
        if not column or not ext or "/" in ext or ext in RESERVED_EXTS:
            raise DataError(f"--label-column {spec!r}: give COLUMN:EXT, e.g. speaker:spk (EXT is the label "
                            f"file's extension, not tsv, rates, ltr or wrd)")
        pairs.append((column, ext))
    if pairs and not split_file:
        raise DataError("--label-column reads columns of --split-file; give the table with --split-file")
    return pairs


def _column_values(table_path: str, column: str, collected: Collected, splits: dict[str, list[int]]) -> list[str]:
    """The column's value for every collected file; a file written to a split without one is an error."""
    values, _ = match_by_id(collected.rel_paths, read_split_table(table_path, column))
    for indices in splits.values():
        missing = [collected.rel_paths[i] for i in indices if not values[i]]
        if missing:
            raise DataError(f"{table_path}: column {column!r} has no value for {missing[0]} "
                            f"({len(missing)} files); every written utterance needs a label")
    return [v or "" for v in values]


def _text_values(rule: TextRule, words: list[str] | None, source: str, collected: Collected,
                 splits: dict[str, list[int]]) -> list[str]:
    """The rule's label for every written file (the others get none)."""
    if words is None:
        raise DataError(f"--label-from-text derives labels from transcripts, and {source} has none; give "
                        f"--transcripts FILE (Kaldi 'utt_id TEXT' lines) or a source with transcripts")
    values = [""] * len(collected.rel_paths)
    written = sorted(i for indices in splits.values() for i in indices)
    for i, label in zip(written, derive(rule, [words[i] or None for i in written],
                                        [collected.rel_paths[i] for i in written], source)):
        values[i] = label
    return values


def _manifest_from_headers(collected: Collected, infos: list[AudioInfo | DataError]) -> Manifest:
    """Counts and rates from the headers (0 where unreadable: validation skips those)."""
    counts = [i.num_samples if isinstance(i, AudioInfo) else 0 for i in infos]
    rates = [i.sample_rate_hz if isinstance(i, AudioInfo) else 0 for i in infos]
    return Manifest(collected.root, collected.rel_paths, np.asarray(counts), np.asarray(rates))


def _words(collected: Collected, keep_text: bool) -> list[str] | None:
    if collected.transcripts is None:
        return None
    clean = (lambda t: " ".join(t.split())) if keep_text else normalize_transcript
    return ["" if t is None else clean(t) for t in collected.transcripts]


def _splits(args: argparse.Namespace, collected: Collected, report: ValidationReport) -> dict[str, list[int]]:
    """Split name -> usable indices. Splits are drawn for every file, usable or not, so one
    bad file does not move the others from train to valid."""
    num_items = len(collected.rel_paths)
    if args.split_file:
        names, _ = match_by_id(collected.rel_paths, read_split_table(args.split_file, args.split_column))
        num_unlisted = sum(n is None for n in names)
        if num_unlisted:
            first = collected.rel_paths[names.index(None)]
            print(f"note: {num_unlisted} files are not in {args.split_file} (e.g. {first}); left out")
    elif args.valid_percent > 0:
        names = split_by_fraction(num_items, args.valid_percent, args.seed)
        names = [args.valid_name if n == "valid" else args.name for n in names]
    else:
        names = [args.name] * num_items
    splits: dict[str, list[int]] = {}
    for i in report.keep_indices():
        if names[i] is not None:
            splits.setdefault(names[i], []).append(i)
    if not splits:
        raise DataError(f"{args.source}: no usable utterance to write; see the problems above")
    return dict(sorted(splits.items()))


def _write_split(manifest: Manifest, words: list[str] | None, indices: list[int], tsv: Path,
                 name: str) -> None:
    write_manifest(manifest, tsv)
    written = [".rates"]
    if words is not None:
        write_labels([words[i] for i in indices], tsv)
        written += [".ltr", ".wrd"]
    else:
        for ext in ("ltr", "wrd"):  # stale labels from an earlier build would not line up
            label_path(tsv, ext).unlink(missing_ok=True)
    rates = manifest.rates_hz(0)
    hours = float(manifest.seconds(0).sum()) / 3600
    rate_text = "/".join(str(r) for r in np.unique(rates))
    print(f"{name}: {len(manifest)} utterances, {hours:.3f} h, {rate_text} Hz -> {tsv} "
          f"(+ {' '.join(written)})")
