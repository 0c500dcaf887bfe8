"""backstopctl against live clusters: every subcommand, its JSON output and its exit codes
(0 ok, 1 error, 2 usage), including the DNS check of a customer's MX setup against dnsmasq."""

import json
import os
import re
import smtplib
import socket
import subprocess
import threading
import time

import pytest

from conftest import REPO, reserve_port
from test_ingest import queued_ids, smtp_address
from test_queue_cluster import leader_of, wait_until

try:  # another change may move the dnsmasq helper into conftest
    from conftest import Dnsmasq
except ImportError:
    from test_delivery import Dnsmasq

BACKSTOPCTL_BIN = os.path.abspath(os.environ.get(
    "BACKSTOPCTL_BIN", str(REPO / "build/release/cmd/backstopctl/backstopctl")))


def run_ctl(endpoint, *args, output="json"):
    """(exit code, parsed JSON stdout or the raw text for table output, stderr)."""
    command = [BACKSTOPCTL_BIN]
    if endpoint is not None:
        command += ["--endpoint", endpoint]
    if output == "json":
        command += ["-o", "json"]
    result = subprocess.run([*command, *args], capture_output=True, text=True, timeout=180)
    out = result.stdout
    if output == "json" and out.strip():
        out = json.loads(out)  # one document, parseable, whatever the exit code
    return result.returncode, out, result.stderr


def ok(endpoint, *args):
    code, out, err = run_ctl(endpoint, *args)
    assert code == 0, f"{args}: exit {code}: {err}"
    return out


def node_config(node_id, data_dir, ports, roles=("queue",), listen_port=None, queue_extra="",
                dead_port=2):
    """A voter of `ports` (id → queue port) with `roles`; example.test and sender.test have a
    primary on `dead_port`, where nothing listens, and retry only after an hour."""
    peers = ", ".join(f'"{i}@127.0.0.1:{port}"' for i, port in ports.items())
    role_list = ", ".join(f'"{role}"' for role in roles)
    smtp = '[smtp]\nlisten = ["127.0.0.1:0"]\n' if "ingest" in roles else ""
    return f"""
[node]
id = {node_id}
hostname = "q{node_id}.test"
data_dir = "{data_dir}"
roles = [{role_list}]

{smtp}
[queue]
listen = "127.0.0.1:{listen_port or ports[node_id]}"
peers = [{peers}]
{queue_extra}

[http]
listen = "127.0.0.1:0"

[delivery]
retry_initial = "1h"
retry_max = "2h"

[[domain]]
name = "example.test"
primary = ["127.0.0.1:{dead_port}"]

[[domain]]
name = "sender.test"
primary = ["127.0.0.1:{dead_port}"]
"""


class Cluster:
    def __init__(self, backstop, tmp_path, node1_roles):
        self.backstop = backstop
        self.tmp_path = tmp_path
        self.dead_port = reserve_port()
        self.ports = {i: reserve_port() for i in (1, 2, 3)}
        self.nodes = {}
        for i in self.ports:
            roles = node1_roles if i == 1 else ("queue",)
            self.nodes[i] = backstop(config_text=node_config(
                i, tmp_path / f"data{i}", self.ports, roles=roles, dead_port=self.dead_port))
        self.leader = wait_until(lambda: leader_of(self.nodes), what="a leader")
        wait_until(lambda: all(n.http_get("/readyz")[0] == 200 for n in self.nodes.values()),
                   what="every voter ready")

    def endpoint(self, node_id):
        return f"127.0.0.1:{self.ports[node_id]}"

    def follower(self):
        return next(i for i in self.nodes if i != leader_of(self.nodes))

    def send(self, count, sender="s@sender.test", rcpt="alice@example.test"):
        """Sends `count` messages through node 1's SMTP listener; returns their ids."""
        ids = []
        with smtplib.SMTP(*smtp_address(self.nodes[1])) as client:
            client.ehlo("client.test")
            for n in range(count):
                client.mail(sender)
                assert client.rcpt(rcpt)[0] == 250
                code, text = client.data(f"From: s@sender.test\r\nSubject: m{n}\r\n\r\nbody {n}\r\n".encode())
                assert code == 250, text
                ids += queued_ids(text.decode())
        return ids


