"""The distributed context, and world-size invariance of the step engine with real gloo processes.

Two launches, one after the other (each costs seconds): 2 ranks x 2 micro-batches under
torchrun, and 4 ranks x 1 micro-batch started the way ``srun`` starts tasks
(SLURM_PROCID / SLURM_STEP_NUM_TASKS / SLURM_LOCALID, no torchrun). Their
gradients and parameters are compared with 1 process x 4 micro-batches and with
one big batch computed here, all in float64.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from speechbs.dist import DistContext, LaunchEnv, _pick_device, init_distributed, read_launch_env, unwrap
from speechbs.errors import SpeechbsError
from speechbs.train.step import train_step

from .dist_worker import NOISE_STEP, frame_forward, load_utterances, make_model, params_of, rank_micro_batches, train_layout

WORKER = Path(__file__).with_name("dist_worker.py")
REPO = Path(__file__).resolve().parents[2]
TIMEOUT_S = 120
TOLERANCE = 1e-9  # relative; float64 summation order differs between layouts, nothing else may


# ----------------------------------------------------------------------------- environment parsing

TORCHRUN = {"RANK": "3", "WORLD_SIZE": "8", "LOCAL_RANK": "3", "MASTER_ADDR": "node1", "MASTER_PORT": "29400"}


def test_no_launcher_is_a_single_process():
    assert read_launch_env({}).launcher == "single"
    # Inside an sbatch script (not under srun) SLURM_NTASKS is set but only one process runs.
    assert read_launch_env({"SLURM_NTASKS": "8", "SLURM_PROCID": "0"}).world_size == 1


def test_torchrun_environment():
    launch = read_launch_env(TORCHRUN)
    assert (launch.rank, launch.world_size, launch.local_rank, launch.master_port) == (3, 8, 3, 29400)
    assert launch.launcher == "torchrun"


@pytest.mark.parametrize("drop", ["MASTER_ADDR", "RANK", "LOCAL_RANK"])
def test_half_set_environment_names_what_is_missing(drop):
    env = {k: v for k, v in TORCHRUN.items() if k != drop}
    with pytest.raises(SpeechbsError, match=f"{drop} missing.*torchrun"):
        read_launch_env(env)


def test_inconsistent_or_garbled_environment():
    with pytest.raises(SpeechbsError, match="inconsistent"):
        read_launch_env({**TORCHRUN, "RANK": "8"})
    with pytest.raises(SpeechbsError, match="WORLD_SIZE='eight' is not an integer"):
        read_launch_env({**TORCHRUN, "WORLD_SIZE": "eight"})


def test_srun_environment():
    env = {"SLURM_PROCID": "5", "SLURM_STEP_NUM_TASKS": "16", "SLURM_LOCALID": "1", "SLURM_NTASKS": "16"}
    with pytest.raises(SpeechbsError, match="(?s)MASTER_ADDR is not set.*scontrol show hostnames"):
        read_launch_env(env)
    launch = read_launch_env({**env, "MASTER_ADDR": "gpu-a01"})
    assert (launch.rank, launch.world_size, launch.local_rank) == (5, 16, 1)
    assert (launch.master_addr, launch.master_port, launch.launcher) == ("gpu-a01", 29500, "slurm")
    # torchrun inside an srun task wins: its variables describe the processes it started.
    assert read_launch_env({**env, **TORCHRUN}).launcher == "torchrun"


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error when no GPU is visible")
def test_nccl_without_cuda_is_refused():
    with pytest.raises(SpeechbsError, match="'nccl' needs CUDA"):
        _pick_device("nccl", LaunchEnv())
    with pytest.raises(SpeechbsError, match="use 'auto', 'nccl' or 'gloo'"):
        _pick_device("mpi", LaunchEnv())


def test_single_process_context_is_a_no_op(monkeypatch):
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "SLURM_STEP_NUM_TASKS"):
        monkeypatch.delenv(name, raising=False)
    ctx = init_distributed("gloo")
    assert (ctx.rank, ctx.world_size, ctx.is_main, ctx.is_distributed) == (0, 1, True, False)
    tensor = torch.tensor([2.0])
    assert ctx.all_reduce_sum(tensor) is tensor and tensor.item() == 2.0
    assert ctx.broadcast_object({"a": 1}) == {"a": 1}
    model = nn.Linear(2, 2)
    assert ctx.wrap_model(model) is model and unwrap(model) is model
    with ctx.no_sync(model):
        ctx.barrier()


def test_seeding_per_rank():
    draws = []
    for rank, same in ((0, True), (1, True), (0, False), (1, False)):
        DistContext(rank=rank, world_size=2).seed_everything(7, same_on_all_ranks=same)
        draws.append(torch.rand(1).item())
    assert draws[0] == draws[1] and draws[2] != draws[3]


# ----------------------------------------------------------------------------- multi-process runs


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _clean_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK") and
           not k.startswith("SLURM_")}
    return {**env, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}


def _wait(procs: list[subprocess.Popen]) -> None:
    for proc in procs:
        try:
            output, _ = proc.communicate(timeout=TIMEOUT_S)
        except subprocess.TimeoutExpired:
            for other in procs:
                other.kill()
            raise AssertionError(f"a distributed run did not finish in {TIMEOUT_S} s (deadlock?)") from None
        assert proc.returncode == 0, output.decode()[-4000:]


def _launch_all(digits_dir: Path | None, tmp: Path) -> dict[str, list[dict]]:
    """Run both launches concurrently; return each scenario's per-rank results."""
    utts = load_utterances(digits_dir)
    torch.save(utts, tmp / "utts.pt")
    common = [str(WORKER), "--data", str(tmp / "utts.pt"), "--out", str(tmp)]
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
                "--master-addr", "127.0.0.1", "--master-port", str(_free_port()),
                *common, "--num-micro", "2", "--scenarios", "layout", "placeholder", "nan"]
    _wait([subprocess.Popen(torchrun, env=_clean_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT)])
    # One launch after the other: six processes at once on two cores take longer than in turn.
    port, procs = _free_port(), []
    for rank in range(4):  # what srun does: 4 tasks, each told its place by SLURM variables
        env = {**_clean_env(), "SLURM_PROCID": str(rank), "SLURM_LOCALID": str(rank), "SLURM_NTASKS": "4",
               "SLURM_STEP_NUM_TASKS": "4", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}
        procs.append(subprocess.Popen([sys.executable, *common, "--num-micro", "1"], env=env,
                                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT))
    _wait(procs)
    return {key: [torch.load(tmp / f"{key}_rank{rank}.pt", weights_only=True) for rank in range(int(key[-1]))]
            for key in ("layout_w2", "placeholder_w2", "nan_w2", "layout_w4")}


