"""The one audio loading path, for training and evaluation alike.

soundfile decodes (WAV, FLAC, OGG, ... through the libsndfile it bundles);
soxr resamples when a file's rate differs from the model's; multi-channel audio
is mixed down or refused per :class:`~speechbs.config.AudioConfig`; optional
per-utterance normalization follows fairseq's ``normalize`` (layer norm over
the whole waveform). Output is float32 mono at the model's rate.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

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
        info = sf.info(str(path))
    except (RuntimeError, sf.LibsndfileError) as exc:
        raise DataError(f"{path}: cannot read the audio header ({_reason(exc)})") from None
    return AudioInfo(int(info.frames), int(info.samplerate), int(info.channels), str(info.format))


def load_audio(
    path: str | Path,
    cfg: AudioConfig,
    *,
    offset_samples: int = 0,
    num_samples: int | None = None,
) -> np.ndarray:
    """Decode ``path`` to float32 mono at ``cfg.sample_rate_hz``.

    ``offset_samples`` and ``num_samples`` select a crop, counted at the
    model's rate (after resampling), so a batch plan can crop without knowing
    the file's own rate.
    """
    try:
        with sf.SoundFile(str(path)) as f:
            rate = int(f.samplerate)
            if rate == cfg.sample_rate_hz:
                f.seek(offset_samples)
                frames = -1 if num_samples is None else num_samples
                wav = f.read(frames=frames, dtype="float32", always_2d=True)
                offset_samples, crop = 0, None
            else:
                if cfg.on_other_rate == "reject":
                    raise DataError(f"{path}: sample rate {rate} Hz, the model needs "
                                    f"{cfg.sample_rate_hz} Hz (set audio.on_other_rate = \"resample\" "
                                    f"or resample the corpus)")
                wav = f.read(dtype="float32", always_2d=True)
                crop = num_samples
    except (RuntimeError, sf.LibsndfileError) as exc:
        raise DataError(f"{path}: cannot decode audio ({_reason(exc)})") from None
    wav = to_mono(wav, cfg, path)
    if rate != cfg.sample_rate_hz:
        wav = resample(wav, rate, cfg.sample_rate_hz)
        end = None if crop is None else offset_samples + crop
        wav = wav[offset_samples:end]
    if cfg.normalize:
        wav = normalize(wav)
    return np.ascontiguousarray(wav, dtype=np.float32)


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
    return (wav_T - wav_T.mean()) / np.sqrt(wav_T.var() + eps)


def _reason(exc: Exception) -> str:
    text = str(exc).strip().splitlines()
    return text[-1] if text else type(exc).__name__
