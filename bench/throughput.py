"""Training throughput: speechbs against Hugging Face transformers, same configuration, same inputs.

One training step = forward + backward + AdamW step on a batch of B utterances of
S seconds of random audio, in this process, one implementation after the other
(alternating, median of the repeats). Throughput is audio seconds per second.

- wav2vec 2.0: the full pretraining step. speechbs ``Wav2Vec2Model`` (its masks,
  distractors and Gumbel noise are drawn inside the forward) against
  ``Wav2Vec2ForPreTraining`` (its masks and distractors come from transformers'
  numpy helpers, counted in its step time, as its training scripts do).
- HuBERT: transformers has no HuBERT pretraining loss, so both sides run the encoder
  (speechbs ``HubertModel.encode`` vs ``HubertModel``) with the same mean-square loss
  on its output; this compares the shared feature encoder + transformer.

Usage: python bench/throughput.py [--sizes tiny base] [--batch 4] [--seconds 4] [--repeats 5] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from collections.abc import Callable

import torch

from speechbs.models import convert
from speechbs.models.hubert import HubertModel
from speechbs.models.wav2vec2 import Wav2Vec2Model

RATE_HZ = 16_000
TINY = dict(hidden_size=96, num_hidden_layers=2, num_attention_heads=4, intermediate_size=192,
            conv_dim=(64,) * 7, num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4,
            codevector_dim=64, proj_codevector_dim=64, num_codevectors_per_group=32)
# Dropout and layer drop off on both sides: the comparison is of the computation, not of RNG use.
COMMON = dict(hidden_dropout=0.0, attention_dropout=0.0, activation_dropout=0.0, feat_proj_dropout=0.0,
              feat_quantizer_dropout=0.0, layerdrop=0.0, mask_time_prob=0.65, mask_time_length=10,
              num_negatives=100, feat_extract_norm="group", do_stable_layer_norm=False)


def hf_config(kind: str, size: str):
    from transformers import HubertConfig, Wav2Vec2Config

    cls = Wav2Vec2Config if kind == "wav2vec2" else HubertConfig
    return cls(**COMMON, **(TINY if size == "tiny" else {}))


def wav2vec2_pair(size: str, batch: int, samples: int) -> tuple[Callable[[], None], Callable[[], None]]:
    from transformers import Wav2Vec2ForPreTraining
    from transformers.models.wav2vec2.modeling_wav2vec2 import _compute_mask_indices, _sample_negative_indices

    cfg = hf_config("wav2vec2", size)
    hf = Wav2Vec2ForPreTraining(cfg).train()
    ours_cfg, state = convert.from_hf_wav2vec2(hf, cfg)
    ours = Wav2Vec2Model(ours_cfg).train()
    ours.load_state_dict(state)
    wav_BT = 0.1 * torch.randn(batch, samples, generator=torch.Generator().manual_seed(0))
    lengths_B = torch.full((batch,), samples)
    seeds_B = torch.arange(batch)
    opt_hf = torch.optim.AdamW(hf.parameters(), lr=1e-5)
    opt_ours = torch.optim.AdamW(ours.parameters(), lr=1e-5)
    num_frames = int(hf._get_feat_extract_output_lengths(samples))

    def step_hf() -> None:
        mask = _compute_mask_indices((batch, num_frames), mask_prob=0.65, mask_length=10, min_masks=2)
        negatives = _sample_negative_indices((batch, num_frames), 100, mask_time_indices=mask)
        out = hf(wav_BT, mask_time_indices=torch.from_numpy(mask),
                 sampled_negative_indices=torch.from_numpy(negatives))
        opt_hf.zero_grad(set_to_none=True)
        out.loss.backward()
        opt_hf.step()

    def step_ours() -> None:
        out = ours(wav_BT, lengths_B, seeds_B=seeds_B, gumbel_temperature=2.0)
        opt_ours.zero_grad(set_to_none=True)
        out.loss.loss_sum.backward()
        opt_ours.step()

    return step_ours, step_hf


def hubert_pair(size: str, batch: int, samples: int) -> tuple[Callable[[], None], Callable[[], None]]:
    from transformers import HubertModel as HFHubert

    cfg = hf_config("hubert", size)
    hf = HFHubert(cfg).train()
    ours_cfg, state = convert.from_hf_hubert(hf, cfg)
    ours = HubertModel(ours_cfg).train()
    ours.load_state_dict(state, strict=False)  # transformers has no pretraining heads to convert
    wav_BT = 0.1 * torch.randn(batch, samples, generator=torch.Generator().manual_seed(0))
    lengths_B = torch.full((batch,), samples)
    opt_hf = torch.optim.AdamW(hf.parameters(), lr=1e-5)
    opt_ours = torch.optim.AdamW(ours.parameters(), lr=1e-5)

    def step_hf() -> None:
        loss = hf(wav_BT).last_hidden_state.pow(2).mean()
        opt_hf.zero_grad(set_to_none=True)
        loss.backward()
        opt_hf.step()

    def step_ours() -> None:
        loss = ours.encode(wav_BT, lengths_B).features_BTC.pow(2).mean()
        opt_ours.zero_grad(set_to_none=True)
        loss.backward()
        opt_ours.step()

    return step_ours, step_hf


def timed(step: Callable[[], None]) -> float:
    start = time.perf_counter()
    step()
    return time.perf_counter() - start


def measure(pair, repeats: int) -> tuple[float, float]:
    ours, hf = pair
    ours(), hf()  # warm-up
    t_ours, t_hf = [], []
    for _ in range(repeats):  # alternate, so drifts in machine load hit both sides alike
        t_ours.append(timed(ours))
        t_hf.append(timed(hf))
    return statistics.median(t_ours), statistics.median(t_hf)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", default=["tiny", "base"], choices=["tiny", "base"])
    parser.add_argument("--models", nargs="+", default=["wav2vec2", "hubert"], choices=["wav2vec2", "hubert"])
    parser.add_argument("--batch", type=int, default=4, help="utterances per step")
    parser.add_argument("--seconds", type=float, default=4.0, help="length of each utterance, s")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", default="")
    args = parser.parse_args()
    torch.manual_seed(0)
    samples = int(args.seconds * RATE_HZ)
    audio_s = args.batch * args.seconds
    rows = []
    for size in args.sizes:
        for model in args.models:
            make = wav2vec2_pair if model == "wav2vec2" else hubert_pair
            t_ours, t_hf = measure(make(size, args.batch, samples), args.repeats)
            rows.append({"model": model, "size": size, "ours_s": t_ours, "hf_s": t_hf,
                         "ours_audio_s_per_s": audio_s / t_ours, "hf_audio_s_per_s": audio_s / t_hf,
                         "speedup": t_hf / t_ours})
    import transformers

    print(f"{args.batch} x {args.seconds:g} s per step, {torch.get_num_threads()} threads, "
          f"{platform.machine()}, torch {torch.__version__}, transformers {transformers.__version__}\n")
    print("| model | size | what is timed | speechbs audio-s/s | transformers audio-s/s | speedup |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        what = "pretraining step" if r["model"] == "wav2vec2" else "encoder fwd+bwd+step"
        print(f"| {r['model']} | {r['size']} | {what} | {r['ours_audio_s_per_s']:.1f} | "
              f"{r['hf_audio_s_per_s']:.1f} | {r['speedup']:.2f}x |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"batch": args.batch, "seconds": args.seconds, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
