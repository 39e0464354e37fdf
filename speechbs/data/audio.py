"""The one audio loading path, for training and evaluation alike.

soundfile decodes (WAV, FLAC, OGG, ... through the libsndfile it bundles);
soxr resamples when a file's rate differs from the model's; multi-channel audio
is mixed down or refused per :class:`~speechbs.config.AudioConfig`; optional
per-utterance normalization follows fairseq's ``normalize`` (layer norm over
the whole waveform). Output is float32 mono at the model's rate.

Legend: T = time (samples), C = channels.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import soundfile as sf

from speechbs.config import AudioConfig
from speechbs.errors import DataError


@dataclass(frozen=True)
class AudioInfo:
    """What a file's header says; no samples are decoded."""

    num_samples: int
    """Frames per channel, at ``sample_rate_hz``."""
    sample_rate_hz: int
    num_channels: int
    format: str
    """Container, e.g. ``WAV`` or ``FLAC``."""

    @property
    def seconds(self) -> float:
        return self.num_samples / self.sample_rate_hz


def read_info(path: str | Path) -> AudioInfo:
    """Read a file's header, or raise :class:`DataError` naming the file."""
    try:
        with sf.SoundFile(str(path)) as f:
            return AudioInfo(int(f.frames), int(f.samplerate), int(f.channels), str(f.format))
    except (RuntimeError, OSError, ValueError, TypeError) as exc:
        raise DataError(f"{path}: cannot read the audio header ({_reason(exc, path)})") from None


def read_infos(paths: list[Path] | list[str], num_threads: int = 8) -> list[AudioInfo | DataError]:
    """Headers of many files: an :class:`AudioInfo`, or the :class:`DataError` saying why not.

    Header reads are I/O bound, so threads help on network file systems; each
    thread takes a contiguous chunk (one task per file costs more than the
    read itself on a local disk: ~30 us per header).
    """
    paths = list(paths)
    num_chunks = max(1, min(num_threads, len(paths) // 512))
    if num_chunks == 1:
        return _read_chunk(paths)
    bounds = np.linspace(0, len(paths), num_chunks + 1).astype(int)
    chunks = [paths[a:b] for a, b in zip(bounds[:-1], bounds[1:])]
    with ThreadPoolExecutor(num_chunks) as pool:
        return [info for part in pool.map(_read_chunk, chunks) for info in part]


def _read_chunk(paths: list[Path] | list[str]) -> list[AudioInfo | DataError]:
    infos: list[AudioInfo | DataError] = []
    for path in paths:
        try:
            infos.append(read_info(path))
        except DataError as exc:
            infos.append(exc)
    return infos


def load_audio(
    path: str | Path,
    cfg: AudioConfig,
    *,
    offset_samples: int = 0,
    num_samples: int | None = None,
) -> np.ndarray:
    """Decode ``path`` to float32 mono at ``cfg.sample_rate_hz``, shape (T,).

    ``offset_samples`` and ``num_samples`` select a crop, counted at the
    model's rate (after resampling), so a batch plan can crop without knowing
    the file's own rate. A crop that runs past the end returns what is there.
    A file at another rate is decoded whole and resampled before cropping, so
    the crop is sample-exact against the resampled utterance.
    """
    assert offset_samples >= 0 and (num_samples is None or num_samples >= 0)
    try:
        with sf.SoundFile(str(path)) as f:
            rate = int(f.samplerate)
            if rate != cfg.sample_rate_hz and cfg.on_other_rate == "reject":
                raise DataError(f"{path}: sample rate {rate} Hz, the model needs "
                                f"{cfg.sample_rate_hz} Hz (set audio.on_other_rate = \"resample\" "
                                f"or resample the corpus)")
            if rate == cfg.sample_rate_hz:
                wav_TC = _read_crop(f, offset_samples, num_samples)
            else:
                wav_TC = f.read(dtype="float32", always_2d=True)
    except DataError:
        raise
    except (RuntimeError, OSError, ValueError, TypeError) as exc:
        raise DataError(f"{path}: cannot decode audio ({_reason(exc, path)})") from None
    wav_T = to_mono(wav_TC, cfg, path)
    check_finite(wav_T, path)
    if rate != cfg.sample_rate_hz:
        wav_T = resample(wav_T, rate, cfg.sample_rate_hz)
        end = None if num_samples is None else offset_samples + num_samples
        wav_T = wav_T[offset_samples:end]
    if cfg.normalize:
        wav_T = normalize(wav_T)
    return np.ascontiguousarray(wav_T, dtype=np.float32)


def check_finite(wav_T: np.ndarray, path: str | Path) -> None:
    """Refuse NaN or infinite samples (a float file from a broken process): one would make the loss
    non-finite, and training would skip steps or diverge far from the file that caused it."""
    bad_T = ~np.isfinite(wav_T)
    if bad_T.any():
        raise DataError(f"{path}: {int(bad_T.sum())} of {len(wav_T)} samples are NaN or infinite (first at "
                        f"sample {int(np.argmax(bad_T))}); replace the file, or leave it out: `speechbs validate "
                        f"MANIFEST --decode` writes a cleaned manifest without it")


def _read_crop(f: sf.SoundFile, offset_samples: int, num_samples: int | None) -> np.ndarray:
    if offset_samples >= f.frames:  # libsndfile refuses to seek past the end
        return np.zeros((0, f.channels), dtype=np.float32)
    f.seek(offset_samples)
    frames = -1 if num_samples is None else num_samples
    return f.read(frames=frames, dtype="float32", always_2d=True)


def to_mono(wav_TC: np.ndarray, cfg: AudioConfig, path: str | Path = "<array>") -> np.ndarray:
    """(time, channels) -> (time,), by the multi-channel policy."""
    if wav_TC.ndim == 1:
        return wav_TC
    if wav_TC.shape[1] == 1:
        return wav_TC[:, 0]
    if cfg.multi_channel == "reject":
        raise DataError(f"{path}: {wav_TC.shape[1]} channels; set audio.multi_channel = \"mix\" "
                        f"to mix down to mono, or convert the file")
    return wav_TC.mean(axis=1)


def resample(wav_T: np.ndarray, from_hz: int, to_hz: int) -> np.ndarray:
    """High-quality resampling with soxr (the ``HQ`` preset)."""
    if from_hz == to_hz:
        return wav_T
    import soxr  # imported here: only needed when rates differ

    return soxr.resample(wav_T, from_hz, to_hz, quality="HQ").astype(np.float32, copy=False)


def normalize(wav_T: np.ndarray, eps: float = 1e-5) -> np.ndarray:
    """Zero mean and unit variance over the utterance (fairseq ``F.layer_norm(wav, wav.shape)``)."""
    if wav_T.size == 0:
        return wav_T
    return (wav_T - wav_T.mean()) / np.sqrt(wav_T.var() + eps)


def _reason(exc: Exception, path: str | Path) -> str:
    if not os.path.exists(path):
        return "no such file"
    if os.path.isdir(path):
        return "a directory, not a file"
    text = str(exc).strip().splitlines()
    return text[-1] if text else type(exc).__name__
