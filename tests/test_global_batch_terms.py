"""Loss terms of the whole global batch: one micro-batch or k give the same gradients and parameters.

wav2vec 2.0's codebook diversity term pools the code distribution over frames, and
WavLM mixes an utterance with another one of its batch; with ``diversity_scope`` and
``mix_scope`` = ``global`` (the defaults) both pool over the optimizer step, whatever its
split. In float64 the 1-micro-batch and k-micro-batch runs may differ only by summation
order; the ``micro_batch`` scopes are the negative controls that show the check can fail.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from speechbs.config import Config, DataConfig, ModelConfig
from speechbs.data.batching import GlobalBatch, Segment
from speechbs.data.loader import AudioBatch
from speechbs.data.partners import PartnerDraw
from speechbs.dist import DistContext
from speechbs.models import wavlm, wavlm_config
from speechbs.models.blocks.mixing import MixPartners
from speechbs.models.registry import MODELS
from speechbs.tasks.ssl import SSLTask
from speechbs.targets.labels import ClusterTargets
from speechbs.train.step import StepOutput, train_step

LENGTHS = [9_000, 5_000, 7_300, 4_000, 8_000, 6_100]
SPLITS = {"one": [[0, 1, 2, 3, 4, 5]], "three": [[0, 3], [1], [2, 4, 5]]}
QUIET = dict(dropout=0.0, attention_dropout=0.0, dropout_input=0.0, layerdrop=0.0)  # global-RNG draws off
NUM_STEPS = 2
TOLERANCE = 1e-9  # relative, float64: summation order only
CTX = DistContext()

_gen = torch.Generator().manual_seed(0)
UTTS = [0.1 * torch.randn(n, generator=_gen, dtype=torch.float64) for n in LENGTHS]


def _rows(rows: list[int], *, is_empty: bool = False) -> AudioBatch:
    wav_BT = torch.zeros(len(rows), max(LENGTHS[r] for r in rows), dtype=torch.float64)
    for i, r in enumerate(rows):
        wav_BT[i, :LENGTHS[r]] = UTTS[r]
    return AudioBatch(wav_BT, torch.tensor([LENGTHS[r] for r in rows]), torch.tensor(rows), is_empty=is_empty)


def _relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def _train(model: torch.nn.Module, micro_batches: list, forward, prepare=None) -> dict[str, torch.Tensor]:
    """NUM_STEPS AdamW steps on the same global batch; step 0's gradient and the final parameters."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    out = {}
    for step in range(NUM_STEPS):
        step_prepare = None if prepare is None else (lambda m, mbs, k=step: prepare(m, mbs, step=k))
        report = train_step(model, optimizer, micro_batches, lambda m, mb, k=step, **kw: forward(m, mb, step=k, **kw),
                            CTX, prepare=step_prepare)
        assert report.updated
        if step == 0:
            out["grad"] = torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])
            out["perplexity"] = torch.tensor(report.log_sums.get("perplexity_sum", 0.0) / report.num_targets)
    out["params"] = torch.cat([p.detach().flatten() for p in model.parameters()])
    return out


def _wav2vec2_run(scope: str, split: list[list[int]], placeholder: bool = False) -> dict[str, torch.Tensor]:
    """The pretraining task's own prepare and forward (tiny model, float64)."""
    arch = MODELS["wav2vec2"].sizes["tiny"](**QUIET, diversity_scope=scope)
    assert arch.diversity_weight == 0.1 and arch.dropout_features > 0  # the recipes' settings
    task = SSLTask(Config(model=ModelConfig(name="wav2vec2", size="tiny", arch=arch),
                          data=DataConfig(valid_manifest="")), CTX)
    micro_batches = [_rows(rows) for rows in split]
    if placeholder:  # real audio in a placeholder: it must add nothing to the step's code usage
        micro_batches.append(_rows([0, 1], is_empty=True))
    return _train(task.model.double(), micro_batches, task.forward, task.prepare)


