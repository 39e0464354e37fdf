"""Cluster label files: one line per manifest row, aligned and checked.

Format (fairseq-compatible, ``train.tsv`` -> ``train.km``): line i holds the
space-separated cluster ids of manifest row i, one per label frame at
``label_rate_hz``. A JSON sidecar ``train.km.json`` records what makes the
labels meaningful, so a mismatch is refused instead of trained on:

    {"label_rate_hz": 50.0, "num_clusters": 500, "kmeans_hash": "<sha1 of the k-means model>",
     "features": "hubert layer 6 of runs/hubert-it1/checkpoints/step_00400000.pt",
     "manifest_rows": 28539, "manifest_hash": "<hash of (path, num_samples) rows>"}

Checks on reading (each refusal is a DataError naming the file): one line per
manifest row, the sidecar's manifest hash equal to this manifest's, each row's
label count within LENGTH_TOLERANCE_FRAMES of its duration x label rate, and
every id in [0, K). Labels are held as one flat array plus row offsets, so a
label set is small to pickle into DataLoader workers (LibriSpeech 960 h at
50 Hz is 173 M ids: 346 MB as uint16).

Legend: B rows of a micro-batch, L label frames of its longest row, N all label frames.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from speechbs.atomic import write_text
from speechbs.data.batching import Segment
from speechbs.data.manifest import Manifest, label_path
from speechbs.errors import DataError
from speechbs.models.hubert import ClusterTargets  # the model's input type; labels are made here
from speechbs.textio import read_text


LENGTH_TOLERANCE_FRAMES = 3
"""Allowed |label frames - duration x label rate| per row. Frame counts from
framing arithmetic fall short of duration x rate by 1-2 frames (Kaldi MFCC:
N/160 - 1.5 at 100 Hz; the conv stack: N/320 - 0.25 at 50 Hz); a wrong label
rate (100 vs 50 Hz, fairseq issue #5097) is off by half the row."""


def sidecar_path(path: str | Path) -> Path:
    path = Path(path)
    return path.with_name(path.name + ".json")


def manifest_hash(manifest: Manifest) -> str:
    """sha1 of the manifest's ``path<TAB>num_samples`` rows: which utterances, in which order."""
    digest = hashlib.sha1()
    for rel, n in zip(manifest.paths, manifest.num_samples):
        digest.update(f"{rel}\t{int(n)}\n".encode("utf-8"))
    return digest.hexdigest()


@dataclass
class LabelMeta:
    """The sidecar: what makes a label file meaningful."""

    label_rate_hz: float
    num_clusters: int
    kmeans_hash: str
    features: str
    manifest_rows: int
    manifest_hash: str

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1) + "\n"


class ClusterLabelWriter:
    """Writes a ``.km`` file row by row (streaming) to a temporary name; ``close`` renames it and writes the sidecar.

    Rows must come in manifest order; ``close`` checks every row was written.
    A crash leaves the old label file (if any) untouched.
    """

    def __init__(self, path: str | Path, meta: LabelMeta) -> None:
        self.path = Path(path)
        self.meta = meta
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._tmp = self.path.with_name(self.path.name + ".tmp")
        self._file = open(self._tmp, "w", encoding="ascii")
        self.num_rows = 0

    def write(self, labels_T: np.ndarray | torch.Tensor) -> None:
        labels_T = np.asarray(labels_T.cpu() if isinstance(labels_T, torch.Tensor) else labels_T)
        assert labels_T.ndim == 1 and (labels_T.size == 0 or (labels_T.min() >= 0 and labels_T.max() < self.meta.num_clusters))
        self._file.write(" ".join(map(str, labels_T.tolist())) + "\n")
        self.num_rows += 1

    def close(self) -> Path:
        self._file.close()
        assert self.num_rows == self.meta.manifest_rows, (self.num_rows, self.meta.manifest_rows)
        os.replace(self._tmp, self.path)
        write_text(sidecar_path(self.path), self.meta.to_json())
        return self.path

    def abort(self) -> None:
        self._file.close()
        self._tmp.unlink(missing_ok=True)


def write_cluster_labels(path: str | Path, rows: list[np.ndarray], meta: LabelMeta) -> Path:
    """Write all rows at once (tests, small corpora)."""
    writer = ClusterLabelWriter(path, meta)
    for row in rows:
        writer.write(row)
    return writer.close()


@dataclass
class ClusterLabelSet:
    """The checked labels of one manifest; picklable (sent to DataLoader workers)."""

    labels_N: np.ndarray
    """All rows' ids, concatenated (uint16 or int32)."""
    offsets_R1: np.ndarray
    """int64 start of each row in ``labels_N`` and the total at the end (R + 1 values)."""
    label_rate_hz: float
    num_clusters: int
    kmeans_hash: str
    path: Path

    def __len__(self) -> int:
        return len(self.offsets_R1) - 1

    def row(self, index: int) -> np.ndarray:
        return self.labels_N[self.offsets_R1[index]:self.offsets_R1[index + 1]]

    def batch(self, segments: Sequence[Segment], sample_rate_hz: int) -> ClusterTargets:
        """Each segment's labels: the frames its crop covers, padded with -1 (fairseq ``collater_frm_label``).

        A crop starting at sample s of n samples covers label frames
        [round(s r / sr), + round(n r / sr)), cut at the row's last label.
        """
        samples_to_frames = self.label_rate_hz / sample_rate_hz
        rows: list[np.ndarray] = []
        for seg in segments:
            labels = self.row(seg.index)
            start = min(int(round(seg.offset_samples * samples_to_frames)), len(labels))
            rows.append(labels[start:start + int(round(seg.num_samples * samples_to_frames))])
        lengths_B = torch.tensor([len(r) for r in rows], dtype=torch.int64)
        labels_BL = torch.full((len(rows), int(lengths_B.max()) if rows else 0), -1, dtype=torch.int64)
        for b, r in enumerate(rows):
            labels_BL[b, :len(r)] = torch.from_numpy(r.astype(np.int64))
        return ClusterTargets(labels_BL, lengths_B, self.label_rate_hz, self.num_clusters)