@pytest.fixture
def cluster(backstop, tmp_path):
    """Three voters; node 1 also runs ingest (no delivery: nothing leases the entries)."""
    return Cluster(backstop, tmp_path, ("ingest", "queue"))


def listed(endpoint, domain="example.test"):
    return {e["id"]: e for e in ok(endpoint, "queue", "list", "--domain", domain)}


# ---------------------------------------------------------------------------------------------
# cluster


def test_cluster_status_and_members_report_the_leader(cluster):
    status = ok(cluster.endpoint(2), "cluster", "status")
    assert status["node_id"] == "2"
    assert int(status["leader_id"]) == cluster.leader
    assert sorted(int(v["id"]) for v in status["voters"]) == [1, 2, 3]

    members = ok(cluster.endpoint(2), "cluster", "members")
    assert members["leader_id"] == cluster.leader
    assert [m["id"] for m in members["members"]] == [1, 2, 3]
    roles = {m["id"]: m["role"] for m in members["members"]}
    assert roles[cluster.leader] == "leader"
    assert sorted(roles.values()) == ["leader", "voter", "voter"]
    assert {m["address"] for m in members["members"]} == {
        cluster.endpoint(i) for i in (1, 2, 3)}

    code, table, _ = run_ctl(cluster.endpoint(2), "cluster", "members", output="table")
    assert code == 0
    assert re.search(
        rf"\b{cluster.leader}\s+{cluster.endpoint(cluster.leader)}\s+leader\s+\d+\s+0\n", table)
    assert table.splitlines()[0].split() == ["ID", "ADDRESS", "ROLE", "MATCH", "LAG"]
    code, table, _ = run_ctl(cluster.endpoint(2), "cluster", "status", output="table")
    assert code == 0 and f"leader    {cluster.leader} " in table


def test_cluster_members_reports_match_and_lag_from_the_leader(cluster):
    cluster.send(5)
    leader_ep = cluster.endpoint(cluster.leader)

    def settled(endpoint):
        members = ok(endpoint, "cluster", "members")["members"]
        return members if all(m["lag"] == 0 for m in members) else None

    # Asked a follower, backstopctl takes the progress from the leader it names.
    for endpoint in (cluster.endpoint(cluster.follower()), leader_ep):
        members = wait_until(lambda: settled(endpoint), what="every member caught up")
        matches = {m["match"] for m in members}
        assert len(matches) == 1 and matches.pop() >= 5, members
        for member in members:
            assert 0 <= member["last_contact_ms"] < 5000, member

    # A stopped follower falls behind by what the others commit without it.
    stopped = next(i for i in (2, 3) if i != cluster.leader)
    cluster.nodes[stopped].stop()
    cluster.send(3)
    members = {m["id"]: m for m in ok(leader_ep, "cluster", "members")["members"]}
    assert members[stopped]["lag"] >= 3
    assert all(m["lag"] == 0 for i, m in members.items() if i != stopped), members
    status = ok(leader_ep, "cluster", "status")
    assert int(status["last_index"]) == members[cluster.leader]["match"]
    assert status["hostname"] == f"q{cluster.leader}.test"


def test_transfer_leader_moves_leadership_through_any_voter(cluster):
    old = cluster.leader
    # Sent to a follower: backstopctl follows it to the leader.
    moved = ok(cluster.endpoint(cluster.follower()), "cluster", "transfer-leader")
    assert moved["previous_leader"] == old
    assert moved["leader"] != old
    wait_until(lambda: leader_of(cluster.nodes) == moved["leader"], what="the new leader")

    back = ok(cluster.endpoint(old), "cluster", "transfer-leader", str(old))
    assert back == {"previous_leader": moved["leader"], "leader": old}
    wait_until(lambda: leader_of(cluster.nodes) == old, what="the old leader back")


