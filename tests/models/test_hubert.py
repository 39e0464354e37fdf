"""HuBERT (and WavLM without mixing): loss sums, label alignment, padding labels, learning on real audio."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from speechbs.data.audio import resample
from speechbs.errors import ConfigError
from speechbs.models import hubert, hubert_config, wavlm, wavlm_config
from speechbs.models.hubert import ClusterTargets
from speechbs.models.registry import MODELS, model_entry

QUIET = dict(dropout=0.0, attention_dropout=0.0, activation_dropout=0.0, dropout_input=0.0, layerdrop=0.0)


def _model(kind: str, **overrides) -> hubert.HubertModel:
    torch.manual_seed(0)
    if kind == "wavlm":
        return wavlm.WavLMModel(wavlm_config.tiny(**{**QUIET, "mix_prob": 0.0, **overrides}))
    return hubert.HubertModel(hubert_config.tiny(**{**QUIET, **overrides}))


def _batch(lengths: list[int], dtype=torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    wav_BT = torch.zeros(len(lengths), max(lengths), dtype=dtype)
    for b, n in enumerate(lengths):
        wav_BT[b, :n] = torch.randn(n, generator=gen, dtype=dtype)
    return wav_BT, torch.tensor(lengths)


def _targets(label_lengths: list[int], rate_hz: float = 100.0, num_clusters: int = 100) -> ClusterTargets:
    gen = torch.Generator().manual_seed(1)
    labels_BL = torch.full((len(label_lengths), max(label_lengths)), -1, dtype=torch.long)
    for b, n in enumerate(label_lengths):
        labels_BL[b, :n] = torch.randint(0, num_clusters, (n,), generator=gen)
    return ClusterTargets(labels_BL, torch.tensor(label_lengths), rate_hz, num_clusters)


def _rows(t: ClusterTargets, rows: slice) -> ClusterTargets:
    lengths_B = t.lengths_B[rows]
    return ClusterTargets(t.labels_BL[rows, : int(lengths_B.max())], lengths_B, t.label_rate_hz, t.num_clusters)


@pytest.mark.parametrize("kind", ["hubert", "wavlm"])
def test_loss_is_a_sum_over_micro_batches(kind: str) -> None:
    """Two micro-batches summed == one batch (same seeds, no dropout): every log and the loss."""
    model = _model(kind, pred_nomask_weight=0.5).double().train()
    wav_BT, lengths_B = _batch([16_000, 9_000, 12_345], torch.float64)
    targets = _targets([98, 56, 77])  # 100 Hz labels: 2 per 20 ms frame
    seeds_B = torch.tensor([5, 6, 7])
    whole = model(wav_BT, lengths_B, seeds_B=seeds_B, targets=targets).loss
    parts = [model(wav_BT[rows, : int(lengths_B[rows].max())], lengths_B[rows], seeds_B=seeds_B[rows],
                   targets=_rows(targets, rows)).loss for rows in (slice(0, 2), slice(2, 3))]
    assert whole.num_targets > 0 and whole.num_unmasked > 0
    for name, value in whole.logs().items():
        torch.testing.assert_close(value, parts[0].logs()[name] + parts[1].logs()[name], rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(whole.loss_sum, parts[0].loss_sum + parts[1].loss_sum, rtol=1e-9, atol=1e-9)
    cfg = model.cfg
    want = (whole.masked_loss_sum + 0.5 * whole.unmasked_loss_sum + cfg.feature_penalty_weight * whole.penalty_sum)
    torch.testing.assert_close(whole.loss_sum, want)
    # fairseq's sample_size: masked plus unmasked frames when both are weighted.
    assert whole.num_targets == whole.num_masked + whole.num_unmasked


def test_labels_at_100_and_50_hz_align_like_fairseq() -> None:
    model = _model("hubert").eval()
    wav_BT, lengths_B = _batch([16_000, 16_000])  # 49 frames each
    labels_BL = torch.arange(98).repeat(2, 1)
    t100 = ClusterTargets(labels_BL, torch.tensor([98, 97]), 100.0, 100)
    out = model(wav_BT, lengths_B, seeds_B=torch.tensor([1, 2]), targets=t100)
    assert out.labels_BT[0].tolist() == list(range(0, 98, 2))  # frame t takes label 2t
    # 97 labels at ratio 2 cover int(97 / 2) = 48 frames: the last frame is cropped, as fairseq does.
    assert out.encoder.frame_lengths_B.tolist() == [49, 48] and out.labels_BT[1, 48] == -1
    assert not out.mask_BT[1, 48:].any()
    model50 = _model("hubert", label_rate_hz=50.0).eval()
    t50 = ClusterTargets(labels_BL[:, :49] % 100, torch.tensor([49, 40]), 50.0, 100)
    out50 = model50(wav_BT, lengths_B, seeds_B=torch.tensor([1, 2]), targets=t50)
    assert out50.labels_BT[0].tolist() == list(range(49))
    assert out50.encoder.frame_lengths_B.tolist() == [49, 40]


def test_padding_labels_never_count() -> None:
    """-1 labels and labels past a row's label length are never scored, whatever their content."""
    model = _model("hubert").train()
    wav_BT, lengths_B = _batch([16_000, 12_000])  # 49 and 37 frames
    targets = _targets([98, 60])  # row 1: labels for 30 frames only
    targets.labels_BL[0, 20:40] = -1  # frames 10..19 lose their label
    all_BT = torch.ones(2, 49, dtype=torch.bool)
    seeds_B = torch.tensor([1, 2])
    out = model(wav_BT, lengths_B, seeds_B=seeds_B, targets=targets, mask_BT=all_BT)
    assert out.loss.num_targets == (49 - 10) + 30
    assert out.logits_NK.shape[0] == out.loss.num_targets and out.loss.num_unmasked == 0
    assert out.encoder.frame_lengths_B.tolist() == [49, 30] and not out.mask_BT[1, 30:].any()
    targets.labels_BL[1, 60:] = 3  # garbage past the length
    again = model(wav_BT, lengths_B, seeds_B=seeds_B, targets=targets, mask_BT=all_BT)
    assert again.loss.num_targets == out.loss.num_targets
    torch.testing.assert_close(again.loss.masked_loss_sum, out.loss.masked_loss_sum)


