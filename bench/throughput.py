"""Training throughput: speechbs against Hugging Face transformers (and torchaudio), same configuration, same inputs.

One training step = forward + backward + AdamW step on a batch of B utterances of
S seconds of random audio, in this process, one implementation after the other
(alternating, median of the repeats). Throughput is audio seconds per second.

- wav2vec 2.0: the full pretraining step. speechbs ``Wav2Vec2Model`` (its masks,
  distractors and Gumbel noise are drawn inside the forward) against
  ``Wav2Vec2ForPreTraining`` (its masks and distractors come from transformers'
  numpy helpers, counted in its step time, as its training scripts do).
- HuBERT: transformers and torchaudio have no HuBERT pretraining loss that takes
  the same inputs, so every side runs the encoder (speechbs ``HubertModel.encode``,
  transformers ``HubertModel``, torchaudio ``wav2vec2_model``: the same conv
  feature encoder + transformer) with the same mean-square loss on its output.

- ``--kind encoder``: the encoder alone, on the same weights: speechbs ``encode``
  (:class:`~speechbs.models.encoder.SpeechEncoder`, the one encoder of every family) against
  transformers' bare ``Wav2Vec2Model`` / ``HubertModel`` whose weights were copied into it
  through ``speechbs.models.convert`` (the row records the largest output difference),
  forward + backward of the summed last hidden state, no optimizer, dropout and masking off,
  rows of equal length. ``--encoder-mode train`` (the default) runs both in training mode, as a
  training step does: transformers' feature encoder then also makes its input waveform require
  a gradient (for gradient checkpointing), so its backward computes one more convolution
  gradient; ``eval`` runs both in eval mode, where the two compute the same operations.

Each row is one (kind, model, size, precision, compile) setting. The sides take turns in
every repeat, in alternating order (ABBA), so a drift of the machine's load hits both alike;
besides the ratio of the medians, each row gives the median and quartiles of the per-repeat
ratios (reference time / speechbs time of the same repeat): their spread is the noise of a
shared machine. ``--precision bf16``
runs every side under the bf16 autocast of speechbs training; ``--compile on``
compiles speechbs' model as training does (``speechbs.train.compile``: the conv
feature encoder and each transformer layer, in place) and wraps each reference's
model whole in ``torch.compile``, its own natural way (compile time is reported
apart, not in the step time). On CUDA the step is timed
between two synchronizations. "TFLOP/s" is speechbs' model FLOPs per step
(counted once by ``torch.utils.flop_counter`` over forward + backward) over its
step time; MFU divides that by the device's dense peak for the precision
(``--peak-tflops`` overrides the built-in table of NVIDIA data-center GPUs).

Usage: python bench/throughput.py [--kind step encoder] [--sizes tiny small base] [--models wav2vec2 hubert]
       [--device cpu|cuda]
       [--precision fp32 bf16] [--compile off on] [--against transformers torchaudio]
       [--batch 4] [--seconds 4] [--repeats 5] [--peak-tflops X] [--json out.json]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from speechbs.models import convert
from speechbs.models.hubert import HubertModel
from speechbs.models.wav2vec2 import Wav2Vec2Model
from speechbs.rundir import environment
from speechbs.train.compile import compile_model, eager
from speechbs.train.step import precision_context

RATE_HZ = 16_000
SIZES = {
    "tiny": dict(hidden_size=96, num_hidden_layers=2, num_attention_heads=4, intermediate_size=192,
                 conv_dim=(64,) * 7, num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4,
                 codevector_dim=64, proj_codevector_dim=64, num_codevectors_per_group=32),
    # BASE's conv stack (512 channels) under a 4 x 256 transformer.
    "small": dict(hidden_size=256, num_hidden_layers=4, num_attention_heads=4, intermediate_size=1024),
    "base": {},
}
# Dropout and layer drop off on every side: the comparison is of the computation, not of RNG use.
COMMON = dict(hidden_dropout=0.0, attention_dropout=0.0, activation_dropout=0.0, feat_proj_dropout=0.0,
              feat_quantizer_dropout=0.0, layerdrop=0.0, mask_time_prob=0.65, mask_time_length=10,
              num_negatives=100, feat_extract_norm="group", do_stable_layer_norm=False)
# Dense (no sparsity) peak TFLOP/s by device-name fragment: bf16 tensor cores, and fp32 without
# TF32 (torch's default for matmuls). From NVIDIA's data sheets (SXM parts).
PEAK_TFLOPS = {"H200": {"bf16": 989.4, "fp32": 66.9}, "H100": {"bf16": 989.4, "fp32": 66.9},
               "A100": {"bf16": 312.0, "fp32": 19.5}, "V100": {"bf16": float("nan"), "fp32": 15.7}}

Step = Callable[[], None]


@dataclass
class Setting:
    device: torch.device
    precision: str
    compile: bool
    batch: int
    samples: int

    def autocast(self) -> contextlib.AbstractContextManager:
        """The precision context of speechbs training, around every side's forward."""
        factory, _ = precision_context(self.device, self.precision)
        return factory() if factory is not None else contextlib.nullcontext()

    def audio(self) -> tuple[torch.Tensor, torch.Tensor]:
        wav_BT = 0.1 * torch.randn(self.batch, self.samples, generator=torch.Generator().manual_seed(0))
        return wav_BT.to(self.device), torch.full((self.batch,), self.samples, device=self.device)


