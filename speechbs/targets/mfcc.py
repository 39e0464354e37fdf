"""Kaldi-style MFCC + deltas in torch: HuBERT iteration-1 features (39-d at 100 Hz).

HuBERT's first iteration clusters "39-dimensional MFCC features with first and
second order derivatives" (Hsu et al. 2021, section IV-C). fairseq computes them
in ``examples/hubert/simple_kmeans/dump_mfcc_feature.py`` as
``torchaudio.compliance.kaldi.mfcc(wav, sample_frequency=sr, use_energy=False)``
then ``compute_deltas`` twice. This module is that definition, batched and
device-agnostic (GPU too), without torchaudio:

- framing: 25 ms windows every 10 ms, Kaldi ``snip_edges``: a row of N samples
  has ``1 + (N - W) // H`` frames (0 when N < W), W = 400, H = 160 at 16 kHz;
- per frame: DC removal, pre-emphasis 0.97 (the first sample against itself),
  Povey window (Hann ** 0.85), zero-pad to 512, power spectrum; no dither;
- 23 triangular mel bins (Kaldi mel 1127 ln(1 + f/700)) from 20 Hz to Nyquist,
  log with a floor of float32 eps (1.19e-7) so silence stays finite;
- DCT-II (orthonormal, Kaldi's C0 weight sqrt(1/23)) to 13 cepstra, lifter 22
  (1 + 11 sin(pi i / 22)); ``use_energy=False`` keeps C0 as the cepstrum;
- deltas: ``d[t] = sum_{k=1..2} k (x[t+k] - x[t-k]) / 10`` with the row's first
  and last valid frame repeated past its edges (torchaudio ``compute_deltas``,
  window 5), then the same on the deltas: [mfcc, delta, delta-delta].

The input scale is soundfile's float [-1, 1] as in fairseq (not Kaldi's int16).

Legend: B rows, T samples or frames, W window samples, F FFT bins or mel bins, C feature dims.
"""

from __future__ import annotations

import math

import torch

FRAME_LENGTH_S = 0.025
FRAME_SHIFT_S = 0.010
PREEMPHASIS = 0.97
NUM_MEL_BINS = 23
LOW_FREQ_HZ = 20.0
NUM_CEPS = 13
CEPSTRAL_LIFTER = 22.0
DELTA_WINDOW = 5
NUM_FEATURES = 3 * NUM_CEPS
FRAME_RATE_HZ = 1.0 / FRAME_SHIFT_S
DESCRIPTION = ("mfcc: Kaldi MFCC (25 ms Povey window, 10 ms hop, pre-emphasis 0.97, 23 mel bins, "
               "13 ceps, lifter 22, no energy) + delta + delta-delta (window 5), 39-d at 100 Hz")


def window_sizes(sample_rate_hz: int) -> tuple[int, int, int]:
    """(window, shift, FFT size) in samples; Kaldi truncates the ms products to whole samples."""
    window = int(sample_rate_hz * FRAME_LENGTH_S)
    shift = int(sample_rate_hz * FRAME_SHIFT_S)
    return window, shift, 1 << (window - 1).bit_length()


def num_frames(num_samples: torch.Tensor | int, sample_rate_hz: int) -> torch.Tensor | int:
    """Kaldi ``snip_edges`` frame count: ``1 + (N - W) // H`` when N >= W, else 0."""
    window, shift, _ = window_sizes(sample_rate_hz)
    if isinstance(num_samples, torch.Tensor):
        return torch.where(num_samples >= window, 1 + torch.div(num_samples - window, shift, rounding_mode="floor"),
                           torch.zeros_like(num_samples))
    return 1 + (num_samples - window) // shift if num_samples >= window else 0


def _mel(freq_hz: torch.Tensor) -> torch.Tensor:
    return 1127.0 * torch.log1p(freq_hz / 700.0)


