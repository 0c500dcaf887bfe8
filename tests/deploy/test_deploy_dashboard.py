"""deploy/grafana/backstop.json and deploy/local/cluster.sh together: the dashboard has the shape
the issue asks for, and every one of its queries parses and returns data from a real Prometheus
(with the alert rules loaded) scraping the local 3 + 2 + 2 cluster, mTLS between its processes,
after some traffic. The same run checks the script's start/status/stop, that the cluster refuses
plaintext and non-admin changes, and the queue's preStop hook with the admin certificate."""

import json
import os
import random
import smtplib
import socket
import subprocess
import time
import urllib.request

import pytest
import yaml

from deploy_common import BACKSTOP_BIN, BACKSTOPCTL_BIN, DEPLOY, REPO
from conftest import reserve_port  # tests/system, on sys.path through deploy_common
from test_delivery import Primary
from test_prometheus import PROMETHEUS, query, scalar
from test_queue_cluster import wait_until

DASHBOARD = json.loads((DEPLOY / "grafana/backstop.json").read_text())
ROWS = ["Overview", "Ingest", "Queue / Raft", "Delivery"]
# Grafana's range variables, as a dashboard over the last minutes would expand them.
# Grafana unit ids the panels may use (a typo would show raw numbers).
GRAFANA_UNITS = {"short", "s", "bytes", "percentunit", "mps", "cps", "reqps"}
RANGE_VARIABLES = {"$__rate_interval": "30s", "$__interval": "5s", "$__range": "5m"}
CLUSTER = DEPLOY / "local/cluster.sh"


def panels():
    return [p for p in DASHBOARD["panels"] if p["type"] != "row"]


def targets():
    return [(p["title"], t["expr"]) for p in panels() for t in p["targets"]]


def test_dashboard_has_a_fixed_uid_and_a_datasource_variable():
    assert DASHBOARD["uid"] == "backstop-overview"
    variables = DASHBOARD["templating"]["list"]
    assert [(v["name"], v["type"], v["query"]) for v in variables] == \
        [("datasource", "datasource", "prometheus")]


def test_dashboard_rows_in_order():
    assert [p["title"] for p in DASHBOARD["panels"] if p["type"] == "row"] == ROWS
    # Each row has panels under it.
    row_positions = [i for i, p in enumerate(DASHBOARD["panels"]) if p["type"] == "row"]
    for start, end in zip(row_positions, row_positions[1:] + [len(DASHBOARD["panels"])]):
        assert end - start > 1


def test_every_panel_has_a_unit_the_datasource_variable_and_a_query():
    ids = [p["id"] for p in DASHBOARD["panels"]]
    assert len(ids) == len(set(ids))
    for panel in panels():
        assert panel["fieldConfig"]["defaults"].get("unit") in GRAFANA_UNITS, panel["title"]
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        assert panel["targets"], panel["title"]
        assert panel.get("description"), panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "${datasource}"


def free_port_base():
    """A base port whose cluster ports (base+1 .. base+122) are free now, below the kernel's
    ephemeral range (32768+), where reserve_port() of the other tests draws from."""
    offsets = [1, 2, 3, 11, 12, 101, 102, 103, 111, 112, 121, 122]
    for _ in range(50):
        base = random.randrange(20000, 32000, 1000)
        sockets = []
        try:
            for offset in offsets:
                s = socket.socket()
                sockets.append(s)
                s.bind(("127.0.0.1", base + offset))
            return base
        except OSError:
            continue
        finally:
            for s in sockets:
                s.close()
    raise AssertionError("no free port range")


def http_json(url):
    with urllib.request.urlopen(url, timeout=5) as response:
        return json.loads(response.read())


def cluster_script(tmp_path, base, primary_port):
    """Runs deploy/local/cluster.sh COMMAND [ARGS] against a cluster in tmp_path/cluster."""
    env = dict(os.environ, BACKSTOP_LOCAL_DIR=str(tmp_path / "cluster"),
               BACKSTOP_LOCAL_PORT=str(base),
               BACKSTOP_LOCAL_PRIMARY=f"127.0.0.1:{primary_port}",
               BACKSTOP_BIN=BACKSTOP_BIN, BACKSTOPCTL_BIN=BACKSTOPCTL_BIN)

    def run(*command):
        return subprocess.run([str(CLUSTER), *command], env=env, capture_output=True, text=True,
                              timeout=120)

    return run


