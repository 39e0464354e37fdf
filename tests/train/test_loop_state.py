"""What a checkpoint holds, through the loop's own save and restore functions."""

from __future__ import annotations

import numpy as np
import torch

from speechbs.checkpoint import load_checkpoint, save_checkpoint
from speechbs.config import BatchConfig, Config
from speechbs.data.batching import BatchPlanner
from speechbs.train.loop import TrainState, _restore, _state_dict


def _parts(init_scale: float):
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    planner = BatchPlanner(np.full(40, 16_000), BatchConfig(seconds=4.0, max_device_seconds=4.0),
                           sample_rate_hz=16_000, seed=1)
    return model, optimizer, planner, torch.amp.GradScaler("cpu", init_scale=init_scale, growth_interval=1)


def test_fp16_grad_scaler_survives_a_resume(tmp_path) -> None:
    """The loss scale fp16 training settled on comes back, so a resume does not restart its search."""
    model, optimizer, planner, scaler = _parts(init_scale=2.0**16)
    scaler.scale(model(torch.ones(1, 3)).sum()).backward()
    scaler.step(optimizer)
    scaler.update()  # no inf found, growth_interval 1: the scale doubles
    assert scaler.get_scale() == 2.0**17
    state = TrainState(step=7, hours_seen=0.5)
    save_checkpoint(tmp_path, 7, _state_dict(Config(), model, optimizer, planner, state, scaler), keep_last=1)

    model2, optimizer2, planner2, scaler2 = _parts(init_scale=1.0)
    restored = _restore(load_checkpoint(tmp_path / "step_00000007.pt"), model2, optimizer2, planner2, scaler2)
    assert restored.step == 7 and scaler2.get_scale() == 2.0**17


def test_checkpoints_without_a_scaler_resume_under_fp32(tmp_path) -> None:
    model, optimizer, planner, _ = _parts(init_scale=1.0)
    save_checkpoint(tmp_path, 3, _state_dict(Config(), model, optimizer, planner, TrainState(step=3), None),
                    keep_last=1)
    assert _restore(load_checkpoint(tmp_path / "step_00000003.pt"), model, optimizer, planner, None).step == 3


def test_a_resume_keeps_adams_moments_and_takes_the_configs_settings(tmp_path) -> None:
    """A planned change of weight decay or epsilon applies after the restore; the moments stay."""
    model, optimizer, planner, _ = _parts(init_scale=1.0)
    model(torch.ones(1, 3)).sum().backward()
    optimizer.step()
    save_checkpoint(tmp_path, 1, _state_dict(Config(), model, optimizer, planner, TrainState(step=1), None),
                    keep_last=1)
    model2, _, planner2, _ = _parts(init_scale=1.0)
    optimizer2 = torch.optim.AdamW(model2.parameters(), lr=1e-3, weight_decay=0.1, eps=1e-6)
    _restore(load_checkpoint(tmp_path / "step_00000001.pt"), model2, optimizer2, planner2, None)
    group = optimizer2.param_groups[0]
    assert (group["weight_decay"], group["eps"]) == (0.1, 1e-6)
    for p, p2 in zip(model.parameters(), model2.parameters()):
        assert torch.equal(optimizer.state[p]["exp_avg"], optimizer2.state[p2]["exp_avg"])
        assert float(optimizer2.state[p2]["step"]) == 1.0
