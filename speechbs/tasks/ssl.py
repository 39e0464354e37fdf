"""Self-supervised pretraining (wav2vec 2.0, HuBERT, WavLM) as a task of the shared loop.

What pretraining means for :mod:`speechbs.train.loop`: how a micro-batch becomes a loss
sum (masked frames are the targets), which per-utterance seeds drive masking, distractors
and Gumbel noise (:mod:`speechbs.seeds`), which cluster labels HuBERT and WavLM predict,
wav2vec 2.0's code usage over the whole global batch for its diversity term, and how the
validation loss is measured. The metric names of every family are listed in
:data:`SSL_METRICS`.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from speechbs import seeds
from speechbs.data.loader import AudioBatch, TargetsFn, eval_micro_batches
from speechbs.data.manifest import read_manifest
from speechbs.data.partners import PartnerDraw
from speechbs.dist import DistContext, unwrap
from speechbs.errors import ConfigError
from speechbs.models.blocks.mixing import MixPartners
from speechbs.models.blocks.quantizer import CodeUsage
from speechbs.models.registry import MODELS
from speechbs.tasks.base import Task
from speechbs.train.schedule import gumbel_temperature
from speechbs.train.step import StepOutput, StepReport

if TYPE_CHECKING:
    from speechbs.config import Config
    from speechbs.targets.labels import ClusterLabelSet


@dataclass(frozen=True)
class Ratio:
    """A logged metric as the quotient of two of a model's log sums."""

    numerator: str
    """The log sum on top, e.g. ``contrastive_sum`` or ``num_correct``."""
    denominator: str | None = None
    """The log sum below; None: the step's targets (masked frames), by which the loss is normalized."""


SSL_METRICS: dict[str, Ratio] = {
    # Per masked frame, as the loss. A family logs a metric when its model logs the sums.
    "code_perplexity": Ratio("code_perplexity_sum"),
    "contrastive": Ratio("contrastive_sum"),
    "diversity": Ratio("diversity_sum"),
    "masked_loss": Ratio("masked_loss_sum"),
    "accuracy": Ratio("num_correct"),
    "feature_penalty": Ratio("penalty_sum"),
    "perplexity": Ratio("perplexity_sum"),
    # HuBERT's unmasked terms are per UNMASKED frame (the loss normalizes by masked frames only).
    "accuracy_unmasked": Ratio("num_correct_unmasked", "num_unmasked"),
    "unmasked_loss": Ratio("unmasked_loss_sum", "num_unmasked"),
}
"""Metric name -> the log sums it is made of, for every pretraining family's ``loss.logs()``."""


def metrics_from_sums(sums: dict[str, float], num_targets: float) -> dict[str, float]:
    """The :data:`SSL_METRICS` whose sums are in ``sums`` (a model's log sums over a step or a validation set).

    NaN for a metric whose denominator is 0 (no targets). Every pretraining family logs sums
    over its targets; this is the one place that turns them into the metrics that are logged and plotted.
    """
    out = {}
    for name, ratio in SSL_METRICS.items():
        if ratio.numerator not in sums:
            continue
        if ratio.denominator is None:
            out[name] = sums[ratio.numerator] / (num_targets if num_targets > 0 else float("nan"))
        elif ratio.denominator in sums:
            count = sums[ratio.denominator]
            out[name] = sums[ratio.numerator] / count if count > 0 else float("nan")
    return out