def mel_banks(sample_rate_hz: int, num_fft: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Triangular filters (NUM_MEL_BINS, num_fft // 2 + 1) over the power spectrum, and their centres in Hz.

    Kaldi's construction: bins equally spaced on the mel scale between
    LOW_FREQ_HZ and Nyquist, triangles in the mel domain, the Nyquist FFT bin unused.
    """
    nyquist = 0.5 * sample_rate_hz
    low, high = _mel(torch.tensor(LOW_FREQ_HZ, dtype=torch.float64)), _mel(torch.tensor(nyquist, dtype=torch.float64))
    delta = (high - low) / (NUM_MEL_BINS + 1)
    index_F1 = torch.arange(NUM_MEL_BINS, dtype=torch.float64).unsqueeze(1)
    left_F1, center_F1, right_F1 = low + index_F1 * delta, low + (index_F1 + 1) * delta, low + (index_F1 + 2) * delta
    mel_1F = _mel(sample_rate_hz / num_fft * torch.arange(num_fft // 2, dtype=torch.float64)).unsqueeze(0)
    up = (mel_1F - left_F1) / (center_F1 - left_F1)
    down = (right_F1 - mel_1F) / (right_F1 - center_F1)
    banks = torch.clamp(torch.minimum(up, down), min=0.0)
    banks = torch.nn.functional.pad(banks, (0, 1))
    centers_hz = 700.0 * (torch.exp(center_F1.squeeze(1) / 1127.0) - 1.0)
    return banks.float(), centers_hz.float()


def dct_matrix() -> torch.Tensor:
    """(NUM_MEL_BINS, NUM_CEPS) orthonormal DCT-II with Kaldi's C0 column sqrt(1/num_bins)."""
    n = torch.arange(NUM_MEL_BINS, dtype=torch.float64).unsqueeze(1)
    k = torch.arange(NUM_CEPS, dtype=torch.float64).unsqueeze(0)
    dct = torch.cos(math.pi / NUM_MEL_BINS * (n + 0.5) * k) * math.sqrt(2.0 / NUM_MEL_BINS)
    dct[:, 0] = math.sqrt(1.0 / NUM_MEL_BINS)
    return dct.float()


def lifter() -> torch.Tensor:
    i = torch.arange(NUM_CEPS, dtype=torch.float64)
    return (1.0 + 0.5 * CEPSTRAL_LIFTER * torch.sin(math.pi * i / CEPSTRAL_LIFTER)).float()


def log_mel(wav_BT: torch.Tensor, lengths_B: torch.Tensor,
            sample_rate_hz: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Kaldi log mel filterbank energies (B, T, NUM_MEL_BINS) and valid frames per row (padding is 0)."""
    window, shift, num_fft = window_sizes(sample_rate_hz)
    wav_BT = wav_BT.float()
    lengths_B = lengths_B.to(wav_BT.device)
    frame_lengths_B = num_frames(lengths_B, sample_rate_hz)
    if wav_BT.shape[1] < window:
        return wav_BT.new_zeros(wav_BT.shape[0], 0, NUM_MEL_BINS), frame_lengths_B
    frames_BTW = wav_BT.unfold(1, window, shift)
    frames_BTW = frames_BTW - frames_BTW.mean(dim=2, keepdim=True)
    previous_BTW = torch.cat([frames_BTW[:, :, :1], frames_BTW[:, :, :-1]], dim=2)
    frames_BTW = frames_BTW - PREEMPHASIS * previous_BTW
    povey_W = torch.hann_window(window, periodic=False, dtype=torch.float32, device=wav_BT.device).pow(0.85)
    spectrum_BTF = torch.fft.rfft(frames_BTW * povey_W, n=num_fft).abs().pow(2.0)
    banks_MF, _ = mel_banks(sample_rate_hz, num_fft)
    mel_BTM = spectrum_BTF @ banks_MF.to(wav_BT.device).T
    log_BTM = torch.clamp(mel_BTM, min=torch.finfo(torch.float32).eps).log()
    return _zero_padding(log_BTM, frame_lengths_B), frame_lengths_B


def compute_deltas(x_BTC: torch.Tensor, frame_lengths_B: torch.Tensor) -> torch.Tensor:
    """torchaudio ``compute_deltas`` (window 5, edge frames repeated), per row up to its own length."""
    half = (DELTA_WINDOW - 1) // 2
    denom = half * (half + 1) * (2 * half + 1) / 3
    t_1T = torch.arange(x_BTC.shape[1], device=x_BTC.device).unsqueeze(0)
    last_B1 = (frame_lengths_B.to(x_BTC.device).clamp(min=1) - 1).unsqueeze(1)
    out_BTC = torch.zeros_like(x_BTC)
    for k in range(1, half + 1):
        ahead_BT = torch.minimum(t_1T + k, last_B1).clamp(min=0)
        behind_BT = torch.minimum((t_1T - k).clamp(min=0), last_B1)
        out_BTC = out_BTC + k * (_frames_at(x_BTC, ahead_BT) - _frames_at(x_BTC, behind_BT))
    return _zero_padding(out_BTC / denom, frame_lengths_B)


def mfcc_features(wav_BT: torch.Tensor, lengths_B: torch.Tensor,
                  sample_rate_hz: int) -> tuple[torch.Tensor, torch.Tensor]:
    """39-d MFCC + delta + delta-delta at 100 Hz: (feats_BTC float32, frame_lengths_B int64).

    Row b's frames beyond ``frame_lengths_B[b]`` are zero. Each row equals the
    same row computed alone (framing never reads past a row's own samples).
    """
    log_BTM, frame_lengths_B = log_mel(wav_BT, lengths_B, sample_rate_hz)
    ceps_BTC = (log_BTM @ dct_matrix().to(log_BTM.device)) * lifter().to(log_BTM.device)
    ceps_BTC = _zero_padding(ceps_BTC, frame_lengths_B)
    delta_BTC = compute_deltas(ceps_BTC, frame_lengths_B)
    delta2_BTC = compute_deltas(delta_BTC, frame_lengths_B)
    return torch.cat([ceps_BTC, delta_BTC, delta2_BTC], dim=2), frame_lengths_B


def _frames_at(x_BTC: torch.Tensor, index_BT: torch.Tensor) -> torch.Tensor:
    return torch.gather(x_BTC, 1, index_BT.unsqueeze(-1).expand(-1, -1, x_BTC.shape[2]))


def _zero_padding(x_BTC: torch.Tensor, frame_lengths_B: torch.Tensor) -> torch.Tensor:
    valid_BT = torch.arange(x_BTC.shape[1], device=x_BTC.device).unsqueeze(0) < frame_lengths_B.to(x_BTC.device).unsqueeze(1)
    return x_BTC * valid_BT.unsqueeze(-1)
