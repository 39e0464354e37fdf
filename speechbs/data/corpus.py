"""``speechbs corpus``: synthesize the built-in labeled English speech corpus.

A synthetic corpus that any machine can build in a minute with no download, so
the demo and the tests run anywhere: eSpeak NG (formant synthesis, see
:mod:`speechbs.data.espeak`) speaks text from :mod:`speechbs.data.texts` in
many voices, rates and pitches. It is for plumbing, CI, demos and relative
comparisons on tiny models, not for claims about real speech (docs/corpus.md).

Splits hold out voices: every speaker is an (accent, voice variant) pair, and
the valid and test splits use variants (timbres) never heard in train, with the
same accents. Every utterance's settings are a pure function of
(seed, split, index), so the output is byte-identical for a seed whatever the
number of worker processes. Beside each manifest go probe label files read from
the file names (``.accent``, ``.family``): the voice properties every split shares.

Array legend: wav_T = samples over time.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import multiprocessing
import os
import shutil
import time
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import soundfile as sf

from speechbs.atomic import write_text
from speechbs.data import espeak, texts
from speechbs.data.audio import resample
from speechbs.data.manifest import Manifest, label_path, read_manifest, write_labels, write_manifest
from speechbs.errors import DataError, SpeechbsError

SAMPLE_RATE_HZ = 16_000
GENERATOR_VERSION = 1
"""Bumped whenever a change alters the output for a given seed."""
METADATA_NAME = "corpus.json"
DEFAULT_MINUTES = 60.0
DEFAULT_AUDIO_DIR = "data/builtin"
DEFAULT_MANIFEST_DIR = "manifests/builtin"

ACCENTS = ("en-us", "en", "en-gb-x-rp", "en-gb-scotland", "en-029", "en-us-nyc",
           "en-gb-x-gbclan", "en-gb-x-gbcwmd")
VARIANTS = {  # "" is the accent's own voice; others are eSpeak NG's voices/!v files
    "train": ("", "m1", "m2", "m3", "m5", "m7", "m8", "f1", "f3", "f5",
              "klatt", "klatt2", "klatt4", "klatt6"),
    "valid": ("m4", "f2", "klatt5"),
    "test": ("m6", "f4", "klatt3"),
}
SPLIT_FRACTIONS = {"train": 0.8, "valid": 0.1, "test": 0.1}
MAX_SECONDS = 15.0
PROBE_LABELS = ("accent", "family")
"""Label files written beside each manifest for ``speechbs probe`` (docs/probes.md)."""


@dataclass(frozen=True)
class Speaker:
    name: str
    voice: str
    base_rate_wpm: int
    base_pitch: int
    pitch_range: int


def speakers(split: str) -> list[Speaker]:
    """The split's speakers; their base rate and pitch are fixed (not seed-dependent)."""
    result = []
    for accent in ACCENTS:
        for variant in VARIANTS[split]:
            name = f"{accent}_{variant or 'default'}"
            u_3 = np.random.default_rng(zlib.crc32(name.encode())).random(3)
            result.append(Speaker(name=name, voice=accent + (f"+{variant}" if variant else ""),
                                  base_rate_wpm=int(140 + 50 * u_3[0]),
                                  base_pitch=int(30 + 40 * u_3[1]),
                                  pitch_range=int(30 + 50 * u_3[2])))
    return result


@dataclass(frozen=True)
class UtteranceSpec:
    """Everything needed to render one utterance; a pure function of (seed, split, index)."""

    path: str
    """Relative to the audio dir: ``train/000012_en-us_m3.flac``."""
    text: texts.Text
    voice: espeak.VoiceSettings
    lead_s: float
    trail_s: float
    level_dbfs: float
    """RMS level of the speech, dB relative to full scale."""
    snr_db: float | None
    noise_seed: int