class SSLTask(Task):
    """Pretraining of ``cfg.model``: the model built from the run seed, its loss, its validation loss."""

    def __init__(self, cfg: Config, ctx: DistContext) -> None:
        spec = MODELS[cfg.model.name]
        self.cfg, self.ctx = cfg, ctx
        ctx.seed_everything(seeds.init_seed(cfg.run.seed), same_on_all_ranks=True)  # the same weights at any world size
        model = spec.model_cls(cfg.model.arch)
        if cfg.train.init:  # after the seeded init, so weights the source lacks keep their seeded values
            note = load_initial_weights(model, cfg)
            if ctx.is_main:
                print(note, flush=True)
        self.model = model.to(ctx.device)
        self.needs_labels = getattr(spec, "needs_labels", False)
        self.targets = _hook(cluster_labels(cfg, cfg.data.train_manifest) if self.needs_labels else None, cfg)
        self.partners = mix_partners(cfg)
        self.find_unused_parameters = cfg.model.arch.layerdrop > 0
        # wav2vec 2.0's diversity term over the whole global batch (model.diversity_scope, docs/pretraining.md).
        self.global_diversity = getattr(cfg.model.arch, "diversity_scope", None) == "global"
        valid_path = cfg.data.valid_manifest
        self.valid = read_manifest(valid_path) if valid_path else None
        self.has_validation = self.valid is not None
        valid_labels = cluster_labels(cfg, valid_path) if self.needs_labels and self.has_validation else None
        self.valid_targets = _hook(valid_labels, cfg)

    def temperature(self, step: int) -> float:
        """wav2vec 2.0's Gumbel-softmax temperature at ``step`` (a pure function of the step)."""
        sched = self.cfg.schedule
        return gumbel_temperature(step, sched.gumbel_start, sched.gumbel_end, sched.gumbel_decay)

    def step_logs(self, step: int) -> dict[str, float]:
        return {} if self.needs_labels else {"gumbel_temperature": self.temperature(step)}

    def prepare(self, model: nn.Module, micro_batches: Sequence[AudioBatch], *, step: int) -> CodeUsage | None:
        """wav2vec 2.0 with ``diversity_scope = "global"``: the code usage of the whole global batch."""
        if not self.global_diversity:
            return None
        if self.ctx.world_size == 1 and sum(not mb.is_empty for mb in micro_batches) == 1:
            return None  # the one micro-batch is the global batch: its own usage is the step's, no pre-pass
        return global_code_usage(model, micro_batches, self.ctx, seed=self.cfg.run.seed, seed_step=step,
                                 gumbel_temperature=self.temperature(step))

    def forward(self, model: nn.Module, micro_batch: AudioBatch, *, step: int,
                prepared: CodeUsage | None = None) -> StepOutput:
        run_seed = self.cfg.run.seed
        mb = micro_batch.to(self.ctx.device)  # no host sync: the micro-batch loop stays ahead of the device
        out = self._run_model(model, mb, seeds.utterance_seeds(run_seed, step, mb.indices_B), step,
                              seeds.layerdrop_seed(run_seed, step), prepared)
        logs = out.loss.logs()
        logs["real_s"] = mb.lengths_B.sum().to(torch.float32) / self.cfg.audio.sample_rate_hz
        return StepOutput(loss_sum=out.loss.loss_sum, num_targets=out.loss.num_targets.to(torch.float32),
                          logs={k: v.to(torch.float32) for k, v in logs.items() if k != "num_targets"})

    def metrics(self, report: StepReport) -> dict[str, float]:
        return {"loss": report.loss, **metrics_from_sums(report.log_sums, report.num_targets),
                "num_masked_frames": report.num_targets, "grad_norm": report.grad_norm,
                "computed_real_s": report.log_sums.get("real_s", float("nan"))}

    def validate(self, model: nn.Module, step: int) -> dict[str, float]:
        """The loss and metrics of the validation set, with the masks of step 0: every pass masks the same frames."""
        assert self.valid is not None
        cfg, ctx = self.cfg, self.ctx
        model.eval()
        sums: dict[str, torch.Tensor] = {}

        def batches() -> Iterable[AudioBatch]:
            return eval_micro_batches(self.valid, cfg.batch, cfg.audio, rank=ctx.rank, world_size=ctx.world_size,
                                      targets=self.valid_targets)

        # The diversity term and perplexities of the whole validation set, as in training: one pre-pass.
        usage = (global_code_usage(model, batches(), ctx, seed=cfg.run.seed, seed_step=0,
                                   gumbel_temperature=self.temperature(step)) if self.global_diversity else None)
        with torch.no_grad():
            for mb in batches():
                mb = mb.to(ctx.device)
                out = self._run_model(model, mb, seeds.utterance_seeds(cfg.run.seed, 0, mb.indices_B), step,
                                      None, usage)
                scale = 0.0 if mb.is_empty else 1.0
                for key, value in {"loss_sum": out.loss.loss_sum, **out.loss.logs()}.items():
                    sums[key] = sums.get(key, 0.0) + scale * value.detach().to(torch.float64)
        model.train()
        totals = ctx.all_reduce_sums({key: sums[key] for key in sorted(sums)})
        num_targets = max(totals.pop("num_targets"), 1.0)
        return {"loss": totals.pop("loss_sum") / num_targets, **metrics_from_sums(totals, num_targets)}

    def _run_model(self, model: nn.Module, mb: AudioBatch, seeds_B: torch.Tensor, step: int,
                   layerdrop_seed: int | None, step_usage: CodeUsage | None = None) -> Any:
        """The family's pretraining forward on a micro-batch already on the device: Gumbel temperature
        and the step's code usage (wav2vec 2.0), or cluster targets and mixing partners (HuBERT, WavLM)."""
        if self.needs_labels:
            targets = mb.targets if mb.targets is not None else placeholder_targets(mb, self.cfg)
            inputs = {"targets": targets.to(self.ctx.device)}
            if mb.partner_wav_BT is not None:  # WavLM, mix_scope global: drawn by the loader (data/partners.py)
                inputs["partners"] = MixPartners(mb.partner_wav_BT, mb.partner_lengths_B)
        else:
            inputs = {"gumbel_temperature": self.temperature(step), "step_usage": step_usage}
        return model(mb.wav_BT, mb.lengths_B, seeds_B=seeds_B, layerdrop_seed=layerdrop_seed, **inputs)


