"""Cluster label files: one line per manifest row, aligned and checked.

Format (fairseq-compatible, ``train.tsv`` -> ``train.km``): line i holds the
space-separated cluster ids of manifest row i, one per label frame at
``label_rate_hz``. A JSON sidecar ``train.km.json`` records what makes the
labels meaningful, so a mismatch is refused instead of trained on:

    {"label_rate_hz": 50.0, "num_clusters": 500, "kmeans_hash": "<sha1 of the k-means model>",
     "features": "hubert layer 6 of runs/hubert-it1/checkpoints/step_00400000.pt",
     "manifest_rows": 28539, "manifest_hash": "<hash of (path, num_samples) rows>"}

Legend: B rows of a micro-batch, L label frames of its longest row.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class ClusterTargets:
    """The cluster labels of one micro-batch, cropped to the segments the planner chose."""

    labels_BL: torch.Tensor
    """int64 cluster ids, padded with -1 after each row's length."""
    lengths_B: torch.Tensor
    """int64 label frames per row."""
    label_rate_hz: float
    """Label frames per second of audio (50 or 100 in HuBERT)."""
    num_clusters: int
    """K: ids are in [0, K)."""

    def to(self, device: torch.device | str) -> "ClusterTargets":
        return ClusterTargets(self.labels_BL.to(device, non_blocking=True), self.lengths_B.to(device),
                              self.label_rate_hz, self.num_clusters)