@pytest.fixture
def local_cluster(tmp_path):
    primary_port = reserve_port()
    primary = Primary(port=primary_port).start()
    base = free_port_base()
    run = cluster_script(tmp_path, base, primary_port)
    started = run("start")
    try:
        assert started.returncode == 0, started.stdout + started.stderr
        yield {"run": run, "base": base, "primary": primary, "dir": tmp_path / "cluster",
               "start_output": started.stdout}
    finally:
        stopped = run("stop")
        primary.stop()
    assert stopped.returncode == 0, stopped.stderr
    assert not list((tmp_path / "cluster").glob("*/pid"))


@pytest.fixture
def prometheus_server(tmp_path):
    procs = []

    def start(config_path):
        port = socket.socket()
        port.bind(("127.0.0.1", 0))
        number = port.getsockname()[1]
        port.close()
        log = open(tmp_path / "prometheus.log", "wb")
        procs.append(subprocess.Popen(
            [PROMETHEUS, f"--config.file={config_path}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
             f"--web.listen-address=127.0.0.1:{number}"], stdout=log, stderr=subprocess.STDOUT))
        return f"http://127.0.0.1:{number}"

    yield start
    for proc in procs:
        proc.terminate()
        proc.wait(timeout=30)


def send_traffic(base, count):
    for ingest in (11, 12):
        with smtplib.SMTP("127.0.0.1", base + ingest, timeout=30) as client:
            for i in range(count):
                assert client.sendmail(
                    "s@sender.test", [f"u{i}@example.test"],
                    b"From: s@sender.test\r\nSubject: %d\r\n\r\nbody\r\n" % i) == {}
            # Not a relay domain: refused at RCPT, counted by the filter metrics.
            with pytest.raises(smtplib.SMTPRecipientsRefused):
                client.sendmail("s@sender.test", ["x@elsewhere.test"],
                                b"From: s@sender.test\r\n\r\nno\r\n")


