"""backstop-loadgen (bench/smtp_loadgen.cc) against a standalone backstop: its JSON report must
agree with what the queue holds — every 250 it counted is a queued message."""

import json
import re
import subprocess

from conftest import SMTP_LOADGEN_BIN, reserve_port, standalone_config
from test_ingest import ctl


def shown_message(process, entry_id):
    """`backstopctl queue show --message` output (JSON text) for one queued entry."""
    return json.dumps(ctl(process, "queue", "show", "--message", entry_id))


def load_domain():
    """load.test, whose primary is a port where nothing listens: everything stays queued."""
    return f'\n[[domain]]\nname = "load.test"\nprimary = ["127.0.0.1:{reserve_port()}"]\n'


def test_every_accepted_message_is_queued(backstop, tmp_path):
    queue_port = reserve_port()
    process = backstop(standalone_config(tmp_path / "data", queue_port, load_domain()))
    address = process.wait_for_log(lambda e: e.get("msg") == "smtp listening",
                                   what="smtp listening")["address"]

    result = subprocess.run(
        [SMTP_LOADGEN_BIN, "--json", "--sessions", "4", "--messages", "200", "--size", "2KiB",
         "--pipelining", "on", "--domain", "load.test", address],
        capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)

    assert report["messages"] == 200
    assert report["pipelining"] is True
    assert report["replies"] == {"2xx": 200, "4xx": 0, "5xx": 0, "errors": 0}
    assert report["accepted"] == 200
    assert report["connections"] == 200  # one connection per message by default
    assert report["connection_errors"] == 0
    assert report["msg_per_s"] > 0
    assert report["bytes_per_s"] >= report["msg_per_s"] * 2000
    latency = report["latency_ms"]["data_end_to_reply"]
    assert latency["count"] == 200
    assert 0 < latency["p50"] <= latency["p90"] <= latency["p99"] <= latency["p99.9"] \
        <= latency["max"]
    assert report["latency_ms"]["connect_to_greeting"]["count"] == 200

    summary = {d["domain"]: d for d in ctl(process, "queue", "summary")["domains"]}
    assert int(summary["load.test"]["queued_messages"]) == report["accepted"]

    # The messages are the loadgen's, each numbered once.
    entries = ctl(process, "queue", "list", "--domain", "load.test")
    assert len(entries) == 200
    seqs = set()
    for entry in entries[:20]:
        shown = shown_message(process, entry["id"])
        match = re.search(r"X-Loadgen-Seq: (\d+)", shown)
        assert match, shown[:500]
        seqs.add(int(match.group(1)))
    assert len(seqs) == 20 and all(1 <= seq <= 200 for seq in seqs)


def test_starttls_without_pipelining_reusing_connections(backstop, tmp_path):
    key, cert = tmp_path / "mx.key", tmp_path / "mx.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", key,
                    "-out", cert, "-days", "2", "-subj", "/CN=mx2.test"],
                   check=True, capture_output=True, timeout=60)
    queue_port = reserve_port()
    config = standalone_config(tmp_path / "data", queue_port, load_domain()).replace(
        '[smtp]\nlisten = ["127.0.0.1:0"]',
        f'[smtp]\nlisten = ["127.0.0.1:0"]\ntls_cert = "{cert}"\ntls_key = "{key}"')
    process = backstop(config)
    address = process.wait_for_log(lambda e: e.get("msg") == "smtp listening",
                                   what="smtp listening")["address"]

    result = subprocess.run(
        [SMTP_LOADGEN_BIN, "--json", "--sessions", "2", "--messages", "40", "--starttls",
         "--pipelining", "off", "--messages-per-connection", "5", "--size-mix", "1KiB:1,40KiB:1",
         "--domain", "load.test", address],
        capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)

    assert report["starttls"] is True and report["pipelining"] is False
    assert report["replies"] == {"2xx": 40, "4xx": 0, "5xx": 0, "errors": 0}
    # 5 messages a connection, fewer at the end when the other session took what was left.
    assert 8 <= report["connections"] <= 9
    assert report["latency_ms"]["data_end_to_reply"]["count"] == 40
    summary = {d["domain"]: d for d in ctl(process, "queue", "summary")["domains"]}
    assert int(summary["load.test"]["queued_messages"]) == 40
    # The server's Received: field says the message came over TLS.
    entry = ctl(process, "queue", "list", "--domain", "load.test")[0]
    shown = shown_message(process, entry["id"])
    assert "ESMTPS" in shown, shown[:800]
