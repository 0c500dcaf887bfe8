"""The /metrics page of a running backstop: Prometheus text format 0.0.4 that promtool accepts,
with the series the dashboards rely on moving with real traffic."""

import os
import smtplib
import subprocess

from conftest import REPO
from test_ingest import smtp_address, standalone_with

PROMTOOL = os.environ.get("PROMTOOL", str(REPO / "build/tools/promtool"))


def scrape(node):
    status, content_type, body = node.http_get("/metrics")
    assert status == 200
    return content_type, body.decode()


def series(page):
    values = {}
    for line in page.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            values[name] = float(value)
    return values


def test_metrics_page_is_valid_and_counts_traffic(backstop):
    node = backstop(standalone_with())
    with smtplib.SMTP(*smtp_address(node)) as client:
        for i in range(3):
            assert client.sendmail("s@sender.test", ["alice@example.test"],
                                   b"From: s@sender.test\r\nSubject: %d\r\n\r\nx\r\n" % i) == {}
    content_type, page = scrape(node)
    assert content_type == "text/plain; version=0.0.4; charset=utf-8"
    check = subprocess.run([PROMTOOL, "check", "metrics"], input=page, capture_output=True,
                           text=True, timeout=60)
    assert check.returncode == 0, check.stdout + check.stderr
    values = series(page)
    assert values["backstop_queue_is_leader"] == 1
    assert values["backstop_queue_has_leader"] == 1
    assert values["backstop_queue_applied_index"] >= 3
    assert values["backstop_queue_fsyncs_total"] >= 1
    assert values["backstop_ingest_connections_total"] >= 1
    assert values["backstop_ingest_entries_appended_total"] == 3
    assert 'backstop_delivery_results_total{result="delivered"}' in values
    assert values["process_resident_memory_bytes"] > 1e6
    assert values["process_open_fds"] > 3
    assert values["process_cpu_seconds_total"] > 0
