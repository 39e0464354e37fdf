"""k-means: determinism for a seed, recovery of known clusters, exact assignment, bounded seeded sampling."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from speechbs.errors import DataError, SpeechbsError
from speechbs.targets.kmeans import FrameSampler, KMeansModel, KMeansSettings, choose_rows, fit

pytest.importorskip("faiss")


def blobs(num_per_blob: int = 400, num_blobs: int = 5, dim: int = 8, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(num_blobs, dim)) * 20
    ids = np.repeat(np.arange(num_blobs), num_per_blob)
    return (centres[ids] + rng.normal(size=(len(ids), dim))).astype(np.float32), ids


def settings(**kw) -> KMeansSettings:
    return KMeansSettings(**{"num_clusters": 5, "max_frames": 10_000, "num_threads": 1, **kw})


def test_faiss_fit_is_deterministic_for_a_seed_and_recovers_separated_clusters() -> None:
    feats_NC, ids_N = blobs()
    first, second = fit(feats_NC, settings(seed=3, num_restarts=5)), fit(feats_NC, settings(seed=3, num_restarts=5))
    assert torch.equal(first.centroids_KC, second.centroids_KC) and first.hash == second.hash
    labels_N = first.assign(feats_NC).numpy()
    # Each true blob maps to exactly one cluster and vice versa (purity 1).
    pairs = set(zip(ids_N.tolist(), labels_N.tolist()))
    assert len(pairs) == 5 and len({c for _, c in pairs}) == 5
    assert first.inertia_per_frame < 1.2 * feats_NC.shape[1]  # unit-variance blobs: about dim per frame


def test_sklearn_backend_is_deterministic_with_fairseq_settings() -> None:
    pytest.importorskip("sklearn")
    feats_NC, ids_N = blobs(num_per_blob=200)
    cfg = settings(backend="sklearn", sklearn_n_init=1, seed=1)
    first, second = fit(feats_NC, cfg), fit(feats_NC, cfg)
    assert torch.equal(first.centroids_KC, second.centroids_KC)
    assert len(set(zip(ids_N.tolist(), first.assign(feats_NC).tolist()))) == 5


def test_assign_is_the_nearest_centroid() -> None:
    rng = np.random.default_rng(0)
    model = KMeansModel(torch.from_numpy(rng.normal(size=(37, 16)).astype(np.float32)), settings(num_clusters=37))
    feats_NC = torch.from_numpy(rng.normal(size=(70_000, 16)).astype(np.float32))  # more than one chunk
    expected_N = torch.cdist(feats_NC.double(), model.centroids_KC.double()).argmin(dim=1)
    assert torch.equal(model.assign(feats_NC), expected_N)
    assert torch.equal(model.assign(feats_NC.half()), model.assign(feats_NC.half().float()))


def test_model_file_round_trip_and_tamper_check(tmp_path) -> None:
    model = fit(blobs()[0], settings(), {"kind": "mfcc", "frame_rate_hz": 100.0})
    path = model.save(tmp_path / "km.pt")
    loaded = KMeansModel.load(path)
    assert loaded.hash == model.hash and loaded.features == model.features and loaded.settings == model.settings
    state = torch.load(path, weights_only=True)
    state["centroids_KC"][0, 0] += 1.0
    torch.save(state, path)
    with pytest.raises(DataError, match="hash"):
        KMeansModel.load(path)
    (tmp_path / "junk.pt").write_bytes(b"not a model")
    with pytest.raises(DataError, match="junk.pt"):
        KMeansModel.load(tmp_path / "junk.pt")


def test_sampler_keeps_the_same_frames_however_rows_arrive_and_caps_at_max_frames() -> None:
    rng = np.random.default_rng(0)
    rows = {r: torch.from_numpy(rng.normal(size=(500, 4)).astype(np.float32)) for r in range(20)}
    cfg = settings(frame_fraction=0.2, max_frames=100_000)
    forward, backward = FrameSampler(cfg), FrameSampler(cfg)
    for r in range(20):
        forward.add(r, rows[r])
    for r in reversed(range(20)):
        backward.add(r, rows[r])
    got_f, got_b = forward.frames(), backward.frames()
    assert 0.15 * 10_000 < len(got_f) < 0.25 * 10_000
    assert sorted(map(tuple, got_f.tolist())) == sorted(map(tuple, got_b.tolist()))
    capped = FrameSampler(settings(frame_fraction=1.0, max_frames=777))
    for r in range(20):
        capped.add(r, rows[r])
    assert capped.frames().shape == (777, 4)


def test_choose_rows_is_seeded_sorted_and_holds_enough_frames() -> None:
    frames_R = np.full(1_000, 1_000.0)
    cfg = settings(max_frames=5_000, frame_fraction=0.1)
    rows = choose_rows(frames_R, cfg)
    assert np.array_equal(rows, choose_rows(frames_R, cfg)) and np.all(np.diff(rows) > 0)
    assert frames_R[rows].sum() * 0.1 >= 1.1 * 5_000 and len(rows) < 100
    assert not np.array_equal(rows, choose_rows(frames_R, settings(max_frames=5_000, seed=1)))
    assert len(choose_rows(np.full(10, 10.0), cfg)) == 10  # small corpus: every row


def test_bad_settings_and_too_few_frames_are_refused() -> None:
    with pytest.raises(SpeechbsError, match="--k"):
        KMeansSettings(num_clusters=1)
    with pytest.raises(SpeechbsError, match="--max-frames"):
        KMeansSettings(num_clusters=100, max_frames=50)
    with pytest.raises(DataError, match="only 3 frames"):
        fit(np.zeros((3, 2), np.float32), settings())
