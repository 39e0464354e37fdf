"""fairseq-compatible manifests and label files.

A manifest (``train.tsv``) is the root directory on line 1, then one
``relative/path<TAB>num_samples`` line per utterance, with ``num_samples``
counted at the file's own sample rate, as in its header. fairseq assumes every
file is at the model's rate; speechbs also accepts other rates, and records
them in a sidecar ``train.rates`` (one rate in Hz per line, or a single line
when all files share one) so durations are known without opening any file.
Without a sidecar, every file is taken to be at the rate the caller gives
(fairseq's assumption), and ``speechbs validate`` checks it against the headers.

Label files sit beside the manifest with the same stem and one line per
manifest line: ``train.ltr`` (letters separated by spaces, ``|`` after each
word, as fairseq's ``libri_labels.py`` writes them) and ``train.wrd`` (words).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from speechbs.atomic import write_text
from speechbs.errors import DataError
from speechbs.textio import read_lines, read_text, require_file

WORD_BOUNDARY = "|"


@dataclass
class Manifest:
    """The utterances of one split. ``paths`` are relative to ``root``."""

    root: Path
    paths: list[str]
    num_samples: np.ndarray
    """Length of each file in samples at its own rate (int64)."""
    sample_rates_hz: np.ndarray | None = None
    """Rate of each file in Hz (int64), or None when unknown (assumed to be the model's rate)."""
    source: Path | None = None
    """The .tsv this manifest was read from, for error messages."""

    def __post_init__(self) -> None:
        self.num_samples = np.asarray(self.num_samples, dtype=np.int64)
        assert len(self.paths) == len(self.num_samples)
        if self.sample_rates_hz is not None:
            self.sample_rates_hz = np.asarray(self.sample_rates_hz, dtype=np.int64)
            assert len(self.sample_rates_hz) == len(self.paths)

    def __len__(self) -> int:
        return len(self.paths)

    def audio_path(self, index: int) -> Path:
        return self.root / self.paths[index]

    def rates_hz(self, default_rate_hz: int) -> np.ndarray:
        if self.sample_rates_hz is None:
            return np.full(len(self), default_rate_hz, dtype=np.int64)
        return self.sample_rates_hz

    def seconds(self, default_rate_hz: int) -> np.ndarray:
        """Duration of each utterance, s."""
        return self.num_samples / self.rates_hz(default_rate_hz)

    def num_model_samples(self, model_rate_hz: int) -> np.ndarray:
        """Length of each utterance after resampling to the model's rate, in samples."""
        rates = self.rates_hz(model_rate_hz)
        return np.where(rates == model_rate_hz, self.num_samples,
                        np.floor(self.num_samples * model_rate_hz / rates + 0.5).astype(np.int64))

    def ids(self) -> list[str]:
        """Utterance ids: the relative path without its extension."""
        return [os.path.splitext(p)[0] for p in self.paths]

    def subset(self, indices: np.ndarray | list[int]) -> Manifest:
        indices = list(indices)
        rates = None if self.sample_rates_hz is None else self.sample_rates_hz[indices]
        return Manifest(self.root, [self.paths[i] for i in indices], self.num_samples[indices],
                        rates, self.source)


def check_for_training(manifest: Manifest, setting: str) -> None:
    """Refuse, before training starts, a manifest that would stop it later: empty, or with missing audio.

    One ``stat`` per file: a manifest of LibriSpeech 960 h (281k files) takes well under a second
    on a local disk. Unreadable or corrupt files are ``speechbs validate``'s to find.
    """
    where = f"{setting} = {manifest.source or manifest.root}"
    if len(manifest) == 0:
        raise DataError(f"{where} holds no utterances; point it at a manifest with audio "
                        f"(speechbs manifest writes one)")
    missing = [p for p in manifest.paths if not os.path.isfile(os.path.join(manifest.root, p))]
    if missing:
        shown = ", ".join(missing[:3]) + (f" and {len(missing) - 3} more" if len(missing) > 3 else "")
        raise DataError(f"{where}: {len(missing)} of {len(manifest)} audio files do not exist under "
                        f"{manifest.root} ({shown}); restore them, or run speechbs validate on the manifest "
                        f"to write one without them")


def read_manifest(path: str | Path) -> Manifest:
    """Read a fairseq ``.tsv`` (and its ``.rates`` sidecar when present)."""
    path = require_file(path, "manifest", "(build one with `speechbs manifest`)")
    lines = read_text(path, "manifest").splitlines()
    if not lines or not lines[0].strip():
        raise DataError(f"manifest {path} is empty: line 1 must be the root directory of the audio")
    root = Path(lines[0].strip())
    if not root.is_absolute():
        root = (path.parent / root).resolve()
    paths: list[str] = []
    counts: list[int] = []
    for number, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        fields = line.rstrip("\n").split("\t")
        if len(fields) < 2 or not fields[1].strip().isdigit():
            raise DataError(f"{path}:{number}: expected 'relative/path<TAB>num_samples', got {line!r}")
        paths.append(fields[0])
        counts.append(int(fields[1]))
    rates = _read_rates(path, len(paths))
    return Manifest(root, paths, np.asarray(counts, dtype=np.int64), rates, path)


def write_manifest(manifest: Manifest, path: str | Path) -> Path:
    """Write ``path`` (.tsv) and, when rates are known, its ``.rates`` sidecar."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    body = [str(manifest.root)] + [f"{p}\t{n}" for p, n in zip(manifest.paths, manifest.num_samples)]
    write_text(path, "\n".join(body) + "\n")
    rates_path = path.with_suffix(".rates")
    if manifest.sample_rates_hz is not None and len(manifest):
        unique = np.unique(manifest.sample_rates_hz)
        rates = [str(unique[0])] if len(unique) == 1 else [str(r) for r in manifest.sample_rates_hz]
        write_text(rates_path, "\n".join(rates) + "\n")
    elif rates_path.exists():
        rates_path.unlink()
    return path


def _read_rates(tsv: Path, num_lines: int) -> np.ndarray | None:
    rates_path = tsv.with_suffix(".rates")
    if not rates_path.is_file():
        return None
    values = [line.strip() for line in read_text(rates_path, "rates sidecar").splitlines() if line.strip()]
    if not all(v.isdigit() for v in values) or len(values) not in (1, num_lines):
        raise DataError(f"{rates_path} must hold one sample rate in Hz, or one per line of {tsv} "
                        f"({num_lines}); rebuild it with `speechbs manifest` or delete it")
    if len(values) == 1:
        return np.full(num_lines, int(values[0]), dtype=np.int64)
    return np.asarray([int(v) for v in values], dtype=np.int64)


def label_path(manifest_path: str | Path, ext: str, label_dir: str | Path = "") -> Path:
    """``train.tsv`` + ``ltr`` -> ``train.ltr`` beside the manifest, or ``<label_dir>/train.ltr`` when given.

    The one place that says where a manifest's labels are (``data.labels`` and
    ``data.label_dir``), for every reader and writer: fine-tuning's transcripts,
    HuBERT's cluster labels, ``speechbs validate`` and ``speechbs targets label``.
    """
    manifest_path = Path(manifest_path)
    name = f"{manifest_path.stem}.{ext}"
    return Path(label_dir) / name if str(label_dir) else manifest_path.with_name(name)


def words_to_letters(text: str) -> str:
    """``HELLO WORLD`` -> ``H E L L O | W O R L D |`` (fairseq's letter target format)."""
    return " ".join(WORD_BOUNDARY.join(text.split()) + WORD_BOUNDARY) if text.split() else ""


def letters_to_words(letters: str) -> str:
    """Inverse of :func:`words_to_letters`."""
    return " ".join("".join(letters.split()).replace(WORD_BOUNDARY, " ").split())


def write_labels(transcripts: list[str], manifest_path: str | Path) -> tuple[Path, Path]:
    """Write ``.wrd`` and ``.ltr`` beside ``manifest_path``, one line per utterance."""
    wrd = label_path(manifest_path, "wrd")
    ltr = label_path(manifest_path, "ltr")
    write_text(wrd, "".join(f"{' '.join(t.split())}\n" for t in transcripts))
    write_text(ltr, "".join(f"{words_to_letters(t)}\n" for t in transcripts))
    return wrd, ltr


def read_labels(manifest: Manifest, ext: str, label_dir: str | Path = "") -> list[str]:
    """Read the label file of ``manifest`` (beside it, or in ``label_dir``) and check it lines up with it."""
    assert manifest.source is not None, "labels are found by the manifest's .tsv name"
    path = label_path(manifest.source, ext, label_dir)
    if not path.is_file():
        where = f"in the label directory {label_dir}" if str(label_dir) else f"beside {manifest.source}"
        raise DataError(f"label file {path} does not exist; it must sit {where} with one line per "
                        f"utterance of {manifest.source} (build both with `speechbs manifest`)")
    lines = read_lines(path, "label file")
    if len(lines) != len(manifest):
        raise DataError(f"{path} has {len(lines)} lines but {manifest.source} has {len(manifest)} "
                        f"utterances; they must line up one to one (rebuild them together)")
    return lines
