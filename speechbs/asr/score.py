"""``speechbs score DIR`` or ``--ref R --hyp H --out DIR``: WER and CER, corpus level and per utterance.

Counts come from jiwer (``process_words`` / ``process_characters``); rates are
percentages of the reference words (or characters, spaces included, jiwer's
convention), summed over the corpus before dividing, as NIST sclite does:
WER = (S + D + I) / N. An empty reference line counts its hypothesis words
as insertions. :func:`edit_distance` is the dependency-free version used for
validation WER during fine-tuning.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict, dataclass
from pathlib import Path

from rapidfuzz.distance import Levenshtein

from speechbs.atomic import output_dir, write_text
from speechbs.errors import DataError
from speechbs.textio import read_lines as read_text_lines, require_file


def edit_distance(ref: list[str] | str, hyp: list[str] | str) -> int:
    """Levenshtein distance between two token sequences (unit costs): characters of a string, or words
    of a list. rapidfuzz's C++ kernel: a dev-other validation pass scores in milliseconds, not a minute."""
    return Levenshtein.distance(ref, hyp)


@dataclass
class Counts:
    """Alignment counts of one utterance or a corpus."""

    substitutions: int = 0
    deletions: int = 0
    insertions: int = 0
    hits: int = 0

    @property
    def num_ref(self) -> int:
        return self.substitutions + self.deletions + self.hits

    @property
    def errors(self) -> int:
        return self.substitutions + self.deletions + self.insertions

    def rate_percent(self) -> float | None:
        """Errors per reference token, %; None (JSON null) when there are errors but no reference tokens."""
        return 100.0 * self.errors / self.num_ref if self.num_ref else (0.0 if not self.errors else None)

    def add(self, other: Counts) -> None:
        for key in ("substitutions", "deletions", "insertions", "hits"):
            setattr(self, key, getattr(self, key) + getattr(other, key))


def _counts(output) -> list[Counts]:
    """Per-sentence counts from a jiwer output's alignment chunks."""
    result = []
    for chunks in output.alignments:
        c = Counts()
        for chunk in chunks:
            ref_n = chunk.ref_end_idx - chunk.ref_start_idx
            hyp_n = chunk.hyp_end_idx - chunk.hyp_start_idx
            if chunk.type == "equal":
                c.hits += ref_n
            elif chunk.type == "substitute":
                c.substitutions += ref_n
            elif chunk.type == "delete":
                c.deletions += ref_n
            elif chunk.type == "insert":
                c.insertions += hyp_n
        result.append(c)
    return result


def score_texts(refs: list[str], hyps: list[str]) -> tuple[dict, list[dict]]:
    """(corpus summary, per-utterance rows) for aligned lists of reference and hypothesis lines."""
    import jiwer

    if len(refs) != len(hyps):
        raise DataError(f"{len(refs)} reference lines but {len(hyps)} hypothesis lines; they must line up")
    refs = [" ".join(r.split()) for r in refs]
    hyps = [" ".join(h.split()) for h in hyps]
    words = _counts(jiwer.process_words(refs, hyps)) if refs else []
    chars = _counts(jiwer.process_characters(refs, hyps)) if refs else []
    total_w, total_c = Counts(), Counts()
    rows = []
    for i, (r, h, w, c) in enumerate(zip(refs, hyps, words, chars)):
        total_w.add(w)
        total_c.add(c)
        rows.append({"index": i, "wer": w.rate_percent(), "cer": c.rate_percent(), "num_words": w.num_ref,
                     "errors": w.errors, "ref": r, "hyp": h})
    summary = {"wer": total_w.rate_percent(), "cer": total_c.rate_percent(), "num_utterances": len(refs),
               "num_words": total_w.num_ref, "num_chars": total_c.num_ref, **asdict(total_w),
               "char_errors": total_c.errors, "num_empty_refs": sum(1 for r in refs if not r),
               "num_empty_hyps": sum(1 for h in hyps if not h),
               "sentence_error_rate": 100.0 * sum(1 for r in rows if r["errors"]) / max(len(rows), 1)}
    if summary["wer"] is None:
        summary["note"] = (f"the references hold no words, so WER and CER are undefined (null); the hypotheses "
                           f"add {total_w.insertions} words (insertions)")
    return summary, rows


def write_score(summary: dict, rows: list[dict], out_dir: str | Path) -> Path:
    """``score.json``, ``score.md`` and ``utterances.tsv`` in ``out_dir``."""
    out = output_dir(out_dir)
    write_text(out / "score.json", json.dumps(summary, indent=1, allow_nan=False) + "\n")
    md = ["| WER % | CER % | utterances | words | S | D | I |", "|---|---|---|---|---|---|---|",
          f"| {_percent(summary['wer'])} | {_percent(summary['cer'])} | {summary['num_utterances']} | {summary['num_words']} "
          f"| {summary['substitutions']} | {summary['deletions']} | {summary['insertions']} |"]
    write_text(out / "score.md", "\n".join(md) + "\n")
    lines = ["index\twer\tcer\tnum_words\terrors\tref\thyp"] + [
        f"{r['index']}\t{_percent(r['wer'])}\t{_percent(r['cer'])}\t{r['num_words']}\t{r['errors']}\t{r['ref']}\t{r['hyp']}"
        for r in rows]
    write_text(out / "utterances.tsv", "\n".join(lines) + "\n")
    return out / "score.json"


def _percent(rate: float | None) -> str:
    return "n/a" if rate is None else f"{rate:.2f}"


def read_lines(path: str | Path) -> list[str]:
    path = require_file(path, "transcript file", "(one transcript per line, in manifest order)")
    lines = read_text_lines(path, "transcript file")
    if not lines:
        raise DataError(f"{path} is empty; it needs one transcript per line, in manifest order (nothing to score)")
    return lines


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("dir", nargs="?", help="decode output directory holding ref.wrd and hyp.wrd")
    parser.add_argument("--ref", help="reference words, one utterance per line")
    parser.add_argument("--hyp", help="hypothesis words, one utterance per line")
    parser.add_argument("--out", help="where score.json/score.md/utterances.tsv go (default: DIR)")


def main(args: argparse.Namespace) -> int:
    if args.dir:
        ref, hyp = Path(args.dir) / "ref.wrd", Path(args.dir) / "hyp.wrd"
    elif args.ref and args.hyp:
        ref, hyp = Path(args.ref), Path(args.hyp)
    else:
        raise DataError("give a decode directory (speechbs score DIR) or both --ref and --hyp")
    out = args.out or args.dir
    if out is None:
        raise DataError("--out is needed with --ref/--hyp")
    output_dir(out, "--out" if args.out else "DIR", create=False)
    summary, rows = score_texts(read_lines(ref), read_lines(hyp))
    summary.update(ref=str(ref), hyp=str(hyp))
    write_score(summary, rows, out)
    print(f"WER {_percent(summary['wer'])} %  CER {_percent(summary['cer'])} %  ({summary['num_utterances']} utterances, "
          f"{summary['num_words']} words) -> {Path(out) / 'score.json'}")
    return 0
