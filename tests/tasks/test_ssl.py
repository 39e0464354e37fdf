"""The pretraining task's metric names (speechbs/tasks/ssl.py) and the task interface (tasks/base.py)."""

from __future__ import annotations

import math

import pytest
import torch

from speechbs import seeds
from speechbs.config import Config, ModelConfig
from speechbs.data.loader import AudioBatch
from speechbs.models.registry import MODELS
from speechbs.tasks.base import Task
from speechbs.tasks.ssl import SSL_METRICS, metrics_from_sums, placeholder_targets


@pytest.mark.parametrize("name", sorted(MODELS))
def test_every_log_sum_of_every_family_has_a_named_metric(name: str) -> None:
    """A sum a model starts to log must be given a metric name in SSL_METRICS, or it is never logged."""
    spec = MODELS[name]
    arch = spec.sizes["tiny"]()
    model = spec.model_cls(arch).train()
    lengths_B = torch.tensor([16_000, 12_000])
    mb = AudioBatch(torch.randn(2, 16_000), lengths_B, torch.tensor([0, 1]), is_empty=False)
    cfg = Config(model=ModelConfig(name=name, size="tiny", arch=arch))
    inputs = {"targets": placeholder_targets(mb, cfg)} if spec.needs_labels else {"gumbel_temperature": 2.0}
    out = model(mb.wav_BT, lengths_B, seeds_B=seeds.utterance_seeds(1, 0, mb.indices_B), layerdrop_seed=0, **inputs)
    named = {part for ratio in SSL_METRICS.values() for part in (ratio.numerator, ratio.denominator) if part}
    assert set(out.loss.logs()) - {"num_targets"} <= named


def test_metric_names_and_values_of_each_family_are_pinned() -> None:
    """The names in metrics.jsonl, in their order (the report and the plots read them)."""
    w2v = {"code_perplexity_sum": 6.0, "contrastive_sum": 4.0, "diversity_sum": 0.5, "num_correct": 1.0,
           "penalty_sum": 0.2, "perplexity_sum": 8.0, "real_s": 3.0}
    assert list(metrics_from_sums(w2v, 2.0).items()) == [
        ("code_perplexity", 3.0), ("contrastive", 2.0), ("diversity", 0.25), ("accuracy", 0.5),
        ("feature_penalty", 0.1), ("perplexity", 4.0)]
    hubert = {"masked_loss_sum": 4.0, "num_correct": 1.0, "num_correct_unmasked": 2.0, "num_unmasked": 4.0,
              "penalty_sum": 0.2, "real_s": 1.0, "unmasked_loss_sum": 3.0}
    assert list(metrics_from_sums(hubert, 2.0).items()) == [
        ("masked_loss", 2.0), ("accuracy", 0.5), ("feature_penalty", 0.1), ("accuracy_unmasked", 0.5),
        ("unmasked_loss", 0.75)]


def test_metrics_without_targets_are_nan() -> None:
    out = metrics_from_sums({"contrastive_sum": 0.0, "num_correct_unmasked": 0.0, "num_unmasked": 0.0,
                             "unmasked_loss_sum": 0.0}, 0.0)
    assert set(out) == {"contrastive", "accuracy_unmasked", "unmasked_loss"}
    assert all(math.isnan(value) for value in out.values())


def test_a_task_without_forward_or_metrics_fails_when_built() -> None:
    class NoMetrics(Task):
        def forward(self, model, micro_batch, *, step, prepared=None):
            raise AssertionError("never called")

    with pytest.raises(TypeError, match="metrics"):
        NoMetrics()
