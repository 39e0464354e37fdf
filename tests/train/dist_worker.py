"""A toy speech model and batch layouts for the step-engine tests; run as a script, one rank's worker.

Legend: B=utterances, T=samples, F=frames (10 ms hop), C=channels.

The tests import the model, the forward and the layouts from here, and also start
this file as a script under torchrun (or with SLURM-style variables) to train the
same global batches on several ranks; each rank saves its gradients, parameters
and step reports to ``--out`` for the pytest side to compare.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

if __name__ == "__main__":  # started as a script: make the checkout importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from speechbs.dist import DistContext, init_distributed, shutdown, unwrap  # noqa: E402
from speechbs.train.grad_noise import GradNoiseProbe  # noqa: E402
from speechbs.train.step import StepOutput, train_step  # noqa: E402

SAMPLE_RATE_HZ = 16_000
WINDOW_SAMPLES = 400  # 25 ms
HOP_SAMPLES = 160  # 10 ms
NUM_STEPS = 5
NOISE_STEP = 2  # this step measures gradient noise (unsynced backwards + one explicit all-reduce)
UTTERANCES_PER_STEP = 10
LEARNING_RATE = 1e-2


@dataclass
class MicroBatch:
    """What a loader yields for one forward: padded audio and the true lengths."""

    wav_BT: torch.Tensor
    lengths_B: torch.Tensor
    is_empty: bool = False


class FrameRegressor(nn.Module):
    """1-D conv over the waveform predicting each frame's log energy; padded frames are masked."""

    def __init__(self, num_channels: int = 4) -> None:
        super().__init__()
        self.frontend = nn.Conv1d(1, num_channels, WINDOW_SAMPLES, stride=HOP_SAMPLES)
        self.context = nn.Conv1d(num_channels, num_channels, 3, padding=1)
        self.head = nn.Linear(num_channels, 1)

    def forward(self, wav_BT: torch.Tensor, mask_BF: torch.Tensor) -> torch.Tensor:
        feats_BCF = torch.tanh(self.frontend(wav_BT[:, None, :]))
        # Zero padded frames before the context conv, so a valid frame never sees
        # how much padding its batch happened to have (as wav2vec 2.0 does).
        feats_BCF = feats_BCF * mask_BF[:, None, :]
        feats_BCF = torch.tanh(self.context(feats_BCF))
        return self.head(feats_BCF.transpose(1, 2))[..., 0]


def num_frames(lengths_B: torch.Tensor) -> torch.Tensor:
    return torch.clamp((lengths_B - WINDOW_SAMPLES) // HOP_SAMPLES + 1, min=0)


def frame_forward(model: nn.Module, batch: MicroBatch) -> StepOutput:
    """Sum of squared errors over valid frames; targets = valid frames."""
    frames_BFW = batch.wav_BT.unfold(1, WINDOW_SAMPLES, HOP_SAMPLES)
    target_BF = torch.log(frames_BFW.pow(2).mean(-1) + 1e-4)
    mask_BF = (torch.arange(frames_BFW.shape[1]) < num_frames(batch.lengths_B)[:, None]).to(batch.wav_BT.dtype)
    pred_BF = model(batch.wav_BT, mask_BF)
    sq_err_sum = ((pred_BF - target_BF).pow(2) * mask_BF).sum()
    num_targets = mask_BF.sum()
    return StepOutput(sq_err_sum, num_targets,
                      {"num_frames": num_targets, "real_s": batch.lengths_B.sum().to(torch.float64) / SAMPLE_RATE_HZ})


def mean_of_means_forward(model: nn.Module, batch: MicroBatch) -> StepOutput:
    """The WRONG normalization (each micro-batch its own mean); the negative control."""
    out = frame_forward(model, batch)
    return StepOutput(out.loss_sum / out.num_targets, torch.ones(()), out.logs)


def collate(utterances: list[torch.Tensor], *, is_empty: bool = False) -> MicroBatch:
    lengths_B = torch.tensor([len(wav_T) for wav_T in utterances])
    wav_BT = torch.zeros(len(utterances), int(lengths_B.max()), dtype=utterances[0].dtype)
    for row, wav_T in enumerate(utterances):
        wav_BT[row, : len(wav_T)] = wav_T
    return MicroBatch(wav_BT, lengths_B, is_empty)


def step_utterances(step: int, num_utterances: int) -> np.ndarray:
    """The global batch of optimizer step ``step``: depends on the step only, never on the layout."""
    return np.random.default_rng(step).permutation(num_utterances)[:UTTERANCES_PER_STEP]


def layout_groups(step: int, num_utterances: int, num_groups: int) -> list[np.ndarray]:
    """Split step ``step``'s utterances into ``num_groups`` micro-batches of unequal sizes and lengths.

    The split differs per layout (seeded by ``num_groups``), as a length-bucketing
    planner would; only the union is fixed.
    """
    ids = np.random.default_rng(1000 + num_groups).permutation(step_utterances(step, num_utterances))
    cuts = np.sort(np.random.default_rng(2000 + num_groups).choice(np.arange(1, len(ids)), num_groups - 1,
                                                                   replace=False))
    return np.split(ids, cuts)


def rank_micro_batches(utts: list[torch.Tensor], step: int, world_size: int, num_micro: int,
                       rank: int) -> list[MicroBatch]:
    groups = layout_groups(step, len(utts), world_size * num_micro)
    return [collate([utts[i] for i in group]) for group in groups[rank * num_micro:(rank + 1) * num_micro]]


def load_utterances(digits_dir: Path | None, num_utterances: int = 20) -> list[torch.Tensor]:
    """Spoken digits (0.2-2 s, 8 kHz) resampled to 16 kHz, or seeded noise bursts of varied lengths."""
    if digits_dir is None:
        rng = np.random.default_rng(0)
        lengths = rng.integers(3_000, 30_000, num_utterances)
        return [torch.from_numpy(rng.standard_normal(n) * rng.uniform(0.01, 0.5)) for n in lengths]
    import soundfile as sf

    from speechbs.data.audio import resample

    paths = sorted((digits_dir / "recordings").glob("*.wav"))[::150][:num_utterances]
    utts = []
    for path in paths:
        wav_T, rate_hz = sf.read(path, dtype="float32")
        utts.append(torch.from_numpy(resample(wav_T, rate_hz, SAMPLE_RATE_HZ).astype(np.float64)))
    return utts


def make_model() -> FrameRegressor:
    torch.manual_seed(0)
    return FrameRegressor().double()


def grads_of(model: nn.Module) -> dict[str, torch.Tensor]:
    return {name: p.grad.detach().clone() for name, p in unwrap(model).named_parameters()}


def params_of(model: nn.Module) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in unwrap(model).named_parameters()}