STRUCTURE = ("conv_layers", "conv_norm", "conv_bias", "embed_dim", "num_layers", "num_heads", "ffn_dim",
             "layer_norm_first", "pos_conv_kernel", "pos_conv_groups", "layer_norm_eps", "num_codebooks",
             "codebook_size", "codevector_dim", "num_buckets", "max_distance")
"""Architecture fields ``train.init``'s source must share with ``[model]``: the shapes and the forward."""


def load_initial_weights(model: nn.Module, cfg: Config) -> str:
    """Load ``train.init`` into the freshly seeded ``model``; the log line that says what came from where.

    A speechbs pretraining checkpoint gives every weight. A Hugging Face directory gives what
    it has: all of wav2vec 2.0 from ``Wav2Vec2ForPreTraining``, the encoder only from HuBERT and
    WavLM (transformers has no heads for them), whose heads keep their seeded values.
    """
    from speechbs.asr.ctc import is_ctc_state
    from speechbs.asr.hf_import import is_hf_dir, load_hf_encoder
    from speechbs.pretrained import read_checkpoint

    init = cfg.train.init
    if not Path(init).exists():
        raise ConfigError(f"train.init = {init!r} does not exist; give a speechbs pretraining checkpoint file or "
                          f"run directory, a fairseq checkpoint (.pt), or a local Hugging Face model directory",
                          key="train.init")
    if is_hf_dir(init):
        name, arch, state = load_hf_encoder(init, key="train.init")
    else:
        saved = read_checkpoint(init)
        name, arch, state = saved.config.model.name, saved.config.model.arch, saved.checkpoint["model"]
        # A foreign checkpoint's missing heads were filled with placeholders: the run's seeded ones stay.
        seeded = tuple(saved.checkpoint.get("seeded_heads") or ())
        state = {k: v for k, v in state.items() if k.split(".")[0] not in seeded}
        if is_ctc_state(state):
            raise ConfigError(f"train.init = {init!r} is a fine-tuned CTC checkpoint ({saved.path}); continue "
                              f"pretraining from the pretraining run it was fine-tuned from", key="train.init")
    differ = [f"model.{key} = {getattr(arch, key)!r}" for key in STRUCTURE
              if hasattr(arch, key) and getattr(arch, key) != getattr(cfg.model.arch, key, None)]
    if name != cfg.model.name or differ:
        theirs = ", ".join([f"model.name = {name!r}"] * (name != cfg.model.name) + differ)
        raise ConfigError(f"train.init = {init!r} holds another architecture than [model]: it has {theirs}; "
                          f"set those fields to match", key="train.init")
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # a head of another shape (final_dim, num_clusters)
        raise ConfigError(f"train.init = {init!r}: {str(exc).splitlines()[-1].strip()}", key="train.init") from None
    if unexpected:
        raise ConfigError(f"train.init = {init!r}: weights {unexpected[:5]} do not fit {cfg.model.name}",
                          key="train.init")
    fresh = sorted({key.split(".")[0] for key in missing})
    kept = "every weight" if not fresh else f"the encoder; seeded initial weights for {', '.join(fresh)}"
    why = " (transformers has no pretraining heads for this family)" if fresh and is_hf_dir(init) else (
        " (the WavLM repository's checkpoints have no pretraining heads)" if fresh and name == "wavlm" else "")
    return f"pretraining {cfg.model.name} from {init}: {kept}{why}"