@dataclass
class Contenders:
    """The step functions of one row: speechbs, each reference, and the references skipped (with why)."""

    ours: Step
    ours_flops_step: Step
    """speechbs' forward + backward without the optimizer: what the FLOP counter runs (eagerly)."""
    references: dict[str, Step] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)
    checks: dict[str, float] = field(default_factory=dict)
    """What the row checked before timing (``max_abs_diff``: the encoders' outputs on the timed input)."""


def compile_ours(model: torch.nn.Module, setting: Setting) -> torch.nn.Module:
    """speechbs' model compiled as the training loop compiles it (in place; one input length here)."""
    if setting.compile:
        compile_model(model, num_lengths=1)
    return model


def compile_reference(module: torch.nn.Module, setting: Setting) -> torch.nn.Module:
    return torch.compile(module) if setting.compile else module  # type: ignore[return-value]


def hf_config(kind: str, size: str):
    from transformers import HubertConfig, Wav2Vec2Config

    cls = Wav2Vec2Config if kind == "wav2vec2" else HubertConfig
    return cls(**COMMON, **SIZES[size])


def optimizer_step(loss: torch.Tensor, opt: torch.optim.Optimizer) -> None:
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()


def wav2vec2_contenders(size: str, setting: Setting, against: list[str]) -> Contenders:
    from transformers import Wav2Vec2ForPreTraining
    from transformers.models.wav2vec2.modeling_wav2vec2 import _compute_mask_indices, _sample_negative_indices

    cfg = hf_config("wav2vec2", size)
    hf = Wav2Vec2ForPreTraining(cfg).train()
    ours_cfg, state = convert.from_hf_wav2vec2(hf, cfg)
    ours = Wav2Vec2Model(ours_cfg).train()
    ours.load_state_dict(state)
    hf, ours = hf.to(setting.device), ours.to(setting.device)
    wav_BT, lengths_B = setting.audio()
    seeds_B = torch.arange(setting.batch, device=setting.device)
    num_frames = int(hf._get_feat_extract_output_lengths(setting.samples))
    run_ours, run_hf = compile_ours(ours, setting), compile_reference(hf, setting)
    opt_ours, opt_hf = torch.optim.AdamW(ours.parameters(), lr=1e-5), torch.optim.AdamW(hf.parameters(), lr=1e-5)

    def loss_ours(model: torch.nn.Module) -> torch.Tensor:
        with setting.autocast():
            return model(wav_BT, lengths_B, seeds_B=seeds_B, gumbel_temperature=2.0).loss.loss_sum

    def step_hf() -> None:
        mask = _compute_mask_indices((setting.batch, num_frames), mask_prob=0.65, mask_length=10, min_masks=2)
        negatives = _sample_negative_indices((setting.batch, num_frames), 100, mask_time_indices=mask)
        with setting.autocast():
            out = run_hf(wav_BT, mask_time_indices=torch.from_numpy(mask).to(setting.device),
                         sampled_negative_indices=torch.from_numpy(negatives).to(setting.device))
        optimizer_step(out.loss, opt_hf)

    contenders = Contenders(ours=lambda: optimizer_step(loss_ours(run_ours), opt_ours),
                            ours_flops_step=lambda: loss_ours(ours).backward())
    for name in against:
        if name == "transformers":
            contenders.references[name] = step_hf
        else:
            contenders.skipped[name] = "no wav2vec 2.0 pretraining loss"
    return contenders


