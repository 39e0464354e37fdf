"""Frame features over a manifest, streamed: MFCC (HuBERT iteration 1) or layer L of a model (later iterations).

Nothing is dumped to disk and the corpus is never held in memory: utterances
are decoded by DataLoader workers, run through the extractor in small batches
of consecutive rows (padding-exact: MFCC framing and the speechbs encoders
ignore padding), and yielded one row at a time in manifest order.

Layer L is the output of transformer layer L, 1-based as in fairseq's
``dump_hubert_feature.py`` (``output_layer=6`` for HuBERT iteration 2).

Legend: B rows, T samples or frames, C feature dims.
"""

from __future__ import annotations

import hashlib
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, TextIO

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from speechbs.config import AudioConfig
from speechbs.data.audio import load_audio
from speechbs.data.manifest import Manifest
from speechbs.errors import DataError, SpeechbsError
from speechbs.models.frames import frame_rate_hz
from speechbs.targets import mfcc


@dataclass(kw_only=True)
class FeatureSpec:
    """What a k-means model clusters; saved with it so labelling recomputes the same features."""

    kind: str
    """``mfcc`` or ``layer``."""
    sample_rate_hz: int
    frame_rate_hz: float
    dim: int
    description: str
    normalize: bool = False
    """Per-utterance waveform normalization (the checkpoint's ``audio.normalize``)."""
    checkpoint: str = ""
    checkpoint_sha1: str = ""
    layer: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class FeatureExtractor:
    """``(wav_BT, lengths_B) -> (feats_BTC, frame_lengths_B)`` on ``device``, without gradients."""

    def __init__(self, spec: FeatureSpec, device: str | torch.device = "cpu", model: torch.nn.Module | None = None):
        self.spec = spec
        self.device = torch.device(device)
        self.model = None if model is None else model.to(self.device).eval()

    @torch.no_grad()
    def __call__(self, wav_BT: torch.Tensor, lengths_B: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        wav_BT, lengths_B = wav_BT.to(self.device), lengths_B.to(self.device)
        if self.model is None:
            return mfcc.mfcc_features(wav_BT, lengths_B, self.spec.sample_rate_hz)
        if self.spec.kind == "layers":  # every layer side by side: the projected conv features, then each layer
            feats_BCT, frame_lengths_B = self.model.conv_features(wav_BT, lengths_B)
            local_BTC = self.model.local_features(feats_BCT)
            out = self.model.contextualize(local_BTC, frame_lengths_B, return_layers=True)
            layers = [self.model.post_extract_proj(local_BTC), *out.layer_outputs]
            return torch.cat(layers, dim=-1).float(), out.frame_lengths_B
        out = self.model.encode(wav_BT, lengths_B, return_layers=True)
        return out.layer_outputs[self.spec.layer - 1].float(), out.frame_lengths_B

    def audio_config(self) -> AudioConfig:
        return AudioConfig(sample_rate_hz=self.spec.sample_rate_hz, normalize=self.spec.normalize)


def mfcc_extractor(sample_rate_hz: int = 16_000, device: str | torch.device = "cpu") -> FeatureExtractor:
    spec = FeatureSpec(kind="mfcc", sample_rate_hz=sample_rate_hz, frame_rate_hz=mfcc.FRAME_RATE_HZ,
                       dim=mfcc.NUM_FEATURES, description=mfcc.DESCRIPTION)
    return FeatureExtractor(spec, device)


def layer_extractor(checkpoint: str | Path, layer: int, device: str | torch.device = "cpu",
                    expected_sha1: str = "") -> FeatureExtractor:
    """Layer ``layer`` (1-based) of the speechbs checkpoint (file or run directory) at ``checkpoint``."""
    from speechbs.pretrained import load_encoder, resolve_checkpoint

    model, cfg = load_encoder(checkpoint)
    arch = cfg.model.arch
    num_layers = int(getattr(arch, "num_layers"))
    if not 1 <= layer <= num_layers:
        raise SpeechbsError(f"--layer {layer} is not a layer of {checkpoint}: it has transformer layers 1..{num_layers}")
    sha1 = file_sha1(resolve_checkpoint(checkpoint))
    if expected_sha1 and sha1 != expected_sha1:
        raise DataError(f"{checkpoint} is not the checkpoint the k-means model was fitted on (sha1 {sha1[:10]}, "
                        f"expected {expected_sha1[:10]}); pass the right one with --checkpoint")
    rate = cfg.audio.sample_rate_hz
    spec = FeatureSpec(kind="layer", sample_rate_hz=rate, frame_rate_hz=frame_rate_hz(arch.conv_layers, rate),
                       dim=int(arch.embed_dim),
                       normalize=bool(cfg.audio.normalize), checkpoint=str(checkpoint), checkpoint_sha1=sha1,
                       layer=layer, description=f"{cfg.model.name} layer {layer} of {checkpoint}")
    return FeatureExtractor(spec, device, model)


def all_layers_extractor(checkpoint: str | Path, device: str | torch.device = "cpu", *,
                         random_init: bool = False, checkpoint_sha1: str = "") -> FeatureExtractor:
    """Every layer of a checkpoint's encoder per frame, concatenated: layer 0 is the projected conv
    features (the transformer's input), layers 1..L the transformer's outputs (SUPERB's hidden states).

    A pretraining checkpoint of any family, or a fine-tuned CTC checkpoint (its encoder).
    ``random_init``: the same architecture with the weights its pretraining run started from
    (the run seed's initialization), the baseline that says what pretraining added. The file is
    read once; ``checkpoint_sha1``, when the caller has hashed it already, saves a second read.
    """
    from speechbs import seeds
    from speechbs.asr.ctc import ctc_model_of, is_ctc_state
    from speechbs.pretrained import build_model, encoder_of, read_checkpoint

    saved = read_checkpoint(checkpoint)
    cfg = saved.config
    if random_init:
        torch.manual_seed(seeds.init_seed(cfg.run.seed))  # as tasks/ssl.py seeds before building the model
        model = build_model(cfg.model).eval()
    elif is_ctc_state(saved.checkpoint["model"]):
        model = ctc_model_of(saved).encoder
    else:
        model = encoder_of(saved)
    arch = cfg.model.arch
    rate = cfg.audio.sample_rate_hz
    num_layers = int(arch.num_layers) + 1
    spec = FeatureSpec(kind="layers", sample_rate_hz=rate, frame_rate_hz=frame_rate_hz(arch.conv_layers, rate),
                       dim=int(arch.embed_dim) * num_layers, normalize=bool(cfg.audio.normalize),
                       checkpoint=str(checkpoint), checkpoint_sha1=checkpoint_sha1 or file_sha1(saved.path),
                       layer=0, description=f"{cfg.model.name} layers 0..{num_layers - 1} of {checkpoint}"
                                            + (" (random initialization)" if random_init else ""))
    return FeatureExtractor(spec, device, model)


def extractor_from_spec(spec: dict[str, Any], device: str | torch.device = "cpu",
                        checkpoint: str | Path | None = None) -> FeatureExtractor:
    """Rebuild the extractor a k-means model was fitted with (``checkpoint`` overrides a moved file)."""
    if spec.get("kind") == "mfcc":
        return mfcc_extractor(int(spec["sample_rate_hz"]), device)
    if spec.get("kind") == "layer":
        return layer_extractor(checkpoint or spec["checkpoint"], int(spec["layer"]), device,
                               expected_sha1=spec.get("checkpoint_sha1", ""))
    raise DataError(f"unknown feature kind {spec.get('kind')!r} in the k-means model")


def file_sha1(path: Path) -> str:
    digest = hashlib.sha1()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


class _Rows(Dataset):
    def __init__(self, manifest: Manifest, rows: Sequence[int], audio_cfg: AudioConfig) -> None:
        self.manifest, self.rows, self.audio_cfg = manifest, list(rows), audio_cfg

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> tuple[int, np.ndarray]:
        row = self.rows[i]
        return row, load_audio(self.manifest.audio_path(row), self.audio_cfg)


def iter_features(manifest: Manifest, extractor: FeatureExtractor, *, rows: Sequence[int] | None = None,
                  batch_seconds: float = 60.0, num_workers: int = 2,
                  progress: Progress | None = None) -> Iterator[tuple[int, torch.Tensor]]:
    """``(row, feats_TC)`` for ``rows`` (default: all) in order; features stay on the extractor's device."""
    rows = list(range(len(manifest))) if rows is None else list(rows)
    rate = extractor.spec.sample_rate_hz
    loader = DataLoader(_Rows(manifest, rows, extractor.audio_config()), batch_size=None,
                        num_workers=num_workers, prefetch_factor=8 if num_workers else None)
    pending: list[tuple[int, np.ndarray]] = []
    for item in loader:
        pending.append((int(item[0]), np.asarray(item[1])))
        if sum(len(w) for _, w in pending) >= batch_seconds * rate:
            yield from _run(extractor, pending, progress)
            pending = []
    if pending:
        yield from _run(extractor, pending, progress)
    if progress is not None:
        progress.done()


def _run(extractor: FeatureExtractor, items: list[tuple[int, np.ndarray]],
         progress: Progress | None) -> Iterator[tuple[int, torch.Tensor]]:
    window = int(extractor.spec.sample_rate_hz * mfcc.FRAME_LENGTH_S)
    lengths_B = torch.tensor([len(w) for _, w in items], dtype=torch.int64)
    runnable = [b for b, n in enumerate(lengths_B.tolist()) if n >= window]
    out: dict[int, torch.Tensor] = {}
    if runnable:
        # Rows shorter than one 25 ms window (= the conv stack's receptive field) have no frames.
        wav_BT = torch.zeros(len(runnable), int(lengths_B[runnable].max()))
        for i, b in enumerate(runnable):
            wav_BT[i, :lengths_B[b]] = torch.from_numpy(items[b][1])
        feats_BTC, frame_lengths_B = extractor(wav_BT, lengths_B[runnable])
        for i, (b, num_frames) in enumerate(zip(runnable, frame_lengths_B.tolist())):  # one host read
            out[b] = feats_BTC[i, :num_frames]
    for b, (row, wav) in enumerate(items):
        if progress is not None:
            progress.update(len(wav) / extractor.spec.sample_rate_hz)
        yield row, out.get(b, torch.zeros(0, extractor.spec.dim, device=extractor.device))


class Progress:
    """Seconds of audio done out of a total: rewritten in place on a terminal, a plain line every 30 s otherwise."""

    def __init__(self, total_s: float, label: str, stream: TextIO | None = None, every_s: float = 30.0) -> None:
        self.total_s, self.label, self.every_s = total_s, label, every_s
        self.stream = stream or sys.stderr
        self.interactive = self.stream.isatty()
        self.done_s = 0.0
        self._start = self._last = time.monotonic()

    def update(self, seconds: float) -> None:
        self.done_s += seconds
        now = time.monotonic()
        if now - self._last >= (0.5 if self.interactive else self.every_s):
            self._last = now
            self._print(end="\r" if self.interactive else "\n")

    def done(self) -> None:
        self._print(end="\n")

    def _print(self, end: str) -> None:
        elapsed = time.monotonic() - self._start
        speed = self.done_s / max(elapsed, 1e-9)
        eta = (self.total_s - self.done_s) / speed if speed > 0 else float("nan")
        percent = 100.0 * self.done_s / max(self.total_s, 1e-9)
        self.stream.write(f"{self.label}: {self.done_s / 3600:.2f}/{self.total_s / 3600:.2f} h of audio "
                          f"({percent:.0f}%), {speed:.0f} s/s, eta {eta / 60:.1f} min{end}")
        self.stream.flush()