def read_label_meta(path: Path) -> LabelMeta:
    side = sidecar_path(path)
    if not side.is_file():
        raise DataError(f"{side} does not exist: cluster labels need their sidecar (label rate, K, k-means "
                        f"and manifest hashes); write them with `speechbs targets label`")
    try:
        return LabelMeta(**json.loads(side.read_text(encoding="utf-8")))
    except (ValueError, TypeError) as exc:
        raise DataError(f"{side} is not a valid label sidecar ({exc}); rewrite it with `speechbs targets label`") from None


def read_cluster_labels(manifest: Manifest, manifest_path: str | Path, ext: str, label_dir: str | Path = "",
                        *, default_rate_hz: int = 16_000) -> ClusterLabelSet:
    """Read and check the cluster labels of ``manifest``; refuse (DataError naming the file) what does not fit.

    ``default_rate_hz`` is the rate of files whose manifest has no ``.rates`` sidecar.
    """
    path = label_path(manifest_path, ext, label_dir)
    if not path.is_file():
        in_dir = f" --label-dir {label_dir}" if str(label_dir) else ""
        raise DataError(f"label file {path} does not exist; make it with "
                        f"`speechbs targets label --manifest {manifest_path} --ext {ext}{in_dir}`")
    meta = read_label_meta(path)
    if meta.manifest_rows != len(manifest) or meta.manifest_hash != manifest_hash(manifest):
        raise DataError(f"{path} was made for another manifest ({meta.manifest_rows} rows, hash "
                        f"{meta.manifest_hash[:10]}) than {manifest_path} ({len(manifest)} rows, hash "
                        f"{manifest_hash(manifest)[:10]}); relabel it with `speechbs targets label`")
    labels_N, counts_R = _parse(path, len(manifest))
    offsets_R1 = np.concatenate([[0], np.cumsum(counts_R)]).astype(np.int64)
    _check_ids(path, labels_N, offsets_R1, meta.num_clusters)
    _check_lengths(path, counts_R, manifest.seconds(default_rate_hz), meta.label_rate_hz)
    dtype = np.uint16 if meta.num_clusters <= np.iinfo(np.uint16).max else np.int32
    return ClusterLabelSet(labels_N.astype(dtype), offsets_R1, float(meta.label_rate_hz), int(meta.num_clusters),
                           meta.kmeans_hash, path)


def _parse(path: Path, num_rows: int) -> tuple[np.ndarray, np.ndarray]:
    """All ids (int64) and the count per line; the whole file is parsed in C when it is well formed."""
    text = read_text(path, "label file")
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    if len(lines) != num_rows:
        raise DataError(f"{path} has {len(lines)} lines but its manifest has {num_rows} rows; "
                        f"they must line up one to one (relabel with `speechbs targets label`)")
    counts_R = np.fromiter((line.count(" ") + 1 if line else 0 for line in lines), dtype=np.int64, count=num_rows)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            labels_N = np.fromstring(text, dtype=np.int64, sep=" ") if text.strip() else np.zeros(0, np.int64)
    except (ValueError, DeprecationWarning):
        labels_N = None
    if labels_N is None or len(labels_N) != counts_R.sum():
        return _parse_slowly(path, lines)
    return labels_N, counts_R


def _parse_slowly(path: Path, lines: list[str]) -> tuple[np.ndarray, np.ndarray]:
    rows = []
    for number, line in enumerate(lines, start=1):
        try:
            rows.append(np.array([int(tok) for tok in line.split()], dtype=np.int64))
        except ValueError:
            raise DataError(f"{path}:{number}: expected space-separated integer cluster ids, got "
                            f"{line[:60]!r}") from None
    counts_R = np.array([len(r) for r in rows], dtype=np.int64)
    return (np.concatenate(rows) if rows else np.zeros(0, np.int64)), counts_R


def _check_ids(path: Path, labels_N: np.ndarray, offsets_R1: np.ndarray, num_clusters: int) -> None:
    bad_N = (labels_N < 0) | (labels_N >= num_clusters)
    if bad_N.any():
        first = int(np.argmax(bad_N))
        line = int(np.searchsorted(offsets_R1, first, side="right"))
        raise DataError(f"{path}:{line}: cluster id {int(labels_N[first])} is outside [0, {num_clusters}) "
                        f"(K = {num_clusters} in its sidecar); the labels and the k-means model do not match")


def _check_lengths(path: Path, counts_R: np.ndarray, seconds_R: np.ndarray, label_rate_hz: float) -> None:
    expected_R = seconds_R * label_rate_hz
    bad_R = np.abs(counts_R - expected_R) > LENGTH_TOLERANCE_FRAMES
    if bad_R.any():
        row = int(np.argmax(bad_R))
        raise DataError(f"{path}:{row + 1}: {int(counts_R[row])} labels for {seconds_R[row]:.2f} s of audio, "
                        f"expected about {expected_R[row]:.0f} at {label_rate_hz:g} Hz ({int(bad_R.sum())} rows "
                        f"differ by more than {LENGTH_TOLERANCE_FRAMES} frames); is the label rate right, "
                        f"and were the labels made from this manifest's audio?")
