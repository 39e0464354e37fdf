"""CTC fine-tuning on letters as a task of the shared loop.

What fine-tuning means for :mod:`speechbs.train.loop` (fairseq ``wav2vec_ctc``,
Baevski et al. 2020 section 4.3): the pretrained encoder plus a linear letter
classifier; the conv feature encoder frozen throughout; the transformer frozen
for the first ``finetune.freeze_steps`` updates; time and channel masks; the
CTC loss SUMMED over utterances and divided once per step by the global number
of utterances (fairseq's ``sentence_avg``) or characters; validation WER with
greedy decoding, which selects ``checkpoints/best.pt``.

The encoder's architecture comes from ``finetune.init`` and replaces ``[model]``
before the run directory is written (:func:`prepare_finetune`), so the saved
config rebuilds the whole CTC model: ``speechbs decode`` needs nothing but the checkpoint.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from speechbs import seeds
from speechbs.asr.ctc import CTCTargets, LetterTargets, build_ctc_model, ctc_loss_per_row, greedy_ids
from speechbs.asr.hf_import import is_hf_dir, load_hf_encoder
from speechbs.asr.score import edit_distance
from speechbs.asr.vocab import build_vocab, read_dict, write_dict
from speechbs.atomic import write_text
from speechbs.config import ModelConfig
from speechbs.data.loader import AudioBatch, eval_micro_batches
from speechbs.data.manifest import label_path, letters_to_words, read_manifest, words_to_letters
from speechbs.dist import DistContext
from speechbs.errors import ConfigError, DataError
from speechbs.models.frames import num_frames
from speechbs.rundir import run_dir_of
from speechbs.tasks.base import Task
from speechbs.textio import read_lines
from speechbs.train.step import StepOutput, StepReport

if TYPE_CHECKING:
    from speechbs.config import Config, DataConfig, FinetuneConfig

# Pretraining settings that fine-tuning replaces (fairseq wav2vec_ctc's overrides of the w2v args).
ARCH_OVERRIDES = ("mask_prob", "mask_length", "mask_channel_prob", "mask_channel_length", "layerdrop",
                  "dropout", "attention_dropout", "activation_dropout", "dropout_input")
LOG_KEYS = ("real_s", "ctc_sum", "num_utterances", "num_chars", "num_infeasible", "num_oov", "num_empty")
"""The log sums of every training forward (a placeholder logs zeros under the same names)."""
VALID_SUMS = ("loss_sum", "num_feasible", "word_errors", "num_words", "char_errors", "num_chars", "num_infeasible")
"""The sums of a validation pass, reduced over ranks before the rates are taken."""


def prepare_finetune(cfg: Config) -> tuple[Config, dict[str, torch.Tensor] | None]:
    """Check the config and resolve ``finetune.init``: (config whose ``model`` is the encoder, its weights).

    The weights are None for ``init = ""`` (training from scratch, the no-pretraining baseline).
    """
    if cfg.batch.crop != "none":
        raise ConfigError(f"batch.crop = {cfg.batch.crop!r}: fine-tuning needs whole utterances (a cropped "
                          f"span has no transcript of its own); set batch.crop = \"none\"")
    if cfg.data.labels not in ("", "ltr", "wrd"):
        raise ConfigError(f"data.labels = {cfg.data.labels!r}: CTC fine-tuning reads letter ('ltr') or word "
                          f"('wrd') transcripts beside the manifests")
    if cfg.train.init:
        raise ConfigError(f"train.init = {cfg.train.init!r} starts pretraining; fine-tuning starts from "
                          f"finetune.init (set that instead)", key="train.init")
    data = dataclasses.replace(cfg.data, labels=cfg.data.labels or "ltr")
    name, size, arch, state = cfg.model.name, cfg.model.size, cfg.model.arch, None
    init = cfg.finetune.init
    if init:
        if not Path(init).exists():
            raise ConfigError(f"finetune.init = {init!r} does not exist; give a speechbs checkpoint file or run "
                              f"directory, or a local Hugging Face model directory")
        if is_hf_dir(init):
            name, arch, state = load_hf_encoder(init)
        else:
            name, size, arch, state = _speechbs_encoder(init)
    arch = finetune_arch(arch, cfg.finetune)
    model = ModelConfig(name=name, size=size, arch=arch)
    return dataclasses.replace(cfg, data=data, model=model), state


def _speechbs_encoder(path: str) -> tuple[str, str, Any, dict[str, torch.Tensor]]:
    """The encoder of a speechbs (or fairseq, WavLM, s3prl) checkpoint: a pretraining model's, or a
    fine-tuned CTC model's (its letter head is left out, as from an HF ``...ForCTC`` directory)."""
    from speechbs.asr.ctc import is_ctc_state
    from speechbs.pretrained import encoder_of, read_checkpoint

    saved = read_checkpoint(path)
    state = saved.checkpoint["model"]
    if is_ctc_state(state):
        encoder = {k.removeprefix("encoder."): v for k, v in state.items() if k.startswith("encoder.")}
        saved.checkpoint = {**saved.checkpoint, "model": encoder}
    try:
        model = encoder_of(saved)
    except RuntimeError as exc:  # weights that do not fit the registry's model
        raise ConfigError(f"finetune.init = {path!r} is not a pretrained encoder checkpoint: "
                          f"{str(exc).splitlines()[0]}") from None
    return saved.config.model.name, saved.config.model.size, saved.config.model.arch, model.state_dict()


