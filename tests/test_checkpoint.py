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


def test_a_restart_sets_the_later_checkpoints_aside_and_deletes_nothing(tmp_path):
    from speechbs.checkpoint import save_best, set_aside_after

    for step in range(1, 7):
        save_checkpoint(tmp_path, step, _state(step), keep_last=10, milestone=step in (2, 5))
    save_best(tmp_path, 5, _state(5), metric="wer", value=0.5)
    dest = set_aside_after(tmp_path, 3)
    assert dest == tmp_path / "abandoned-1"
    assert sorted(p.name for p in tmp_path.glob("step_*.pt")) == [f"step_0000000{k}.pt" for k in (1, 2, 3)]
    assert sorted(p.name for p in dest.iterdir()) == ["best.pt", "index.json", "step_00000004.pt",
                                                      "step_00000005.pt", "step_00000006.pt"]
    index = read_index(tmp_path)
    assert index == {"latest": "step_00000003.pt", "milestones": ["step_00000002.pt"]}  # no best: it came later
    assert read_index(dest)["best"]["step"] == 5 and read_index(dest)["latest"] == "step_00000006.pt"
    assert latest_checkpoint(tmp_path).name == "step_00000003.pt"
    # Later saves prune only the branch in use; a second restart gets a folder of its own.
    save_checkpoint(tmp_path, 4, _state(40), keep_last=2)
    assert sorted(p.name for p in tmp_path.glob("step_*.pt")) == ["step_00000002.pt", "step_00000003.pt",
                                                                  "step_00000004.pt"]
    assert set_aside_after(tmp_path, 0) == tmp_path / "abandoned-2"
    assert latest_checkpoint(tmp_path) is None and read_index(tmp_path)["latest"] is None
    assert set_aside_after(tmp_path, 0) is None  # nothing after step 0 any more
