"""A real Prometheus server scraping a running 3-voter cluster (plus an ingest process): the
series dashboards and alerts are built on are there, non-empty, with the values they must have."""

import json
import os
import smtplib
import subprocess
import time
import urllib.parse
import urllib.request

import pytest

from conftest import REPO, reserve_port
from test_ingest import smtp_address
from test_queue_cluster import leader_of, queue_config, wait_until

PROMETHEUS = os.environ.get(
    "PROMETHEUS", str(REPO / "build/tools/prometheus-deb/root/usr/bin/prometheus"))


def ingest_config(queue_ports):
    endpoints = ", ".join(f'"127.0.0.1:{port}"' for port in queue_ports.values())
    return f"""
[node]
id = 11
hostname = "mx2.test"
data_dir = "data"
roles = ["ingest"]

[smtp]
listen = ["127.0.0.1:0"]

[queue]
endpoints = [{endpoints}]

[http]
listen = "127.0.0.1:0"

[[domain]]
name = "example.test"
primary = ["127.0.0.1:9"]
"""


@pytest.fixture
def prometheus(tmp_path):
    servers = []

    def start(targets):
        port = reserve_port()
        config = tmp_path / "prometheus.yml"
        config.write_text(json.dumps({
            "global": {"scrape_interval": "1s", "scrape_timeout": "1s"},
            "scrape_configs": [{"job_name": "backstop",
                                "static_configs": [{"targets": targets}]}],
        }))
        log = open(tmp_path / "prometheus.log", "wb")
        proc = subprocess.Popen(
            [PROMETHEUS, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
             f"--web.listen-address=127.0.0.1:{port}"], stdout=log, stderr=subprocess.STDOUT)
        servers.append(proc)
        return f"http://127.0.0.1:{port}"

    yield start
    for proc in servers:
        proc.terminate()
        proc.wait(timeout=30)


def query(base, expression):
    url = f"{base}/api/v1/query?" + urllib.parse.urlencode({"query": expression})
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            body = json.loads(response.read())
    except OSError:
        return None
    assert body["status"] == "success", body
    return body["data"]["result"]


def scalar(base, expression):
    result = query(base, expression)
    return float(result[0]["value"][1]) if result else None


def test_prometheus_scrapes_a_three_voter_cluster(backstop, tmp_path, prometheus):
    ports = {i: reserve_port() for i in (1, 2, 3)}
    voters = {i: backstop(config_text=queue_config(i, tmp_path / f"data{i}", ports))
              for i in ports}
    wait_until(lambda: leader_of(voters), what="a leader")
    ingest = backstop(config_text=ingest_config(ports))
    with smtplib.SMTP(*smtp_address(ingest)) as client:
        for i in range(5):
            assert client.sendmail("s@sender.test", [f"u{i}@example.test"],
                                   b"From: s@sender.test\r\nSubject: %d\r\n\r\nbody\r\n" % i) == {}

    nodes = list(voters.values()) + [ingest]
    base = prometheus([node.http_address for node in nodes])

    # Every target up, exactly one leader, the five messages queued (every voter holds the
    # replicated state, so each reports them).
    wait_until(lambda: scalar(base, "sum(up)") == 4, timeout=60, what="four targets up")
    wait_until(lambda: scalar(base, "sum(backstop_queue_is_leader)") == 1, timeout=30,
               what="one leader")
    assert scalar(base, "min(backstop_queue_has_leader)") == 1
    wait_until(lambda: scalar(base, "max(backstop_queue_messages)") == 5, timeout=30,
               what="the queue depth")
    assert scalar(base, "min(backstop_queue_messages)") == 5
    assert scalar(base, 'sum(backstop_ingest_messages_total{result="accepted"})') == 5
    # Histograms answer quantile queries; gRPC series carry the methods ingest used.
    assert scalar(base, "histogram_quantile(0.99, sum by (le) "
                        "(backstop_queue_fsync_duration_seconds_bucket))") > 0
    assert scalar(base, "sum(backstop_ingest_commit_duration_seconds_count)") == 5
    assert scalar(base, 'sum(grpc_server_handled_total{grpc_method="Append",grpc_code="OK"})') >= 1
    raft = query(base, 'grpc_server_started_total{grpc_service="backstop.raft.wire.RaftPeer"}')
    assert raft, "no RaftPeer RPCs counted"
    assert scalar(base, "count(process_resident_memory_bytes)") == 4
