"""Jobs of several nodes, and jobs that lose a node or a rank, on one machine.

Two "nodes" are two Linux network namespaces joined by a veth pair on a private /30, each
running its own torchrun agent (c10d rendezvous, gloo, 2 processes per node), so the job's
traffic crosses a real network interface as it would between machines. The tests need root
(``ip netns``) and skip with the reason otherwise; the namespaces are deleted in a finalizer,
also when a test fails. Measured on 2 shared CPU cores: see docs/distributed.md, "Tests".

The last test needs no namespaces: one rank of a 2-process job stalls before a step and the
job must end with an error naming the rank, the step and the operation, not hang.
"""

from __future__ import annotations

import json
import os
import random
import secrets
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from test_pretrain import RECIPE, REPO, _free_port, _max_rel_diff, _metrics, _params, _run, _settings
from test_pretrain import digits_manifests  # noqa: F401 - the fixture

NUM_STEPS = 6
RDZV_PORT = 29400  # inside the test's own namespaces: no other process can hold it


@dataclass(frozen=True)
class Nodes:
    names: tuple[str, str]
    """The two network namespaces."""
    ifaces: tuple[str, str]
    """The veth end inside each (what gloo must bind: GLOO_SOCKET_IFNAME)."""
    addrs: tuple[str, str]
    """Each node's address on the /30; node 1's is the rendezvous endpoint."""


def _ip(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=True)


def _kill_processes_in(name: str) -> None:
    """SIGKILL every process in namespace ``name``: only what these tests started there (an agent, its workers)."""
    for pid in subprocess.run(["ip", "netns", "pids", name], capture_output=True, text=True).stdout.split():
        try:
            os.kill(int(pid), signal.SIGKILL)
        except ProcessLookupError:
            pass


def _remove_namespace(name: str) -> None:
    _kill_processes_in(name)
    subprocess.run(["ip", "netns", "del", name], capture_output=True)


@pytest.fixture
def two_nodes(request) -> Nodes:
    """Two namespaces joined by a veth pair, loopback up in each; removed at the end of the test."""
    if os.geteuid() != 0:
        pytest.skip("needs root: the two nodes are network namespaces (ip netns add)")
    if shutil.which("ip") is None:
        pytest.skip("needs the ip command (iproute2) for network namespaces")
    tag = f"{os.getpid() % 100_000}{secrets.token_hex(2)}"
    nodes = Nodes((f"speechbs-{tag}-n1", f"speechbs-{tag}-n2"), (f"sbs{tag}a", f"sbs{tag}b"), ("", ""))
    request.addfinalizer(lambda: [_remove_namespace(name) for name in nodes.names])
    subnet = f"10.231.{random.randrange(256)}.{4 * random.randrange(64)}"
    base = subnet.rsplit(".", 1)
    addrs = (f"{base[0]}.{int(base[1]) + 1}", f"{base[0]}.{int(base[1]) + 2}")
    try:
        for name in nodes.names:
            _ip("netns", "add", name)
        _ip("link", "add", nodes.ifaces[0], "type", "veth", "peer", "name", nodes.ifaces[1])
        for name, iface, addr in zip(nodes.names, nodes.ifaces, addrs):
            _ip("link", "set", iface, "netns", name)
            _ip("-n", name, "addr", "add", f"{addr}/30", "dev", iface)
            _ip("-n", name, "link", "set", iface, "up")
            _ip("-n", name, "link", "set", "lo", "up")
    except subprocess.CalledProcessError as exc:
        pytest.skip(f"ip netns does not work here ({' '.join(exc.cmd)}: {exc.stderr.strip()})")
    return Nodes(nodes.names, nodes.ifaces, addrs)


