"""Storage faults on one queue voter (DESIGN §3.1): a write or fsync error, or ENOSPC, injected
through the RocksDB FileSystem wrapper (queue/fault_injection.h) under load. The voter stops
serving at once (fail-stop: it aborts rather than retry a failed fsync), the other two carry on,
and every acknowledged append survives on every voter once the failed one restarts on a healthy
disk.

The fault is switched on in the running process through its fault file: the test-only variable
BACKSTOP_FAULT_FILE names it, here relative to each process's working directory, so that every
voter has its own."""

import signal
import subprocess

import pytest

from conftest import LOADGEN_BIN, reserve_port
from test_queue_cluster import leader_of, queue_config, run_loadgen, wait_until

MESSAGES = 4000


@pytest.fixture
def faulty_cluster(backstop, tmp_path, monkeypatch):
    monkeypatch.setenv("BACKSTOP_FAULT_FILE", "fault")
    ports = {i: reserve_port() for i in (1, 2, 3)}
    nodes = {i: backstop(config_text=queue_config(i, tmp_path / f"data{i}", ports)) for i in ports}
    return ports, nodes


@pytest.mark.parametrize("fault,victim_role", [
    ("sync_error", "leader"),
    ("write_error", "follower"),
    ("nospace", "follower"),
    ("nospace", "leader"),
])
def test_a_voter_whose_disk_fails_stops_serving_and_nothing_acknowledged_is_lost(
        backstop, faulty_cluster, tmp_path, fault, victim_role):
    ports, nodes = faulty_cluster
    leader = wait_until(lambda: leader_of(nodes), what="a leader")
    victim = leader if victim_role == "leader" else next(i for i in nodes if i != leader)
    endpoints = ",".join(f"127.0.0.1:{port}" for port in ports.values())
    acked = tmp_path / "acked.txt"
    load = subprocess.Popen(
        [LOADGEN_BIN, "--endpoints", endpoints, "--messages", str(MESSAGES), "--concurrency",
         "16", "--size", "1024", "--acked", str(acked)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_until(lambda: nodes[leader].status()["queue"]["commit_index"] > MESSAGES // 4,
               what="commits before the fault")

    (nodes[victim].workdir / "fault").write_text(fault + "\n")
    # Fail-stop: the first failed write ends the process; it never answers again.
    assert nodes[victim].wait_exit(timeout=30) == -signal.SIGABRT
    failed = [e for e in nodes[victim].logs()
              if e.get("msg") == "queue storage failed; this node stops serving and must be "
                                 "restarted"]
    assert failed and "injected" in failed[0]["error"], failed

    # The other two carry on: the load finishes with every append acknowledged.
    out, err = load.communicate(timeout=300)
    assert load.returncode == 0, err[-2000:]
    assert f'"acked":{MESSAGES}' in out, out
    survivors = {i: n for i, n in nodes.items() if i != victim}
    new_leader = wait_until(lambda: leader_of(survivors), what="a leader of the survivors")

    # Restarted on a healthy disk, the voter recovers what was durable and catches up; every
    # acknowledged append is on every voter.
    (nodes[victim].workdir / "fault").unlink()
    nodes[victim] = backstop(restart_of=nodes[victim])
    target = nodes[new_leader].status()["queue"]["commit_index"]
    wait_until(lambda: all(n.status()["queue"]["applied_index"] >= target
                           for n in nodes.values()), timeout=60, what="every voter caught up")
    assert len(acked.read_text().split()) == MESSAGES
    for node_id, port in ports.items():
        result = run_loadgen("--endpoints", f"127.0.0.1:{port}", "--verify", str(acked))
        assert result.returncode == 0, f"voter {node_id}: {result.stderr[-2000:]}"
        assert f'"present":{MESSAGES},"missing":0' in result.stdout
