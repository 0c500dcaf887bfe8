"""Three queue voters as separate processes on loopback: replication, failover, zero loss."""

import re
import signal
import subprocess
import time

import pytest

from conftest import LOADGEN_BIN, reserve_port, scaled


def queue_config(node_id, data_dir, ports, listen_port=None, queue_extra=""):
    """ports: the voters' queue ports by id (peers); listen_port defaults to ports[node_id]."""
    peers = ", ".join(f'"{i}@127.0.0.1:{port}"' for i, port in ports.items())
    listen_port = listen_port or ports[node_id]
    return f"""
[node]
id = {node_id}
hostname = "q{node_id}.test"
data_dir = "{data_dir}"
roles = ["queue"]

[queue]
listen = "127.0.0.1:{listen_port}"
peers = [{peers}]
{queue_extra}

[http]
listen = "127.0.0.1:0"
"""


def wait_until(predicate, timeout=30.0, what="condition"):
    """The predicate's first true value, within `timeout` (of the release build: scaled)."""
    deadline = time.monotonic() + scaled(timeout)
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture
def cluster(backstop, tmp_path):
    ports = {i: reserve_port() for i in (1, 2, 3)}
    nodes = {i: backstop(config_text=queue_config(i, tmp_path / f"data{i}", ports))
             for i in ports}
    return ports, nodes


def leader_of(nodes):
    """The node that every live voter agrees leads, or None."""
    statuses = {i: node.status()["queue"] for i, node in nodes.items()
                if node.proc.poll() is None}
    leaders = {s["leader_id"] for s in statuses.values()}
    if len(leaders) == 1 and 0 not in leaders:
        leader = leaders.pop()
        if leader in statuses and statuses[leader]["is_leader"]:
            return leader
    return None


def run_loadgen(*args):
    return subprocess.run([LOADGEN_BIN, *args], capture_output=True, text=True, timeout=300)


def test_status_reports_one_leader_and_readiness(cluster):
    _, nodes = cluster
    leader = wait_until(lambda: leader_of(nodes), what="a leader")
    for node_id, node in nodes.items():
        status = node.status()
        assert status["node_id"] == node_id
        assert status["roles"] == ["queue"]
        assert status["queue"]["leader_id"] == leader
        assert status["queue"]["is_leader"] == (node_id == leader)
        assert status["queue"]["term"] >= 1
    wait_until(lambda: all(n.http_get("/readyz")[0] == 200 for n in nodes.values()),
               what="every voter ready")


def test_status_reports_each_peers_lag_the_depth_and_the_build(cluster):
    ports, nodes = cluster
    leader = wait_until(lambda: leader_of(nodes), what="a leader")
    endpoints = ",".join(f"127.0.0.1:{port}" for port in ports.values())
    result = run_loadgen("--endpoints", endpoints, "--messages", "200", "--concurrency", "8",
                         "--size", "512")
    assert result.returncode == 0, result.stderr[-2000:]

    def settled():
        queue = nodes[leader].status()["queue"]
        peers = queue["peers"]
        return queue if len(peers) == 2 and all(p["lag"] == 0 for p in peers) else None

    queue = wait_until(settled, what="both followers caught up on the leader's /status")
    assert queue["state"] == "leader" and queue["is_leader"] is True
    assert queue["voters"] == [1, 2, 3] and queue["learners"] == []
    assert sorted(p["id"] for p in queue["peers"]) == sorted(set(ports) - {leader})
    for peer in queue["peers"]:
        assert peer["role"] == "voter"
        assert peer["address"] == f"127.0.0.1:{ports[peer['id']]}"
        assert peer["match_index"] == queue["last_index"]
        assert 0 <= peer["last_contact_seconds"] < 5
    assert queue["depth"]["messages"] == 200
    assert queue["depth"]["bytes"] >= 200 * 400  # --size is about the message size

    for node_id, node in nodes.items():
        status = node.status()
        build = status["build"]
        assert set(build) == {"version", "commit", "build_type", "compiler"}
        assert re.fullmatch(r"[0-9a-f]{12}|unknown", build["commit"]), build
        assert build["build_type"] and build["compiler"], build
        assert status["version"] == f"{build['version']}+{build['commit']}"
        assert status["hostname"] == f"q{node_id}.test"
        if node_id != leader:
            follower = wait_until(
                lambda: (q := node.status()["queue"])["lag"] == 0 and q, what="follower lag 0")
            assert follower["state"] == "follower" and follower["peers"] == []
            assert follower["leader_address"] == f"127.0.0.1:{ports[leader]}"
            assert follower["leader_commit_index"] >= queue["commit_index"]
            assert 0 <= follower["leader_contact_seconds"] < 5
            # Every voter holds the replicated state: the same depth.
            assert follower["depth"]["messages"] == 200


