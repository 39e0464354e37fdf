"""eSpeak NG speech synthesis through ctypes, from the ``espeakng-loader`` wheel.

The wheel ships ``libespeak-ng.so`` and a full ``espeak-ng-data`` (all voices
and dictionaries), so no system package is needed. eSpeak NG is a formant
synthesizer: intelligible, robotic, and fully offline.

Why every utterance is synthesized in a forked child process: the library
keeps process-global state that leaks from one utterance into the next. Two
syntheses of the same text in one process differ by a few samples in length
and in content, even after ``espeak_Terminate`` + ``espeak_Initialize``, and
the female variants add random "breath" noise. So the parent initializes the
library once and never synthesizes; each utterance runs in a fresh fork of that
clean state, with the library's and libc's random seeds set from the
utterance's own seed. The output then depends only on (text, voice settings),
not on what was synthesized before, which makes the corpus byte-identical for
a seed and independent of the number of worker processes. A fork costs about
5 ms, the synthesis of a 5 s sentence about 3 ms.

Array legend: wav_T = samples over time (int16 at 22,050 Hz).
"""

from __future__ import annotations

import ctypes
import os
import warnings
from dataclasses import dataclass

import numpy as np

from speechbs.errors import SpeechbsError

SAMPLE_RATE_HZ = 22_050
"""eSpeak NG's output rate with the bundled voices."""

INSTALL_HINT = "pip install espeakng-loader (or: pip install 'speechbs[corpus]')"

# Constants from espeak-ng/speak_lib.h.
_AUDIO_OUTPUT_SYNCHRONOUS = 2
_POS_CHARACTER = 1
_CHARS_UTF8 = 1
_PARAM_RATE, _PARAM_VOLUME, _PARAM_PITCH, _PARAM_RANGE = 1, 2, 3, 4
_EXIT_UNKNOWN_VOICE = 3

_SYNTH_CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int,
                                   ctypes.c_void_p)


@dataclass(frozen=True)
class VoiceSettings:
    """How one utterance is spoken."""

    voice: str
    """eSpeak NG voice name, optionally with a variant: ``en-us``, ``en-gb-scotland+m3``."""
    rate_wpm: int = 175
    """Speaking rate, words per minute (eSpeak NG accepts 80-450)."""
    pitch: int = 50
    """Base pitch, 0-99, relative to the voice's own pitch range."""
    pitch_range: int = 50
    """Intonation range, 0-99 (0 is monotone)."""
    rand_seed: int = 0
    """Seed of the synthesizer's noise sources (breath, Klatt noise)."""


def unavailable_reason() -> str | None:
    """None when eSpeak NG can be loaded, else a sentence saying why and how to fix it."""
    try:
        import espeakng_loader  # noqa: F401
    except ImportError:
        return f"the eSpeak NG library is not installed; {INSTALL_HINT}"
    return None