def test_cluster_add_then_remove_a_voter(cluster):
    port = reserve_port()
    founders = dict(cluster.ports)
    joining = cluster.backstop(config_text=node_config(
        4, cluster.tmp_path / "data4", founders, listen_port=port, queue_extra="join = true",
        dead_port=cluster.dead_port))
    added = ok(cluster.endpoint(2), "cluster", "add", "4", f"127.0.0.1:{port}")
    assert added == {"added": 4, "address": f"127.0.0.1:{port}"}
    members = ok(cluster.endpoint(1), "cluster", "members")["members"]
    assert [(m["id"], m["role"] != "learner") for m in members] == [
        (1, True), (2, True), (3, True), (4, True)]
    cluster.nodes[4] = joining
    cluster.ports[4] = port
    wait_until(lambda: joining.status()["queue"]["leader_id"] == leader_of(cluster.nodes),
               what="the new voter knows the leader")

    victim = cluster.follower()
    assert ok(cluster.endpoint(4), "cluster", "remove", str(victim)) == {"removed": victim}
    members = ok(cluster.endpoint(4), "cluster", "members")["members"]
    assert sorted(m["id"] for m in members) == sorted(set(cluster.ports) - {victim})
    cluster.nodes.pop(victim).stop()

    # Removing a node that is not a member is an error, not a usage problem.
    code, _, err = run_ctl(cluster.endpoint(4), "cluster", "remove", str(victim))
    assert code == 1 and err.startswith("backstopctl: ")


# ---------------------------------------------------------------------------------------------
# queue actions


def test_hold_release_and_delete_by_id(cluster):
    ep = cluster.endpoint(cluster.follower())
    ids = cluster.send(4)

    held = ok(ep, "queue", "hold", *ids[:3])
    assert held == {"action": "hold", "executed": True, "affected": 3, "not_found": []}
    entries = listed(ep)
    assert [entries[i]["held"] for i in ids] == [True, True, True, False]
    summary = {d["domain"]: d for d in ok(ep, "queue", "summary")["domains"]}
    assert summary["example.test"]["held_messages"] == "3"
    code, table, _ = run_ctl(ep, "queue", "list", output="table")
    assert code == 0 and table.count(" held ") == 3

    released = ok(ep, "queue", "release", *ids[:3])
    assert released["affected"] == 3
    assert not any(e["held"] for e in listed(ep).values())

    # A delete by id still needs --yes: without it, only what would be deleted.
    code, preview, err = run_ctl(ep, "queue", "delete", ids[0], ids[1])
    assert code == 2 and "--yes" in err
    assert preview["executed"] is False
    assert [e["id"] for e in preview["entries"]] == ids[:2]
    assert set(listed(ep)) == set(ids)

    deleted = ok(ep, "queue", "delete", "--yes", ids[0], ids[1])
    assert deleted["affected"] == 2
    assert set(listed(ep)) == set(ids[2:])
    code, _, err = run_ctl(ep, "queue", "show", ids[0])
    assert code == 1 and "backstopctl: " in err

    # An id that is not queued is reported, not an error.
    again = ok(ep, "queue", "delete", "--yes", ids[0])
    assert again["affected"] == 0 and again["not_found"] == [ids[0]]


def test_bulk_selections_need_yes_and_dry_run_changes_nothing(cluster):
    ep = cluster.endpoint(1)
    old = cluster.send(2)
    time.sleep(3)
    new = cluster.send(2)
    entries = listed(ep)
    # Halfway between the two sends, in the cluster's time: 1.5 s of margin either side.
    middle_ms = (max(int(entries[i]["enqueue_ms"]) for i in old) +
                 min(int(entries[i]["enqueue_ms"]) for i in new)) // 2

    def between():
        """--older-than that separates the two sends now."""
        return f"{int(time.time() * 1000) - middle_ms}ms"

    # By domain without --yes: exit 2, the selection on stdout, nothing deleted.
    code, preview, err = run_ctl(ep, "queue", "delete", "--domain", "example.test")
    assert code == 2 and "--yes" in err
    assert sorted(e["id"] for e in preview["entries"]) == sorted(old + new)
    assert set(listed(ep)) == set(old + new)
    # Even a hold selected by domain or age needs --yes.
    code, _, _ = run_ctl(ep, "queue", "hold", "--older-than", "0s")
    assert code == 2
    assert not any(e["held"] for e in listed(ep).values())

    # --dry-run: exit 0, what would happen, nothing changed.
    dry = ok(ep, "queue", "delete", "--domain", "example.test", "--dry-run", "--yes")
    assert dry["executed"] is False and len(dry["entries"]) == 4
    dry = ok(ep, "queue", "bounce", "--older-than", between(), "--dry-run")
    assert sorted(e["id"] for e in dry["entries"]) == sorted(old)
    assert set(listed(ep)) == set(old + new)
    assert not any(e["bounce_requested"] for e in listed(ep).values())

    # By age (client-side selection, acted on by id): only the older two.
    held = ok(ep, "queue", "hold", "--older-than", between(), "--domain", "example.test", "--yes")
    assert held["affected"] == 2
    assert {i for i, e in listed(ep).items() if e["held"]} == set(old)
    assert ok(ep, "queue", "hold", "--older-than", "1h", "--yes")["affected"] == 0

    released = ok(ep, "queue", "release", "--domain", "example.test", "--yes")
    assert released["affected"] == 2
    gone = ok(ep, "queue", "delete", "--domain", "example.test", "--yes")
    assert gone["affected"] == 4
    assert ok(ep, "queue", "list") == []