class Encode(torch.nn.Module):
    """A module around ``encode`` (last layer only): one forward, as the references have."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, wav: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        return self.model.encode(wav, lengths, return_layers=False).features_BTC


def torchaudio_encoder(cfg) -> torch.nn.Module:
    """torchaudio's ``wav2vec2_model`` (the encoder HuBERT shares) built from a transformers config."""
    from torchaudio.models import wav2vec2_model

    return wav2vec2_model(
        extractor_mode="group_norm", extractor_conv_layer_config=list(zip(cfg.conv_dim, cfg.conv_kernel, cfg.conv_stride)),
        extractor_conv_bias=cfg.conv_bias, encoder_embed_dim=cfg.hidden_size, encoder_projection_dropout=0.0,
        encoder_pos_conv_kernel=cfg.num_conv_pos_embeddings, encoder_pos_conv_groups=cfg.num_conv_pos_embedding_groups,
        encoder_num_layers=cfg.num_hidden_layers, encoder_num_heads=cfg.num_attention_heads,
        encoder_attention_dropout=0.0, encoder_ff_interm_features=cfg.intermediate_size,
        encoder_ff_interm_dropout=0.0, encoder_dropout=0.0, encoder_layer_norm_first=False,
        encoder_layer_drop=0.0, aux_num_out=None)


def hubert_contenders(size: str, setting: Setting, against: list[str]) -> Contenders:
    from transformers import HubertModel as HFHubert

    cfg = hf_config("hubert", size)
    hf = HFHubert(cfg).train()
    ours_cfg, state = convert.from_hf_hubert(hf, cfg)
    ours = HubertModel(ours_cfg).train()
    ours.load_state_dict(state, strict=False)  # transformers has no pretraining heads to convert
    hf, ours = hf.to(setting.device), ours.to(setting.device)
    wav_BT, lengths_B = setting.audio()
    opt_ours, opt_hf = torch.optim.AdamW(ours.parameters(), lr=1e-5), torch.optim.AdamW(hf.parameters(), lr=1e-5)

    run_ours, run_hf = Encode(compile_ours(ours, setting)), compile_reference(hf, setting)

    def loss_ours(model: torch.nn.Module) -> torch.Tensor:
        with setting.autocast():
            return model(wav_BT, lengths_B).float().pow(2).mean()

    def step_hf() -> None:
        with setting.autocast():
            loss = run_hf(wav_BT).last_hidden_state.float().pow(2).mean()
        optimizer_step(loss, opt_hf)

    contenders = Contenders(ours=lambda: optimizer_step(loss_ours(run_ours), opt_ours),
                            ours_flops_step=lambda: loss_ours(Encode(ours)).backward())
    for name in against:
        if name == "transformers":
            contenders.references[name] = step_hf
            continue
        try:
            ta = torchaudio_encoder(cfg).train().to(setting.device)
        except Exception as err:  # torchaudio is optional and often fails to import against another torch
            contenders.skipped[name] = f"torchaudio unavailable: {type(err).__name__}: {str(err).splitlines()[0][:80]}"
            continue
        run_ta, opt_ta = compile_reference(ta, setting), torch.optim.AdamW(ta.parameters(), lr=1e-5)

        def step_ta(run_ta=run_ta, opt_ta=opt_ta) -> None:
            with setting.autocast():
                loss = run_ta(wav_BT)[0].float().pow(2).mean()
            optimizer_step(loss, opt_ta)

        contenders.references[name] = step_ta
    return contenders


def encoder_contenders(kind: str, size: str, setting: Setting, against: list[str],
                       training: bool = True) -> Contenders:
    """speechbs ``encode`` against transformers' bare encoder with the same weights: forward + backward of the
    summed last hidden state (no optimizer), in training or eval mode, without dropout or masking."""
    import transformers

    cfg = hf_config(kind, size)
    cfg.mask_time_prob = cfg.mask_feature_prob = 0.0  # transformers would mask in training mode; speechbs gets no seeds
    hf_cls, ours_cls = ((transformers.Wav2Vec2Model, Wav2Vec2Model) if kind == "wav2vec2"
                        else (transformers.HubertModel, HubertModel))
    hf = hf_cls(cfg).train(training)
    ours_cfg, state = (convert.from_hf_wav2vec2 if kind == "wav2vec2" else convert.from_hf_hubert)(hf.state_dict(), cfg)
    ours = ours_cls(ours_cfg).train(training)
    # transformers' bare encoder has no pretraining heads, nor a mask embedding when it never masks.
    missing, unexpected = ours.load_state_dict(state, strict=False)
    assert not unexpected and all(key.split(".")[0] in (*ours.heads, "mask_emb") for key in missing), missing
    hf, ours = hf.to(setting.device), ours.to(setting.device)
    wav_BT, lengths_B = setting.audio()
    run_ours, run_hf = Encode(compile_ours(ours, setting)), compile_reference(hf, setting)
    with torch.no_grad(), setting.autocast():
        diff = (run_ours(wav_BT, lengths_B).float() - run_hf(wav_BT).last_hidden_state.float()).abs().max()

    def fwd_bwd_ours(model: torch.nn.Module) -> None:
        ours.zero_grad(set_to_none=True)
        with setting.autocast():
            out_BTC = model(wav_BT, lengths_B)
        out_BTC.float().sum().backward()

    def step_hf() -> None:
        hf.zero_grad(set_to_none=True)
        with setting.autocast():
            out_BTC = run_hf(wav_BT).last_hidden_state
        out_BTC.float().sum().backward()

    contenders = Contenders(ours=lambda: fwd_bwd_ours(run_ours), ours_flops_step=lambda: fwd_bwd_ours(Encode(ours)),
                            checks={"max_abs_diff": float(diff)})
    for name in against:
        if name == "transformers":
            contenders.references[name] = step_hf
        else:
            contenders.skipped[name] = "transformers' weights only (--kind step compares torchaudio)"
    return contenders