class Espeak:
    """One initialized eSpeak NG library in this process. Use :func:`get_espeak`."""

    def __init__(self) -> None:
        reason = unavailable_reason()
        if reason is not None:
            raise SpeechbsError(reason)
        import espeakng_loader

        self.data_path = str(espeakng_loader.get_data_path())
        self._lib = ctypes.CDLL(str(espeakng_loader.get_library_path()))
        self._declare()
        rate_hz = self._lib.espeak_Initialize(_AUDIO_OUTPUT_SYNCHRONOUS, 0,
                                              self.data_path.encode(), 0)
        if rate_hz != SAMPLE_RATE_HZ:
            raise SpeechbsError(f"eSpeak NG from {self.data_path} failed to start or runs at "
                                f"{rate_hz} Hz, expected {SAMPLE_RATE_HZ}; reinstall: {INSTALL_HINT}")
        self._chunks: list[np.ndarray] = []
        self._callback = _SYNTH_CALLBACK(self._on_audio)  # kept alive: C holds the pointer
        self._lib.espeak_SetSynthCallback(self._callback)
        self.version = self._lib.espeak_Info(None).decode()
        self._can_fork = hasattr(os, "fork")

    def _declare(self) -> None:
        lib = self._lib
        lib.espeak_Info.restype = ctypes.c_char_p
        lib.espeak_Info.argtypes = [ctypes.c_void_p]
        lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
        lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
        lib.espeak_ng_SetRandSeed.argtypes = [ctypes.c_long]
        lib.espeak_Synth.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int,
                                     ctypes.c_uint, ctypes.c_uint, ctypes.c_void_p, ctypes.c_void_p]

    def _on_audio(self, wav: ctypes.Array, num_samples: int, _events: int) -> int:
        if num_samples > 0:
            self._chunks.append(np.ctypeslib.as_array(wav, shape=(num_samples,)).copy())
        return 0  # 0 = continue synthesis

    def synthesize(self, text: str, settings: VoiceSettings) -> np.ndarray:
        """Speak ``text``; returns int16 samples at :data:`SAMPLE_RATE_HZ` (wav_T)."""
        if not self._can_fork:
            warnings.warn("os.fork is unavailable: eSpeak NG output will depend on the order of "
                          "synthesis, so the corpus is not reproducible on this platform",
                          stacklevel=2)
            code, wav_T = self._synthesize_here(text, settings)
        else:
            code, wav_T = self._synthesize_in_child(text, settings)
        if code == _EXIT_UNKNOWN_VOICE:
            raise SpeechbsError(f"eSpeak NG has no voice {settings.voice!r} in {self.data_path}")
        if code != 0:
            raise SpeechbsError(f"eSpeak NG failed (status {code}) on {text[:60]!r} with "
                                f"{settings}; reinstall: {INSTALL_HINT}")
        return wav_T

    def _synthesize_in_child(self, text: str, settings: VoiceSettings) -> tuple[int, np.ndarray]:
        read_fd, write_fd = os.pipe()
        pid = os.fork()
        if pid == 0:  # child: never return into the caller's stack
            code = 1
            try:
                os.close(read_fd)
                code, wav_T = self._synthesize_here(text, settings)
                with os.fdopen(write_fd, "wb") as pipe:
                    pipe.write(wav_T.tobytes())
            finally:
                os._exit(code)
        os.close(write_fd)
        with os.fdopen(read_fd, "rb") as pipe:
            payload = pipe.read()
        _, status = os.waitpid(pid, 0)
        code = os.waitstatus_to_exitcode(status)
        return code, np.frombuffer(payload, dtype=np.int16).copy()

    def _synthesize_here(self, text: str, settings: VoiceSettings) -> tuple[int, np.ndarray]:
        lib = self._lib
        if lib.espeak_SetVoiceByName(settings.voice.encode()) != 0 or not self._variant_exists(settings):
            return _EXIT_UNKNOWN_VOICE, np.zeros(0, np.int16)
        seed = settings.rand_seed % (2**31)
        lib.espeak_ng_SetRandSeed(seed)
        ctypes.CDLL(None).srand(ctypes.c_uint(seed))  # the Klatt voices draw noise from libc rand()
        lib.espeak_SetParameter(_PARAM_RATE, settings.rate_wpm, 0)
        lib.espeak_SetParameter(_PARAM_PITCH, settings.pitch, 0)
        lib.espeak_SetParameter(_PARAM_RANGE, settings.pitch_range, 0)
        lib.espeak_SetParameter(_PARAM_VOLUME, 100, 0)
        self._chunks = []
        data = text.encode("utf-8")
        status = lib.espeak_Synth(data, len(data) + 1, 0, _POS_CHARACTER, 0, _CHARS_UTF8, None, None)
        lib.espeak_Synchronize()
        if status != 0:
            return 1, np.zeros(0, np.int16)
        wav_T = np.concatenate(self._chunks) if self._chunks else np.zeros(0, np.int16)
        return 0, wav_T.astype(np.int16, copy=False)

    def _variant_exists(self, settings: VoiceSettings) -> bool:
        # eSpeak NG silently ignores an unknown variant ("en-us+nonsense" speaks as "en-us").
        _, _, variant = settings.voice.partition("+")
        return not variant or os.path.isfile(os.path.join(self.data_path, "voices", "!v", variant))


_INSTANCE: Espeak | None = None


def get_espeak() -> Espeak:
    """The process's eSpeak NG (initialized on first use; the library is one global state)."""
    global _INSTANCE
    if _INSTANCE is None:
        _INSTANCE = Espeak()
    return _INSTANCE