def plan_utterance(seed: int, split: str, index: int,
                   snr_db: tuple[float, float] | None) -> UtteranceSpec:
    rng = np.random.default_rng([seed, list(SPLIT_FRACTIONS).index(split), index])
    pool = speakers(split)
    speaker = pool[int(rng.integers(len(pool)))]
    # Target length 1 s + Gamma(k=2, theta=2.2 s): mode ~3 s, mean ~5.4 s, long tail, cut at 15 s.
    target_s = min(1.0 + rng.gamma(2.0, 2.2), MAX_SECONDS - 1.0)
    rate_wpm = int(np.clip(speaker.base_rate_wpm + rng.normal(0, 8), 110, 230))
    text = texts.compose(rng, target_s, rate_wpm)
    voice = espeak.VoiceSettings(voice=speaker.voice, rate_wpm=rate_wpm,
                                 pitch=int(np.clip(speaker.base_pitch + rng.integers(-5, 6), 0, 99)),
                                 pitch_range=speaker.pitch_range,
                                 rand_seed=int(rng.integers(2**31)))
    return UtteranceSpec(path=f"{split}/{index:06d}_{speaker.name}.flac", text=text, voice=voice,
                         lead_s=float(rng.uniform(0.05, 0.35)), trail_s=float(rng.uniform(0.05, 0.35)),
                         level_dbfs=float(rng.uniform(-30, -20)),
                         snr_db=None if snr_db is None else float(rng.uniform(*snr_db)),
                         noise_seed=int(rng.integers(2**31)))


def render(spec: UtteranceSpec) -> tuple[bytes, int]:
    """Synthesize, resample to 16 kHz, pad, set level, add noise; returns (FLAC bytes, num_samples)."""
    speech_T = espeak.get_espeak().synthesize(spec.text.spoken, spec.voice).astype(np.float32) / 32768
    speech_T = resample(speech_T, espeak.SAMPLE_RATE_HZ, SAMPLE_RATE_HZ)
    power = float(np.mean(speech_T.astype(np.float64) ** 2)) + 1e-12
    speech_T = speech_T * (10 ** (spec.level_dbfs / 20) / math.sqrt(power))
    wav_T = np.concatenate([np.zeros(int(spec.lead_s * SAMPLE_RATE_HZ), np.float32), speech_T,
                            np.zeros(int(spec.trail_s * SAMPLE_RATE_HZ), np.float32)])
    if spec.snr_db is not None:
        noise_rms = 10 ** ((spec.level_dbfs - spec.snr_db) / 20)
        wav_T = wav_T + noise_rms * np.random.default_rng(spec.noise_seed).standard_normal(len(wav_T))
    pcm_T = np.clip(np.round(wav_T * 32767), -32768, 32767).astype(np.int16)
    buffer = io.BytesIO()
    sf.write(buffer, pcm_T, SAMPLE_RATE_HZ, format="FLAC", subtype="PCM_16")
    return buffer.getvalue(), len(pcm_T)


def voice_labels(rel_path: str) -> dict[str, str]:
    """``train/000012_en-us_m3.flac`` -> ``{"accent": "en-us", "family": "male"}``.

    Only properties that every split holds are labels: valid and test use voice variants
    train never has, so a speaker (accent + variant) of the test split is never a training
    class. The family is the variant's kind: eSpeak NG's male (m1-m8, and each accent's own
    voice, which is male) or female (f1-f5) variant files, or the Klatt synthesizer (klatt*).
    """
    name = Path(rel_path).stem.partition("_")[2]
    accent, _, variant = name.rpartition("_")
    known = {v or "default" for split in VARIANTS.values() for v in split}
    if accent not in ACCENTS or variant not in known:
        raise DataError(f"{rel_path} is not named like a built-in corpus file "
                        f"(<index>_<accent>_<variant>.flac); its labels cannot be read from the name")
    family = "klatt" if variant.startswith("klatt") else "female" if variant.startswith("f") else "male"
    return {"accent": accent, "family": family}


def write_probe_labels(tsv: Path) -> list[Path]:
    """Write (or refresh) the manifest's ``.accent`` and ``.family`` files, read from its file names.

    A pure function of the manifest, so a corpus built before these files existed gains them on
    the next ``speechbs corpus`` without being synthesized again.
    """
    rows = [voice_labels(path) for path in read_manifest(tsv).paths]
    for ext in PROBE_LABELS:
        text = "".join(f"{row[ext]}\n" for row in rows)
        if not label_path(tsv, ext).is_file() or label_path(tsv, ext).read_text(encoding="utf-8") != text:
            write_text(label_path(tsv, ext), text)
    return [label_path(tsv, ext) for ext in PROBE_LABELS]