def test_dashboard_queries_return_data_from_the_local_cluster(local_cluster, prometheus_server,
                                                              tmp_path):
    base = local_cluster["base"]
    output = local_cluster["start_output"]
    assert f"127.0.0.1:{base + 11}" in output and f"127.0.0.1:{base + 12}" in output
    assert f"http://127.0.0.1:{base + 121}/metrics" in output

    # mTLS by default: certificates from the script's own CA, and backstopctl told how to use
    # the admin one.
    tls = local_cluster["dir"] / "tls"
    for node in ("q1", "i1", "d2"):
        config = (local_cluster["dir"] / node / "backstop.toml").read_text()
        assert f'[cluster_tls]\nca = "{tls}/ca.crt"\ncert = "{tls}/node.crt"' in config
    assert f"--tls-ca {tls}/ca.crt --tls-cert {tls}/admin.crt --tls-key {tls}/admin.key" in output
    assert f"BACKSTOP_TLS_CERT={tls}/admin.crt" in output

    status = local_cluster["run"]("status")
    assert status.returncode == 0, status.stdout + status.stderr
    assert status.stdout.count(" ready\n") == 7
    assert "voters    1,2,3" in status.stdout

    def backstopctl(node, certificate, *command):
        flags = [] if certificate is None else [
            "--tls-ca", str(tls / "ca.crt"), "--tls-cert", str(tls / f"{certificate}.crt"),
            "--tls-key", str(tls / f"{certificate}.key")]
        return subprocess.run([BACKSTOPCTL_BIN, "--endpoint", f"127.0.0.1:{base + node}",
                               "--timeout", "5s", *flags, *command], capture_output=True,
                              text=True, timeout=30, env={"PATH": os.environ["PATH"]})

    # Plaintext fails the handshake; a node certificate may read but not change the cluster.
    assert backstopctl(1, None, "cluster", "status").returncode == 1
    assert backstopctl(1, "node", "cluster", "status").returncode == 0
    denied = backstopctl(1, "node", "cluster", "transfer-leader")
    assert denied.returncode == 1 and "OU=backstop-admin" in denied.stderr

    send_traffic(base, 5)
    local_cluster["primary"].wait_for(10)

    # The script's Prometheus configuration, scraping every second.
    config = yaml.safe_load((local_cluster["dir"] / "prometheus.yml").read_text())
    config["global"] = {"scrape_interval": "1s", "scrape_timeout": "1s",
                        "evaluation_interval": "1s"}
    config_path = tmp_path / "prometheus.yml"
    config_path.write_text(yaml.safe_dump(config))
    prometheus = prometheus_server(config_path)
    wait_until(lambda: scalar(prometheus, "sum(up)") == 7, timeout=60, what="seven targets up")
    wait_until(lambda: scalar(prometheus,
                              'sum(backstop_delivery_results_total{result="delivered"})') == 10,
               timeout=30, what="ten deliveries scraped")
    # A second burst inside the rate windows, so that rates and quantiles are not all zero.
    send_traffic(base, 2)
    local_cluster["primary"].wait_for(14)

    def expand(expr):
        for variable, value in RANGE_VARIABLES.items():
            expr = expr.replace(variable, value)
        return expr

    def empty_queries():
        return [(title, expr) for title, expr in targets() if not query(prometheus, expand(expr))]

    wait_until(lambda: not empty_queries(), timeout=30, what="data for every dashboard query")
    assert scalar(prometheus, "max(backstop_queue_messages)") is not None
    assert scalar(prometheus, expand(
        'sum(rate(backstop_ingest_messages_total{result="accepted"}[$__rate_interval]))')) > 0
    # The alert rules evaluate on the same data: three voters, all healthy, nothing firing.
    wait_until(lambda: scalar(prometheus, "backstop:queue_voters_healthy:count") == 3,
               timeout=30, what="recording rules")
    assert scalar(prometheus, "backstop:queue_voters:count") == 3
    assert query(prometheus, 'ALERTS{alertstate="firing"}') == []
    # Every process reports its mTLS certificate, about a year (365 days) away.
    expiry = query(prometheus, 'backstop_tls_certificate_expiry_timestamp_seconds{kind="cluster"}'
                               ' - time()')
    assert len(expiry) == 7
    assert all(360 * 86400 < float(e["value"][1]) <= 365 * 86400 for e in expiry)

    # The preStop hook moves leadership off the leader, and is a no-op on a follower. Like the
    # queue container, it finds the admin certificate through BACKSTOP_TLS_*.
    leader = http_json(f"http://127.0.0.1:{base + 101}/status")["queue"]["leader_id"]
    follower = next(i for i in (1, 2, 3) if i != leader)
    env = dict(os.environ, PATH=f"{os.path.dirname(BACKSTOPCTL_BIN)}:{os.environ['PATH']}",
               BACKSTOP_TLS_CA=str(tls / "ca.crt"), BACKSTOP_TLS_CERT=str(tls / "admin.crt"),
               BACKSTOP_TLS_KEY=str(tls / "admin.key"))
    for node in (follower, leader):
        subprocess.run(["sh", str(DEPLOY / "prestop.sh")], check=True, timeout=30,
                       env=dict(env, BACKSTOP_QUEUE_PORT=str(base + node)))
        if node == follower:
            assert http_json(f"http://127.0.0.1:{base + 100 + leader}/status")["queue"][
                "is_leader"]

    def new_leader():
        view = http_json(f"http://127.0.0.1:{base + 100 + follower}/status")["queue"]
        return view["leader_id"] not in (0, leader) and view["leader_id"]

    wait_until(new_leader, timeout=15, what="leadership handed over by preStop")


def test_local_cluster_runs_plaintext_on_request(tmp_path):
    run = cluster_script(tmp_path, free_port_base(), reserve_port())
    started = run("start", "--plaintext")
    try:
        assert started.returncode == 0, started.stdout + started.stderr
        assert "cluster gRPC:         plaintext" in started.stdout
        assert "--tls-" not in started.stdout
        assert "[cluster_tls]" not in (tmp_path / "cluster/q1/backstop.toml").read_text()
        assert not (tmp_path / "cluster/tls").exists()
        status = run("status")
        assert status.returncode == 0, status.stdout + status.stderr
        assert "voters    1,2,3" in status.stdout
    finally:
        stopped = run("stop")
    assert stopped.returncode == 0, stopped.stderr
    assert run("start", "--bogus").returncode == 2
