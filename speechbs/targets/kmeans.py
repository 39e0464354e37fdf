"""k-means for HuBERT targets: fit on a sampled subset of frames, assign every frame.

fairseq (``examples/hubert/simple_kmeans/learn_kmeans.py``) dumps the features
of a random 10% of the utterances (all their frames) and fits scikit-learn's
MiniBatchKMeans (k-means++, batch 10,000, max_iter 100, n_init 20, tol 0,
max_no_improvement 100, reassignment 0). At LibriSpeech scale that subset is
34.6 M x 39 MFCC frames or 17.3 M x 768 layer frames (53 GB fp32), and
consecutive frames are nearly copies of each other. Here the training set is
bounded instead (``max_frames``): a seeded random set of utterances is visited
and a seeded fraction of each one's frames kept, so the sample covers more
speakers for the same memory, and only the visited utterances are run through
the feature extractor.

Backends: ``faiss`` (default; Lloyd iterations on the BLAS, 10-50x faster than
MiniBatchKMeans on the same frames, see docs/targets.md) and ``sklearn``
(fairseq's MiniBatchKMeans settings, for parity). Assignment is a batched
nearest-centroid search in torch (``||c||^2 - 2 x.c``), on any device.

The model file (``torch.save`` of plain tensors, strings and numbers; loaded
with ``weights_only=True``) holds the centroids, backend, settings, the feature
description and a content hash that label files record.

Legend: N frames, C feature dims, K clusters, R manifest rows.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from speechbs.errors import DataError, SpeechbsError

BACKENDS = ("faiss", "sklearn")
FORMAT = "speechbs-kmeans-v1"
ASSIGN_CHUNK_FRAMES = 32_768


@dataclass(kw_only=True)
class KMeansSettings:
    num_clusters: int
    """K (100 for HuBERT iteration 1 on MFCC, 500 for iteration 2 on layer 6)."""
    backend: Literal["faiss", "sklearn"] = "faiss"
    seed: int = 0
    """Seeds the frame sample and the initialization."""
    max_frames: int = 1_000_000
    """Frames in the training set, at most."""
    frame_fraction: float = 0.1
    """Fraction of each visited utterance's frames kept (consecutive frames are near copies)."""
    num_iterations: int = 20
    """faiss Lloyd iterations; sklearn uses fairseq's max_iter 100 with early stopping."""
    sklearn_n_init: int = 20
    """sklearn restarts (fairseq: 20)."""
    num_restarts: int = 1
    """faiss runs from different random initializations; the lowest-inertia one is kept (faiss ``nredo``)."""
    num_threads: int = 0
    """faiss and sklearn OpenMP threads; 0 = all cores. Use 1 on a shared machine: OpenMP's busy-waiting
    barriers make an oversubscribed 2-thread fit 10-20x slower than 1 thread (measured)."""

    def __post_init__(self) -> None:
        if self.num_clusters < 2:
            raise SpeechbsError(f"--k must be >= 2, got {self.num_clusters}")
        if self.backend not in BACKENDS:
            raise SpeechbsError(f"--backend must be one of {', '.join(BACKENDS)}, got {self.backend!r}")
        if self.max_frames < self.num_clusters:
            raise SpeechbsError(f"--max-frames ({self.max_frames}) must be at least --k ({self.num_clusters})")
        if not 0.0 < self.frame_fraction <= 1.0:
            raise SpeechbsError(f"--frame-fraction must be in (0, 1], got {self.frame_fraction}")