@dataclass
class CorpusSummary:
    """What is on disk, read from the metadata JSON in the audio dir."""

    audio_dir: Path
    manifests: dict[str, Path]
    """Split name -> .tsv path (its .ltr, .wrd, .rates, .accent and .family sit beside it)."""
    metadata: dict
    built_now: bool
    """False when the corpus was already built with the same settings (a no-op)."""

    def describe(self) -> str:
        meta = self.metadata
        lines = [f"built-in corpus in {self.audio_dir} (seed {meta['settings']['seed']}, "
                 f"eSpeak NG {meta['espeak_version']}, {SAMPLE_RATE_HZ} Hz FLAC, "
                 f"{meta['total_minutes']:.1f} min, {meta['size_mb']:.1f} MB)"]
        for split, info in meta["splits"].items():
            lines.append(f"  {split:5s} {info['num_utterances']:5d} utterances {info['minutes']:6.1f} min "
                         f"{info['num_speakers']:3d} speakers, {info['min_s']:.1f}-{info['max_s']:.1f} s "
                         f"(median {info['median_s']:.1f} s)  {self.manifests[split]}")
        return "\n".join(lines)


def build_corpus(audio_dir: str | Path = DEFAULT_AUDIO_DIR,
                 manifest_dir: str | Path = DEFAULT_MANIFEST_DIR, *,
                 minutes: float = DEFAULT_MINUTES, seed: int = 1,
                 snr_db: tuple[float, float] | None = None, num_workers: int = 2,
                 force: bool = False, log: Callable[[str], None] | None = None) -> CorpusSummary:
    """Build the corpus, or do nothing when it is already built with these settings."""
    log = log or (lambda message: None)
    audio_dir, manifest_dir = Path(audio_dir).resolve(), Path(manifest_dir).resolve()
    settings = _settings(minutes, seed, snr_db)
    existing = _check_existing(audio_dir, manifest_dir, settings, force)
    if existing is not None:
        for tsv in _manifest_paths(manifest_dir).values():
            write_probe_labels(tsv)  # label files are newer than some corpora; the audio is not touched
        return CorpusSummary(audio_dir, _manifest_paths(manifest_dir), existing, built_now=False)
    reason = espeak.unavailable_reason()
    if reason is not None:
        raise SpeechbsError(f"cannot build the built-in corpus: {reason}")
    start = time.perf_counter()
    for split in SPLIT_FRACTIONS:
        shutil.rmtree(audio_dir / split, ignore_errors=True)
    audio_dir.mkdir(parents=True, exist_ok=True)
    _write_json(audio_dir / METADATA_NAME, {"complete": False, "settings": settings})
    splits = {}
    with _mapper(num_workers) as map_fn:
        for split, fraction in SPLIT_FRACTIONS.items():
            splits[split] = _build_split(split, fraction * minutes * 60, settings, map_fn,
                                         audio_dir, manifest_dir, log)
    metadata = _metadata(settings, splits, audio_dir, manifest_dir, time.perf_counter() - start)
    _write_json(audio_dir / METADATA_NAME, metadata)
    return CorpusSummary(audio_dir, _manifest_paths(manifest_dir), metadata, built_now=True)


def _settings(minutes: float, seed: int, snr_db: tuple[float, float] | None) -> dict:
    if not minutes > 0:
        raise SpeechbsError(f"--minutes must be > 0, got {minutes}")
    if snr_db is not None and snr_db[0] > snr_db[1]:
        raise SpeechbsError(f"--snr-db range {snr_db[0]}:{snr_db[1]} must be LOW:HIGH")
    return {"generator_version": GENERATOR_VERSION, "minutes": float(minutes), "seed": int(seed),
            "snr_db": None if snr_db is None else [float(snr_db[0]), float(snr_db[1])],
            "sample_rate_hz": SAMPLE_RATE_HZ}


