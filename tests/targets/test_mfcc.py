"""MFCC numerics on signals whose answer is known, and parity with torchaudio's Kaldi MFCC when it imports."""

from __future__ import annotations

import math

import pytest
import torch

from speechbs.targets import mfcc

RATE = 16_000


def tone(freq_hz: float, seconds: float = 0.5, rate: int = RATE, amplitude: float = 0.5) -> torch.Tensor:
    t = torch.arange(int(seconds * rate), dtype=torch.float64) / rate
    return (amplitude * torch.sin(2 * math.pi * freq_hz * t)).float()


def test_frame_count_is_kaldi_snip_edges() -> None:
    lengths = torch.tensor([0, 399, 400, 559, 560, 16_000, 16_160])
    assert mfcc.num_frames(lengths, RATE).tolist() == [0, 0, 1, 1, 2, 98, 99]
    assert [mfcc.num_frames(int(n), RATE) for n in lengths] == [0, 0, 1, 1, 2, 98, 99]
    assert mfcc.num_frames(8_000, 8_000) == 98  # 200-sample windows every 80 samples at 8 kHz
    wav_BT = torch.randn(3, 16_160)
    feats_BTC, frame_lengths_B = mfcc.mfcc_features(wav_BT, torch.tensor([16_160, 16_000, 399]), RATE)
    assert feats_BTC.shape == (3, 99, 39)
    assert frame_lengths_B.tolist() == [99, 98, 0]
    assert feats_BTC[1, 98:].abs().sum() == 0 and feats_BTC[2].abs().sum() == 0


@pytest.mark.parametrize("freq_hz", [300.0, 1_000.0, 3_000.0, 6_000.0])
def test_tone_energy_lands_in_the_mel_bin_centred_on_it(freq_hz: float) -> None:
    log_BTM, _ = mfcc.log_mel(tone(freq_hz).unsqueeze(0), torch.tensor([8_000]), RATE)
    _, centers_hz = mfcc.mel_banks(RATE, 512)
    nearest = int((centers_hz - freq_hz).abs().argmin())
    assert (log_BTM[0].argmax(dim=1) == nearest).all()


def test_silence_is_the_log_floor_and_a_tone_is_far_above_it() -> None:
    wav_BT = torch.stack([torch.zeros(8_000), tone(1_000.0)])
    log_BTM, _ = mfcc.log_mel(wav_BT, torch.tensor([8_000, 8_000]), RATE)
    floor = math.log(torch.finfo(torch.float32).eps)
    assert torch.allclose(log_BTM[0], torch.full_like(log_BTM[0], floor))
    assert log_BTM[1].max() > floor + 20
    feats_BTC, _ = mfcc.mfcc_features(wav_BT, torch.tensor([8_000, 8_000]), RATE)
    assert torch.isfinite(feats_BTC).all()
    # Silence: every frame identical, so C0 = sqrt(23) * floor x lifter(0)=1 and all deltas are 0.
    assert torch.allclose(feats_BTC[0, :, 0], torch.full_like(feats_BTC[0, :, 0], math.sqrt(23) * floor), rtol=1e-5)
    assert feats_BTC[0, :, 13:].abs().max() < 1e-4


def test_batched_rows_equal_rows_alone() -> None:
    torch.manual_seed(0)
    lengths = [16_000, 5_123, 400, 12_345]
    wav_BT = torch.randn(4, 16_000) * 0.1
    batched_BTC, frame_lengths_B = mfcc.mfcc_features(wav_BT, torch.tensor(lengths), RATE)
    for b, n in enumerate(lengths):
        alone_1TC, alone_1 = mfcc.mfcc_features(wav_BT[b:b + 1, :n], torch.tensor([n]), RATE)
        assert int(alone_1) == int(frame_lengths_B[b])
        assert torch.allclose(batched_BTC[b, :int(alone_1)], alone_1TC[0], atol=1e-4)


