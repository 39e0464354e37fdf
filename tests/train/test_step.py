"""The step engine in one process: accumulation equals one big batch, skips, clipping, hooks.

Legend: B=utterances, T=samples. Multi-process equivalence is in test_dist.py.
"""

from __future__ import annotations

import functools
import math

import pytest
import torch
from torch import nn

from speechbs.dist import DistContext
from speechbs.errors import SpeechbsError
from speechbs.train.step import (NonFiniteGuard, StepOutput, StepReport, TrainingDivergedError, precision_context,
                                 train_step)

from .dist_worker import (collate, frame_forward, grads_of, layout_groups, load_utterances, make_model,
                          mean_of_means_forward, params_of, rank_micro_batches,
                          train_layout)

CTX = DistContext()


@pytest.fixture
def utts(request: pytest.FixtureRequest) -> list[torch.Tensor]:
    try:
        digits_dir = request.getfixturevalue("digits_dir")
    except pytest.skip.Exception:
        digits_dir = None  # the data is absent: seeded synthetic audio
    return _cached_utterances(digits_dir)


@functools.lru_cache(maxsize=2)
def _cached_utterances(digits_dir):
    return load_utterances(digits_dir)


def one_step(utts, num_micro: int, forward=frame_forward, **kwargs) -> tuple[nn.Module, StepReport]:
    model = make_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    report = train_step(model, optimizer, rank_micro_batches(utts, 0, 1, num_micro, 0), forward, CTX, **kwargs)
    return model, report


