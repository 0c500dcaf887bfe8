"""The /metrics page of a running backstop: Prometheus text format 0.0.4 that promtool accepts,
with the series the dashboards rely on moving with real traffic."""

import os
import smtplib
import subprocess
import time

from conftest import REPO
from test_delivery import Primary, dnsmasq, mx_config, primary_port, wait_queue_empty  # noqa: F401
from test_ingest import smtp_address, standalone_with

PROMTOOL = os.environ.get("PROMTOOL", str(REPO / "build/tools/promtool"))


def promtool_check(page):
    check = subprocess.run([PROMTOOL, "check", "metrics"], input=page, capture_output=True,
                           text=True, timeout=60)
    assert check.returncode == 0, check.stdout + check.stderr


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
        client.mail("s@sender.test")
        for victim in ("a@elsewhere.test", "b@elsewhere.test"):
            assert client.rcpt(victim)[0] == 554
        client.rset()
    # Mail may arrive before the configured domains are seeded into the queue; the seeding
    # must still configure them (their per-domain series exist only for configured domains).
    node.wait_for_log(lambda e: e.get("msg") == "configured domains are in the queue",
                      what="domain seeding")
    content_type, page = scrape(node)
    assert content_type == "text/plain; version=0.0.4; charset=utf-8"
    promtool_check(page)
    values = series(page)
    assert values["backstop_queue_is_leader"] == 1
    assert values["backstop_queue_has_leader"] == 1
    assert values["backstop_queue_applied_index"] >= 3
    assert values["backstop_queue_fsyncs_total"] >= 1
    assert values["backstop_ingest_connections_total"] >= 1
    assert values["backstop_ingest_entries_appended_total"] == 3
    assert 'backstop_delivery_results_total{result="delivered"}' in values
    assert values['backstop_filter_results_total{filter="relay",reason="relay_denied",'
                  'result="reject",stage="rcpt"}'] == 2
    # Ingest: outcomes, sizes and the commit latency of the three accepted messages.
    assert values['backstop_ingest_messages_total{result="accepted"}'] == 3
    assert values["backstop_ingest_recipients_total"] == 3
    assert values["backstop_ingest_message_size_bytes_count"] == 3
    assert values["backstop_ingest_commit_duration_seconds_count"] == 3
    assert values["backstop_ingest_commit_duration_seconds_sum"] > 0
    # Queue: Raft latencies, depth (nothing delivered yet: open.test's primary is down),
    # per configured domain, RocksDB health, gRPC server series.
    assert values["backstop_queue_fsync_duration_seconds_count"] >= 1
    assert values["backstop_queue_commit_duration_seconds_count"] >= 3
    assert values["backstop_queue_messages"] == 3
    assert values["backstop_queue_bytes"] > 0
    assert values['backstop_queue_domain_messages{domain="example.test"}'] == 3
    assert values["backstop_queue_oldest_message_age_seconds"] >= 0
    # Present and never negative (a lease may be in flight at the scrape, so not exactly 0).
    assert values["backstop_queue_proposals_pending"] in range(0, 4)
    assert values["backstop_queue_leases_expired_total"] == 0
    assert values['backstop_rocksdb_background_errors{db="log"}'] == 0
    assert values['backstop_rocksdb_write_stopped{db="state"}'] == 0
    append = ('grpc_method="Append",grpc_service="backstop.queue.QueueService",'
              'grpc_type="unary"')
    assert values['grpc_server_handled_total{grpc_code="OK",' + append + '}'] >= 1
    assert values['grpc_server_handling_seconds_count{' + append + '}'] >= 1
    assert values["process_resident_memory_bytes"] > 1e6
    assert values["process_open_fds"] > 3
    assert values["process_cpu_seconds_total"] > 0


def test_delivery_series_count_attempts_replies_and_dns(backstop, primary_port, dnsmasq):
    # example.test's MX is the recording primary; down.test's MX has an address where nothing
    # listens (connection refused).
    primary = Primary(primary_port).start()
    try:
        dns = dnsmasq("--mx-host=example.test,mx1.example.test,10",
                      "--host-record=mx1.example.test,127.0.0.1",
                      "--mx-host=down.test,mx1.down.test,10",
                      "--host-record=mx1.down.test,127.0.0.3")
        node = backstop(mx_config(dns.port, primary_port, ["example.test", "down.test"]))
        with smtplib.SMTP(*smtp_address(node)) as client:
            for i in range(2):
                assert client.sendmail("s@sender.test", ["alice@example.test"],
                                       b"From: s@sender.test\r\nSubject: %d\r\n\r\nx\r\n"
                                       % i) == {}
            assert client.sendmail("s@sender.test", ["carol@down.test"],
                                   b"From: s@sender.test\r\nSubject: down\r\n\r\nx\r\n") == {}
        primary.wait_for(2)
        deadline = time.monotonic() + 30
        while True:  # the completions reach the counters just after the primary's reply
            _, page = scrape(node)
            values = series(page)
            if (values.get('backstop_delivery_results_total{result="delivered"}') == 2 and
                    values.get('backstop_delivery_results_total{result="deferred"}', 0) >= 1):
                break
            assert time.monotonic() < deadline, page
            time.sleep(0.1)
    finally:
        primary.stop()
    promtool_check(page)
    assert values['backstop_delivery_results_total{result="delivered"}'] == 2
    assert values['backstop_delivery_results_total{result="deferred"}'] >= 1
    # One observation per message attempt: setup (when it opened the connection) + transaction.
    assert values['backstop_delivery_attempt_duration_seconds_count{result="delivered"}'] == 2
    assert values['backstop_delivery_attempt_duration_seconds_sum{result="delivered"}'] > 0
    assert values['backstop_delivery_attempt_duration_seconds_count{result="deferred"}'] >= 1
    assert values['backstop_delivery_primary_replies_total{class="2xx",stage="greeting"}'] >= 1
    assert values['backstop_delivery_primary_replies_total{class="2xx",stage="ehlo"}'] >= 1
    assert values['backstop_delivery_primary_replies_total{class="3xx",stage="data"}'] == 2
    assert values['backstop_delivery_primary_replies_total{class="2xx",stage="data_end"}'] == 2
    assert values['backstop_delivery_primary_replies_total{class="none",stage="connect"}'] >= 1
    assert values['backstop_delivery_dns_lookups_total{result="ok",type="mx"}'] >= 2
    assert values['backstop_delivery_dns_lookups_total{result="ok",type="address"}'] >= 2
    assert values["backstop_delivery_connections_total"] >= 1
    assert values["backstop_delivery_connection_failures_total"] >= 1
    assert values["backstop_delivery_connections_active"] >= 0


def test_status_of_a_standalone_node_has_its_depth_build_and_no_peers(backstop):
    node = backstop(standalone_with())
    with smtplib.SMTP(*smtp_address(node)) as client:
        for i in range(2):
            assert client.sendmail("s@sender.test", ["alice@example.test"],
                                   b"From: s@sender.test\r\nSubject: %d\r\n\r\nx\r\n" % i) == {}
    status = node.status()
    assert status["hostname"] == "mx2.test"
    assert status["roles"] == ["ingest", "queue", "delivery"]
    assert status["build"]["version"] and status["build"]["compiler"]
    queue = status["queue"]
    assert queue["state"] == "leader" and queue["voters"] == [1] and queue["peers"] == []
    assert queue["lag"] == 0 and queue["leader_contact_seconds"] == 0
    assert queue["depth"]["messages"] == 2
    assert queue["depth"]["domains"] >= 1
    assert queue["depth"]["oldest_message_age_seconds"] >= 0
    assert status["ingest"]["entries_appended"] == 2
