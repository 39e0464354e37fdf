"""Atomic text files: write beside the target, then rename over it.

A reader (or a crash) sees the old file or the new one, never half of one.
Used for manifests, label files, configs, checkpoint indexes and corpus
metadata; checkpoints themselves add an fsync (:mod:`speechbs.checkpoint`).
"""

from __future__ import annotations

import os
from pathlib import Path


def write_text(path: str | Path, text: str) -> Path:
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
    return path