_RUNS: dict[Path | None, dict[str, list[dict]]] = {}


@pytest.fixture
def runs(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    """(utterances, per-rank results); the launches happen once per session, for the first test that asks."""
    try:
        digits_dir = request.getfixturevalue("digits_dir")
    except pytest.skip.Exception:
        digits_dir = None
    if digits_dir not in _RUNS:
        _RUNS[digits_dir] = _launch_all(digits_dir, tmp_path_factory.mktemp("dist"))
    return load_utterances(digits_dir), _RUNS[digits_dir]


def relative_error(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    flat_a, flat_b = torch.cat([v.flatten() for v in a.values()]), torch.cat([b[k].flatten() for k in a])
    return float((flat_a - flat_b).norm() / flat_b.norm())


@pytest.mark.dist
@pytest.mark.slow
def test_gradients_and_parameters_are_world_size_invariant(runs):
    utts, results = runs
    reference = {num_micro: train_layout(utts, DistContext(), num_micro) for num_micro in (1, 4)}
    one_big = reference[1]
    layouts = {"1x4": [reference[4]], "2x2": results["layout_w2"], "4x1": results["layout_w4"]}
    for name, ranks in layouts.items():
        for rank, result in enumerate(ranks):
            where = f"{name} rank {rank}"
            assert relative_error(result["grads"], one_big["grads"]) < TOLERANCE, where
            assert relative_error(result["params"], one_big["params"]) < TOLERANCE, where
            for got, want in zip(result["reports"], one_big["reports"]):
                assert got["loss"] == pytest.approx(want["loss"], rel=TOLERANCE), where
                assert got["num_targets"] == want["num_targets"], where
                assert got["log_sums"]["real_s"] == pytest.approx(want["log_sums"]["real_s"], rel=TOLERANCE)
            # The same 4 micro-batches in every layout, so the same gradient-noise estimate.
            noise, want_noise = result["reports"][NOISE_STEP]["grad_noise"], reference[4]["reports"][NOISE_STEP]["grad_noise"]
            assert noise["num_micro_batches"] == 4, where
            for key in ("tr_sigma", "grad_sq"):
                assert noise[key] == pytest.approx(want_noise[key], rel=1e-6), (where, key)
    # The parameters moved: equality is not the trivial one of an untrained model.
    assert relative_error(one_big["params"], params_of(make_model())) > 1e-3


@pytest.mark.dist
@pytest.mark.slow
def test_placeholder_micro_batch_neither_hangs_nor_changes_the_result(runs):
    utts, results = runs
    one_big = train_layout(utts, DistContext(), 1, num_steps=1)
    for rank, result in enumerate(results["placeholder_w2"]):
        assert not result["report"]["skipped_empty"] and not result["report"]["skipped_nonfinite"]
        assert result["report"]["num_targets"] == one_big["reports"][0]["num_targets"]
        assert relative_error(result["grads"], one_big["grads"]) < TOLERANCE, f"rank {rank}"
        assert relative_error(result["params"], one_big["params"]) < TOLERANCE, f"rank {rank}"


@pytest.mark.dist
@pytest.mark.slow
def test_nonfinite_loss_on_one_rank_skips_the_update_everywhere(runs):
    utts, results = runs
    initial = params_of(make_model())
    # Reference: from the initial weights, only the clean step (AdamW's step count included).
    model = make_model()
    train_step(model, torch.optim.AdamW(model.parameters(), lr=1e-2), rank_micro_batches(utts, 1, 1, 1, 0),
               frame_forward, DistContext())
    for rank, result in enumerate(results["nan_w2"]):
        assert result["poisoned"]["skipped_nonfinite"] and result["poisoned"]["nonfinite_in"] == "loss"
        assert all(torch.equal(initial[k], v) for k, v in result["params_after_poisoned"].items()), rank
        assert result["poisoned"]["stop_requested"], "rank 1's stop request reaches every rank"
        assert result["clean"]["skipped_nonfinite"] is False and not result["clean"]["stop_requested"]
        assert relative_error(result["params"], params_of(model)) < TOLERANCE, f"rank {rank}"


def test_all_reduce_sums_keeps_names_and_order_and_sums_over_ranks() -> None:
    sums = {"num_targets": torch.tensor(3.0, dtype=torch.float64), "loss_sum": 1.5, "b": torch.tensor(2)}
    assert list(DistContext().all_reduce_sums(sums).items()) == [("num_targets", 3.0), ("loss_sum", 1.5), ("b", 2.0)]
    assert DistContext().all_reduce_sums({}) == {}

    class TwoEqualRanks(DistContext):
        def all_reduce_sum(self, tensor: torch.Tensor) -> torch.Tensor:
            return tensor.mul_(2)

    assert TwoEqualRanks(world_size=2).all_reduce_sums(sums) == {"num_targets": 6.0, "loss_sum": 3.0, "b": 4.0}