@dataclass
class KMeansModel:
    centroids_KC: torch.Tensor
    """float32 cluster centres."""
    settings: KMeansSettings
    features: dict[str, Any] = field(default_factory=dict)
    """What the centroids cluster (see :class:`speechbs.targets.features.FeatureSpec`)."""
    num_train_frames: int = 0
    inertia_per_frame: float = float("nan")
    """Mean squared distance of the training frames to their centroid."""

    @property
    def num_clusters(self) -> int:
        return int(self.centroids_KC.shape[0])

    @property
    def hash(self) -> str:
        """sha1 of the centroids and the feature description: what label files must agree on."""
        digest = hashlib.sha1(self.centroids_KC.contiguous().numpy().tobytes())
        digest.update(json.dumps(self.features, sort_keys=True).encode("utf-8"))
        return digest.hexdigest()

    @torch.no_grad()
    def assign(self, feats_NC: torch.Tensor | np.ndarray) -> torch.Tensor:
        """Nearest centroid of each frame (int64, on the features' device), in chunks."""
        feats_NC = torch.as_tensor(feats_NC)
        centroids_KC = self.centroids_KC.to(feats_NC.device)
        sq_norms_K = (centroids_KC * centroids_KC).sum(dim=1)
        out_N = torch.empty(feats_NC.shape[0], dtype=torch.int64, device=feats_NC.device)
        for start in range(0, feats_NC.shape[0], ASSIGN_CHUNK_FRAMES):
            chunk_NC = feats_NC[start:start + ASSIGN_CHUNK_FRAMES].float()
            # ||x||^2 is the same for every centroid, so argmin(||c||^2 - 2 x.c) is the nearest one.
            out_N[start:start + chunk_NC.shape[0]] = torch.addmm(sq_norms_K, chunk_NC, centroids_KC.T,
                                                                 alpha=-2.0).argmin(dim=1)
        return out_N

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        state = {"format": FORMAT, "centroids_KC": self.centroids_KC.contiguous(),
                 "settings": asdict(self.settings), "features": json.dumps(self.features),
                 "num_train_frames": self.num_train_frames, "inertia_per_frame": self.inertia_per_frame,
                 "hash": self.hash}
        tmp = path.with_name(path.name + ".tmp")
        torch.save(state, tmp)
        tmp.replace(path)
        return path

    @classmethod
    def load(cls, path: str | Path) -> KMeansModel:
        path = Path(path)
        if not path.is_file():
            raise DataError(f"k-means model {path} does not exist (make it with `speechbs targets fit`)")
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
            assert state["format"] == FORMAT
            model = cls(state["centroids_KC"].float(), KMeansSettings(**state["settings"]),
                        json.loads(state["features"]), int(state["num_train_frames"]),
                        float(state["inertia_per_frame"]))
        except Exception as exc:  # noqa: BLE001 - any unreadable file gets the same clear message
            raise DataError(f"{path} is not a speechbs k-means model ({exc.__class__.__name__}: {exc})") from None
        if model.hash != state["hash"]:
            raise DataError(f"{path}: its content does not match its recorded hash; the file was modified or is corrupt")
        return model


def choose_rows(frames_R: np.ndarray, settings: KMeansSettings) -> np.ndarray:
    """The utterances to visit (sorted row indices): a seeded random set holding enough frames.

    Enough means 1.1 x max_frames expected after keeping ``frame_fraction`` of
    each row's frames, so the sample reaches ``max_frames`` before the cap.
    """
    order_R = np.random.default_rng(settings.seed).permutation(len(frames_R))
    kept_R = np.cumsum(frames_R[order_R] * settings.frame_fraction)
    num_rows = int(np.searchsorted(kept_R, 1.1 * settings.max_frames)) + 1
    return np.sort(order_R[:num_rows])


