"""Shared fixtures. Tests that need the real recordings in ../shared/data skip when it is absent."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("SPEECHBS_SHARED_DATA", REPO.parent / "shared" / "data"))


def shared_dataset(name: str) -> Path:
    """Path to ../shared/data/<name>, or skip the test with the reason."""
    path = SHARED_DATA / name
    if not path.is_dir():
        pytest.skip(f"real recordings not found at {path} (set SPEECHBS_SHARED_DATA to the data folder)")
    return path


@pytest.fixture
def digits_dir() -> Path:
    """Free Spoken Digit Dataset: 3,000 WAVs, 8 kHz, 0.14-2.28 s."""
    return shared_dataset("free_spoken_digit")


@pytest.fixture
def yesno_dir() -> Path:
    """yesno: 60 WAVs, 8 kHz, ~6 s, 8 words each."""
    return shared_dataset("yesno")


@pytest.fixture
def ljspeech_dir() -> Path:
    """LJ Speech sample: 32 WAVs, 22.05 kHz, 1.8-10 s."""
    return shared_dataset("ljspeech_sample")


@pytest.fixture(scope="session")
def builtin_corpus_2min(tmp_path_factory) -> dict[str, Path]:
    """Manifests (train/valid/test) of 2 min of the built-in corpus, seed 3; built once, read only."""
    pytest.importorskip("espeakng_loader", reason="the built-in corpus needs espeakng-loader")
    from speechbs.data.corpus import build_corpus

    root = tmp_path_factory.mktemp("builtin_2min")
    return build_corpus(root / "audio", root / "manifests", minutes=2, seed=3, num_workers=2).manifests