def test_label_settings_must_match_the_model() -> None:
    model = _model("hubert")
    wav_BT, lengths_B = _batch([16_000])
    with pytest.raises(ConfigError, match="model.label_rate_hz"):
        model(wav_BT, lengths_B, seeds_B=torch.tensor([1]), targets=_targets([49], rate_hz=50.0))


def test_no_masked_frames_gives_zero_loss_and_encode_contract() -> None:
    model = _model("wavlm").train()
    wav_BT, lengths_B = _batch([2_000, 1_500])
    out = model(wav_BT, lengths_B, seeds_B=torch.tensor([1, 2]), targets=_targets([12, 9]))
    assert out.loss.num_targets == 0 and out.loss.loss_sum == 0
    out.loss.loss_sum.backward()
    model.eval()
    wav_BT, lengths_B = _batch([16_000, 6_400])
    plain = model.encode(wav_BT, lengths_B, return_layers=True)
    assert plain.frame_lengths_B.tolist() == [49, 19] and len(plain.layer_outputs) == model.cfg.num_layers
    masked = model.encode(wav_BT, lengths_B, seeds_B=torch.tensor([1, 2]))
    assert not torch.allclose(masked.features_BTC, plain.features_BTC)


def test_bf16_autocast_forward_runs() -> None:
    model = wavlm.WavLMModel(wavlm_config.tiny(mix_prob=1.0)).train()
    wav_BT, lengths_B = _batch([16_000, 11_000])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(wav_BT, lengths_B, seeds_B=torch.tensor([1, 2]), targets=_targets([98, 68]), layerdrop_seed=0)
    assert torch.isfinite(out.loss.loss_sum) and out.loss.loss_sum.dtype == torch.float32
    out.loss.loss_sum.backward()


