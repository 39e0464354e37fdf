"""wav2vec 2.0 model: padding invariance, loss interface, learning on real audio, encode path, bf16."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from speechbs.data.audio import resample
from speechbs.models import wav2vec2 as w2v
from speechbs.models import wav2vec2_config as w2v_config
from speechbs.models.registry import MODELS, model_entry


def _quiet(**overrides) -> w2v_config.Wav2Vec2Config:
    """tiny with every dropout and layer drop off (deterministic apart from the seeded draws)."""
    settings = dict(dropout=0.0, attention_dropout=0.0, activation_dropout=0.0, dropout_input=0.0,
                    dropout_features=0.0, layerdrop=0.0)
    return w2v_config.tiny(**{**settings, **overrides})


def _batch(lengths: list[int], dtype=torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    wav_BT = torch.zeros(len(lengths), max(lengths), dtype=dtype)
    for b, n in enumerate(lengths):
        wav_BT[b, :n] = torch.randn(n, generator=gen, dtype=dtype)
    return wav_BT, torch.tensor(lengths)


@pytest.mark.parametrize("norm,pre_norm", [("group", False), ("layer", True)])
def test_each_utterance_gives_the_same_result_in_any_batch(norm: str, pre_norm: bool) -> None:
    """The batch contract: per row, features, masks, logits and loss sums equal the utterance alone."""
    torch.manual_seed(0)
    model = w2v.Wav2Vec2Model(_quiet(conv_norm=norm, layer_norm_first=pre_norm)).double().train()
    lengths = [16_000, 9_000, 12_345]
    wav_BT, lengths_B = _batch(lengths, torch.float64)
    seeds_B = torch.tensor([101, -7, 2**40])
    out = model(wav_BT, lengths_B, seeds_B=seeds_B, gumbel_temperature=1.5)
    b_N = out.mask_BT.nonzero(as_tuple=True)[0]
    sums = {"contrastive_sum": 0.0, "penalty_sum": 0.0, "num_targets": 0, "num_correct": 0}
    for b, n in enumerate(lengths):
        alone = model(wav_BT[b:b + 1, :n], lengths_B[b:b + 1], seeds_B=seeds_B[b:b + 1],
                      gumbel_temperature=1.5)
        num_frames = int(alone.encoder.frame_lengths_B[0])
        assert torch.equal(out.mask_BT[b, :num_frames], alone.mask_BT[0])
        torch.testing.assert_close(out.encoder.features_BTC[b, :num_frames], alone.encoder.features_BTC[0],
                                   rtol=1e-9, atol=1e-9)
        torch.testing.assert_close(out.logits_NK[b_N == b], alone.logits_NK, rtol=1e-9, atol=1e-9)
        for name in sums:
            sums[name] = sums[name] + getattr(alone.loss, name)
    assert out.mask_BT[b_N.bincount() > 0].any() and not out.mask_BT[out.encoder.padding_BT].any()
    for name, total in sums.items():
        torch.testing.assert_close(getattr(out.loss, name), torch.as_tensor(total, dtype=getattr(out.loss, name).dtype),
                                   rtol=1e-9, atol=1e-9)


def test_loss_sum_combines_terms_like_fairseq() -> None:
    torch.manual_seed(0)
    model = w2v.Wav2Vec2Model(_quiet()).train()
    wav_BT, lengths_B = _batch([16_000, 8_000])
    loss = model(wav_BT, lengths_B, seeds_B=torch.tensor([1, 2]), gumbel_temperature=2.0).loss
    cfg = model.cfg
    want = loss.contrastive_sum + cfg.diversity_weight * loss.diversity_sum + cfg.feature_penalty_weight * loss.penalty_sum
    torch.testing.assert_close(loss.loss_sum, want)
    num_gv = cfg.num_codebooks * cfg.codebook_size
    torch.testing.assert_close(loss.diversity_sum, (num_gv - loss.perplexity_sum / loss.num_targets) / num_gv * loss.num_targets)
    assert 0 < loss.num_targets < 75  # 49 + 24 frames in all, about half masked
    assert set(loss.logs()) >= {"contrastive_sum", "num_correct", "diversity_sum", "perplexity_sum", "penalty_sum"}


@pytest.mark.parametrize("training", [True, False])
def test_code_usage_pre_pass_sees_what_the_forward_quantizes(training: bool) -> None:
    """The no-grad pre-pass of diversity_scope global: the same masks, feature dropout and Gumbel noise."""
    torch.manual_seed(0)
    model = w2v.Wav2Vec2Model(_quiet(dropout_features=0.3)).double().train(training)
    wav_BT, lengths_B = _batch([16_000, 9_000, 12_345], torch.float64)
    seeds_B = torch.tensor([5, 6, 7])
    torch.manual_seed(1)  # the two calls below see different global-RNG states: they must not depend on it
    out = model(wav_BT, lengths_B, seeds_B=seeds_B, gumbel_temperature=1.5)
    with torch.no_grad():
        usage = model.code_usage(wav_BT, lengths_B, seeds_B=seeds_B, gumbel_temperature=1.5)
    torch.testing.assert_close(usage.soft_sum_GV, out.loss.usage.soft_sum_GV, rtol=1e-12, atol=0.0)
    assert torch.equal(usage.hard_sum_GV, out.loss.usage.hard_sum_GV)
    assert usage.num_frames == out.loss.num_targets > 0
    # Given as the step's usage, the diversity and perplexity logged are of those frames.
    again = model(wav_BT, lengths_B, seeds_B=seeds_B, gumbel_temperature=1.5, step_usage=usage + usage)
    torch.testing.assert_close(again.loss.perplexity_sum, out.loss.perplexity_sum, rtol=1e-12, atol=0.0)
    model.cfg.dropout_features = 0.0  # the equality above held WITH dropout (keyed by utterance seed)
    undropped = model.code_usage(wav_BT, lengths_B, seeds_B=seeds_B, gumbel_temperature=1.5)
    assert torch.allclose(undropped.soft_sum_GV, usage.soft_sum_GV) != training


def test_step_usage_needs_the_global_scope() -> None:
    model = w2v.Wav2Vec2Model(_quiet(diversity_scope="micro_batch")).train()
    wav_BT, lengths_B = _batch([8_000])
    usage = model.code_usage(wav_BT, lengths_B, seeds_B=torch.tensor([1]), gumbel_temperature=2.0)
    with pytest.raises(ValueError, match="diversity_scope"):
        model(wav_BT, lengths_B, seeds_B=torch.tensor([1]), gumbel_temperature=2.0, step_usage=usage)


def test_feature_grad_mult_scales_encoder_gradients_only() -> None:
    grads = {}
    for mult in (1.0, 0.1):
        torch.manual_seed(0)
        model = w2v.Wav2Vec2Model(_quiet(feature_grad_mult=mult, feature_penalty_weight=0.0)).double().train()
        wav_BT, lengths_B = _batch([8_000], torch.float64)
        model(wav_BT, lengths_B, seeds_B=torch.tensor([3]), gumbel_temperature=2.0).loss.loss_sum.backward()
        grads[mult] = (model.feature_encoder.conv_layers[0].conv.weight.grad.clone(),
                       model.post_extract_proj.weight.grad.clone())
    torch.testing.assert_close(grads[0.1][0], 0.1 * grads[1.0][0], rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(grads[0.1][1], grads[1.0][1])


def test_encode_masks_only_when_asked_and_returns_layers() -> None:
    torch.manual_seed(0)
    model = w2v.Wav2Vec2Model(_quiet(mask_channel_prob=0.3)).eval()
    wav_BT, lengths_B = _batch([16_000, 6_400])
    plain = model.encode(wav_BT, lengths_B, return_layers=True)
    assert plain.features_BTC.shape == (2, 49, model.cfg.embed_dim)
    assert plain.frame_lengths_B.tolist() == [49, 19] and plain.padding_BT.sum() == 30
    assert len(plain.layer_outputs) == model.cfg.num_layers
    again = model.encode(wav_BT, lengths_B)
    assert torch.equal(plain.features_BTC, again.features_BTC)
    masked = model.encode(wav_BT, lengths_B, seeds_B=torch.tensor([1, 2]))
    assert not torch.allclose(masked.features_BTC, plain.features_BTC)


def test_bf16_autocast_forward_runs_on_cpu() -> None:
    torch.manual_seed(0)
    model = w2v.Wav2Vec2Model(w2v_config.tiny()).train()
    wav_BT, lengths_B = _batch([16_000, 11_000])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(wav_BT, lengths_B, seeds_B=torch.tensor([1, 2]), gumbel_temperature=2.0, layerdrop_seed=0)
    assert torch.isfinite(out.loss.loss_sum) and out.loss.loss_sum.dtype == torch.float32
    out.loss.loss_sum.backward()


def test_sizes_and_registry() -> None:
    counts = {name: w2v.num_parameters(w2v.Wav2Vec2Model(fn())) for name, fn in MODELS["wav2vec2"].sizes.items()
              if name == "tiny"}
    assert counts["tiny"] < 1_000_000
    assert w2v_config.base().num_layers == 12 and w2v_config.large().layer_norm_first and w2v_config.large().conv_norm == "layer"
    assert model_entry("wav2vec2").model_cls is w2v.Wav2Vec2Model
    with pytest.raises(ValueError, match="known models"):
        model_entry("wav3vec")
    with pytest.raises(ValueError, match="num_heads"):
        w2v_config.tiny(num_heads=5)


def _digit_batch(digits_dir: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """Two utterances of concatenated spoken digits at 16 kHz: 1.0 s and 0.75 s."""
    files = sorted((digits_dir / "recordings").glob("*_jackson_*.wav"))[:12]
    utts = []
    for i, num_samples in enumerate([16_000, 12_000]):
        parts = [resample(sf.read(f, dtype="float32")[0], 8_000, 16_000) for f in files[i * 6:(i + 1) * 6]]
        utts.append(np.concatenate(parts)[:num_samples])
    wav_BT = torch.zeros(2, 16_000)
    for b, u in enumerate(utts):
        wav_BT[b, : len(u)] = torch.from_numpy(u)
    return wav_BT, torch.tensor([len(u) for u in utts])


def test_loss_falls_and_accuracy_beats_chance_on_real_audio(digits_dir: Path) -> None:
    torch.manual_seed(0)
    model = w2v.Wav2Vec2Model(_quiet()).train()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    wav_BT, lengths_B = _digit_batch(digits_dir)
    history = []
    for _ in range(12):
        loss = model(wav_BT, lengths_B, seeds_B=torch.tensor([1, 2]), gumbel_temperature=2.0).loss
        (loss.loss_sum / loss.num_targets).backward()
        opt.step()
        opt.zero_grad()
        history.append(((loss.contrastive_sum / loss.num_targets).item(), (loss.num_correct / loss.num_targets).item()))
    chance = 1 / (model.cfg.num_negatives + 1)
    assert history[-1][0] < 0.8 * history[0][0], history
    assert history[-1][1] > max(10 * chance, history[0][1] + 0.1), history


def test_micro_batch_without_masked_frames_gives_zero_loss() -> None:
    """Utterances shorter than one span (10 frames = 0.2 s) get no mask; the loss is 0, not NaN."""
    model = w2v.Wav2Vec2Model(_quiet()).train()
    wav_BT, lengths_B = _batch([2_000, 1_500])
    loss = model(wav_BT, lengths_B, seeds_B=torch.tensor([1, 2]), gumbel_temperature=2.0).loss
    assert loss.num_targets == 0 and loss.loss_sum == 0
    loss.loss_sum.backward()