def test_every_acknowledged_append_survives_a_leader_kill(backstop, cluster, tmp_path):
    ports, nodes = cluster
    leader = wait_until(lambda: leader_of(nodes), what="a leader")
    endpoints = ",".join(f"127.0.0.1:{port}" for port in ports.values())
    acked = tmp_path / "acked.txt"
    load = subprocess.Popen(
        [LOADGEN_BIN, "--endpoints", endpoints, "--messages", "10000", "--concurrency", "32",
         "--size", "2048", "--acked", str(acked)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    # Kill the leader with appends in flight.
    wait_until(lambda: nodes[leader].status()["queue"]["commit_index"] > 2000,
               what="2000 commits before the kill")
    nodes[leader].signal(signal.SIGKILL)
    nodes[leader].wait_exit()
    out, err = load.communicate(timeout=300)
    assert load.returncode == 0, err
    assert '"acked":10000' in out, out

    survivors = {i: n for i, n in nodes.items() if i != leader}
    new_leader = wait_until(lambda: leader_of(survivors), what="a new leader")
    assert new_leader != leader

    # The killed voter restarts from its data directory and catches up.
    nodes[leader] = backstop(restart_of=nodes[leader])
    target = nodes[new_leader].status()["queue"]["commit_index"]
    wait_until(lambda: all(n.status()["queue"]["applied_index"] >= target
                           for n in nodes.values()), timeout=60, what="every voter caught up")

    # Every acknowledged message is stored on every voter.
    ids = acked.read_text().split()
    assert len(ids) == 10000
    for node_id, port in ports.items():
        result = run_loadgen("--endpoints", f"127.0.0.1:{port}", "--verify", str(acked))
        assert result.returncode == 0, f"voter {node_id}: {result.stderr[-2000:]}"
        assert '"present":10000,"missing":0' in result.stdout


def test_configured_domains_are_seeded_once(backstop):
    def seeding_lines(node):
        return [e for e in node.logs() if e.get("msg") == "configured domains are in the queue"]

    node = backstop()
    first = wait_until(lambda: seeding_lines(node), what="domain seeding")[0]
    assert (first["configured"], first["created"]) == (1, 1)
    node.signal(signal.SIGTERM)
    assert node.wait_exit() == 0
    # Restarted on the same data (its log file keeps the first run's lines): the domain is
    # already in the replicated table, so nothing is created again.
    again = backstop(restart_of=node)
    second = wait_until(lambda: seeding_lines(again)[1:], what="the restart's seeding")[0]
    assert (second["configured"], second["created"]) == (1, 0)


def log_messages(node, msg):
    return [e for e in node.logs() if e.get("msg") == msg]


def test_joining_voter_catches_up_by_snapshot_then_a_founder_is_removed(backstop, tmp_path):
    founders = {i: reserve_port() for i in (1, 2, 3)}
    compact = "snapshot_entries = 300"
    nodes = {i: backstop(config_text=queue_config(i, tmp_path / f"data{i}", founders,
                                                  queue_extra=compact))
             for i in founders}
    leader = wait_until(lambda: leader_of(nodes), what="a leader")
    endpoints = ",".join(f"127.0.0.1:{port}" for port in founders.values())
    acked = tmp_path / "acked.txt"
    result = run_loadgen("--endpoints", endpoints, "--messages", "3000", "--concurrency", "32",
                         "--size", "1024", "--acked", str(acked))
    assert result.returncode == 0, result.stderr[-2000:]
    assert '"acked":3000' in result.stdout, result.stdout
    # Every voter took snapshots and compacted its log past the entries a new node would need.
    for node in nodes.values():
        taken = wait_until(lambda n=node: log_messages(n, "queue snapshot taken"),
                           what="a snapshot on every voter")
        assert taken[-1]["log_first_index"] > 2

    # A fourth node, started empty in join mode, is added through the admin API.
    ports = {**founders, 4: reserve_port()}
    joining = backstop(config_text=queue_config(4, tmp_path / "data4", founders,
                                                listen_port=ports[4],
                                                queue_extra=compact + "\njoin = true"))
    assert log_messages(joining, "new queue node waiting to be added to the cluster")
    added = run_loadgen("--endpoints", endpoints, "--add-voter", f"4@127.0.0.1:{ports[4]}")
    assert added.returncode == 0, added.stderr[-2000:]
    nodes[4] = joining

    target = nodes[leader].status()["queue"]["commit_index"]
    wait_until(lambda: joining.status()["queue"]["applied_index"] >= target, timeout=60,
               what="the new voter caught up")
    installed = log_messages(joining, "installed a snapshot from the leader")
    assert installed and installed[0]["index"] > 2
    verify = run_loadgen("--endpoints", f"127.0.0.1:{ports[4]}", "--verify", str(acked))
    assert verify.returncode == 0, verify.stderr[-2000:]
    assert '"present":3000,"missing":0' in verify.stdout

    # Remove a founder that does not lead; the other three (the new one included) go on.
    leader = wait_until(lambda: leader_of(nodes), what="a leader")
    victim = next(i for i in founders if i != leader)
    removed = run_loadgen("--endpoints", endpoints, "--remove-voter", str(victim))
    assert removed.returncode == 0, removed.stderr[-2000:]
    nodes[victim].stop()
    del nodes[victim]
    survivors = ",".join(f"127.0.0.1:{ports[i]}" for i in nodes)
    more = run_loadgen("--endpoints", survivors, "--messages", "200", "--concurrency", "8",
                       "--id-node", "998")
    assert more.returncode == 0, more.stderr[-2000:]
    assert '"acked":200' in more.stdout, more.stdout
    target = nodes[leader].status()["queue"]["commit_index"]
    wait_until(lambda: all(n.status()["queue"]["applied_index"] >= target
                           for n in nodes.values()), timeout=30, what="survivors applied")


def test_sigterm_of_the_leader_hands_leadership_over_before_exit(cluster):
    _, nodes = cluster
    leader = wait_until(lambda: leader_of(nodes), what="a leader")
    term_before = nodes[leader].status()["queue"]["term"]
    nodes[leader].signal(signal.SIGTERM)
    handed = nodes[leader].wait_for_log(lambda e: e.get("msg") == "leadership handed over",
                                        what="the handover")
    assert handed["leader"] != leader
    assert nodes[leader].wait_exit() == 0
    survivors = {i: node for i, node in nodes.items() if i != leader}
    # The new leader was chosen by the handover (TimeoutNow), one term later, not by an
    # election after a timeout that could have taken several terms.
    new_leader = wait_until(lambda: leader_of(survivors), what="the new leader")
    assert new_leader == handed["leader"]
    assert survivors[new_leader].status()["queue"]["term"] == term_before + 1