def finetune_arch(arch: Any, ft: FinetuneConfig) -> Any:
    """The encoder architecture with fine-tuning's dropout and masks, and the conv encoder frozen.

    ``feature_grad_mult = 0`` runs the feature encoder without a graph, fairseq's way of freezing it.
    """
    names = {f.name for f in dataclasses.fields(arch)}
    changes = {key: getattr(ft, key) for key in ARCH_OVERRIDES if key in names}
    if "feature_grad_mult" in names:
        changes["feature_grad_mult"] = 0.0
    return dataclasses.replace(arch, **changes)


def label_lines(manifest_path: str, data: DataConfig) -> list[str]:
    """The ``.ltr`` lines of a manifest (``.wrd`` labels are spelled into letters)."""
    manifest = read_manifest(manifest_path)
    path = label_path(manifest_path, data.labels, data.label_dir)
    if not path.is_file():
        raise DataError(f"label file {path} does not exist; fine-tuning needs one transcript per line of "
                        f"{manifest_path} (build both with `speechbs manifest`)")
    lines = read_lines(path, "label file")
    if len(lines) != len(manifest):
        raise DataError(f"{path} has {len(lines)} lines but {manifest_path} has {len(manifest)} utterances")
    return [words_to_letters(line) for line in lines] if data.labels == "wrd" else lines


def frames_of(arch: Any, num_samples: np.ndarray) -> np.ndarray | None:
    """Encoder frames per utterance from the conv arithmetic (None when the arch has no conv stack)."""
    if not hasattr(arch, "conv_layers"):
        return None
    return num_frames(np.asarray(num_samples, dtype=np.int64), arch.conv_layers)


def label_report(targets: LetterTargets, frames: np.ndarray | None) -> dict[str, int]:
    """Counts of bad labels in a split: empty, out-of-vocabulary symbols, too short for CTC."""
    report = {"num_utterances": len(targets.ids), "num_empty": sum(1 for ids in targets.ids if len(ids) == 0),
              "num_oov_symbols": int(targets.num_oov.sum()), "num_oov_utterances": int((targets.num_oov > 0).sum())}
    if frames is not None:
        report["num_infeasible"] = int((frames < targets.min_frames).sum())
    return report