def _start_node(nodes: Nodes, index: int, args: list[str], log: Path, *, rdzv_id: str,
                max_restarts: int = 0) -> subprocess.Popen:
    """torchrun on node ``index`` (0 or 1) for 2 nodes x 2 processes; the Popen is the agent itself."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO),
           # Inside a namespace the hostname resolves to an address the other node cannot reach.
           "GLOO_SOCKET_IFNAME": nodes.ifaces[index],
           # torch 2.13's shared rendezvous store hangs a replacement node (docs/distributed.md).
           "TORCH_DISABLE_SHARE_RDZV_TCP_STORE": "1"}
    cmd = ["ip", "netns", "exec", nodes.names[index], sys.executable, "-m", "torch.distributed.run",
           "--nnodes", "2", "--nproc-per-node", "2", "--rdzv-backend", "c10d",
           "--rdzv-endpoint", f"{nodes.addrs[0]}:{RDZV_PORT}", "--rdzv-id", rdzv_id,
           "--rdzv-conf", f"is_host={int(index == 0)}", "--local-addr", nodes.addrs[index],
           "--max-restarts", str(max_restarts), "--monitor-interval", "0.5",
           "-m", "speechbs", "pretrain", str(RECIPE), *args]
    return subprocess.Popen(cmd, env=env, cwd=REPO, stdout=open(log, "w"), stderr=subprocess.STDOUT)


def _wait(procs: list[subprocess.Popen], logs: list[Path], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    for proc, log in zip(procs, logs):
        try:
            proc.wait(timeout=max(deadline - time.monotonic(), 1))
        except subprocess.TimeoutExpired:
            proc.kill()
        assert proc.returncode == 0, f"{log.name}: exit {proc.returncode}\n{log.read_text()[-4000:]}"


@pytest.fixture(scope="module")
def one_process(digits_manifests, tmp_path_factory) -> Path:  # noqa: F811
    """The reference: the same run in one process (other micro-batches: 3 per step against 4 x 1)."""
    train, valid = digits_manifests
    out = tmp_path_factory.mktemp("one")
    _run(_settings(train, valid, out, "one", NUM_STEPS))
    return out / "one"


def _same_run(run_dir: Path, reference: Path) -> None:
    ours, ref = _metrics(run_dir), _metrics(reference)
    steps = range(1, NUM_STEPS + 1)
    assert [ours[k]["batch_fingerprint"] for k in steps] == [ref[k]["batch_fingerprint"] for k in steps]
    assert _max_rel_diff(_params(run_dir, NUM_STEPS), _params(reference, NUM_STEPS)) < 1e-5


@pytest.mark.slow
@pytest.mark.dist
def test_two_nodes_of_two_processes_equal_one_process(two_nodes, digits_manifests, one_process,  # noqa: F811
                                                      tmp_path):
    train, valid = digits_manifests
    args = _settings(train, valid, tmp_path, "two_nodes", NUM_STEPS)
    logs = [tmp_path / "node1.log", tmp_path / "node2.log"]
    rdzv_id = f"equal-{secrets.token_hex(3)}"
    start = time.monotonic()
    procs = [_start_node(two_nodes, i, args, logs[i], rdzv_id=rdzv_id) for i in (0, 1)]
    _wait(procs, logs, timeout=240)
    print(f"2 nodes x 2 processes, {NUM_STEPS} steps: {time.monotonic() - start:.1f} s")
    run_dir = tmp_path / "two_nodes"
    assert json.loads((run_dir / "env.json").read_text())[-1]["world_size"] == 4
    # Split otherwise: one micro-batch on each of the 4 ranks, 3 or more in the one process.
    ours, ref = _metrics(run_dir), _metrics(one_process)
    assert all(ours[k]["num_micro_batches"] == 1 and ref[k]["num_micro_batches"] >= 3 for k in ours)
    _same_run(run_dir, one_process)


@pytest.mark.slow
@pytest.mark.dist
def test_a_lost_node_rejoins_and_the_job_finishes_as_if_uninterrupted(two_nodes, digits_manifests,  # noqa: F811
                                                                      one_process, tmp_path):
    """SIGKILL of node 2's agent and workers mid-run; a replacement node 2 joins (as a scheduler would
    start one); node 1's agent restarts its workers (--max-restarts 1) and the job resumes from the last
    checkpoint to the same end as an uninterrupted run."""
    train, valid = digits_manifests
    args = _settings(train, valid, tmp_path, "lost_node", NUM_STEPS)
    logs = [tmp_path / "node1.log", tmp_path / "node2.log", tmp_path / "node2-replacement.log"]
    rdzv_id = f"lost-{secrets.token_hex(3)}"
    start = time.monotonic()
    node1, node2 = (_start_node(two_nodes, i, args, logs[i], rdzv_id=rdzv_id, max_restarts=1) for i in (0, 1))
    metrics = tmp_path / "lost_node" / "metrics.jsonl"
    deadline = time.monotonic() + 180
    while not (metrics.is_file() and metrics.read_text().count('"kind": "train"') >= 3):
        assert time.monotonic() < deadline and node1.poll() is None, logs[0].read_text()[-3000:]
        time.sleep(0.2)
    killed_at = time.monotonic()
    _kill_processes_in(two_nodes.names[1])  # node 2's agent and its workers
    node2.wait(timeout=30)
    assert node2.returncode == -signal.SIGKILL
    replacement = _start_node(two_nodes, 1, args, logs[2], rdzv_id=rdzv_id, max_restarts=1)
    _wait([node1, replacement], [logs[0], logs[2]], timeout=240)
    end = time.monotonic()
    run_dir = tmp_path / "lost_node"
    launches = json.loads((run_dir / "env.json").read_text())
    rows = [json.loads(line) for line in metrics.read_text().splitlines()]
    resumes = [r for r in rows if r["kind"] == "resume"]
    print(f"lost node: {end - start:.1f} s in all, {end - killed_at:.1f} s from the kill to the end; "
          f"{len(launches)} launches, resumed at step(s) {[r['step'] for r in resumes]}")
    assert len(launches) == 2 and len(resumes) == 1  # one restart of the job
    assert resumes[0]["step"] >= 2 and resumes[0]["checkpoint"].startswith("checkpoints/step_")
    _same_run(run_dir, one_process)


@pytest.mark.slow
@pytest.mark.dist
def test_a_stalled_rank_ends_the_job_with_rank_step_and_operation(digits_manifests, tmp_path):  # noqa: F811
    """Rank 1 sleeps before step 2 (SPEECHBS_TEST_STALL); rank 0 waits train.collective_timeout_s in the
    step's first collective, then the job ends with an error that names the ranks, the step and the
    operation. torchrun then gives the sleeping rank its 30 s to exit on SIGTERM before SIGKILL."""
    train, valid = digits_manifests
    timeout_s = 10
    args = _settings(train, valid, tmp_path, "stall", 4, f"train.collective_timeout_s={timeout_s}")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO), "SPEECHBS_TEST_STALL": "1:2:600"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-addr", "127.0.0.1",
           "--master-port", str(_free_port()), "-m", "speechbs", "pretrain", str(RECIPE), *args]
    start = time.monotonic()
    proc = subprocess.Popen(cmd, env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: list[tuple[float, str]] = []
    reader = threading.Thread(target=lambda: lines.extend((time.monotonic(), line) for line in proc.stdout))
    reader.start()
    try:
        proc.wait(timeout=240)
    finally:
        proc.kill()
        reader.join(timeout=10)
    end = time.monotonic()
    output = "".join(line for _, line in lines)
    stalled_at = next(t for t, line in lines if "stalling" in line)
    error_at, error = next((t, line) for t, line in lines if "speechbs pretrain: error:" in line)
    print(f"stall: error {error_at - stalled_at:.1f} s after the stall began, job ended after "
          f"{end - stalled_at:.1f} s (timeout {timeout_s} s); {end - start:.1f} s in all")
    assert proc.returncode != 0
    assert "rank 0 of 2 gave up" in error and "in step 2" in error and "rank 1 never arrived" in error, output[-3000:]
    assert "all-reduce" in error or "pre-pass" in error
    assert f"train.collective_timeout_s = {timeout_s} s" in error
    assert timeout_s <= error_at - stalled_at < timeout_s + 15
    assert end - stalled_at < timeout_s + 15 + 35  # + torchrun's 30 s between SIGTERM and SIGKILL
