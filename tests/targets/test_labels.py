"""Cluster label files: alignment with the manifest, clear refusals, and cropping to the planner's segments."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest

from speechbs.data.batching import Segment
from speechbs.data.manifest import Manifest, label_path, write_manifest
from speechbs.errors import DataError
from speechbs.targets.labels import LabelMeta, manifest_hash, read_cluster_labels, sidecar_path, write_cluster_labels

RATE = 16_000


def make(tmp_path: Path, seconds=(1.0, 2.5, 0.5), label_rate_hz: float = 50.0, k: int = 10):
    """A manifest and matching labels: row i holds ids (i*7 + t) % k for t < duration x rate."""
    manifest = Manifest(tmp_path, [f"u{i}.wav" for i in range(len(seconds))],
                        np.array([int(s * RATE) for s in seconds]))
    tsv = write_manifest(manifest, tmp_path / "train.tsv")
    rows = [(i * 7 + np.arange(int(s * label_rate_hz))) % k for i, s in enumerate(seconds)]
    meta = LabelMeta(label_rate_hz=label_rate_hz, num_clusters=k, kmeans_hash="abc", features="test",
                     manifest_rows=len(manifest), manifest_hash=manifest_hash(manifest))
    write_cluster_labels(label_path(tsv, "km"), rows, meta)
    return manifest, tsv, rows


def test_label_path_beside_the_manifest_or_in_label_dir(tmp_path) -> None:
    assert label_path("data/train.tsv", "km") == Path("data/train.km")
    assert label_path("data/train.tsv", "km", "labels/it1") == Path("labels/it1/train.km")
    assert sidecar_path(Path("a/train.km")) == Path("a/train.km.json")


def test_round_trip_and_metadata(tmp_path) -> None:
    manifest, tsv, rows = make(tmp_path)
    labels = read_cluster_labels(manifest, tsv, "km")
    assert len(labels) == 3 and labels.label_rate_hz == 50.0 and labels.num_clusters == 10
    assert labels.kmeans_hash == "abc"
    for i, row in enumerate(rows):
        assert np.array_equal(labels.row(i), row)
    again = pickle.loads(pickle.dumps(labels))
    assert np.array_equal(again.row(1), rows[1]) and again.num_clusters == 10


def test_wrong_line_count_is_refused_naming_the_file(tmp_path) -> None:
    manifest, tsv, _ = make(tmp_path)
    km = label_path(tsv, "km")
    km.write_text("\n".join(km.read_text().splitlines()[:2]) + "\n")
    with pytest.raises(DataError, match=r"train\.km has 2 lines but its manifest has 3"):
        read_cluster_labels(manifest, tsv, "km")


def test_labels_of_another_manifest_are_refused(tmp_path) -> None:
    manifest, tsv, _ = make(tmp_path)
    other = Manifest(tmp_path, ["u0.wav", "u2.wav", "u1.wav"], manifest.num_samples)  # same rows, other order
    with pytest.raises(DataError, match="made for another manifest"):
        read_cluster_labels(other, tsv, "km")


def test_label_rate_that_does_not_match_the_audio_is_refused(tmp_path) -> None:
    # Labels written at 100 Hz but declared 50 Hz (fairseq issue #5097 the other way round).
    manifest = Manifest(tmp_path, ["a.wav", "b.wav"], np.array([RATE, 2 * RATE]))
    tsv = write_manifest(manifest, tmp_path / "train.tsv")
    meta = LabelMeta(label_rate_hz=50.0, num_clusters=5, kmeans_hash="x", features="t", manifest_rows=2,
                     manifest_hash=manifest_hash(manifest))
    write_cluster_labels(label_path(tsv, "km"), [np.zeros(98, int), np.zeros(198, int)], meta)
    with pytest.raises(DataError, match=r"train\.km:1: 98 labels for 1\.00 s of audio, expected about 50 at 50 Hz"):
        read_cluster_labels(manifest, tsv, "km")
    # A couple of frames short (framing arithmetic) is accepted.
    write_cluster_labels(label_path(tsv, "km"), [np.zeros(48, int), np.zeros(99, int)], meta)
    assert len(read_cluster_labels(manifest, tsv, "km").row(0)) == 48


def test_ids_outside_k_and_garbage_are_refused(tmp_path) -> None:
    manifest, tsv, rows = make(tmp_path)
    km = label_path(tsv, "km")
    lines = km.read_text().splitlines()
    km.write_text("\n".join([lines[0], lines[1].replace("0", "10", 1), lines[2]]) + "\n")
    with pytest.raises(DataError, match=r"train\.km:2: cluster id 10 is outside \[0, 10\)"):
        read_cluster_labels(manifest, tsv, "km")
    km.write_text("\n".join([lines[0], lines[1], lines[2].replace(" ", " x ", 1)]) + "\n")
    with pytest.raises(DataError, match=r"train\.km:3: expected space-separated integer"):
        read_cluster_labels(manifest, tsv, "km")


def test_missing_files_are_refused_with_the_command_to_make_them(tmp_path) -> None:
    manifest, tsv, _ = make(tmp_path)
    with pytest.raises(DataError, match=r"train\.km2 does not exist.*speechbs targets label"):
        read_cluster_labels(manifest, tsv, "km2")
    sidecar_path(label_path(tsv, "km")).unlink()
    with pytest.raises(DataError, match=r"train\.km\.json does not exist"):
        read_cluster_labels(manifest, tsv, "km")


def test_label_dir_is_used_for_reading(tmp_path) -> None:
    manifest, tsv, rows = make(tmp_path)
    (tmp_path / "labels").mkdir()
    for name in ("train.km", "train.km.json"):
        (tmp_path / name).rename(tmp_path / "labels" / name)
    labels = read_cluster_labels(manifest, tsv, "km", label_dir=tmp_path / "labels")
    assert np.array_equal(labels.row(2), rows[2])
    with pytest.raises(DataError, match=f"label file {tmp_path / 'other' / 'train.km'} does not exist.*--label-dir"):
        read_cluster_labels(manifest, tsv, "km", label_dir=tmp_path / "other")


def test_batch_crops_each_segment_to_its_label_frames_and_pads_with_minus_one(tmp_path) -> None:
    manifest, tsv, rows = make(tmp_path, seconds=(1.0, 2.5, 0.5))
    labels = read_cluster_labels(manifest, tsv, "km")
    segments = [Segment(1, 16_000, 8_000),   # 1.0 s .. 1.5 s of row 1 -> label frames 50..75
                Segment(0, 0, 16_000),       # all of row 0 -> 50 frames
                Segment(2, 6_400, 16_000)]   # starts at frame 20 of 25, runs past the end -> 5 frames
    out = labels.batch(segments, RATE)
    assert out.lengths_B.tolist() == [25, 50, 5]
    assert out.labels_BL.shape == (3, 50) and out.labels_BL.dtype.is_floating_point is False
    assert np.array_equal(out.labels_BL[0, :25].numpy(), rows[1][50:75])
    assert np.array_equal(out.labels_BL[1].numpy(), rows[0])
    assert np.array_equal(out.labels_BL[2, :5].numpy(), rows[2][20:25])
    assert (out.labels_BL[0, 25:] == -1).all() and (out.labels_BL[2, 5:] == -1).all()
    assert out.label_rate_hz == 50.0 and out.num_clusters == 10