def contenders_of(kind: str, model: str, training: bool = True) -> Callable[[str, Setting, list[str]], Contenders]:
    if kind == "encoder":
        return lambda size, setting, against: encoder_contenders(model, size, setting, against, training)
    return wav2vec2_contenders if model == "wav2vec2" else hubert_contenders


def timed(step: Step, device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start


def model_flops(step: Step) -> float:
    """FLOPs of one forward + backward, counted by torch's FLOP counter (matmuls, convolutions, attention)."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        step()
    return float(counter.get_total_flops())


def peak_tflops(device: torch.device, precision: str, override: float | None) -> float | None:
    if override:
        return override
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for fragment, peaks in PEAK_TFLOPS.items():
        if fragment in name:
            return peaks[precision]
    return None


def measure_row(make: Callable[[], Contenders], setting: Setting, repeats: int, warmup: int) -> dict:
    """Median step times of speechbs and each reference, alternating; compile/warm-up time apart."""
    contenders = make()
    steps = {"speechbs": contenders.ours, **contenders.references}
    warm_s = {}
    for name, step in steps.items():
        warm_s[name] = sum(timed(step, setting.device) for _ in range(warmup))  # compiles, if it compiles
    with eager():  # the counter sees operators only when they run one by one
        flops = model_flops(contenders.ours_flops_step)
    times: dict[str, list[float]] = {name: [] for name in steps}
    order = list(steps)
    for i in range(repeats):  # take turns, in alternating order, so drifts in machine load hit every side alike
        for name in order if i % 2 == 0 else order[::-1]:
            times[name].append(timed(steps[name], setting.device))
    ratios = {name: paired_ratios(times[name], times["speechbs"]) for name in contenders.references}
    return {"median_s": {k: statistics.median(v) for k, v in times.items()}, "times_s": times, "ratios": ratios,
            "warmup_s": warm_s, "skipped": contenders.skipped, "flops": flops, **contenders.checks}


def paired_ratios(reference_s: list[float], ours_s: list[float]) -> dict[str, float]:
    """Median and quartiles of reference / speechbs time over the repeats (> 1: speechbs is faster)."""
    ratios = sorted(r / o for r, o in zip(reference_s, ours_s))
    if len(ratios) < 4:
        return {"median": statistics.median(ratios), "q1": ratios[0], "q3": ratios[-1]}
    q1, median, q3 = statistics.quantiles(ratios, n=4)
    return {"median": median, "q1": q1, "q3": q3}


def reference_version(package: str) -> str:
    try:
        return __import__(package).__version__
    except Exception:  # not installed, or fails to import against this torch
        return "-"


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kind", nargs="+", default=["step"], choices=["step", "encoder"],
                        help="step: a training step (pretraining for wav2vec 2.0, the encoder for HuBERT); "
                             "encoder: speechbs encode against transformers' encoder on copied weights, fwd + bwd")
    parser.add_argument("--encoder-mode", default="train", choices=["train", "eval"],
                        help="--kind encoder: both sides in training mode (dropout and masking off) or in eval mode")
    parser.add_argument("--sizes", nargs="+", default=["tiny", "base"], choices=list(SIZES))
    parser.add_argument("--models", nargs="+", default=["wav2vec2", "hubert"], choices=["wav2vec2", "hubert"])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--precision", nargs="+", default=["fp32"], choices=["fp32", "bf16"])
    parser.add_argument("--compile", nargs="+", default=["off"], choices=["off", "on"], dest="compile_modes",
                        help="torch.compile every side, speechbs as training does (compile time is reported apart)")
    parser.add_argument("--against", nargs="+", default=["transformers"], choices=["transformers", "torchaudio"])
    parser.add_argument("--batch", type=int, default=4, help="utterances per step")
    parser.add_argument("--seconds", type=float, default=4.0, help="length of each utterance, s")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps per side before timing (compiles)")
    parser.add_argument("--peak-tflops", type=float, default=None, help="device peak for MFU, TFLOP/s")
    parser.add_argument("--json", default="")
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: torch sees no CUDA device here (torch.cuda.is_available() is False)")
    device = torch.device(args.device)
    torch.manual_seed(0)
    samples = int(args.seconds * RATE_HZ)
    audio_s = args.batch * args.seconds
    rows = []
    settings = [(kind, size, model, precision, mode) for kind in args.kind for size in args.sizes
                for model in args.models for precision in args.precision for mode in args.compile_modes]
    for kind, size, model, precision, mode in settings:
            setting = Setting(device, precision, mode == "on", args.batch, samples)
            make = contenders_of(kind, model, args.encoder_mode == "train")
            row = {"kind": kind, "model": model, "size": size, "precision": precision, "compile": mode}
            if kind == "encoder":
                row["mode"] = args.encoder_mode
            try:
                row |= measure_row(lambda: make(size, setting, args.against), setting, args.repeats, args.warmup)
            except Exception as err:  # one failing setting (say, compile without a compiler) keeps the table
                row["error"] = f"{type(err).__name__}: {str(err).splitlines()[0][:160] if str(err) else ''}"
                traceback.print_exc()
            rows.append(row)
            print(progress_line(row, audio_s), flush=True)  # a run stopped by a time limit keeps these
            if device.type == "cuda":
                torch.cuda.empty_cache()
    info = {**environment(device), "transformers": reference_version("transformers")}
    print(f"{args.batch} x {args.seconds:g} s per step; {info['device_name']}, {info['threads']} threads, "
          f"torch {info['torch']}, transformers {info['transformers']}, {info['date']}\n")
    print_table(rows, args.against, audio_s, device, args.peak_tflops)
    result = {"batch": args.batch, "seconds": args.seconds, "machine": info, "rows": rows}
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
    return result


def what_is_timed(row: dict) -> str:
    if row.get("kind") == "encoder":
        return f"encoder fwd+bwd ({row['mode']})"
    return "pretraining step" if row["model"] == "wav2vec2" else "encoder fwd+bwd+step"


def progress_line(row: dict, audio_s: float) -> str:
    what = f"{row['model']} {row['size']} {what_is_timed(row)} {row['precision']} compile {row['compile']}"
    if "error" in row:
        return f"{what}: failed: {row['error']}"
    return f"{what}: " + ", ".join(f"{name} {audio_s / t:.1f} audio-s/s" for name, t in row["median_s"].items())


def print_table(rows: list[dict], against: list[str], audio_s: float, device: torch.device,
                peak_override: float | None) -> None:
    header = ["model", "size", "what is timed", "precision", "compile", "speechbs audio-s/s"]
    for name in against:
        header += [f"{name} audio-s/s", f"vs {name}"]
    header += ["speechbs TFLOP/s", "MFU", "compile/warm-up s", "max abs diff"]
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for r in rows:
        cells = [r["model"], r["size"], what_is_timed(r), r["precision"], r["compile"]]
        if "error" in r:
            print("| " + " | ".join(cells + [f"failed: {r['error']}"] + [""] * (len(header) - len(cells) - 1)) + " |")
            continue
        t = r["median_s"]
        cells.append(f"{audio_s / t['speechbs']:.1f}")
        for name in against:
            if name in t:
                paired = r["ratios"][name]  # per-repeat ratios: their quartiles are the spread
                cells += [f"{audio_s / t[name]:.1f}", f"{t[name] / t['speechbs']:.2f}x "
                          f"(per repeat {paired['median']:.2f}x, {paired['q1']:.2f}-{paired['q3']:.2f})"]
            else:
                cells += [r["skipped"].get(name, "-"), "-"]
        tflops = r["flops"] / t["speechbs"] / 1e12
        peak = peak_tflops(device, r["precision"], peak_override)
        cells += [f"{tflops:.3g}", f"{100 * tflops / peak:.1f}%" if peak else "-",
                  f"{r['warmup_s']['speechbs']:.1f}", f"{r['max_abs_diff']:.1e}" if "max_abs_diff" in r else "-"]
        print("| " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
