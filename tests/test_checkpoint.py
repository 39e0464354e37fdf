import pickle

import pytest
import torch

from speechbs.checkpoint import latest_checkpoint, load_checkpoint, read_index, save_checkpoint
from speechbs.errors import DataError


def _state(step):
    return {"model": {"w": torch.full((2,), float(step))}, "step": step, "planner": {"epoch": 0}}


def test_keeps_last_k_and_milestones(tmp_path):
    for step in range(1, 7):
        save_checkpoint(tmp_path, step, _state(step), keep_last=2, milestone=step == 2)
    names = sorted(p.name for p in tmp_path.glob("step_*.pt"))
    assert names == ["step_00000002.pt", "step_00000005.pt", "step_00000006.pt"]
    assert read_index(tmp_path)["milestones"] == ["step_00000002.pt"]
    assert latest_checkpoint(tmp_path).name == "step_00000006.pt"
    assert load_checkpoint(latest_checkpoint(tmp_path))["step"] == 6


def test_a_crashed_save_leaves_the_last_good_checkpoint(tmp_path):
    save_checkpoint(tmp_path, 1, _state(1), keep_last=2)
    (tmp_path / ".step_00000002.pt.tmp").write_bytes(b"half a file")  # a save killed mid-write
    assert latest_checkpoint(tmp_path).name == "step_00000001.pt"
    assert load_checkpoint(latest_checkpoint(tmp_path))["model"]["w"][0] == 1.0


def test_loading_never_unpickles_code(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    path = tmp_path / "step_00000001.pt"
    with open(path, "wb") as f:
        pickle.dump({"x": Evil()}, f)
    with pytest.raises(DataError, match="cannot be loaded safely"):
        load_checkpoint(path)


def test_missing_checkpoint_is_a_clear_error(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load_checkpoint(tmp_path / "nope.pt")


def test_best_checkpoint_is_recorded_beside_the_rolling_ones(tmp_path):
    from speechbs.checkpoint import best_score, save_best

    assert best_score(tmp_path) is None
    save_checkpoint(tmp_path, 1, {"x": torch.tensor(1.0)}, keep_last=1)
    path = save_best(tmp_path, 1, {"x": torch.tensor(1.0)}, metric="wer", value=0.5)
    save_checkpoint(tmp_path, 2, {"x": torch.tensor(2.0)}, keep_last=1)
    assert path.name == "best.pt" and path.is_file()
    assert best_score(tmp_path) == {"file": "best.pt", "step": 1, "metric": "wer", "value": 0.5}
    assert load_checkpoint(path)["x"].item() == 1.0
    assert latest_checkpoint(tmp_path).name == "step_00000002.pt"  # best.pt is not a resume point