def mix_partners(cfg: Config) -> PartnerDraw | None:
    """WavLM with ``mix_scope = "global"``: the loader draws the mixing partners from the whole global batch."""
    arch = cfg.model.arch
    if getattr(arch, "mix_scope", None) != "global" or arch.mix_prob <= 0.0:
        return None
    return PartnerDraw(probability=arch.mix_prob, seed=cfg.run.seed)


def global_code_usage(m: nn.Module, micro_batches: Iterable[AudioBatch], ctx: DistContext, *, seed: int,
                      seed_step: int, gumbel_temperature: float) -> CodeUsage:
    """wav2vec 2.0's code usage over every micro-batch of every rank: the pre-pass of its global diversity term.

    No gradient and no transformer (the feature encoder and the quantizer only), with the
    utterance seeds of step ``seed_step``, so the masks, dropout and Gumbel noise of the
    forwards that follow; placeholders add nothing. Every rank gets the same sum.
    """
    model = unwrap(m)
    arch = model.cfg
    total = CodeUsage.zeros(arch.num_codebooks, arch.codebook_size, ctx.device)
    with torch.no_grad():
        for mb in micro_batches:
            if mb.is_empty:
                continue
            mb = mb.to(ctx.device)
            total = total + model.code_usage(mb.wav_BT, mb.lengths_B, gumbel_temperature=gumbel_temperature,
                                             seeds_B=seeds.utterance_seeds(seed, seed_step, mb.indices_B))
    packed = total.pack()
    ctx.all_reduce_sum(packed)
    return CodeUsage.unpack(packed, arch.num_codebooks, arch.codebook_size)


def cluster_labels(cfg: Config, manifest_path: str) -> ClusterLabelSet:
    """The cluster labels of a manifest, checked against the model's label rate and K."""
    from speechbs.targets.labels import read_cluster_labels

    if not cfg.data.labels:
        raise ConfigError(f"model {cfg.model.name} predicts cluster labels: set data.labels to their file "
                          f"extension (e.g. data.labels=km; make them with `speechbs targets`)")
    labels = read_cluster_labels(read_manifest(manifest_path), manifest_path, cfg.data.labels, cfg.data.label_dir,
                                 default_rate_hz=cfg.audio.sample_rate_hz)
    arch = cfg.model.arch
    if labels.num_clusters != arch.num_clusters or abs(labels.label_rate_hz - arch.label_rate_hz) > 1e-6:
        raise ConfigError(f"the labels of {manifest_path} have K={labels.num_clusters} at "
                          f"{labels.label_rate_hz:g} Hz but the model expects model.num_clusters="
                          f"{arch.num_clusters} at model.label_rate_hz={arch.label_rate_hz:g}; set those two "
                          f"model fields to match the labels")
    return labels


def placeholder_targets(mb: AudioBatch, cfg: Config) -> Any:
    """Valid (id 0) labels for a placeholder micro-batch: its loss is multiplied by 0, but the graph is whole."""
    from speechbs.models.hubert import ClusterTargets

    arch = cfg.model.arch
    num_labels = int(mb.lengths_B.max()) * arch.label_rate_hz / cfg.audio.sample_rate_hz
    num_labels = max(int(num_labels), 1)
    return ClusterTargets(torch.zeros(len(mb.lengths_B), num_labels, dtype=torch.int64),
                          torch.full((len(mb.lengths_B),), num_labels, dtype=torch.int64),
                          arch.label_rate_hz, arch.num_clusters)


def _hook(labels: ClusterLabelSet | None, cfg: Config) -> TargetsFn | None:
    """The loader's targets hook of ``labels``: the labels of each micro-batch's segments."""
    return None if labels is None else functools.partial(labels.batch, sample_rate_hz=cfg.audio.sample_rate_hz)