class FrameSampler:
    """Keeps a seeded fraction of each row's frames (the same frames however rows are batched)."""

    def __init__(self, settings: KMeansSettings) -> None:
        self.settings = settings
        self._parts: list[np.ndarray] = []
        self.num_frames = 0

    def add(self, row: int, feats_TC: torch.Tensor) -> None:
        rng = np.random.default_rng([self.settings.seed, row])
        keep_T = rng.random(feats_TC.shape[0]) < self.settings.frame_fraction
        if keep_T.any():
            part = feats_TC.detach().float().cpu().numpy()[keep_T]
            self._parts.append(part)
            self.num_frames += len(part)

    def frames(self) -> np.ndarray:
        """(N, C) float32, at most ``max_frames`` (a seeded subset when more were kept)."""
        if not self._parts:
            return np.zeros((0, 0), dtype=np.float32)
        feats_NC = np.concatenate(self._parts)
        self._parts = [feats_NC]
        if len(feats_NC) > self.settings.max_frames:
            pick = np.random.default_rng(self.settings.seed).choice(len(feats_NC), self.settings.max_frames,
                                                                    replace=False)
            feats_NC = feats_NC[np.sort(pick)]
        return np.ascontiguousarray(feats_NC, dtype=np.float32)


def fit(feats_NC: np.ndarray, settings: KMeansSettings, features: dict[str, Any] | None = None) -> KMeansModel:
    """Cluster ``feats_NC``; deterministic for a seed (and, for faiss, a thread count)."""
    num_frames = len(feats_NC)
    if num_frames < settings.num_clusters:
        raise DataError(f"only {num_frames} frames were sampled for K = {settings.num_clusters} clusters; "
                        f"raise --frame-fraction or use a larger manifest")
    feats_NC = np.ascontiguousarray(feats_NC, dtype=np.float32)
    if settings.backend == "faiss":
        centroids_KC = _fit_faiss(feats_NC, settings)
    else:
        centroids_KC = _fit_sklearn(feats_NC, settings)
    model = KMeansModel(torch.from_numpy(np.ascontiguousarray(centroids_KC, dtype=np.float32)), settings,
                        dict(features or {}), num_frames)
    model.inertia_per_frame = inertia_per_frame(model, feats_NC)
    return model


def inertia_per_frame(model: KMeansModel, feats_NC: np.ndarray) -> float:
    feats = torch.from_numpy(feats_NC)
    labels_N = model.assign(feats)
    return float(((feats - model.centroids_KC[labels_N]) ** 2).sum(dim=1).mean())


def _fit_faiss(feats_NC: np.ndarray, settings: KMeansSettings) -> np.ndarray:
    faiss = _import("faiss", "faiss-cpu")
    k = settings.num_clusters
    # Use every sampled frame: the sample size is the user's choice (--max-frames), not faiss's 256 per centroid.
    kmeans = faiss.Kmeans(feats_NC.shape[1], k, niter=settings.num_iterations, seed=settings.seed,
                          max_points_per_centroid=math.ceil(len(feats_NC) / k) + 1,
                          min_points_per_centroid=1, nredo=settings.num_restarts, verbose=False)
    previous = faiss.omp_get_max_threads()
    if settings.num_threads > 0:
        faiss.omp_set_num_threads(settings.num_threads)
    try:
        kmeans.train(feats_NC)
    finally:
        faiss.omp_set_num_threads(previous)
    return kmeans.centroids


def _fit_sklearn(feats_NC: np.ndarray, settings: KMeansSettings) -> np.ndarray:
    cluster = _import("sklearn.cluster", "scikit-learn")
    # fairseq examples/hubert/simple_kmeans/learn_kmeans.py, all settings but n_init and the seed.
    kmeans = cluster.MiniBatchKMeans(n_clusters=settings.num_clusters, init="k-means++", max_iter=100,
                                     batch_size=10_000, compute_labels=False, tol=0.0, max_no_improvement=100,
                                     init_size=None, n_init=settings.sklearn_n_init, reassignment_ratio=0.0,
                                     random_state=settings.seed)
    from threadpoolctl import threadpool_limits

    with threadpool_limits(settings.num_threads or None):
        kmeans.fit(feats_NC)
    return kmeans.cluster_centers_


def _import(module: str, package: str) -> Any:
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise SpeechbsError(f"this k-means backend needs {package}: pip install {package} "
                            f"(or `pip install speechbs[kmeans]`)") from None