def _check_existing(audio_dir: Path, manifest_dir: Path, settings: dict, force: bool) -> dict | None:
    """The metadata when the same corpus is complete on disk; None when it must be built."""
    meta_path = audio_dir / METADATA_NAME
    if not meta_path.is_file():
        if audio_dir.is_dir() and any(audio_dir.iterdir()):
            raise DataError(f"{audio_dir} is not empty and holds no {METADATA_NAME}, so it is not a "
                            f"speechbs corpus; choose another --audio-dir or empty it")
        _check_manifest_dir(audio_dir, manifest_dir, force)
        return None
    try:
        metadata = json.loads(meta_path.read_text())
    except (OSError, ValueError) as exc:
        raise DataError(f"{meta_path} is unreadable ({exc}); delete it and {audio_dir} to rebuild") from None
    same = metadata.get("settings") == settings
    if metadata.get("complete") and not same and not force:
        old = metadata.get("settings") or {}
        changes = ", ".join(f"{key} {old.get(key)} -> {value}" for key, value in settings.items()
                            if old.get(key) != value)
        raise DataError(f"{audio_dir} holds a corpus built with other settings ({changes}); pass "
                        f"--force to replace it, or choose another --audio-dir")
    _check_manifest_dir(audio_dir, manifest_dir, force)
    tsvs = _manifest_paths(manifest_dir).values()
    if (metadata.get("complete") and same
            and all(p.is_file() and _manifest_root(p) == audio_dir for p in tsvs)):
        return metadata
    return None


def _check_manifest_dir(audio_dir: Path, manifest_dir: Path, force: bool) -> None:
    for tsv in _manifest_paths(manifest_dir).values():
        if tsv.is_file() and _manifest_root(tsv) != audio_dir and not force:
            raise DataError(f"{tsv} points at {_manifest_root(tsv)}, not {audio_dir}; pass --force "
                            f"to overwrite it, or choose another --manifest-dir")


def _manifest_root(tsv: Path) -> Path:
    with open(tsv, encoding="utf-8") as f:
        return Path(f.readline().strip()).resolve()


def _manifest_paths(manifest_dir: Path) -> dict[str, Path]:
    return {split: manifest_dir / f"{split}.tsv" for split in SPLIT_FRACTIONS}


def _build_split(split: str, target_s: float, settings: dict, map_fn: Callable,
                 audio_dir: Path, manifest_dir: Path, log: Callable[[str], None]) -> dict:
    """Render utterances 0, 1, 2, ... in order until the split has ``target_s`` of audio.

    Rendering runs in chunks; what a chunk renders past the target is dropped,
    so where the split stops does not depend on the number of workers.
    """
    snr = None if settings["snr_db"] is None else tuple(settings["snr_db"])
    paths, counts, transcripts, speaker_names = [], [], [], set()
    total_s, next_index = 0.0, 0
    (audio_dir / split).mkdir(parents=True, exist_ok=True)
    while total_s < target_s:
        num = max(4, min(64, math.ceil((target_s - total_s) / 5.0) + 2))
        specs = [plan_utterance(settings["seed"], split, i, snr) for i in range(next_index, next_index + num)]
        next_index += num
        for spec, (flac, num_samples) in zip(specs, map_fn(render, specs)):
            if total_s >= target_s:
                break
            (audio_dir / spec.path).write_bytes(flac)
            paths.append(spec.path)
            counts.append(num_samples)
            transcripts.append(spec.text.transcript)
            speaker_names.add(spec.path.split("_", 1)[1].rsplit(".", 1)[0])
            total_s += num_samples / SAMPLE_RATE_HZ
        log(f"{split}: {total_s / 60:.1f} / {target_s / 60:.1f} min, {len(paths)} utterances")
    tsv = manifest_dir / f"{split}.tsv"
    write_manifest(Manifest(audio_dir, paths, np.asarray(counts),
                            np.full(len(paths), SAMPLE_RATE_HZ)), tsv)
    write_labels(transcripts, tsv)
    write_probe_labels(tsv)
    seconds = np.asarray(counts) / SAMPLE_RATE_HZ
    return {"num_utterances": len(paths), "minutes": round(total_s / 60, 3),
            "num_speakers": len(speaker_names), "variants": list(VARIANTS[split]),
            "min_s": round(float(seconds.min()), 3), "median_s": round(float(np.median(seconds)), 3),
            "max_s": round(float(seconds.max()), 3)}