class CTCTask(Task):
    """CTC fine-tuning of the encoder in ``cfg.model`` (from :func:`prepare_finetune`) with ``init_state`` loaded."""

    def __init__(self, cfg: Config, ctx: DistContext, init_state: dict[str, torch.Tensor] | None = None) -> None:
        ft = cfg.finetune
        self.cfg, self.ctx = cfg, ctx
        train_lines = label_lines(cfg.data.train_manifest, cfg.data)
        self.vocab, counts = (read_dict(ft.vocab), None) if ft.vocab else build_vocab(train_lines)
        ctx.seed_everything(seeds.init_seed(cfg.run.seed), same_on_all_ranks=True)
        model = build_ctc_model(cfg, self.vocab)
        if init_state is not None:
            _missing, unexpected = model.encoder.load_state_dict(init_state, strict=False)
            if unexpected:
                raise ConfigError(f"finetune.init = {ft.init!r}: weights {unexpected[:5]} do not fit "
                                  f"the {cfg.model.name} encoder")
        freeze_unused(model, cfg.audio.sample_rate_hz)
        self.model = model.to(ctx.device)
        self.targets = LetterTargets(train_lines, self.vocab)
        train_manifest = read_manifest(cfg.data.train_manifest)
        report = {"train": label_report(self.targets, frames_of(cfg.model.arch, train_manifest.num_model_samples(
            cfg.audio.sample_rate_hz)))}
        self.has_validation = bool(cfg.data.valid_manifest)
        if self.has_validation:
            self._read_valid(report)
        self.find_unused_parameters = ft.freeze_steps > 0 or getattr(cfg.model.arch, "layerdrop", 0) > 0
        self.best_metric = ft.best_metric if self.has_validation else ""
        self.best_mode = "min"
        if ctx.is_main:
            run_dir = run_dir_of(cfg)
            write_dict(self.vocab, run_dir / "dict.ltr.txt", counts)
            write_text(run_dir / "label_report.json", json.dumps(report, indent=1) + "\n")
            print(f"fine-tuning {cfg.model.name} from {ft.init or 'scratch (no pretraining)'}: {len(self.vocab)} "
                  f"classes, labels {json.dumps(report)}", flush=True)

    def _read_valid(self, report: dict[str, Any]) -> None:
        """The validation manifest, its letter targets and word references; its label counts go into ``report``."""
        cfg = self.cfg
        self.valid = read_manifest(cfg.data.valid_manifest)
        lines = label_lines(cfg.data.valid_manifest, cfg.data)
        self.valid_targets = LetterTargets(lines, self.vocab)
        report["valid"] = label_report(self.valid_targets, frames_of(
            cfg.model.arch, self.valid.num_model_samples(cfg.audio.sample_rate_hz)))
        self.valid_refs = [letters_to_words(line) for line in lines]

    def step_logs(self, step: int) -> dict[str, float]:
        return {"encoder_frozen": float(step < self.cfg.finetune.freeze_steps)}

    def forward(self, model: nn.Module, micro_batch: AudioBatch, *, step: int, prepared: Any = None) -> StepOutput:
        cfg = self.cfg
        mb = micro_batch.to(self.ctx.device)  # no host sync: the micro-batch loop stays ahead of the device
        wav_BT, lengths_B = mb.wav_BT, mb.lengths_B
        seeds_B = seeds.utterance_seeds(cfg.run.seed, step, mb.indices_B)
        logits_BTV, frame_lengths_B = model(wav_BT, lengths_B, seeds_B=seeds_B,
                                            layerdrop_seed=seeds.layerdrop_seed(cfg.run.seed, step),
                                            freeze_encoder=step < cfg.finetune.freeze_steps)
        targets: CTCTargets | None = mb.targets
        if targets is None:  # a placeholder: the engine multiplies everything by zero
            zero = logits_BTV.sum() * 0
            return StepOutput(loss_sum=zero, num_targets=zero.detach(), logs={k: zero.detach() for k in LOG_KEYS})
        loss_B, feasible_B = ctc_loss_per_row(logits_BTV, frame_lengths_B, targets)
        feasible_f = feasible_B.to(torch.float32)
        num_chars = (targets.lengths_B * feasible_B).sum().to(torch.float32)
        loss_sum = loss_B.sum()
        logs = {"real_s": lengths_B.sum().to(torch.float32) / cfg.audio.sample_rate_hz,
                "ctc_sum": loss_sum.detach(), "num_utterances": feasible_f.sum(), "num_chars": num_chars,
                "num_infeasible": (1 - feasible_f).sum(),
                "num_oov": targets.num_oov_B.sum().to(torch.float32),
                "num_empty": (targets.lengths_B == 0).sum().to(torch.float32)}
        num_targets = feasible_f.sum() if cfg.finetune.normalize == "utterances" else num_chars
        return StepOutput(loss_sum=loss_sum, num_targets=num_targets, logs=logs)

    def metrics(self, report: StepReport) -> dict[str, float]:
        sums = report.log_sums
        chars = sums.get("num_chars", 0.0)
        return {"loss": report.loss,
                "loss_per_char": sums.get("ctc_sum", float("nan")) / chars if chars else float("nan"),
                "num_targets": report.num_targets, "grad_norm": report.grad_norm,
                **{key: sums.get(key, float("nan")) for key in ("num_infeasible", "num_oov", "num_empty", "num_chars")},
                "computed_real_s": sums.get("real_s", float("nan"))}

    def validate(self, model: nn.Module, step: int) -> dict[str, float]:
        """{"wer", "cer", "loss", "num_infeasible"} of the validation set, decoded greedily."""
        ctx = self.ctx
        model.eval()
        sums = dict.fromkeys(VALID_SUMS, 0.0)
        with torch.no_grad():
            for mb in eval_micro_batches(self.valid, self.cfg.batch, self.cfg.audio, rank=ctx.rank,
                                         world_size=ctx.world_size, targets=self.valid_targets):
                if not mb.is_empty:
                    self._score(model, mb, sums)
        model.train()
        totals = ctx.all_reduce_sums(sums)
        return {"wer": 100.0 * totals["word_errors"] / max(totals["num_words"], 1.0),
                "cer": 100.0 * totals["char_errors"] / max(totals["num_chars"], 1.0),
                "loss": totals["loss_sum"] / max(totals["num_feasible"], 1.0),
                "num_infeasible": totals["num_infeasible"]}

    def _score(self, model: nn.Module, mb: AudioBatch, sums: dict[str, float]) -> None:
        """Add one validation micro-batch's CTC loss and edit distances to ``sums``."""
        logits_BTV, frame_lengths_B = model(mb.wav_BT.to(self.ctx.device), mb.lengths_B.to(self.ctx.device))
        loss_B, feasible_B = ctc_loss_per_row(logits_BTV, frame_lengths_B, mb.targets)
        for row, ids in zip(mb.indices_B.tolist(), greedy_ids(logits_BTV, frame_lengths_B)):
            hyp, ref = self.vocab.to_words(ids), self.valid_refs[row]
            sums["word_errors"] += edit_distance(ref.split(), hyp.split())
            sums["num_words"] += len(ref.split())
            sums["char_errors"] += edit_distance(ref, hyp)
            sums["num_chars"] += len(ref)
        sums["loss_sum"] += float(loss_B.sum())
        sums["num_feasible"] += float(feasible_B.sum())
        sums["num_infeasible"] += float((~feasible_B).sum())


def freeze_unused(model: nn.Module, sample_rate_hz: int) -> None:
    """Stop training parameters that fine-tuning never reaches (pretraining heads, the frozen conv encoder).

    Found by one probe forward/backward through ``encode`` with masks on, so it
    works for any encoder family; they leave the optimizer and DDP's bookkeeping.
    """
    was_training = model.training
    model.eval()
    wav_BT = torch.randn(1, sample_rate_hz)
    logits_BTV, _ = model(wav_BT, torch.tensor([sample_rate_hz]), seeds_B=torch.tensor([7]))
    logits_BTV.sum().backward()
    for param in model.parameters():
        if param.grad is None:
            param.requires_grad_(False)
        param.grad = None
    model.train(was_training)
