"""The process lifecycle: start, admin port, reload, drain, configuration checks."""

import signal

import pytest

from conftest import REPO, reserve_port, run_backstop, standalone_config
from test_ingest import RawClient, smtp_address, standalone_with


def test_livez_answers_ok(backstop):
    node = backstop()
    status, content_type, body = node.http_get("/livez")
    assert status == 200
    assert content_type.startswith("text/plain")
    assert body == b"ok\n"


def test_unknown_admin_path_is_404(backstop):
    node = backstop()
    status, _, _ = node.http_get("/no-such-page")
    assert status == 404


def test_sigterm_drains_and_exits_zero(backstop):
    node = backstop()
    node.signal(signal.SIGTERM)
    assert node.wait_exit() == 0
    messages = [entry["msg"] for entry in node.logs()]
    assert "draining" in messages
    assert messages[-1] == "stopped"


def test_sigint_also_exits_zero(backstop):
    node = backstop()
    node.signal(signal.SIGINT)
    assert node.wait_exit() == 0


def test_every_log_line_is_json_with_the_common_fields(backstop):
    node = backstop()
    node.signal(signal.SIGTERM)
    node.wait_exit()
    entries = node.logs()
    assert entries
    for entry in entries:
        assert {"ts", "level", "component", "msg"} <= entry.keys()
        assert entry["ts"].endswith("Z")
    start = next(e for e in entries if e["msg"] == "backstop starting")
    assert start["node_id"] == 1
    assert start["roles"] == "ingest,queue,delivery"


def test_sighup_reloads_a_changed_configuration(backstop):
    node = backstop()
    text = node.config_path.read_text()
    node.config_path.write_text(text + '\n[[domain]]\nname = "second.test"\nrecipients = ["x"]\n')
    node.signal(signal.SIGHUP)
    reloaded = node.wait_for_log(lambda e: e.get("msg") == "configuration reloaded",
                                 what="'configuration reloaded'")
    assert reloaded["domains"] == 2
    assert node.http_get("/livez")[0] == 200


def test_sighup_changes_the_relay_domains_without_dropping_a_session(backstop):
    node = backstop(standalone_with())
    client = RawClient(smtp_address(node))
    assert client.reply().startswith("220")
    client.send(b"EHLO c\r\nMAIL FROM:<s@sender.test>\r\n")
    assert client.reply().startswith("250")
    assert client.reply().startswith("250")
    client.send(b"RCPT TO:<x@second.test>\r\n")
    assert client.reply().startswith("554 5.7.1")

    node.config_path.write_text(
        node.config_path.read_text() + '\n[[domain]]\nname = "second.test"\nrecipients = ["x"]\n')
    node.signal(signal.SIGHUP)
    node.wait_for_log(lambda e: e.get("msg") == "configuration reloaded",
                      what="'configuration reloaded'")
    # The same connection, opened before the reload, now sees the new relay domain.
    client.send(b"RCPT TO:<x@second.test>\r\n")
    assert client.reply().startswith("250")
    client.send(b"RCPT TO:<y@second.test>\r\n")
    assert client.reply().startswith("550 5.1.1")
    client.send(b"DATA\r\n")
    assert client.reply().startswith("354")
    client.send(b"From: s@sender.test\r\nSubject: after reload\r\n\r\nbody\r\n.\r\n")
    assert client.reply().startswith("250 2.0.0")
    client.close()


def test_sigterm_during_a_transaction_lets_it_finish(backstop):
    node = backstop(standalone_with())
    client = RawClient(smtp_address(node))
    assert client.reply().startswith("220")
    client.send(b"EHLO c\r\nMAIL FROM:<s@sender.test>\r\nRCPT TO:<a@open.test>\r\nDATA\r\n")
    for expected in ("250", "250", "250", "354"):
        assert client.reply().startswith(expected)
    client.send(b"From: s@sender.test\r\nSubject: in flight\r\n\r\nfirst half\r\n")
    node.signal(signal.SIGTERM)
    node.wait_for_log(lambda e: "drain" in e.get("msg", ""), what="the drain to start")
    client.send(b"second half\r\n.\r\n")
    accepted = client.reply()
    assert accepted.startswith("250 2.0.0"), accepted
    # Then the session ends at its next command, and the process exits cleanly.
    client.send(b"MAIL FROM:<s@sender.test>\r\n")
    assert client.reply().startswith("421 4.3.2")
    assert node.wait_exit() == 0


def test_sighup_with_a_broken_file_keeps_running(backstop):
    node = backstop()
    node.config_path.write_text(node.config_path.read_text() + "\n[smtp]\nbogus_key = 1\n")
    node.signal(signal.SIGHUP)
    failure = node.wait_for_log(lambda e: e.get("msg", "").startswith("configuration reload failed"),
                                what="a reload failure")
    assert failure["level"] == "error"
    assert node.proc.poll() is None
    assert node.http_get("/livez")[0] == 200


def test_role_flag_overrides_the_configured_roles(backstop):
    node = backstop(args=["--role", "queue"])
    start = node.wait_for_log(lambda e: e.get("msg") == "backstop starting")
    assert start["roles"] == "queue"


def test_role_flag_is_validated_like_the_file(backstop):
    # Without the queue role the node must be told where the queue is.
    node = backstop(args=["--role", "ingest,delivery"], wait=False)
    assert node.wait_exit() == 2
    assert "queue.endpoints: is empty but this node has no queue role" in (
        node.stderr_path.read_text())


def test_unknown_role_flag_is_refused(backstop):
    node = backstop(args=["--role", "ingest,mailer"], wait=False)
    assert node.wait_exit() == 2
    assert 'unknown role "mailer"' in node.stderr_path.read_text()


def test_invalid_configuration_at_start_exits_nonzero(backstop, tmp_path):
    config = standalone_config(tmp_path / "data", reserve_port(), extra="[smtp]\nlisten = 7\n")
    node = backstop(config_text=config, wait=False)
    assert node.wait_exit() == 2
    assert "smtp" in node.stderr_path.read_text()


def test_occupied_admin_port_is_a_clear_startup_error(backstop, tmp_path):
    first = backstop()
    config = standalone_config(tmp_path / "data2", reserve_port()).replace(
        '[http]\nlisten = "127.0.0.1:0"', f'[http]\nlisten = "{first.http_address}"')
    second = backstop(config_text=config, wait=False)
    assert second.wait_exit() == 1
    assert f"cannot listen on {first.http_address}" in second.stderr_path.read_text()


def test_check_config_names_a_misspelt_key_and_its_line(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text('[node]\nid = 1\n\n[smtp]\nlisten = ["127.0.0.1:2525"]\nmax_mesage_size = "10MiB"\n')
    result = run_backstop("--check-config", str(path))
    assert result.returncode != 0
    assert f"{path}:6:" in result.stderr
    assert "smtp.max_mesage_size" in result.stderr
    assert "unknown key" in result.stderr


def test_check_config_accepts_the_standalone_example():
    result = run_backstop("--check-config", str(REPO / "examples/standalone.toml"))
    assert result.returncode == 0, result.stderr
    assert "ingest" in result.stdout and "queue" in result.stdout


def test_version_prints_the_version():
    result = run_backstop("--version")
    assert result.returncode == 0
    assert result.stdout.startswith("backstop 0.")