def test_bounce_queues_a_dsn_for_the_senders_domain(backstop, tmp_path):
    cluster = Cluster(backstop, tmp_path, ("ingest", "queue", "delivery"))
    ep = cluster.endpoint(2)
    ids = cluster.send(2, sender="someone@sender.test")

    def settled():
        """The primary refused the first attempt: down for an hour, nothing leased."""
        summary = {d["domain"]: d for d in ok(ep, "queue", "summary")["domains"]}
        domain = summary.get("example.test", {})
        return domain.get("down") and domain.get("leased_messages") == "0"

    wait_until(settled, what="example.test down and idle")
    code, preview, _ = run_ctl(ep, "queue", "bounce", ids[0], "--reason", "not wanted")
    assert code == 2 and [e["id"] for e in preview["entries"]] == [ids[0]]

    bounced = ok(ep, "queue", "bounce", ids[0], "--reason", "not wanted here", "--yes")
    assert bounced["affected"] == 1

    def dsn():
        entries = ok(ep, "queue", "list", "--domain", "sender.test")
        return entries[0] if entries else None

    entry = wait_until(dsn, what="a DSN queued for sender.test")
    assert entry["envelope"]["reverse_path"] == ""
    assert [r["address"] for r in entry["envelope"]["recipients"]] == ["someone@sender.test"]
    assert "not wanted here" in ok(ep, "queue", "show", entry["id"], "--message")["message"]
    wait_until(lambda: ids[0] not in listed(ep), what="the bounced entry gone")
    assert ids[1] in listed(ep)


def test_usage_errors_exit_2_and_change_nothing(cluster):
    ep = cluster.endpoint(1)
    ids = cluster.send(1)
    for args in (["queue", "hold"],                                 # no selection
                 ["queue", "hold", ids[0], "--domain", "example.test"],  # both kinds
                 ["queue", "hold", "not-an-id"],
                 ["queue", "hold", "--older-than", "2 hours"],
                 ["queue", "frobnicate"],
                 ["--output", "yaml", "queue", "list"],
                 ["domain", "add", "x.test", "--tls", "sometimes"],
                 ["domain", "add", "x.test", "--max-queued-bytes", "1 gig"],
                 ["cluster", "add", "5", "no-port"]):
        code, _, err = run_ctl(ep, *args)
        assert code == 2, (args, err)
        assert err, args
    assert not listed(ep)[ids[0]]["held"]
    assert "x.test" not in [d["spec"]["name"] for d in ok(ep, "domain", "list")["domains"]]


def test_unreachable_endpoint_is_an_error(tmp_path):
    code, _, err = run_ctl(f"127.0.0.1:{reserve_port()}", "queue", "summary", "--timeout", "2s")
    assert code == 1
    assert err.startswith("backstopctl: 127.0.0.1:")


def test_endpoint_from_the_environment(cluster):
    env = {**os.environ, "BACKSTOP_ENDPOINT": cluster.endpoint(3)}
    result = subprocess.run([BACKSTOPCTL_BIN, "cluster", "status", "-o", "json"],
                            capture_output=True, text=True, timeout=30, env=env)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["node_id"] == "3"


# ---------------------------------------------------------------------------------------------
# domain


