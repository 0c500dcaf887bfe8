"""Storage faults on one queue voter (DESIGN §3.1): a write or fsync error, or ENOSPC, injected
through the RocksDB FileSystem wrapper (queue/fault_injection.h) under load. The voter stops
serving at once (fail-stop: it aborts rather than retry a failed fsync), the other two carry on,
and every acknowledged append survives on every voter once the failed one restarts on a healthy
disk. And the graceful path before that: a leader whose free space is below
[queue] min_free_space (the fault "full": the free-space probe reports 0 bytes while writes
still succeed) refuses new messages, so ingest answers 452 4.3.1, at MAIL once it knows.

The fault is switched on in the running process through its fault file: the test-only variable
BACKSTOP_FAULT_FILE names it, here relative to each process's working directory, so that every
voter has its own."""

import signal
import smtplib
import subprocess
import time

import pytest

from conftest import LOADGEN_BIN, reserve_port
from test_filters_limits import config_with
from test_ingest import ctl, queued_ids, smtp_address
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


def send_one(address, n):
    """One message in its own session: ("mail" | "data", code, text) of the first refusal or of
    the end of data."""
    with smtplib.SMTP(*address) as client:
        client.ehlo("client.test")
        code, text = client.mail("s@sender.test")
        if code != 250:
            return "mail", code, text
        assert client.rcpt("alice@example.test")[0] == 250
        code, text = client.data(
            f"From: s@sender.test\r\nSubject: m{n}\r\n\r\nbody {n}\r\n".encode())
        return "data", code, text


def test_a_full_disk_under_ingest_gets_452_at_mail_and_mail_flows_again_when_space_is_back(
        backstop, monkeypatch):
    monkeypatch.setenv("BACKSTOP_FAULT_FILE", "fault")
    node = backstop(config_with())
    address = smtp_address(node)
    acked = []
    stage, code, text = send_one(address, 0)
    assert (stage, code) == ("data", 250), text
    acked += queued_ids(text.decode())

    # The leader measures its free space at most once a second: until then messages may still
    # be accepted; then the refusal comes at end of data (the first one) or at MAIL.
    (node.workdir / "fault").write_text("full\n")
    deadline = time.monotonic() + 10
    n = 1
    while True:
        stage, code, text = send_one(address, n)
        n += 1
        if code == 250:
            acked += queued_ids(text.decode())
            assert time.monotonic() < deadline, "never refused"
            continue
        assert (code, text[:5]) == (452, b"4.3.1"), (stage, text)
        break
    # The next session is refused at MAIL, before it sends its data.
    stage, code, text = send_one(address, n)
    n += 1
    assert (stage, code, text) == ("mail", 452, b"4.3.1 Insufficient system storage")

    # Space is back: within a few seconds a MAIL goes through as the probe, its message is
    # accepted, and so is every one after it.
    (node.workdir / "fault").write_text("none\n")
    back = time.monotonic()
    while True:
        stage, code, text = send_one(address, n)
        n += 1
        if code == 250:
            acked += queued_ids(text.decode())
            break
        assert (code, text[:5]) == (452, b"4.3.1"), (stage, text)
        assert time.monotonic() - back < 10, "mail was never accepted again"
        time.sleep(0.2)
    stage, code, text = send_one(address, n)
    assert (stage, code) == ("data", 250), text
    acked += queued_ids(text.decode())

    # Nothing acknowledged is lost; nothing refused was queued.
    queued = {e["id"] for e in ctl(node, "queue", "list")}
    assert queued == set(acked)
    assert any(e.get("msg") == "queue storage full: refusing MAIL until an append commits"
               for e in node.logs())
