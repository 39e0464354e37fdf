"""Where manifests come from: audio trees, LibriSpeech, list files, existing manifests.

Each builder returns a :class:`Collected`: the audio root, each file's path
relative to it, and each file's raw transcript (or None). Headers are read
later, in one place (:func:`speechbs.data.audio.read_infos`). Transcripts are
matched to files by utterance id: the path relative to the root without its
extension, or else the file name without its extension (Kaldi ``utt_id``),
when that name is unique in the tree.
"""

from __future__ import annotations

import os
import random
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path

from speechbs.data.manifest import label_path, letters_to_words, read_manifest
from speechbs.errors import DataError
from speechbs.textio import read_text, require_file

DEFAULT_EXTS = ("flac", "wav")
KINDS = ("auto", "dir", "librispeech", "list", "tsv")

# Apostrophe look-alikes (right single quote, modifier letter, prime, backtick) -> "'".
_APOSTROPHES = str.maketrans({"\u2019": "'", "\u2018": "'", "\u02bc": "'", "\u2032": "'", "`": "'"})


@dataclass
class Collected:
    """Audio files (relative to ``root``) and their raw transcripts."""

    root: Path
    rel_paths: list[str]
    transcripts: list[str | None] | None
    """One per file (None where missing), or None when the source has no transcripts at all."""
    notes: list[str] = field(default_factory=list)
    """Things worth telling the user that do not stop the build."""


def normalize_transcript(text: str) -> str:
    """Map text onto the letter vocabulary: ``Printing, in 1878.`` -> ``PRINTING IN 1878``.

    Upper-cases, turns apostrophe look-alikes into ``'``, replaces every other
    punctuation mark or symbol with a space (so ``twenty-five`` becomes two
    words) and collapses white space. Digits and letters outside A-Z are kept,
    so that validation reports them rather than silently dropping words.
    """
    text = unicodedata.normalize("NFC", text).translate(_APOSTROPHES).upper()
    kept = [c if c == "'" or unicodedata.category(c)[0] not in "PS" else " " for c in text]
    return " ".join("".join(kept).split())


def read_kaldi_transcripts(path: str | Path) -> dict[str, str]:
    """``utt_id TEXT`` per line (Kaldi ``text``, LibriSpeech ``.trans.txt``) -> {utt_id: TEXT}."""
    path = require_file(path, "transcripts file", "(Kaldi-style 'utt_id TEXT' lines)")
    table: dict[str, str] = {}
    for number, line in enumerate(read_text(path, "transcripts file").splitlines(), start=1):
        if not line.strip():
            continue
        utt_id, _, text = line.strip().partition(" ") if "\t" not in line else line.strip().partition("\t")
        if utt_id in table:
            raise DataError(f"{path}:{number}: utterance id {utt_id!r} appears twice")
        table[utt_id] = text.strip()
    return table


def detect_kind(source: Path) -> str:
    """dir, librispeech (a tree with ``*.trans.txt``), tsv (a fairseq manifest) or list."""
    if source.is_dir():
        return "librispeech" if next(source.rglob("*.trans.txt"), None) else "dir"
    if not source.is_file():
        raise DataError(f"source {source} does not exist (give a directory, a list file or a .tsv)")
    return "tsv" if source.suffix == ".tsv" else "list"


def collect(source: str | Path, kind: str = "auto", exts: tuple[str, ...] = DEFAULT_EXTS,
            transcripts: str | Path | None = None) -> Collected:
    source = Path(source)
    kind = detect_kind(source) if kind == "auto" else kind
    if kind in ("dir", "librispeech") and not source.is_dir():
        raise DataError(f"source {source} is not a directory (--from {kind})")
    if kind == "dir":
        table = read_kaldi_transcripts(transcripts) if transcripts else None
        return from_directory(source, exts, table)
    if kind == "librispeech":
        return from_librispeech(source, exts if exts != DEFAULT_EXTS else ("flac",))
    if transcripts:
        raise DataError(f"--transcripts works with a directory source; {source} is a {kind} file")
    return from_list(source) if kind == "list" else from_fairseq(source)


def from_directory(root: Path, exts: tuple[str, ...], table: dict[str, str] | None) -> Collected:
    """Every file under ``root`` (recursively) whose extension is in ``exts``, sorted."""
    suffixes = tuple(f".{e.lower().lstrip('.')}" for e in exts)
    rel_paths: list[str] = []
    seen_dirs = {os.path.realpath(root)}
    for folder, subdirs, names in os.walk(root, followlinks=True):
        # Linked folders are followed (corpora are often assembled from links), each once.
        subdirs[:] = [d for d in subdirs if os.path.realpath(os.path.join(folder, d)) not in seen_dirs]
        seen_dirs.update(os.path.realpath(os.path.join(folder, d)) for d in subdirs)
        rel_paths += [os.path.relpath(os.path.join(folder, n), root) for n in names
                      if n.lower().endswith(suffixes)]
    rel_paths.sort()
    if not rel_paths:
        raise DataError(f"no audio files ({', '.join(suffixes)}) under {root}; use --ext to choose others")
    collected = Collected(root.resolve(), rel_paths, None)
    if table is not None:
        collected.transcripts, collected.notes = _match_transcripts(rel_paths, table)
    return collected


def from_librispeech(root: Path, exts: tuple[str, ...] = ("flac",)) -> Collected:
    """``speaker/chapter/speaker-chapter-utt.flac`` with ``speaker-chapter.trans.txt`` beside them."""
    table: dict[str, str] = {}
    for trans in sorted(root.rglob("*.trans.txt")):
        for utt_id, text in read_kaldi_transcripts(trans).items():
            if utt_id in table:
                raise DataError(f"{trans}: utterance id {utt_id!r} also appears in another .trans.txt")
            table[utt_id] = text
    if not table:
        raise DataError(f"{root} has no *.trans.txt files; use --from dir for a plain audio tree")
    return from_directory(root, exts, table)