def test_domain_add_set_list_remove(cluster):
    ep = cluster.endpoint(cluster.follower())
    names = lambda: [d["spec"]["name"] for d in ok(ep, "domain", "list")["domains"]]
    # Seeded from the configuration by the leader, shortly after it is elected.
    wait_until(lambda: names() == ["example.test", "sender.test"], what="the seeded domains")

    added = ok(ep, "domain", "add", "New.Test", "--primary", "mx1.new.test",
               "--primary", "127.0.0.1:2600", "--tls", "required", "--recipient", "a",
               "--recipient", "b@New.Test", "--callout", "--max-queued-bytes", "2GiB")
    spec = added["spec"]
    assert spec["name"] == "new.test"
    assert spec["primary"] == ["mx1.new.test:25", "127.0.0.1:2600"]
    assert spec["tls"] == "TLS_REQUIRED"
    assert spec["recipients"] == ["a", "b@new.test"]
    assert spec["recipient_callout"] is True
    assert spec["max_queued_bytes"] == str(2 << 30)
    # Limits not given: DESIGN §4's defaults, not 0 (which would refuse every message).
    assert spec["max_queued_messages"] == "100000"
    assert spec["max_monthly_bytes"] == str(10 << 30)
    assert spec["max_daily_connections"] == "100000"
    assert names() == ["example.test", "new.test", "sender.test"]

    code, _, err = run_ctl(ep, "domain", "add", "new.test")
    assert code == 1 and "exists" in err

    updated = ok(ep, "domain", "set", "new.test", "--max-queued-messages", "5", "--no-callout",
                 "--tls", "opportunistic")
    assert updated["spec"]["max_queued_messages"] == "5"
    assert updated["spec"]["recipient_callout"] is False
    listed_spec = next(d["spec"] for d in ok(ep, "domain", "list")["domains"]
                       if d["spec"]["name"] == "new.test")
    assert listed_spec["max_queued_messages"] == "5"
    assert listed_spec["tls"] == "TLS_OPPORTUNISTIC"
    assert listed_spec["primary"] == ["mx1.new.test:25", "127.0.0.1:2600"]  # kept
    assert listed_spec["max_queued_bytes"] == str(2 << 30)                # kept
    code, table, _ = run_ctl(ep, "domain", "list", output="table")
    assert code == 0 and "new.test" in table

    code, _, _ = run_ctl(ep, "domain", "set", "nosuch.test", "--max-queued-messages", "1")
    assert code == 1

    code, preview, err = run_ctl(ep, "domain", "remove", "new.test")
    assert code == 2 and "--yes" in err and preview["spec"]["name"] == "new.test"
    assert "new.test" in names()
    removed = ok(ep, "domain", "remove", "new.test", "--yes")
    assert removed["action"] == "removed"
    assert names() == ["example.test", "sender.test"]
    code, _, _ = run_ctl(ep, "domain", "remove", "new.test", "--yes")
    assert code == 1


class BannerServer:
    """A primary that only greets: accepts, sends a 220 banner, waits for the client to go."""

    def __init__(self):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.port = self.sock.getsockname()[1]
        self.greeted = 0
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                conn.sendall(b"220 mx1.good.test ESMTP fake\r\n")
                self.greeted += 1
                conn.settimeout(5)
                try:
                    conn.recv(64)
                except OSError:
                    pass

    def close(self):
        self.sock.close()


def dns_answers(port):
    """Whether a DNS server answers on 127.0.0.1:port (a bare MX query for good.test)."""
    query = (b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00"
             b"\x04good\x04test\x00\x00\x0f\x00\x01")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(0.5)
        try:
            s.sendto(query, ("127.0.0.1", port))
            return s.recv(512)[:2] == b"\x12\x34"
        except OSError:
            return False


@pytest.fixture
def mx_world():
    """dnsmasq with the MX setups the checks look at, and a greeting primary."""
    dns = Dnsmasq(
        "--mx-host=good.test,mx1.good.test,10", "--mx-host=good.test,mx2.test,20",
        "--host-record=mx1.good.test,127.0.0.1",
        "--mx-host=inverted.test,mx1.inverted.test,20", "--mx-host=inverted.test,mx2.test,10",
        "--host-record=mx1.inverted.test,127.0.0.1",
        "--mx-host=other.test,mx1.other.test,10", "--host-record=mx1.other.test,127.0.0.1")
    wait_until(lambda: dns_answers(dns.port), timeout=10, what="dnsmasq answering")
    banner = BannerServer()
    yield dns, banner
    banner.close()
    dns.stop()


