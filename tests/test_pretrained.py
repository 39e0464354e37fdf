"""One rule for which checkpoint a path means, shared by fine-tuning's init, decode, noise and targets."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from speechbs.asr.ctc import load_ctc_checkpoint
from speechbs.checkpoint import save_best, save_checkpoint
from speechbs.errors import DataError
from speechbs.pretrained import load_encoder, read_checkpoint, resolve_checkpoint

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "old_checkpoints"


def _run(tmp_path: Path, fixture: str, steps: list[int], best_step: int | None = None) -> Path:
    """A run directory as the training loop leaves it: rolling step checkpoints, index, maybe best.pt."""
    state = torch.load(FIXTURES / fixture, weights_only=True)
    run = tmp_path / "run"
    for step in steps:
        save_checkpoint(run / "checkpoints", step, {**state, "step": step}, keep_last=5)
    if best_step is not None:
        save_best(run / "checkpoints", best_step, {**state, "step": best_step}, metric="wer", value=12.5)
    return run


def test_a_file_means_itself_and_a_pretraining_run_its_latest_step(tmp_path: Path) -> None:
    assert resolve_checkpoint(FIXTURES / "hubert.pt") == FIXTURES / "hubert.pt"
    run = _run(tmp_path, "hubert.pt", [2, 5, 3])
    for path in (run, run / "checkpoints"):
        assert resolve_checkpoint(path).name == "step_00000005.pt"
    model, cfg = load_encoder(run)
    assert cfg.model.name == "hubert" and not model.training
    assert read_checkpoint(run).checkpoint["step"] == 5


def test_a_run_that_selected_a_best_checkpoint_means_it_for_decode_and_init_alike(tmp_path: Path) -> None:
    run = _run(tmp_path, "ctc.pt", [4, 8], best_step=4)
    assert resolve_checkpoint(run).name == "best.pt" == resolve_checkpoint(run / "checkpoints").name
    _, _, ckpt = load_ctc_checkpoint(run)
    assert ckpt["path"].endswith("best.pt") and ckpt["step"] == 4
    # A best.pt that the index does not record (copied in by hand) is not the run's selection.
    other = _run(tmp_path / "other", "wav2vec2.pt", [1, 2])
    (other / "checkpoints" / "best.pt").write_bytes((other / "checkpoints" / "step_00000001.pt").read_bytes())
    assert resolve_checkpoint(other).name == "step_00000002.pt"


def test_a_recorded_best_that_is_missing_and_empty_or_absent_paths_are_data_errors(tmp_path: Path) -> None:
    run = _run(tmp_path, "ctc.pt", [1], best_step=1)
    (run / "checkpoints" / "best.pt").unlink()
    with pytest.raises(DataError, match="records best.pt .* but the file is missing"):
        resolve_checkpoint(run)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="without checkpoints"):
        resolve_checkpoint(tmp_path / "empty")
    with pytest.raises(DataError, match="does not exist"):
        resolve_checkpoint(tmp_path / "nowhere")


def test_decode_refuses_a_pretraining_checkpoint_and_init_refuses_a_ctc_one() -> None:
    with pytest.raises(DataError, match="not a fine-tuned CTC checkpoint"):
        load_ctc_checkpoint(FIXTURES / "wav2vec2.pt")
    with pytest.raises(RuntimeError):  # fine-tuning turns this into a ConfigError naming finetune.init
        load_encoder(FIXTURES / "ctc.pt")