def match_by_id(rel_paths: list[str], table: dict[str, str]) -> tuple[list[str | None], set[str]]:
    """Look each file up by relative path without extension, else by unique file stem.
    Returns the values (None where not found) and the table keys used."""
    stems = [os.path.splitext(os.path.basename(p))[0] for p in rel_paths]
    stem_counts: dict[str, int] = {}
    for stem in stems:
        stem_counts[stem] = stem_counts.get(stem, 0) + 1
    found: list[str | None] = []
    used: set[str] = set()
    for rel, stem in zip(rel_paths, stems):
        key = os.path.splitext(rel)[0].replace(os.sep, "/")
        if key not in table:
            key = stem if stem_counts[stem] == 1 else ""
        found.append(table.get(key))
        used.add(key)
    return found, used


def _match_transcripts(rel_paths: list[str], table: dict[str, str]) -> tuple[list[str | None], list[str]]:
    found, used = match_by_id(rel_paths, table)
    notes = []
    unused = sorted(set(table) - used)
    if unused:
        notes.append(f"{len(unused)} transcripts name no audio file found (e.g. {unused[0]!r})")
    num_missing = sum(t is None for t in found)
    if num_missing:
        notes.append(f"{num_missing} audio files have no transcript (ids are matched by relative "
                     f"path without extension, or by file name when it is unique)")
    return found, notes


def from_list(list_file: Path) -> Collected:
    """``path<TAB>transcript`` (or just ``path``) per line; relative paths start at the list's folder."""
    paths: list[Path] = []
    texts: list[str | None] = []
    for number, line in enumerate(read_text(list_file, "list file").splitlines(), start=1):
        if not line.strip():
            continue
        path_text, _, text = line.partition("\t")
        path = Path(path_text.strip())
        paths.append(path if path.is_absolute() else list_file.parent / path)
        texts.append(text.strip() or None)
    if not paths:
        raise DataError(f"list file {list_file} is empty; expected 'path<TAB>transcript' lines")
    resolved = [os.path.abspath(p) for p in paths]
    root = Path(os.path.commonpath([os.path.dirname(p) for p in resolved]))
    rel_paths = [os.path.relpath(p, root) for p in resolved]
    has_text = any(t is not None for t in texts)
    return Collected(root, rel_paths, texts if has_text else None)


def from_fairseq(tsv: Path) -> Collected:
    """An existing manifest (re-counted from the headers), with its .wrd or .ltr labels if present."""
    manifest = read_manifest(tsv)
    transcripts: list[str | None] | None = None
    for ext in ("wrd", "ltr"):
        path = label_path(tsv, ext)
        if path.is_file():
            lines = read_text(path, "label file").splitlines()
            if len(lines) != len(manifest):
                raise DataError(f"{path} has {len(lines)} lines, {tsv} {len(manifest)} utterances")
            words = lines if ext == "wrd" else [letters_to_words(line) for line in lines]
            transcripts = [w or None for w in words]
            break
    return Collected(manifest.root, list(manifest.paths), transcripts)


def check_fraction(valid_fraction: float) -> None:
    """``--valid-percent`` is a fraction in [0, 1): 1 or more would leave no training split."""
    if not 0.0 <= valid_fraction < 1.0:  # also refuses NaN
        raise DataError(f"--valid-percent {valid_fraction:g}: give a fraction in [0, 1) of the files for the "
                        f"validation split, as in fairseq (0.01 = 1%); 0 writes one split")


def split_by_fraction(num_items: int, valid_fraction: float, seed: int) -> list[str]:
    """fairseq ``wav2vec_manifest.py``: each file goes to valid with probability
    ``valid_fraction``, drawn in order from ``random.Random(seed)``. Files are
    sorted first, so the split does not depend on directory listing order."""
    check_fraction(valid_fraction)
    rand = random.Random(seed)
    return ["valid" if rand.random() <= valid_fraction and valid_fraction > 0 else "train"
            for _ in range(num_items)]


def read_split_table(path: str | Path, column: str = "split") -> dict[str, str]:
    """Split per utterance id from a TSV with a header (``utt_id`` or ``path`` and ``column``),
    or from header-less ``utt_id<TAB>split`` lines."""
    path = require_file(path, "split file")
    lines = [line for line in read_text(path, "split file").splitlines() if line.strip()]
    tabs = bool(lines) and "\t" in lines[0]  # a TSV may hold text with spaces in its cells
    rows = [line.rstrip("\n").split("\t") if tabs else line.split() for line in lines]
    header = rows[0] if rows else []
    if column in header:
        key_col = next((c for c in ("utt_id", "id", "path") if c in header), None)
        if key_col is None:
            raise DataError(f"{path}: the header has {column!r} but no utt_id, id or path column")
        k, s = header.index(key_col), header.index(column)
        rows = rows[1:]
    elif all(len(r) == 2 for r in rows):
        k, s = 0, 1
    else:
        raise DataError(f"{path}: expected a header with a {column!r} column, or 'utt_id<TAB>split' lines")
    table: dict[str, str] = {}
    for number, row in enumerate(rows, start=2 if column in header else 1):
        if len(row) <= max(k, s):
            raise DataError(f"{path}:{number}: expected {max(k, s) + 1} columns, got {len(row)}")
        key = row[k].replace("\\", "/")
        if key.lower().endswith(_AUDIO_SUFFIXES):  # a path column: match by its file stem
            key = os.path.splitext(os.path.basename(key))[0]
        table[key] = row[s]
    return table


_AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".mp3", ".opus", ".aiff", ".sph")
