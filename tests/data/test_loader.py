"""The loader pads planned micro-batches exactly as load_audio decodes them, and resumes without skipping."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import soundfile as sf
import torch

from speechbs.config import AudioConfig, BatchConfig
from speechbs.data.audio import load_audio
from speechbs.data.loader import AudioBatch, build_planner, eval_micro_batches, iter_steps, load_micro_batch
from speechbs.data.batching import EMPTY_MICRO_BATCH, BatchPlanner
from speechbs.data.manifest import Manifest

AUDIO = AudioConfig(sample_rate_hz=16_000)
# The tone corpus is tiny on purpose: its few steps per epoch are off the target, which the planner warns about.
pytestmark = pytest.mark.filterwarnings("ignore:batch.seconds")


def manifest_from_files(root, paths) -> Manifest:
    infos = [sf.info(str(root / p)) for p in paths]
    return Manifest(root, list(paths), [i.frames for i in infos], [i.samplerate for i in infos])


@pytest.fixture(scope="module")
def tone_manifest(tmp_path_factory) -> Manifest:
    """30 random-noise WAVs of 0.5-3 s, half at 8 kHz (resampled on load), half at 16 kHz."""
    root = tmp_path_factory.mktemp("wavs")
    rng = np.random.default_rng(0)
    paths = []
    for i in range(30):
        rate = 8000 if i % 2 else 16000
        wav = rng.uniform(-0.5, 0.5, int(rng.uniform(0.5, 3.0) * rate)).astype(np.float32)
        paths.append(f"u{i:02d}.wav")
        sf.write(root / paths[-1], wav, rate, subtype="FLOAT")
    return manifest_from_files(root, paths)


def batch_cfg(**kw) -> BatchConfig:
    return BatchConfig(**{"seconds": 8.0, "max_device_seconds": 4.0, "crop": "max", "crop_max_seconds": 2.0, **kw})


def check_rows_match_load_audio(manifest: Manifest, step, pad_lengths: np.ndarray | None = None) -> None:
    """Each row is its segment's audio then zeros; the width is the longest row, or one of ``pad_lengths``."""
    planned = [mb for mb in step.micro_batches if not mb.is_empty]
    for audio in planned:
        assert audio.wav_BT.dtype == torch.float32 and audio.lengths_B.dtype == torch.int64
        if pad_lengths is None:
            assert audio.wav_BT.shape[1] == int(audio.lengths_B.max())
        else:
            assert audio.wav_BT.shape[1] in pad_lengths and audio.wav_BT.shape[1] >= int(audio.lengths_B.max())
    segments = {s.index: s for s in step.batch.segments}
    for audio in planned:
        for row, index in enumerate(audio.indices_B.tolist()):
            seg = segments[index]
            want = load_audio(manifest.audio_path(index), AUDIO, offset_samples=seg.offset_samples,
                              num_samples=seg.num_samples)
            length = int(audio.lengths_B[row])
            assert length == len(want) == seg.num_samples
            assert torch.equal(audio.wav_BT[row, :length], torch.from_numpy(want))
            assert torch.all(audio.wav_BT[row, length:] == 0)


@pytest.mark.parametrize("num_workers", [0, 2])
def test_loader_pads_and_matches_load_audio_per_row(tone_manifest, num_workers):
    planner = build_planner(tone_manifest, batch_cfg(), AUDIO, seed=1)
    for step in iter_steps(planner, tone_manifest, AUDIO, rank=0, world_size=1,
                           num_workers=num_workers, num_steps=planner.steps_per_epoch):
        assert {i for mb in step.micro_batches for i in mb.indices_B.tolist()} == \
            {s.index for s in step.batch.segments}
        check_rows_match_load_audio(tone_manifest, step)


def test_pad_lengths_pad_every_micro_batch_and_placeholder_with_lengths_kept_exact(tone_manifest):
    cfg = batch_cfg(crop="none", max_device_seconds=6.0)
    lengths = tone_manifest.num_model_samples(AUDIO.sample_rate_hz)
    planner = BatchPlanner(lengths, cfg, sample_rate_hz=AUDIO.sample_rate_hz, seed=1, num_pad_lengths=3)
    widths, num_empty = set(), 0
    for step in iter_steps(planner, tone_manifest, AUDIO, rank=7, world_size=8, num_workers=0,
                           num_steps=planner.steps_per_epoch):  # 8 ranks: some get placeholders
        check_rows_match_load_audio(tone_manifest, step, planner.pad_lengths_L)
        widths |= {mb.wav_BT.shape[1] for mb in step.micro_batches}
        num_empty += sum(mb.is_empty and not mb.wav_BT.any() for mb in step.micro_batches)
    assert widths <= set(planner.pad_lengths_L.tolist()) and len(planner.pad_lengths_L) == 3
    assert num_empty > 0