def test_deltas_of_a_linear_ramp() -> None:
    slope = 0.5
    ramp_BTC = (slope * torch.arange(12, dtype=torch.float32)).view(1, 12, 1).repeat(2, 1, 3)
    lengths_B = torch.tensor([12, 7])
    delta_BTC = mfcc.compute_deltas(ramp_BTC, lengths_B)
    # Interior: sum_k k (x[t+k] - x[t-k]) / 10 = slope (1*2 + 2*4) / 10 = slope.
    assert torch.allclose(delta_BTC[0, 2:10], torch.full((8, 3), slope))
    # Edges repeat the first/last frame: (1*1 + 2*2) / 10 = half the slope at t = 0, 0.8 at t = 1.
    assert torch.allclose(delta_BTC[0, 0], torch.full((3,), 0.5 * slope))
    assert torch.allclose(delta_BTC[0, 1], torch.full((3,), 0.8 * slope))
    assert torch.allclose(delta_BTC[0, 11], torch.full((3,), 0.5 * slope))
    # The short row ends at its own last frame, not at the padding.
    assert torch.allclose(delta_BTC[1, 6], torch.full((3,), 0.5 * slope))
    assert delta_BTC[1, 7:].abs().sum() == 0
    ddelta_BTC = mfcc.compute_deltas(delta_BTC, lengths_B)
    assert ddelta_BTC[0, 4:8].abs().max() < 1e-6


def test_lifter_and_dct_are_kaldis() -> None:
    assert torch.allclose(mfcc.lifter()[:3], torch.tensor([1.0, 1 + 11 * math.sin(math.pi / 22),
                                                           1 + 11 * math.sin(2 * math.pi / 22)]))
    dct = mfcc.dct_matrix()
    assert dct.shape == (23, 13)
    assert torch.allclose(dct.T @ dct, torch.eye(13), atol=1e-5)  # orthonormal columns


def test_matches_torchaudio_kaldi_mfcc_with_deltas() -> None:
    torchaudio = pytest.importorskip("torchaudio")
    torch.manual_seed(1)
    wav_T = (torch.randn(12_345) * 0.05 + tone(440.0, seconds=12_345 / RATE)).float()
    ref_TC = torchaudio.compliance.kaldi.mfcc(wav_T.view(1, -1), sample_frequency=RATE, use_energy=False)
    deltas = torchaudio.functional.compute_deltas(ref_TC.T)
    ref_TC = torch.cat([ref_TC.T, deltas, torchaudio.functional.compute_deltas(deltas)]).T
    ours_BTC, _ = mfcc.mfcc_features(wav_T.view(1, -1), torch.tensor([12_345]), RATE)
    assert ours_BTC.shape[1:] == ref_TC.shape
    assert torch.allclose(ours_BTC[0], ref_TC, atol=2e-3, rtol=1e-3)


def test_matches_kaldi_native_fbank_mfcc_with_deltas() -> None:
    """Kaldi's MFCC and add-deltas (kaldi-native-fbank, a CPU wheel) on a noisy tone, frame by frame."""
    knf = pytest.importorskip("kaldi_native_fbank")
    import numpy as np

    torch.manual_seed(1)
    wav_T = (torch.randn(12_345) * 0.05 + tone(440.0, seconds=12_345 / RATE)).float()
    opts = knf.MfccOptions()
    opts.frame_opts.samp_freq = RATE
    opts.frame_opts.dither = 0.0  # Kaldi dithers by default; the comparison needs the same samples
    opts.use_energy = False
    online = knf.OnlineMfcc(opts)
    online.accept_waveform(RATE, wav_T.tolist())
    online.input_finished()
    ref_TC = np.stack([online.get_frame(i) for i in range(online.num_frames_ready)])
    ref_TC = knf.compute_deltas(knf.DeltaOptions(order=2, window=2), ref_TC)
    ours_BTC, _ = mfcc.mfcc_features(wav_T.view(1, -1), torch.tensor([12_345]), RATE)
    assert ours_BTC.shape[1:] == ref_TC.shape == (75, 39)
    diff_TC = np.abs(ours_BTC[0].numpy() - ref_TC)
    assert diff_TC[:, :26].max() < 2e-4  # MFCC and deltas, every frame (measured 7.3e-5)
    # Delta-deltas agree away from the edges. At the first and last two frames they differ by
    # design: HuBERT's features (torchaudio compute_deltas twice) repeat the deltas' edge frames,
    # Kaldi's add-deltas repeats the MFCC's; ``mfcc.py`` follows HuBERT.
    assert diff_TC[2:-2].max() < 2e-4
    assert diff_TC[:2, 26:].max() > 1e-2
