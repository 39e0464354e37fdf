"""load_audio / read_info: resampling, channel policy, crops, normalization, bad files.

Legend: T = time (samples), C = channels.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from speechbs.config import AudioConfig
from speechbs.data.audio import AudioInfo, load_audio, normalize, read_info, read_infos, to_mono
from speechbs.data.manifest import Manifest
from speechbs.errors import DataError


def sine(freq_hz: float, rate_hz: int, seconds: float, amplitude: float = 0.5) -> np.ndarray:
    t = np.arange(int(rate_hz * seconds)) / rate_hz
    return (amplitude * np.sin(2 * np.pi * freq_hz * t)).astype(np.float32)


def peak_hz(wav_T: np.ndarray, rate_hz: int) -> float:
    spectrum = np.abs(np.fft.rfft(wav_T * np.hanning(len(wav_T))))
    return float(np.fft.rfftfreq(len(wav_T), 1 / rate_hz)[spectrum.argmax()])


def test_read_info_reads_the_header(tmp_path: Path) -> None:
    path = tmp_path / "a.flac"
    sf.write(path, np.zeros((1234, 2), np.float32), 22050)
    assert read_info(path) == AudioInfo(1234, 22050, 2, "FLAC")
    assert read_info(path).seconds == pytest.approx(1234 / 22050)


@pytest.mark.parametrize("content, reason", [(b"", "Format not recognised"),
                                             (bytes(range(256)) * 8, "Format not recognised")])
def test_read_info_names_the_file_when_unreadable(tmp_path: Path, content: bytes, reason: str) -> None:
    path = tmp_path / "bad.flac"
    path.write_bytes(content)
    with pytest.raises(DataError, match=f"bad.flac: cannot read the audio header .*{reason}"):
        read_info(path)


def test_read_info_says_when_the_file_is_missing(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="nope.wav: cannot read the audio header \\(no such file\\)"):
        read_info(tmp_path / "nope.wav")


def test_read_infos_keeps_order_across_threads(tmp_path: Path) -> None:
    paths = []
    for i in range(1100):  # > 2 x 512, so several threads each take a chunk
        path = tmp_path / f"{i}.wav"
        if i % 97 == 5:
            path.write_bytes(b"not audio")
        else:
            sf.write(path, np.zeros(i + 1, np.int16), 8000, subtype="PCM_16")
        paths.append(path)
    infos = read_infos(paths, num_threads=4)
    assert len(infos) == len(paths)
    for i, info in enumerate(infos):
        if i % 97 == 5:
            assert isinstance(info, DataError) and f"{i}.wav" in str(info)
        else:
            assert isinstance(info, AudioInfo) and info.num_samples == i + 1


def test_resample_8k_to_16k_doubles_length_and_keeps_frequency(tmp_path: Path) -> None:
    path = tmp_path / "tone.wav"
    wav_T = sine(440.0, 8000, 1.0)
    sf.write(path, wav_T, 8000)
    out_T = load_audio(path, AudioConfig(sample_rate_hz=16_000))
    assert out_T.dtype == np.float32 and out_T.shape == (16_000,)
    assert peak_hz(out_T, 16_000) == pytest.approx(440.0, abs=2.0)
    assert np.abs(out_T).max() == pytest.approx(0.5, abs=0.02)


@pytest.mark.parametrize("rate_hz, num_samples", [(22_050, 41_885), (8_000, 2_384), (44_100, 1_001)])
def test_resampled_length_matches_the_manifest_prediction(tmp_path: Path, rate_hz: int,
                                                          num_samples: int) -> None:
    path = tmp_path / "x.wav"
    sf.write(path, np.zeros(num_samples, np.float32), rate_hz)
    manifest = Manifest(tmp_path, ["x.wav"], [num_samples], [rate_hz])
    assert len(load_audio(path, AudioConfig())) == manifest.num_model_samples(16_000)[0]


def test_other_rate_reject_names_file_and_setting(tmp_path: Path) -> None:
    path = tmp_path / "eight.wav"
    sf.write(path, np.zeros(800, np.float32), 8000)
    with pytest.raises(DataError, match="eight.wav: sample rate 8000 Hz.*audio.on_other_rate"):
        load_audio(path, AudioConfig(on_other_rate="reject"))


def test_stereo_is_mixed_to_the_channel_mean(tmp_path: Path) -> None:
    path = tmp_path / "stereo.wav"
    left_T, right_T = sine(300, 16_000, 0.1), sine(500, 16_000, 0.1, 0.25)
    sf.write(path, np.stack([left_T, right_T], axis=1), 16_000, subtype="FLOAT")
    out_T = load_audio(path, AudioConfig())
    np.testing.assert_allclose(out_T, (left_T + right_T) / 2, atol=1e-6)


def test_stereo_reject_names_file_and_setting(tmp_path: Path) -> None:
    path = tmp_path / "stereo.wav"
    sf.write(path, np.zeros((100, 2), np.float32), 16_000)
    with pytest.raises(DataError, match="stereo.wav: 2 channels; set audio.multi_channel"):
        load_audio(path, AudioConfig(multi_channel="reject"))
    assert to_mono(np.ones((5, 1), np.float32), AudioConfig(multi_channel="reject")).shape == (5,)


def test_crop_at_the_model_rate_is_a_slice_of_the_whole(tmp_path: Path) -> None:
    path = tmp_path / "ramp.wav"
    sf.write(path, np.linspace(-1, 1, 16_000, dtype=np.float32), 16_000, subtype="FLOAT")
    cfg = AudioConfig()
    whole_T = load_audio(path, cfg)
    np.testing.assert_array_equal(load_audio(path, cfg, offset_samples=1000, num_samples=500),
                                  whole_T[1000:1500])
    np.testing.assert_array_equal(load_audio(path, cfg, offset_samples=15_900), whole_T[15_900:])
    assert len(load_audio(path, cfg, offset_samples=15_990, num_samples=100)) == 10
    assert len(load_audio(path, cfg, offset_samples=20_000)) == 0


def test_crop_of_a_resampled_file_counts_model_rate_samples(tmp_path: Path) -> None:
    path = tmp_path / "tone8k.wav"
    sf.write(path, sine(250, 8000, 0.5), 8000, subtype="FLOAT")
    cfg = AudioConfig()
    whole_T = load_audio(path, cfg)
    assert len(whole_T) == 8000
    crop_T = load_audio(path, cfg, offset_samples=3001, num_samples=1234)
    np.testing.assert_array_equal(crop_T, whole_T[3001:4235])


def test_normalize_gives_zero_mean_unit_variance(tmp_path: Path) -> None:
    path = tmp_path / "tone.wav"
    sf.write(path, sine(200, 16_000, 0.25, 0.1) + 0.3, 16_000, subtype="FLOAT")
    out_T = load_audio(path, AudioConfig(normalize=True))
    assert abs(out_T.mean()) < 1e-4 and out_T.std() == pytest.approx(1.0, abs=1e-3)
    assert load_audio(path, AudioConfig()).mean() == pytest.approx(0.3, abs=1e-3)
    assert normalize(np.zeros(0, np.float32)).shape == (0,)


def test_corrupt_file_raises_data_error_at_load(tmp_path: Path) -> None:
    path = tmp_path / "corrupt.flac"
    path.write_bytes(np.random.default_rng(0).bytes(4000))
    with pytest.raises(DataError, match="corrupt.flac: cannot decode audio"):
        load_audio(path, AudioConfig())


def test_real_digit_loads_at_16k(digits_dir: Path) -> None:
    path = digits_dir / "recordings" / "0_george_0.wav"
    assert read_info(path).num_samples == 2384
    assert len(load_audio(path, AudioConfig())) == 4768