def check(dns, port, domain, output="json"):
    return run_ctl(None, "domain", "check", domain, "--hostname", "MX2.test.",
                   "--dns", f"127.0.0.1:{dns.port}", "--port", str(port),
                   "--connect-timeout", "2s", output=output)


def test_domain_check_passes_a_sound_setup(mx_world):
    dns, banner = mx_world
    code, report, err = check(dns, banner.port, "good.test")
    assert code == 0, (report, err)
    assert report["ok"] is True and report["problems"] == []
    assert report["mx"] == [{"preference": 10, "exchange": "mx1.good.test"},
                            {"preference": 20, "exchange": "mx2.test"}]
    assert report["listed"] is True and report["our_preference"] == 20
    assert report["below_primary"] is True
    (primary,) = report["primaries"]
    assert primary["exchange"] == "mx1.good.test" and primary["reachable"] is True
    assert primary["banner"].startswith("220 ")
    assert banner.greeted >= 1
    code, table, _ = check(dns, banner.port, "good.test", output="table")
    assert code == 0 and "ok: the setup is sound" in table


def test_domain_check_flags_us_above_the_primary(mx_world):
    dns, banner = mx_world
    code, report, _ = check(dns, banner.port, "inverted.test")
    assert code == 1
    assert report["listed"] is True and report["below_primary"] is False
    assert len(report["problems"]) == 1
    assert "not below the primary" in report["problems"][0]
    code, table, _ = check(dns, banner.port, "inverted.test", output="table")
    assert code == 1 and "problem: " in table


def test_domain_check_flags_a_domain_that_does_not_list_us(mx_world):
    dns, banner = mx_world
    code, report, _ = check(dns, banner.port, "other.test")
    assert code == 1
    assert report["listed"] is False
    assert report["problems"] == [
        "mx2.test is not among the MX records of other.test: mail will not come to us"]


def test_domain_check_flags_an_unreachable_primary(mx_world):
    dns, _ = mx_world
    code, report, _ = check(dns, reserve_port(), "good.test")
    assert code == 1
    assert report["primaries"] and report["primaries"][0]["reachable"] is False, report
    assert report["problems"] == [
        f"primary mx1.good.test is unreachable: {report['primaries'][0]['error']}"]


def test_domain_check_of_a_name_without_mx_is_a_problem(mx_world):
    dns, banner = mx_world
    code, report, _ = check(dns, banner.port, "nothing.test")
    assert code == 1
    assert report["problems"][0].startswith("MX lookup of nothing.test failed")


def test_domain_check_takes_our_hostname_from_the_queue_node(backstop, mx_world):
    dns, banner = mx_world
    node = backstop()  # the standalone configuration: [node] hostname = "mx2.test"
    endpoint = node.wait_for_log(lambda e: e.get("msg") == "queue listening",
                                 what="the queue address")["address"]
    code, report, err = run_ctl(endpoint, "domain", "check", "good.test",
                                "--dns", f"127.0.0.1:{dns.port}", "--port", str(banner.port),
                                "--connect-timeout", "2s")
    assert code == 0, (report, err)
    assert report["hostname"] == "mx2.test"
    assert report["listed"] is True and report["below_primary"] is True
    # The node's name decides: under another name the same records do not list us.
    code, report, _ = run_ctl(endpoint, "domain", "check", "good.test", "--hostname", "mx9.test",
                              "--dns", f"127.0.0.1:{dns.port}", "--port", str(banner.port))
    assert code == 1 and report["listed"] is False
    # No --hostname and no queue node to ask: an error that says what to do.
    code, _, err = run_ctl(f"127.0.0.1:{reserve_port()}", "domain", "check", "good.test",
                           "--dns", f"127.0.0.1:{dns.port}", "--timeout", "2s")
    assert code == 1 and "--hostname" in err