def relative_error(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    flat_a, flat_b = torch.cat([v.flatten() for v in a.values()]), torch.cat([b[k].flatten() for k in a])
    return float((flat_a - flat_b).norm() / flat_b.norm())


def test_accumulation_equals_one_big_batch(utts):
    big, big_report = one_step(utts, 1)
    for num_micro in (2, 4, 7):
        model, report = one_step(utts, num_micro)
        assert relative_error(grads_of(model), grads_of(big)) < 1e-12
        assert report.num_micro_batches == num_micro
        assert report.loss == pytest.approx(big_report.loss, rel=1e-12)
        assert report.num_targets == big_report.num_targets


def test_mean_of_means_breaks_the_equivalence(utts):
    """Negative control: the tolerances of the equivalence tests would catch per-micro-batch averaging."""
    big = train_layout(utts, CTX, 1, forward=mean_of_means_forward)
    accumulated = train_layout(utts, CTX, 4, forward=mean_of_means_forward)
    assert relative_error(accumulated["grads"], big["grads"]) > 1e-3
    assert relative_error(accumulated["params"], big["params"]) > 1e-2  # after 5 AdamW steps
    right = train_layout(utts, CTX, 1, num_steps=1)
    assert relative_error(big["grads"], right["grads"]) < 1e-12  # one micro-batch: both agree


def test_logs_are_summed_and_divided_by_the_global_count(utts):
    _, report = one_step(utts, 3)
    ids = [i for group in layout_groups(0, len(utts), 3) for i in group]
    real_s = sum(len(utts[i]) for i in ids) / 16_000
    assert report.log_sums["real_s"] == pytest.approx(real_s, rel=1e-12)
    assert report.log_sums["num_frames"] == report.num_targets
    assert report.log_means["num_frames"] == 1.0
    assert report.updated and not report.skipped_nonfinite and not report.skipped_empty


def test_placeholder_adds_nothing(utts):
    groups = layout_groups(0, len(utts), 2)
    real = [collate([utts[i] for i in group]) for group in groups]
    placeholder = collate([utts[i] for i in groups[0]], is_empty=True)  # real audio: zeroing must happen
    grads = []
    for micro_batches in (real, [real[0], placeholder, real[1]], real + [placeholder]):
        model = make_model()
        report = train_step(model, torch.optim.SGD(model.parameters(), lr=0.0), micro_batches, frame_forward, CTX)
        grads.append(grads_of(model))
    assert relative_error(grads[1], grads[0]) < 1e-12
    assert relative_error(grads[2], grads[0]) < 1e-12
    assert report.num_micro_batches == 3


def test_all_empty_step_is_skipped_without_dividing_by_zero(utts):
    model = make_model()
    before = params_of(model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1.0)
    placeholders = [collate(utts[:2], is_empty=True), collate(utts[2:3], is_empty=True)]
    report = train_step(model, optimizer, placeholders, frame_forward, CTX)
    assert report.skipped_empty and not report.skipped_nonfinite and not report.updated
    assert report.num_targets == 0 and math.isnan(report.loss)
    assert all(torch.equal(before[k], v) for k, v in params_of(model).items())
    assert not optimizer.state  # AdamW's step count did not advance


def test_nonfinite_loss_skips_the_update(utts):
    model = make_model()
    before = params_of(model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    micro_batches = rank_micro_batches(utts, 0, 1, 2, 0)
    micro_batches[1].wav_BT[0, 10] = float("inf")
    report = train_step(model, optimizer, micro_batches, frame_forward, CTX)
    assert report.skipped_nonfinite and report.nonfinite_in == "loss" and not report.updated
    assert all(torch.equal(before[k], v) for k, v in params_of(model).items())
    assert all(p.grad is None for p in model.parameters()) and not optimizer.state


def test_nonfinite_gradient_with_finite_loss_skips_the_update():
    model = nn.Linear(2, 1).double()
    before = params_of(model)

    def forward(model: nn.Module, batch: torch.Tensor) -> StepOutput:
        # sqrt'(0) = inf: a finite loss (0) with a NaN gradient.
        loss_sum = torch.sqrt(model(batch).sum() * 0)
        return StepOutput(loss_sum, torch.tensor(1.0), {})

    report = train_step(model, torch.optim.SGD(model.parameters(), lr=1.0), [torch.ones(1, 2, dtype=torch.float64)],
                        forward, CTX)
    assert report.skipped_nonfinite and report.nonfinite_in == "grad" and math.isfinite(report.loss)
    assert all(torch.equal(before[k], v) for k, v in params_of(model).items())


def test_guard_stops_after_too_many_in_a_row():
    bad = StepReport(loss=math.nan, num_targets=1, log_sums={}, log_means={}, grad_norm=math.nan,
                     skipped_nonfinite=True, skipped_empty=False, num_micro_batches=1, nonfinite_in="loss")
    good = StepReport(loss=1.0, num_targets=1, log_sums={}, log_means={}, grad_norm=1.0,
                      skipped_nonfinite=False, skipped_empty=False, num_micro_batches=1)
    empty = StepReport(loss=math.nan, num_targets=0, log_sums={}, log_means={}, grad_norm=math.nan,
                       skipped_nonfinite=False, skipped_empty=True, num_micro_batches=1)
    guard = NonFiniteGuard(3)
    for step, report in enumerate([bad, bad, good, bad, empty, bad]):
        guard.update(report, step)
    assert guard.num_in_a_row == 2 and guard.num_total == 4
    with pytest.raises(TrainingDivergedError, match="3 optimizer steps in a row .*steps 3-6"):
        guard.update(bad, 6)
    # The advice is asked with the first step of the run of skipped steps (the empty step 4 does not break it).
    asked = []
    guard = NonFiniteGuard(2, advice=lambda first: asked.append(first) or "restart from step 1")
    for step, report in enumerate([good, bad, empty], start=1):
        guard.update(report, step)
    with pytest.raises(TrainingDivergedError, match="diverged: restart from step 1$"):
        guard.update(bad, 4)
    assert asked == [2]
    with pytest.raises(SpeechbsError):
        NonFiniteGuard(0)


def test_clipping_reports_the_norm_before_clipping(utts):
    free, free_report = one_step(utts, 2)
    clip_norm = free_report.grad_norm / 4
    clipped, report = one_step(utts, 2, clip_norm=clip_norm)
    assert report.grad_norm == pytest.approx(free_report.grad_norm, rel=1e-12)
    clipped_norm = torch.cat([g.flatten() for g in grads_of(clipped).values()]).norm()
    assert float(clipped_norm) == pytest.approx(clip_norm, rel=1e-5)
    assert relative_error(grads_of(clipped), {k: v / 4 for k, v in grads_of(free).items()}) < 1e-5


def test_grad_scaler_gives_the_same_update(utts):
    steps = []
    for scaler in (None, torch.amp.GradScaler("cpu", init_scale=2.0**10)):
        model = make_model()
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
        for step in range(2):
            report = train_step(model, optimizer, rank_micro_batches(utts, step, 1, 2, 0), frame_forward, CTX,
                                grad_scaler=scaler)
            assert report.updated
        steps.append(params_of(model))
    assert relative_error(steps[1], steps[0]) < 1e-12


def test_mismatched_log_keys_and_unwrapped_model_are_refused(utts):
    def forward(model: nn.Module, batch) -> StepOutput:
        out = frame_forward(model, batch)
        return StepOutput(out.loss_sum, out.num_targets, {} if batch.lengths_B.numel() == 1 else out.logs)

    model = make_model()
    micro_batches = [collate(utts[:2]), collate(utts[2:3])]
    with pytest.raises(RuntimeError, match="same log keys"):
        train_step(model, torch.optim.SGD(model.parameters(), lr=0.0), micro_batches, forward, CTX)
    with pytest.raises(RuntimeError, match="DDP-wrapped"):
        train_step(model, torch.optim.SGD(model.parameters(), lr=0.0), micro_batches, frame_forward,
                   DistContext(rank=0, world_size=2, backend="gloo"))


def test_precision_context():
    assert precision_context(torch.device("cpu"), "fp32") == (None, None)
    autocast, scaler = precision_context(torch.device("cpu"), "bf16")
    assert scaler is None
    with autocast():
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.bfloat16
    with pytest.raises(SpeechbsError, match="fp16' needs a CUDA"):
        precision_context(torch.device("cpu"), "fp16")
    with pytest.raises(SpeechbsError, match="'fp32', 'bf16' or 'fp16'"):
        precision_context(torch.device("cpu"), "half")


def test_precision_auto_is_fp32_on_cpu():
    assert precision_context(torch.device("cpu"), "auto") == (None, None)


def test_fp16_loss_scale_starts_at_fairseqs_128(monkeypatch) -> None:
    """Losses are sums over thousands of targets: torch's default first scale (65536) would overflow."""
    from speechbs.train.step import precision_context

    made: list[tuple] = []
    monkeypatch.setattr(torch.amp, "GradScaler", lambda *args, **kwargs: made.append((args, kwargs)) or "scaler")
    _, scaler = precision_context(torch.device("cuda"), "fp16")  # fp16 needs CUDA; the scaler is not run here
    assert scaler == "scaler" and made == [(("cuda",), {"init_scale": 128.0})]
    assert precision_context(torch.device("cuda"), "bf16")[1] is None