def test_wav2vec2_diversity_term_is_the_same_for_one_or_three_micro_batches() -> None:
    one = _wav2vec2_run("global", SPLITS["one"])
    three = _wav2vec2_run("global", SPLITS["three"], placeholder=True)
    assert _relative(three["grad"], one["grad"]) < TOLERANCE
    assert _relative(three["params"], one["params"]) < TOLERANCE
    # The logged perplexity is the step's (float32 logs), not a mean over micro-batches.
    torch.testing.assert_close(three["perplexity"], one["perplexity"], rtol=1e-6, atol=0.0)
    # Negative control: fairseq's per-micro-batch form differs clearly at the recipes' weight.
    micro_one = _wav2vec2_run("micro_batch", SPLITS["one"])
    micro_three = _wav2vec2_run("micro_batch", SPLITS["three"])
    assert _relative(micro_one["grad"], one["grad"]) < TOLERANCE  # one micro-batch: the same term
    assert _relative(micro_three["grad"], micro_one["grad"]) > 1e-4


# ----------------------------------------------------------------------------- WavLM mixing

def _labels(rows: list[int]) -> ClusterTargets:
    """Fixed random 50 Hz labels per utterance (a function of the utterance, not of the batch)."""
    counts = [(LENGTHS[r] - 400) // 320 + 1 for r in rows]
    labels_BL = torch.full((len(rows), max(counts)), -1, dtype=torch.int64)
    for i, (r, n) in enumerate(zip(rows, counts)):
        labels_BL[i, :n] = torch.from_numpy(np.random.default_rng(r).integers(0, 8, n))
    return ClusterTargets(labels_BL, torch.tensor(counts), 50.0, 8)


def _with_partners(rows: list[int], chosen: dict[int, Segment]) -> tuple[AudioBatch, MixPartners]:
    """A micro-batch and its rows' partners, as the loader attaches them (partner audio from any row)."""
    partner_rows = [chosen[r].index if r in chosen else None for r in rows]
    width = max([LENGTHS[p] for p in partner_rows if p is not None], default=1)
    wav_BT = torch.zeros(len(rows), width, dtype=torch.float64)
    for i, p in enumerate(partner_rows):
        if p is not None:
            wav_BT[i, :LENGTHS[p]] = UTTS[p]
    lengths_B = torch.tensor([0 if p is None else LENGTHS[p] for p in partner_rows])
    return _rows(rows), MixPartners(wav_BT, lengths_B)


def _wavlm_run(scope: str, split: list[list[int]], mix_prob: float = 0.5) -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    model = wavlm.WavLMModel(wavlm_config.tiny(**QUIET, label_rate_hz=50.0, num_clusters=8, mix_prob=mix_prob,
                                        mix_scope=scope)).double().train()
    batch = GlobalBatch(0, 3, 1, 1.0, tuple(Segment(r, 0, n) for r, n in enumerate(LENGTHS)), sum(LENGTHS), 0)
    chosen = PartnerDraw(probability=0.5, seed=7).choose(batch)
    assert 2 <= len(chosen) <= 5  # some rows mixed, some not: both kinds are checked
    micro_batches = [(*_with_partners(rows, chosen), rows) for rows in split]

    def forward(m: torch.nn.Module, item: tuple, *, step: int) -> StepOutput:
        mb, partners, rows = item
        out = m(mb.wav_BT, mb.lengths_B, seeds_B=1_000 * step + mb.indices_B, targets=_labels(rows),
                partners=partners if scope == "global" else None)
        return StepOutput(out.loss.loss_sum, out.loss.num_targets.to(torch.float64), {})

    return _train(model, micro_batches, forward)


def test_wavlm_mixing_is_the_same_for_one_or_three_micro_batches() -> None:
    one, three = _wavlm_run("global", SPLITS["one"]), _wavlm_run("global", SPLITS["three"])
    assert _relative(three["grad"], one["grad"]) < TOLERANCE
    assert _relative(three["params"], one["params"]) < TOLERANCE
    assert _relative(_wavlm_run("global", SPLITS["one"], mix_prob=0.0)["grad"], one["grad"]) > 1e-3  # it mixed
    # Negative control: partners drawn among each micro-batch's rows change with the split.
    assert _relative(_wavlm_run("micro_batch", SPLITS["three"])["grad"],
                     _wavlm_run("micro_batch", SPLITS["one"])["grad"]) > 1e-4


def test_partners_and_scope_must_agree() -> None:
    model = wavlm.WavLMModel(wavlm_config.tiny(mix_scope="micro_batch")).train()
    mb = _rows([0, 1])
    with pytest.raises(ValueError, match="mix_scope"):
        model(mb.wav_BT.float(), mb.lengths_B, seeds_B=mb.indices_B, targets=_labels([0, 1]),
              partners=MixPartners(mb.wav_BT.float(), mb.lengths_B))