def test_every_rank_gets_its_share_and_placeholders_are_zero_rows(tone_manifest):
    planner = build_planner(tone_manifest, batch_cfg(), AUDIO, seed=1)
    world_size = 16  # more devices than utterances: some get placeholders
    per_rank = [list(iter_steps(build_planner(tone_manifest, batch_cfg(), AUDIO, seed=1), tone_manifest,
                                AUDIO, rank=r, world_size=world_size, num_workers=0, num_steps=3))
                for r in range(world_size)]
    batches = [planner.next_batch() for _ in range(3)]
    for k, batch in enumerate(batches):
        steps = [per_rank[r][k] for r in range(world_size)]
        assert len({len(s.micro_batches) for s in steps}) == 1
        seen = sorted(i for s in steps for mb in s.micro_batches if not mb.is_empty
                      for i in mb.indices_B.tolist())
        assert seen == sorted(s.index for s in batch.segments)
        shortest = min(s.num_samples for s in batch.segments)
        empties = [mb for s in steps for mb in s.micro_batches if mb.is_empty]
        assert len(empties) == steps[0].stats.num_empty_micro_batches > 0
        for mb in empties:
            assert mb.wav_BT.shape == (1, shortest) and not mb.wav_BT.any()
            assert mb.lengths_B.tolist() == [shortest] and mb.indices_B.tolist() == [-1]


def test_prefetching_does_not_make_resume_skip_batches(tone_manifest):
    cfg = batch_cfg(seconds=4.0, max_device_seconds=2.0)
    reference = build_planner(tone_manifest, cfg, AUDIO, seed=3)
    want = [reference.next_batch().segments for _ in range(12)]
    planner = build_planner(tone_manifest, cfg, AUDIO, seed=3)
    steps = iter_steps(planner, tone_manifest, AUDIO, rank=0, world_size=1, num_workers=2)
    for k in range(5):
        assert next(steps).batch.segments == want[k]
    state = planner.state_dict()  # the workers have prefetched beyond step 5 by now
    steps.close()
    resumed = build_planner(tone_manifest, cfg, AUDIO, seed=3)
    resumed.load_state_dict(state)
    got = [s.batch.segments for s in iter_steps(resumed, tone_manifest, AUDIO, rank=0, world_size=1,
                                                 num_workers=2, num_steps=7)]
    assert got == want[5:12]


def test_targets_hook_receives_the_segments(tone_manifest):
    planner = build_planner(tone_manifest, batch_cfg(), AUDIO, seed=1)
    split = planner.split(planner.next_batch(), 1)
    audio = load_micro_batch(tone_manifest, AUDIO, split[0][0], 10,
                             targets=lambda segments: [(s.index, s.num_samples) for s in segments])
    assert [row for row, _ in audio.targets] == audio.indices_B.tolist()
    assert [n for _, n in audio.targets] == audio.lengths_B.tolist()
    assert load_micro_batch(tone_manifest, AUDIO, EMPTY_MICRO_BATCH, 10).targets is None


def test_free_spoken_digits_one_epoch_resampled(digits_dir):
    paths = sorted(p.relative_to(digits_dir).as_posix() for p in (digits_dir / "recordings").glob("*.wav"))[:300]
    manifest = manifest_from_files(digits_dir, paths)
    assert set(manifest.sample_rates_hz.tolist()) == {8000}
    cfg = BatchConfig(seconds=30.0, max_device_seconds=6.0)
    planner = build_planner(manifest, cfg, AUDIO, seed=1)
    seen, real_s, padded_s = [], 0.0, 0.0
    for step in iter_steps(planner, manifest, AUDIO, rank=1, world_size=2, num_workers=2,
                           num_steps=planner.steps_per_epoch):
        for mb in step.micro_batches:
            assert mb.wav_BT.shape[1] * mb.wav_BT.shape[0] <= 6.0 * 16_000
            if not mb.is_empty:
                seen += mb.indices_B.tolist()
                want = manifest.num_model_samples(16_000)[mb.indices_B.numpy()]
                assert mb.lengths_B.tolist() == want.tolist()  # 8 kHz -> 16 kHz: twice the samples
                assert all(mb.wav_BT[r, :n].abs().max() > 0 for r, n in enumerate(want.tolist()))
        real_s += step.stats.real_s
        padded_s += step.stats.padded_s
    other = [s.index for batch in build_planner(manifest, cfg, AUDIO, seed=1).plan_epoch(0)
             for s in batch.segments]
    assert sorted(seen) == sorted(set(seen)) and set(seen) < set(other)
    assert real_s == pytest.approx(manifest.num_model_samples(16_000).sum() / 16_000)
    assert real_s / padded_s > 0.95