def train_layout(utts: list[torch.Tensor], ctx: DistContext, num_micro: int, num_steps: int = NUM_STEPS,
                 forward=frame_forward) -> dict:
    """Train ``num_steps`` steps of the fixed global batches with this rank's share of each."""
    model = ctx.wrap_model(make_model())
    optimizer = torch.optim.AdamW(model.parameters(), lr=LEARNING_RATE)
    result: dict = {"reports": []}
    for step in range(num_steps):
        micro_batches = rank_micro_batches(utts, step, ctx.world_size, num_micro, ctx.rank)
        probe = GradNoiseProbe(unwrap(model)) if step == NOISE_STEP else None
        result["reports"].append(dataclasses.asdict(train_step(model, optimizer, micro_batches, forward, ctx,
                                                               grad_noise=probe)))
        if step == 0:
            result["grads"] = grads_of(model)
    result["params"] = params_of(model)
    return result


def train_with_placeholder(utts: list[torch.Tensor], ctx: DistContext) -> dict:
    """2 ranks x 2 micro-batches, step 0's utterances in 3 groups; rank 1's 2nd is a placeholder.

    The placeholder holds real audio (so a missing zeroing would show in the gradient).
    """
    groups = layout_groups(0, len(utts), 3)
    micro_batches = [collate([utts[i] for i in group]) for group in groups]
    micro_batches.append(collate([utts[i] for i in groups[0]], is_empty=True))
    model = ctx.wrap_model(make_model())
    optimizer = torch.optim.AdamW(model.parameters(), lr=LEARNING_RATE)
    report = train_step(model, optimizer, micro_batches[ctx.rank * 2:ctx.rank * 2 + 2], frame_forward, ctx)
    return {"report": dataclasses.asdict(report), "grads": grads_of(model), "params": params_of(model)}


def train_with_nan(utts: list[torch.Tensor], ctx: DistContext) -> dict:
    """Step 0 with a NaN sample in rank 1's first micro-batch, then a clean step 1."""
    model = ctx.wrap_model(make_model())
    optimizer = torch.optim.AdamW(model.parameters(), lr=LEARNING_RATE)
    micro_batches = rank_micro_batches(utts, 0, ctx.world_size, 2, ctx.rank)
    if ctx.rank == 1:
        micro_batches[0].wav_BT[0, 100] = float("nan")
    poisoned = train_step(model, optimizer, micro_batches, frame_forward, ctx, stop_requested=ctx.rank == 1)
    params_after_poisoned = params_of(model)
    clean = train_step(model, optimizer, rank_micro_batches(utts, 1, ctx.world_size, 2, ctx.rank),
                       frame_forward, ctx)
    return {"poisoned": dataclasses.asdict(poisoned), "params_after_poisoned": params_after_poisoned,
            "clean": dataclasses.asdict(clean), "params": params_of(model)}


SCENARIOS = {
    "layout": lambda utts, ctx, num_micro: train_layout(utts, ctx, num_micro),
    "placeholder": lambda utts, ctx, num_micro: train_with_placeholder(utts, ctx),
    "nan": lambda utts, ctx, num_micro: train_with_nan(utts, ctx),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", type=Path, required=True, help="torch.save'd list of float64 waveforms")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--num-micro", type=int, required=True, help="micro-batches per rank per step")
    parser.add_argument("--scenarios", nargs="+", choices=sorted(SCENARIOS), default=["layout"])
    args = parser.parse_args()
    torch.set_num_threads(1)  # several ranks share two cores
    ctx = init_distributed("gloo", timeout_s=60)
    try:
        utts = torch.load(args.data, weights_only=True)
        for name in args.scenarios:
            result = SCENARIOS[name](utts, ctx, args.num_micro)
            result["world_size"] = ctx.world_size
            torch.save(result, args.out / f"{name}_w{ctx.world_size}_rank{ctx.rank}.pt")
    finally:
        shutdown(ctx)


if __name__ == "__main__":
    main()
