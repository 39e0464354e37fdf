"""Every layer's features of a manifest, computed once per (checkpoint, manifest, level) and cached on disk.

Utterance-level tasks keep the mean over each utterance's valid frames (L, C); frame-level
tasks keep every frame (T, L, C). The cache file is named by a key over the checkpoint
file's sha1, the manifest's rows and the level, so a retrained or replaced checkpoint (or an
edited manifest) never reads stale features, and a second probe of the same checkpoint reads
them in seconds.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch

from speechbs.atomic import write_text
from speechbs.data.manifest import Manifest, read_manifest
from speechbs.errors import DataError

Level = Literal["utterance", "frame"]
FEATURE_VERSION = 1
"""Bumped when what is cached changes meaning (it is part of every cache key)."""


@dataclass
class LayerFeatures:
    """One manifest's features: per utterance (L, C) pooled, or (T, L, C) frames."""

    per_row: list[torch.Tensor]
    num_layers: int
    dim: int
    key: str
    from_cache: bool


def cache_key(checkpoint_sha1: str, manifest: Manifest, level: Level, random_init: bool = False) -> str:
    from speechbs.targets.labels import manifest_hash

    text = json.dumps({"checkpoint_sha1": checkpoint_sha1, "manifest": manifest_hash(manifest),
                       "level": level, "random_init": random_init, "version": FEATURE_VERSION}, sort_keys=True)
    return hashlib.sha1(text.encode()).hexdigest()


class FeatureCache:
    """The features of one checkpoint's encoder for any number of manifests (a probe's splits).

    The checkpoint file is hashed once, and loaded once, on the first manifest whose features
    are not in the cache; a probe whose splits are all cached never loads the model.
    """

    def __init__(self, checkpoint: str | Path, level: Level, cache_dir: str | Path, *, num_workers: int = 1,
                 device: str = "cpu", random_init: bool = False) -> None:
        from speechbs.pretrained import resolve_checkpoint
        from speechbs.targets.features import file_sha1

        self.checkpoint, self.level, self.cache_dir = checkpoint, level, Path(cache_dir)
        self.num_workers, self.device, self.random_init = num_workers, device, random_init
        self.sha1 = file_sha1(resolve_checkpoint(checkpoint))
        self._extractor = None

    def features(self, manifest_path: str | Path) -> LayerFeatures:
        """Every row's features of ``manifest_path``, from the cache when its key matches."""
        from speechbs.targets.features import all_layers_extractor, iter_features

        manifest = read_manifest(manifest_path)
        level = self.level
        key = cache_key(self.sha1, manifest, level, self.random_init)
        cache = self.cache_dir / f"{Path(manifest_path).stem}-{level}-{key[:16]}.pt"
        if cache.is_file():
            saved = torch.load(cache, weights_only=True)
            if saved.get("key") == key:
                return LayerFeatures(saved["per_row"], saved["num_layers"], saved["dim"], key, from_cache=True)
        if self._extractor is None:
            self._extractor = all_layers_extractor(self.checkpoint, self.device, random_init=self.random_init,
                                                   checkpoint_sha1=self.sha1)
        extractor = self._extractor
        num_layers = extractor.spec.dim // int(extractor.model.cfg.embed_dim)
        dim = extractor.spec.dim // num_layers
        per_row: list[torch.Tensor] = [torch.empty(0)] * len(manifest)
        # Length-sorted batches pad little (a third less compute on the built-in corpus); the padding-aware
        # encoder gives every row the same features in any batch, and rows are stored by index.
        by_length = sorted(range(len(manifest)), key=lambda r: int(manifest.num_samples[r]))
        for row, feats_TX in iter_features(manifest, extractor, rows=by_length, num_workers=self.num_workers):
            if len(feats_TX) == 0:
                raise DataError(f"{manifest_path}: row {row + 1} ({manifest.paths[row]}) is shorter than one frame "
                                f"of the encoder (400 samples); drop it with `speechbs validate`")
            feats_TLC = feats_TX.view(len(feats_TX), num_layers, dim).cpu()
            per_row[row] = feats_TLC.mean(dim=0) if level == "utterance" else feats_TLC.to(torch.float16)
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_name(cache.name + ".tmp")
        torch.save({"key": key, "per_row": per_row, "num_layers": num_layers, "dim": dim}, tmp)
        tmp.replace(cache)
        write_text(cache.with_suffix(".json"), json.dumps({
            "checkpoint": str(self.checkpoint), "checkpoint_sha1": self.sha1, "manifest": str(manifest_path),
            "level": level, "random_init": self.random_init, "version": FEATURE_VERSION}, indent=2) + "\n")
        return LayerFeatures(per_row, num_layers, dim, key, from_cache=False)


def layer_features(checkpoint: str | Path, manifest_path: str | Path, level: Level, cache_dir: str | Path, *,
                   num_workers: int = 1, device: str = "cpu", random_init: bool = False) -> LayerFeatures:
    """The features of every row of one manifest (:class:`FeatureCache` serves several)."""
    return FeatureCache(checkpoint, level, cache_dir, num_workers=num_workers, device=device,
                        random_init=random_init).features(manifest_path)