def test_evaluation_covers_utterances_longer_than_the_training_crop(tone_manifest):
    """Validation is uncropped: a forward pass grows to the longest utterance, and every row comes once."""
    longest_s = float(tone_manifest.seconds(AUDIO.sample_rate_hz).max())
    cfg = replace(batch_cfg(), max_device_seconds=longest_s / 2, crop="max", crop_max_seconds=longest_s / 3)
    rows = sorted(int(i) for mb in eval_micro_batches(tone_manifest, cfg, AUDIO, rank=0, world_size=1)
                  for i in mb.indices_B if i >= 0)
    assert rows == list(range(len(tone_manifest)))


def test_the_dataloaders_pin_memory_thread_pins_every_tensor_of_a_batch(monkeypatch) -> None:
    """On a GPU the loader runs with pin_memory=True; a dataclass it does not know would pass unpinned.

    Page-locked memory needs a GPU, so ``Tensor.pin_memory`` is replaced by a copy that
    remembers what it made; the batch then goes through the function the DataLoader's
    pin-memory thread applies to each item.
    """
    from torch.utils.data._utils.pin_memory import pin_memory as loader_pin_memory

    from speechbs.asr.ctc import CTCTargets

    made: list[torch.Tensor] = []

    def fake_pin(tensor: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        made.append(tensor.clone())
        return made[-1]

    monkeypatch.setattr(torch.Tensor, "pin_memory", fake_pin)
    targets = CTCTargets(torch.zeros(2, 3, dtype=torch.int64), torch.tensor([3, 2]), torch.tensor([3, 2]),
                         torch.tensor([0, 0]))
    batch = AudioBatch(torch.randn(2, 160), torch.tensor([160, 100]), torch.tensor([4, 7]), is_empty=False,
                       targets=targets)
    pinned = loader_pin_memory(batch)
    assert isinstance(pinned, AudioBatch) and isinstance(pinned.targets, CTCTargets)
    tensors = [pinned.wav_BT, pinned.lengths_B, pinned.indices_B]
    tensors += [pinned.targets.labels_BL, pinned.targets.lengths_B, pinned.targets.min_frames_B,
                pinned.targets.num_oov_B]
    assert all(any(t is m for m in made) for t in tensors) and len(made) == len(tensors)
    assert torch.equal(pinned.wav_BT, batch.wav_BT) and pinned.is_empty is False


def test_a_batch_moves_to_the_device_with_its_targets() -> None:
    """``AudioBatch.to`` moves every tensor, targets included (checked on the meta device: any device works)."""
    from speechbs.targets.labels import ClusterTargets

    targets = ClusterTargets(torch.zeros(2, 4, dtype=torch.int64), torch.tensor([4, 3]), 50.0, 100)
    batch = AudioBatch(torch.randn(2, 160), torch.tensor([160, 100]), torch.tensor([4, 7]), is_empty=False,
                       targets=targets)
    moved = batch.to("meta")
    assert all(t.device.type == "meta" for t in (moved.wav_BT, moved.lengths_B, moved.indices_B,
                                                 moved.targets.labels_BL, moved.targets.lengths_B))
    assert moved.targets.num_clusters == 100 and batch.wav_BT.device.type == "cpu"


def test_partner_audio_is_the_same_whatever_the_split(tone_manifest):
    """Each mixed row carries its partner's segment of the global batch, on any rank, in any micro-batch."""
    from speechbs.data.partners import PartnerDraw

    draw = PartnerDraw(probability=0.5, seed=2)
    layouts = {(1, 4.0): None, (2, 4.0): None, (1, 2.5): None}  # (world size, max_device_seconds)
    for world_size, cap_s in layouts:
        cfg = batch_cfg(max_device_seconds=cap_s)
        per_row: dict[int, torch.Tensor] = {}
        for rank in range(world_size):
            steps = iter_steps(build_planner(tone_manifest, cfg, AUDIO, seed=1), tone_manifest, AUDIO, rank=rank,
                               world_size=world_size, num_workers=0, num_steps=2, partners=draw)
            for k, step in enumerate(steps):
                chosen = draw.choose(step.batch)
                for mb in (mb for mb in step.micro_batches if not mb.is_empty):
                    for row, index in enumerate(mb.indices_B.tolist()):
                        length = int(mb.partner_lengths_B[row])
                        partner = chosen.get(index)
                        assert length == (0 if partner is None else partner.num_samples)
                        per_row[(k, index)] = mb.partner_wav_BT[row, :length].clone()
                        if partner is not None:
                            want = load_audio(tone_manifest.audio_path(partner.index), AUDIO,
                                              offset_samples=partner.offset_samples, num_samples=partner.num_samples)
                            assert torch.equal(per_row[(k, index)], torch.from_numpy(want))
        layouts[(world_size, cap_s)] = per_row
    reference, *others = layouts.values()
    assert any(len(v) for v in reference.values())
    for other in others:
        assert other.keys() == reference.keys()
        assert all(torch.equal(other[key], reference[key]) for key in reference)
