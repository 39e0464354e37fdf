"""``speechbs pretrain RECIPE [--set ...]``: self-supervised pretraining, alone or under torchrun.

This module says what pretraining wav2vec 2.0 means for the shared loop
(:mod:`speechbs.train.loop`): how a micro-batch becomes a loss sum, which
per-utterance seeds drive masking, distractors and Gumbel noise, and how the
validation loss is measured. Everything else is the shared loop's.
"""

from __future__ import annotations

import argparse
from typing import Any

import torch
from torch import nn

from speechbs.configio import load_config
from speechbs.data.loader import AudioBatch, eval_micro_batches
from speechbs.data.manifest import read_manifest
from speechbs.dist import DistContext, distributed
from speechbs.models.registry import MODELS
from speechbs.train.loop import Task, train
from speechbs.train.schedule import gumbel_temperature
from speechbs.train.step import StepOutput, StepReport

# Large odd constants that spread (seed, step) over the int64 range; utterance indices are added.
_STEP_STRIDE = 10_000_019
_SEED_STRIDE = 1_000_003


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("recipe", help="TOML recipe (see recipes/README.md)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override one config field, e.g. --set batch.seconds=600 (repeatable)")
    parser.add_argument("--backend", default="auto", choices=["auto", "gloo", "nccl"],
                        help="process-group backend under torchrun (auto: NCCL on GPU, gloo on CPU)")


def main(args: argparse.Namespace) -> int:
    cfg = load_config(args.recipe, args.overrides)
    with distributed(args.backend) as ctx:
        train(cfg, build_pretrain_task, ctx)
    return 0


def utterance_seeds(seed: int, step: int, indices_B: torch.Tensor) -> torch.Tensor:
    """One int64 seed per utterance from (run seed, step, manifest row).

    The same utterance at the same step gets the same masks, distractors and
    Gumbel noise in any micro-batch on any rank: the heart of world-size invariance.
    """
    return (seed * _SEED_STRIDE + step) * _STEP_STRIDE + indices_B.to(torch.int64)


def build_pretrain_task(cfg: Any, ctx: DistContext) -> Task:
    spec = MODELS[cfg.model.name]
    ctx.seed_everything(cfg.run.seed, same_on_all_ranks=True)  # the same initial weights at any world size
    model = spec.model_cls(cfg.model.arch).to(ctx.device)
    sched = cfg.schedule

    def temperature(step: int) -> float:
        return gumbel_temperature(step, sched.gumbel_start, sched.gumbel_end, sched.gumbel_decay)

    def forward(m: nn.Module, mb: AudioBatch, *, step: int) -> StepOutput:
        wav_BT = mb.wav_BT.to(ctx.device, non_blocking=True)
        lengths_B = mb.lengths_B.to(ctx.device)
        seeds_B = utterance_seeds(cfg.run.seed, step, mb.indices_B).to(ctx.device)
        out = m(wav_BT, lengths_B, seeds_B=seeds_B, gumbel_temperature=temperature(step),
                layerdrop_seed=cfg.run.seed * _SEED_STRIDE + step)
        logs = out.loss.logs()
        logs["real_s"] = lengths_B.sum().to(torch.float32) / cfg.audio.sample_rate_hz
        return StepOutput(loss_sum=out.loss.loss_sum, num_targets=out.loss.num_targets.to(torch.float32),
                          logs={k: v.to(torch.float32) for k, v in logs.items() if k != "num_targets"})

    valid_path = cfg.data.valid_manifest
    valid = read_manifest(valid_path) if valid_path else None

    def validate(m: nn.Module, step: int) -> dict[str, float]:
        assert valid is not None
        m.eval()
        totals = torch.zeros(4, dtype=torch.float64, device=ctx.device)
        with torch.no_grad():
            for mb in eval_micro_batches(valid, cfg.batch, cfg.audio, rank=ctx.rank, world_size=ctx.world_size):
                if mb.is_empty:
                    continue
                # Fixed seeds: every validation pass masks the same frames, so curves compare.
                seeds_B = utterance_seeds(cfg.run.seed, 0, mb.indices_B).to(ctx.device)
                out = m(mb.wav_BT.to(ctx.device), mb.lengths_B.to(ctx.device), seeds_B=seeds_B,
                        gumbel_temperature=temperature(step))
                totals += torch.stack([out.loss.loss_sum, out.loss.contrastive_sum,
                                       out.loss.num_correct, out.loss.num_targets]).to(torch.float64)
        m.train()
        ctx.all_reduce_sum(totals)
        loss_sum, contrastive_sum, correct, targets = totals.tolist()
        targets = max(targets, 1.0)
        return {"loss": loss_sum / targets, "contrastive": contrastive_sum / targets, "accuracy": correct / targets}

    def metrics(report: StepReport) -> dict[str, float]:
        means, sums = report.log_means, report.log_sums
        return {
            "loss": report.loss,
            "contrastive": means.get("contrastive_sum", float("nan")),
            "accuracy": means.get("num_correct", float("nan")),
            "diversity": means.get("diversity_sum", float("nan")),
            "perplexity": means.get("perplexity_sum", float("nan")),
            "code_perplexity": means.get("code_perplexity_sum", float("nan")),
            "feature_penalty": means.get("penalty_sum", float("nan")),
            "num_masked_frames": report.num_targets,
            "grad_norm": report.grad_norm,
            "computed_real_s": sums.get("real_s", float("nan")),
        }

    return Task(model=model, forward=forward, metrics=metrics,
                step_logs=lambda step: {"gumbel_temperature": temperature(step)},
                validate=validate if valid is not None else None,
                find_unused_parameters=cfg.model.arch.layerdrop > 0)