def test_sizes_and_registry() -> None:
    for name in ("hubert", "wavlm"):
        entry = model_entry(name)
        assert entry.needs_labels and set(entry.sizes) == {"tiny", "base", "large"}
        assert hubert.num_parameters(entry.model_cls(entry.sizes["tiny"]())) < 1_000_000
    assert not MODELS["wav2vec2"].needs_labels
    b = hubert_config.base()
    assert (b.mask_prob, b.mask_length, b.final_dim, b.logit_temperature, b.layerdrop) == (0.8, 10, 256, 0.1, 0.05)
    assert (b.pred_masked_weight, b.pred_nomask_weight, b.feature_penalty_weight) == (1.0, 0.0, 10.0)
    assert hubert_config.large().layer_norm_first and hubert_config.large().num_clusters == 500
    w = wavlm_config.base()
    assert (w.num_buckets, w.max_distance, w.mix_prob) == (320, 800, 0.2)


def energy_labels(wav_BT: torch.Tensor, lengths_B: torch.Tensor, num_clusters: int) -> ClusterTargets:
    """50 Hz labels that are a fixed function of the audio: log energy of each 400-sample window, in K bins."""
    frames_BTW = wav_BT.unfold(1, 400, 320)
    log_e_BT = torch.log10(frames_BTW.pow(2).mean(dim=-1) + 1e-6)
    edges = torch.linspace(-5.0, 0.0, num_clusters + 1)[1:-1]
    labels_BT = torch.bucketize(log_e_BT, edges)
    num_B = (lengths_B - 400) // 320 + 1
    labels_BT = torch.where(torch.arange(labels_BT.shape[1]).view(1, -1) < num_B.view(-1, 1), labels_BT, -1)
    return ClusterTargets(labels_BT, num_B, 50.0, num_clusters)


def _digit_batch(digits_dir: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """Two utterances of concatenated spoken digits at 16 kHz: 0.75 s and 0.5 s."""
    files = sorted((digits_dir / "recordings").glob("*_jackson_*.wav"))[:12]
    utts = []
    for i, num_samples in enumerate([12_000, 8_000]):
        parts = [resample(sf.read(f, dtype="float32")[0], 8_000, 16_000) for f in files[i * 6:(i + 1) * 6]]
        utts.append(np.concatenate(parts)[:num_samples])
    wav_BT = torch.zeros(2, 12_000)
    for b, u in enumerate(utts):
        wav_BT[b, : len(u)] = torch.from_numpy(u)
    return wav_BT, torch.tensor([len(u) for u in utts])


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["hubert", "wavlm"])
def test_loss_falls_on_real_audio_with_energy_labels(kind: str, digits_dir: Path) -> None:
    overrides = dict(label_rate_hz=50.0, num_clusters=8)
    if kind == "wavlm":
        overrides["mix_prob"] = 0.2  # mixing on: the labels stay the clean utterance's
    model = _model(kind, **overrides).train()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    wav_BT, lengths_B = _digit_batch(digits_dir)
    targets = energy_labels(wav_BT, lengths_B, 8)
    history = []
    for _ in range(30):
        loss = model(wav_BT, lengths_B, seeds_B=torch.tensor([1, 2]), targets=targets).loss
        (loss.loss_sum / loss.num_targets).backward()
        opt.step()
        opt.zero_grad()
        history.append(((loss.masked_loss_sum / loss.num_targets).item(), (loss.num_correct / loss.num_targets).item()))
    first, last = np.mean([h[0] for h in history[:3]]), np.mean([h[0] for h in history[-3:]])
    assert last < 0.5 * first, history
    assert np.mean([h[1] for h in history[-3:]]) > 0.5, history  # chance: 1/8


def test_cluster_logits_stay_fp32_under_autocast() -> None:
    """Cosine logits near 1 / 0.1 = 10 have a bf16 spacing of 0.06: the matmul must not run in bf16."""
    torch.manual_seed(0)
    proj_NC, embs_KC = torch.randn(64, 32), torch.randn(100, 32)
    want = hubert.cluster_logits(proj_NC, embs_KC, 0.1)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = hubert.cluster_logits(proj_NC, embs_KC, 0.1)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-5)
