"""eSpeak NG binding and the text composer."""

from __future__ import annotations

import re
import sys

import numpy as np
import pytest

from speechbs.data import espeak, texts
from speechbs.errors import SpeechbsError

needs_espeak = pytest.mark.skipif(espeak.unavailable_reason() is not None,
                                  reason=str(espeak.unavailable_reason()))
SENTENCE = "the quick brown fox jumps over the lazy dog. is it raining today?"


def median_f0_hz(wav_T: np.ndarray, rate_hz: int) -> float:
    """Median autocorrelation pitch over loud 40 ms frames (enough to tell voices apart)."""
    frame = int(0.04 * rate_hz)
    x_T = wav_T.astype(np.float64)
    loud = np.sqrt(np.mean(x_T**2)) * 1.5
    f0s = []
    for start in range(0, len(x_T) - frame, frame):
        seg = x_T[start:start + frame] - x_T[start:start + frame].mean()
        if np.sqrt(np.mean(seg**2)) < loud:
            continue
        ac = np.correlate(seg, seg, "full")[frame - 1:]
        lo, hi = rate_hz // 400, rate_hz // 60
        f0s.append(rate_hz / (lo + int(np.argmax(ac[lo:hi]))))
    return float(np.median(f0s))


@needs_espeak
def test_sentence_is_speech_of_plausible_length() -> None:
    wav_T = espeak.get_espeak().synthesize(SENTENCE, espeak.VoiceSettings("en-us", rate_wpm=175))
    seconds = len(wav_T) / espeak.SAMPLE_RATE_HZ
    assert wav_T.dtype == np.int16
    assert 2.0 < seconds < 8.0, seconds  # 13 words at 175 words per minute
    assert np.sqrt(np.mean(wav_T.astype(np.float64) ** 2)) > 500  # not silence


@needs_espeak
def test_rate_and_voice_change_the_audio() -> None:
    engine = espeak.get_espeak()
    slow = engine.synthesize(SENTENCE, espeak.VoiceSettings("en-us", rate_wpm=120))
    fast = engine.synthesize(SENTENCE, espeak.VoiceSettings("en-us", rate_wpm=240))
    assert len(slow) > 1.5 * len(fast)
    male = engine.synthesize(SENTENCE, espeak.VoiceSettings("en-us+m3"))
    female = engine.synthesize(SENTENCE, espeak.VoiceSettings("en-us+f3"))
    rate = espeak.SAMPLE_RATE_HZ
    assert median_f0_hz(female, rate) > 1.3 * median_f0_hz(male, rate)


@needs_espeak
def test_output_does_not_depend_on_what_came_before() -> None:
    # In one process eSpeak NG's output drifts with its history and the female
    # variants add random breath noise; the binding must hide both.
    engine = espeak.get_espeak()
    settings = espeak.VoiceSettings("en-gb-scotland+f3", rate_wpm=160, pitch=40, rand_seed=11)
    first = engine.synthesize(SENTENCE, settings)
    engine.synthesize("something else entirely", espeak.VoiceSettings("en-us+klatt", rand_seed=3))
    again = engine.synthesize(SENTENCE, settings)
    assert np.array_equal(first, again)
    other_seed = engine.synthesize(SENTENCE, espeak.VoiceSettings("en-gb-scotland+f3", rate_wpm=160,
                                                                  pitch=40, rand_seed=12))
    assert not np.array_equal(first, other_seed)  # the seed reaches the breath noise


@needs_espeak
@pytest.mark.parametrize("voice", ["xx-nonexistent", "en-us+no-such-variant"])
def test_unknown_voice_is_a_clear_error(voice: str) -> None:
    with pytest.raises(SpeechbsError, match="no voice"):
        espeak.get_espeak().synthesize("hello", espeak.VoiceSettings(voice))


def test_missing_library_names_the_package(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "espeakng_loader", None)  # import now raises ImportError
    assert "pip install espeakng-loader" in espeak.unavailable_reason()
    with pytest.raises(SpeechbsError, match="pip install espeakng-loader"):
        espeak.Espeak()


@pytest.mark.parametrize("n, words", [(0, "zero"), (13, "thirteen"), (40, "forty"), (99, "ninety nine"),
                                      (300, "three hundred"), (1005, "one thousand five"),
                                      (9999, "nine thousand nine hundred ninety nine")])
def test_number_to_words(n: int, words: str) -> None:
    assert texts.number_to_words(n) == words


def test_transcripts_use_only_the_letter_vocabulary() -> None:
    rng = np.random.default_rng(0)
    for target_s in np.linspace(0.5, 14, 300):
        text = texts.compose(rng, float(target_s), rate_wpm=170)
        assert re.fullmatch(r"[A-Z']+( [A-Z']+)*", text.transcript), text
        assert not re.search(r"\d", text.spoken)  # numbers are spelled out
        assert text.transcript == texts.to_transcript(text.spoken)


def test_longer_targets_compose_more_words() -> None:
    rng = np.random.default_rng(1)
    short = [len(texts.compose(rng, 2.0, 170).transcript.split()) for _ in range(50)]
    long = [len(texts.compose(rng, 12.0, 170).transcript.split()) for _ in range(50)]
    assert np.mean(long) > 3 * np.mean(short)