class _mapper:
    """``map`` in this process for one worker, else over a spawn-context process pool.

    Spawn, not fork, for the pool: the caller may hold threads (torch, a test
    runner) that make forking a whole interpreter unsafe. eSpeak NG's own
    per-utterance fork happens inside each single-threaded worker.
    """

    def __init__(self, num_workers: int) -> None:
        if num_workers < 1:
            raise SpeechbsError(f"--workers must be >= 1, got {num_workers}")
        self.num_workers = num_workers
        self.pool = None

    def __enter__(self) -> Callable:
        if self.num_workers == 1:
            return lambda fn, items: list(map(fn, items))
        self.pool = multiprocessing.get_context("spawn").Pool(self.num_workers)
        return self.pool.map

    def __exit__(self, *exc: object) -> None:
        if self.pool is not None:
            self.pool.terminate()
            self.pool.join()


def _metadata(settings: dict, splits: dict, audio_dir: Path, manifest_dir: Path, build_s: float) -> dict:
    size_bytes = sum(f.stat().st_size for split in splits for f in (audio_dir / split).iterdir())
    total_minutes = sum(info["minutes"] for info in splits.values())
    return {"description": "speechbs built-in corpus: synthetic English speech (eSpeak NG formant "
                           "synthesis), composed text; for plumbing and relative comparisons only. "
                           "See docs/corpus.md.",
            "complete": True, "settings": settings,
            "espeak_version": espeak.get_espeak().version, "manifest_dir": str(manifest_dir),
            "accents": list(ACCENTS), "splits": splits, "total_minutes": round(total_minutes, 3),
            "total_hours": round(total_minutes / 60, 4), "size_mb": round(size_bytes / 1e6, 2),
            "build_s": round(build_s, 1)}


def _write_json(path: Path, data: dict) -> None:
    write_text(path, json.dumps(data, indent=2) + "\n")


def parse_snr(text: str | None) -> tuple[float, float] | None:
    """``20`` -> (20, 20); ``10:30`` -> a per-utterance SNR drawn uniformly from 10-30 dB."""
    if text is None:
        return None
    try:
        low, _, high = text.partition(":")
        return float(low), float(high or low)
    except ValueError:
        raise SpeechbsError(f"--snr-db {text!r}: expected a number of dB or LOW:HIGH") from None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--minutes", type=float, default=DEFAULT_MINUTES,
                        help=f"total audio over all splits, minutes (default {DEFAULT_MINUTES:g}; "
                             f"80/10/10 train/valid/test)")
    parser.add_argument("--seed", type=int, default=1, help="same seed, byte-identical corpus")
    parser.add_argument("--snr-db", default=None, metavar="DB|LOW:HIGH",
                        help="add white noise at this SNR (or uniform in LOW:HIGH per utterance); "
                             "default: clean")
    parser.add_argument("--audio-dir", default=DEFAULT_AUDIO_DIR, help="where the FLAC files go")
    parser.add_argument("--manifest-dir", default=DEFAULT_MANIFEST_DIR,
                        help="where {train,valid,test}.{tsv,rates,ltr,wrd,accent,family} go")
    parser.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1),
                        help="worker processes (the output does not depend on it)")
    parser.add_argument("--force", action="store_true",
                        help="replace a corpus or manifests built with other settings")


def main(args: argparse.Namespace) -> int:
    summary = build_corpus(args.audio_dir, args.manifest_dir, minutes=args.minutes, seed=args.seed,
                           snr_db=parse_snr(args.snr_db), num_workers=args.workers, force=args.force,
                           log=lambda message: print(message, flush=True))
    if summary.built_now:
        print(f"built in {summary.metadata['build_s']:.1f} s")
    else:
        print("already built with these settings; nothing to do (use --force with other settings)")
    print(summary.describe())
    return 0
