"""SMTP ingest end to end: real clients (smtplib, swaks, openssl s_client, raw sockets) against
real `backstop` processes; what they send is read back from the queue with backstopctl."""

import asyncio
import json
import os
import re
import signal
import smtplib
import socket
import struct
import subprocess
import time

import pytest

from conftest import REPO, reserve_port, standalone_config

BACKSTOPCTL_BIN = os.environ.get("BACKSTOPCTL_BIN",
                                 str(REPO / "build/release/cmd/backstopctl/backstopctl"))

OPEN_DOMAIN = """
[[domain]]
name = "open.test"
primary = ["127.0.0.1:2526"]
"""


def smtp_address(process):
    entry = process.wait_for_log(lambda e: e.get("msg") == "smtp listening", what="smtp listening")
    host, port = entry["address"].rsplit(":", 1)
    return host, int(port)


def queue_port(process):
    return int(re.search(r'listen = "127\.0\.0\.1:(\d+)"',
                         process.config_path.read_text()).group(1))


def ctl(process, *args):
    result = subprocess.run(
        [BACKSTOPCTL_BIN, "--endpoint", f"127.0.0.1:{queue_port(process)}", "-o", "json", *args],
        capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def queued_ids(reply_text):
    match = re.search(r"queued as ([0-9a-f,]+)", reply_text)
    assert match, reply_text
    return match.group(1).split(",")


def standalone_with(extra="", smtp_extra=""):
    """A standalone config with an extra [[domain]] / [smtp] keys (data dir relative)."""
    text = standalone_config("data", reserve_port(), OPEN_DOMAIN + extra)
    if smtp_extra:
        text = text.replace('[smtp]\nlisten = ["127.0.0.1:0"]',
                            '[smtp]\nlisten = ["127.0.0.1:0"]\n' + smtp_extra)
    return text


class RawClient:
    """A line-oriented SMTP client on a plain socket, for what smtplib will not send."""

    def __init__(self, address, timeout=10):
        self.sock = socket.create_connection(address, timeout=timeout)
        self.buffer = b""

    def send(self, data):
        self.sock.sendall(data)

    def reply(self):
        lines = []
        while True:
            while b"\r\n" not in self.buffer:
                chunk = self.sock.recv(65536)
                if not chunk:
                    return b"".join(lines).decode()
                self.buffer += chunk
            line, self.buffer = self.buffer.split(b"\r\n", 1)
            lines.append(line + b"\r\n")
            if len(line) >= 4 and line[3:4] == b" ":
                return b"".join(lines).decode()

    def closed(self):
        try:
            return self.sock.recv(1) == b""
        except ConnectionResetError:
            return True

    def close(self):
        self.sock.close()


def test_message_is_queued_with_its_envelope_and_bytes(backstop):
    node = backstop(standalone_with())
    address = smtp_address(node)
    body = ("Subject: hello\r\nFrom: sender@sender.test\r\n\r\n"
            "line one\r\n.starts with a dot\r\n")
    with smtplib.SMTP(*address) as client:
        code, _ = client.ehlo("client.test")
        assert code == 250
        assert client.has_extn("pipelining") and client.has_extn("chunking")
        assert client.has_extn("8bitmime") and client.has_extn("smtputf8")
        assert client.has_extn("dsn") and client.has_extn("enhancedstatuscodes")
        assert client.has_extn("size")
        client.mail("sender@sender.test", ["RET=HDRS", "ENVID=env+2Did"])
        assert client.rcpt("alice@example.test", ["NOTIFY=SUCCESS,FAILURE",
                                                  "ORCPT=rfc822;alice@example.test"])[0] == 250
        assert client.rcpt("Bob@EXAMPLE.test")[0] == 250
        code, text = client.data(body.encode())
        assert code == 250, text
        ids = queued_ids(text.decode())
    assert len(ids) == 1
    shown = ctl(node, "queue", "show", ids[0], "--message")
    entry = shown["entry"]
    envelope = entry["envelope"]
    assert entry["domain"] == "example.test"
    assert envelope["reverse_path"] == "sender@sender.test"
    assert envelope["ret"] == "RET_HDRS"
    assert envelope["envid"] == "env-id"
    assert [r["address"] for r in envelope["recipients"]] == ["alice@example.test",
                                                              "Bob@EXAMPLE.test"]
    assert envelope["recipients"][0]["notify"] == ["NOTIFY_SUCCESS", "NOTIFY_FAILURE"]
    assert envelope["recipients"][0]["orcpt"] == "rfc822;alice@example.test"
    assert envelope["client_ip"] == "127.0.0.1"
    assert envelope["helo"] == "client.test"
    message = shown["message"]
    assert message.startswith("Received: from client.test ([127.0.0.1])\r\n")
    assert f"by mx2.test (Backstop) with ESMTP id {ids[0]}" in message
    # Dot-unstuffed by the server; smtplib stuffed the leading dot on the way.
    assert message.endswith("\r\n\r\nline one\r\n.starts with a dot\r\n")


def test_recipients_of_two_domains_make_two_entries(backstop):
    node = backstop(standalone_with())
    with smtplib.SMTP(*smtp_address(node)) as client:
        refused = client.sendmail("s@sender.test", ["alice@example.test", "x@open.test"],
                                  b"From: s@sender.test\r\nSubject: two\r\n\r\nbody\r\n")
        assert refused == {}
    entries = ctl(node, "queue", "list")
    assert sorted(e["domain"] for e in entries) == ["example.test", "open.test"]
    by_domain = {e["domain"]: e for e in entries}
    assert [r["address"] for r in by_domain["open.test"]["envelope"]["recipients"]] == [
        "x@open.test"]
    assert by_domain["example.test"]["id"] != by_domain["open.test"]["id"]


def test_relay_control_and_unknown_users(backstop):
    node = backstop(standalone_with())
    with smtplib.SMTP(*smtp_address(node)) as client:
        client.ehlo("client.test")
        client.mail("s@sender.test")
        code, text = client.rcpt("victim@elsewhere.test")
        assert (code, text[:5]) == (554, b"5.7.1")
        code, text = client.rcpt("victim%elsewhere.test@open.test")
        assert (code, text[:5]) == (554, b"5.7.1")
        code, text = client.rcpt("user@[127.0.0.1]")
        assert code == 554
        code, text = client.rcpt("mallory@example.test")
        assert (code, text[:5]) == (550, b"5.1.1")
        assert client.rcpt("postmaster@example.test")[0] == 250
        assert client.rcpt("alice@example.test.")[0] == 250
    assert ctl(node, "queue", "list") == []


def test_smtputf8_and_8bitmime(backstop):
    node = backstop(standalone_with())
    body = "Subject: caf\u00e9\r\nFrom: j\u00f6rg@sender.test\r\n\r\nna\u00efve\r\n".encode()
    with smtplib.SMTP(*smtp_address(node)) as client:
        client.ehlo("client.test")
        assert client.mail("j\u00f6rg@sender.test", ["SMTPUTF8", "BODY=8BITMIME"])[0] == 250
        assert client.rcpt("\u00fcser@open.test")[0] == 250
        code, text = client.data(body)
        assert code == 250, text
        entry_id = queued_ids(text.decode())[0]
    shown = ctl(node, "queue", "show", entry_id, "--message")
    envelope = shown["entry"]["envelope"]
    assert envelope["smtputf8"] is True
    assert envelope["body"] == "BODY_8BITMIME"
    assert envelope["reverse_path"] == "j\u00f6rg@sender.test"
    assert "with UTF8SMTP id" in shown["message"]
    assert shown["message"].endswith("na\u00efve\r\n")


def test_utf8_address_without_smtputf8_is_refused(backstop):
    node = backstop(standalone_with())
    client = RawClient(smtp_address(node))
    assert client.reply().startswith("220")
    client.send(b"EHLO c\r\n")
    assert client.reply().startswith("250")
    client.send("MAIL FROM:<j\u00f6rg@sender.test>\r\n".encode())
    assert client.reply().startswith("553 5.6.7")


def test_bdat_chunks_sent_by_hand(backstop):
    node = backstop(standalone_with())
    client = RawClient(smtp_address(node))
    assert client.reply().startswith("220")
    client.send(b"EHLO c\r\nMAIL FROM:<s@sender.test>\r\nRCPT TO:<alice@example.test>\r\n")
    assert client.reply().startswith("250")
    assert client.reply().startswith("250 2.1.0")
    assert client.reply().startswith("250 2.1.5")
    part1 = b"From: s@sender.test\r\nSubject: chunked\r\n\r\nfirst half, "
    part2 = b"second half\r\n.not stuffed\r\n"
    client.send(b"BDAT %d\r\n" % len(part1) + part1)
    assert client.reply().startswith("250")
    client.send(b"BDAT %d LAST\r\n" % len(part2) + part2)
    reply = client.reply()
    assert reply.startswith("250 2.0.0"), reply
    shown = ctl(node, "queue", "show", queued_ids(reply)[0], "--message")
    assert shown["message"].endswith("\r\n\r\nfirst half, second half\r\n.not stuffed\r\n")


def test_smuggled_end_of_data_is_not_an_end(backstop):
    node = backstop(standalone_with())
    client = RawClient(smtp_address(node))
    assert client.reply().startswith("220")
    client.send(b"EHLO c\r\nMAIL FROM:<s@sender.test>\r\nRCPT TO:<alice@example.test>\r\nDATA\r\n")
    for _ in range(3):
        assert client.reply().startswith("250")
    assert client.reply().startswith("354")
    # A bare-LF "end" followed by a smuggled second transaction: one message, refused whole.
    client.send(b"Subject: x\r\n\r\nbody\n.\nMAIL FROM:<evil@sender.test>\r\n"
                b"RCPT TO:<bob@example.test>\r\nDATA\r\nsmuggled\r\n.\r\n")
    reply = client.reply()
    assert reply.startswith("554 5.6.0") or reply.startswith("550 5.6.0"), reply
    client.send(b"NOOP\r\n")
    assert client.reply().startswith("250")
    assert ctl(node, "queue", "list") == []


def test_hop_count_limit(backstop):
    node = backstop(standalone_with(smtp_extra="max_received_headers = 5"))
    hops = b"".join(b"Received: from hop%d by relay; Sat, 28 Nov 2026 00:00:00 +0000\r\n" % i
                    for i in range(5))
    with smtplib.SMTP(*smtp_address(node)) as client:
        with pytest.raises(smtplib.SMTPDataError) as error:
            client.sendmail("s@sender.test", ["alice@example.test"],
                            hops + b"From: s@sender.test\r\nSubject: loop\r\n\r\nbody\r\n")
        assert error.value.smtp_code == 554
        assert error.value.smtp_error.startswith(b"5.4.6")
        # One hop fewer is fine.
        assert client.sendmail("s@sender.test", ["alice@example.test"],
                               hops[hops.index(b"\r\n") + 2:]
                               + b"From: s@sender.test\r\nSubject: ok\r\n\r\nbody\r\n") == {}


def test_domain_over_its_queued_limit_gets_452(backstop):
    extra = """
[[domain]]
name = "tiny.test"
primary = ["127.0.0.1:2526"]
max_queued_messages = 1
"""
    node = backstop(standalone_with(extra))
    # The leader creates the configured domains (with their limits) through the log just
    # after it starts: wait for that before testing a limit.
    deadline = time.monotonic() + 20
    while not any(d["domain"] == "tiny.test" and d.get("configured")
                  for d in ctl(node, "queue", "summary").get("domains", [])):
        assert time.monotonic() < deadline, "tiny.test was never created"
        time.sleep(0.05)
    with smtplib.SMTP(*smtp_address(node)) as client:
        assert client.sendmail("s@sender.test", ["a@tiny.test"],
                               b"From: s@sender.test\r\nSubject: 1\r\n\r\nx\r\n") == {}
        with pytest.raises(smtplib.SMTPDataError) as error:
            client.sendmail("s@sender.test", ["a@tiny.test"],
                            b"From: s@sender.test\r\nSubject: 2\r\n\r\nx\r\n")
        assert error.value.smtp_code == 452
        assert error.value.smtp_error.startswith(b"4.3.1")
    assert len(ctl(node, "queue", "list")) == 1


def test_unreachable_queue_gets_451(backstop, tmp_path):
    dead_port = reserve_port()
    config = f"""
[node]
id = 7
hostname = "mx2.test"
data_dir = "data"
roles = ["ingest"]

[smtp]
listen = ["127.0.0.1:0"]
commit_timeout = "2s"

[queue]
listen = "127.0.0.1:{reserve_port()}"
peers = ["1@127.0.0.1:{dead_port}"]
endpoints = ["127.0.0.1:{dead_port}"]

[http]
listen = "127.0.0.1:0"

[[domain]]
name = "example.test"
primary = ["127.0.0.1:2526"]
"""
    node = backstop(config)
    with smtplib.SMTP(*smtp_address(node)) as client:
        with pytest.raises(smtplib.SMTPDataError) as error:
            client.sendmail("s@sender.test", ["a@example.test"],
                            b"From: s@sender.test\r\nSubject: 1\r\n\r\nx\r\n")
        assert error.value.smtp_code == 451
        assert error.value.smtp_error.startswith(b"4.3.0")


def test_swaks_with_pipelining(backstop):
    node = backstop(standalone_with())
    host, port = smtp_address(node)
    result = subprocess.run(
        ["swaks", "--server", host, "--port", str(port), "--pipeline", "--from",
         "s@sender.test", "--to", "alice@example.test,x@open.test", "--helo", "swaks.test",
         "--body", "piped"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "<** " not in result.stdout
    assert re.search(r"<-\s+250 2\.0\.0 Ok: queued as", result.stdout), result.stdout
    assert sorted(e["domain"] for e in ctl(node, "queue", "list")) == ["example.test", "open.test"]


def make_certificate(directory):
    """A test CA and a server certificate for mx2.test signed by it (openssl CLI)."""
    ca_key, ca_cert = directory / "ca.key", directory / "ca.pem"
    key, csr, cert = directory / "mx.key", directory / "mx.csr", directory / "mx.pem"
    run = lambda *args: subprocess.run(args, check=True, capture_output=True, timeout=60)
    run("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", ca_key, "-out",
        ca_cert, "-days", "2", "-subj", "/CN=Backstop Test CA")
    run("openssl", "req", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", csr, "-subj",
        "/CN=mx2.test")
    ext = directory / "ext.cnf"
    ext.write_text("subjectAltName=DNS:mx2.test\n")
    run("openssl", "x509", "-req", "-in", csr, "-CA", ca_cert, "-CAkey", ca_key,
        "-CAcreateserial", "-out", cert, "-days", "2", "-extfile", ext)
    return ca_cert, cert, key


def tls_config(tmp_path, extra_smtp=""):
    ca, cert, key = make_certificate(tmp_path)
    return ca, cert, standalone_with(smtp_extra=f'tls_cert = "{cert}"\ntls_key = "{key}"\n'
                                     + extra_smtp)


def test_starttls_with_swaks_and_a_test_ca(backstop, tmp_path):
    ca, _, config = tls_config(tmp_path)
    node = backstop(config)
    host, port = smtp_address(node)
    result = subprocess.run(
        ["swaks", "--server", host, "--port", str(port), "--tls", "--tls-verify",
         "--tls-ca-path", str(ca), "--tls-protocol", "tlsv1_3", "--from", "s@sender.test",
         "--to", "alice@example.test", "--helo", "swaks.test", "--body", "secret",
         "--tls-sni", "mx2.test"],
        capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "TLS started" in result.stdout
    entry = ctl(node, "queue", "list")[0]
    shown = ctl(node, "queue", "show", entry["id"], "--message")
    assert "(using TLSv1.3 with cipher " in shown["message"]
    assert "with ESMTPS id" in shown["message"]


def test_starttls_tls12_with_openssl_s_client(backstop, tmp_path):
    ca, _, config = tls_config(tmp_path)
    node = backstop(config)
    host, port = smtp_address(node)
    script = (b"EHLO c\r\nMAIL FROM:<s@sender.test>\r\nRCPT TO:<alice@example.test>\r\n"
              b"DATA\r\nFrom: s@sender.test\r\nSubject: tls12\r\n\r\nhello\r\n.\r\nQUIT\r\n")
    result = subprocess.run(
        ["openssl", "s_client", "-starttls", "smtp", "-connect", f"{host}:{port}", "-tls1_2",
         "-CAfile", str(ca), "-verify_return_error", "-servername", "mx2.test", "-ign_eof"],
        input=script, capture_output=True, timeout=60)
    out = result.stdout.decode(errors="replace")
    assert "Verify return code: 0 (ok)" in out, out + result.stderr.decode()
    assert "Protocol  : TLSv1.2" in out or "TLSv1.2" in out
    assert re.search(r"250 2\.0\.0 Ok: queued as", out), out


def test_commands_pipelined_after_starttls_are_discarded(backstop, tmp_path):
    import ssl
    ca, _, config = tls_config(tmp_path)
    node = backstop(config)
    client = RawClient(smtp_address(node))
    assert client.reply().startswith("220")
    client.send(b"EHLO c\r\n")
    assert "STARTTLS" in client.reply()
    # The injected MAIL/RCPT must not survive into the TLS session.
    client.send(b"STARTTLS\r\nMAIL FROM:<evil@sender.test>\r\nRCPT TO:<alice@example.test>\r\n")
    assert client.reply().startswith("220")
    context = ssl.create_default_context(cafile=str(ca))
    tls = context.wrap_socket(client.sock, server_hostname="mx2.test")
    tls.sendall(b"EHLO c\r\n")
    data = b""
    while not re.search(rb"^250 ", data, re.M):
        data += tls.recv(4096)
    assert b"STARTTLS" not in data  # not offered again inside TLS
    tls.sendall(b"RCPT TO:<alice@example.test>\r\n")
    data = tls.recv(4096)
    assert data.startswith(b"503"), data  # no MAIL in this session: the injected one was dropped
    tls.close()


def proxy_v2_header(source, source_port, dest, dest_port):
    addresses = socket.inet_aton(source) + socket.inet_aton(dest) + struct.pack(
        "!HH", source_port, dest_port)
    return (b"\r\n\r\n\x00\r\nQUIT\n" + bytes([0x21, 0x11]) + struct.pack("!H", len(addresses))
            + addresses)


@pytest.mark.parametrize("version", [1, 2])
def test_proxy_protocol_from_a_trusted_proxy(backstop, version):
    node = backstop(standalone_with(
        smtp_extra='proxy_protocol = true\ntrusted_proxies = ["127.0.0.0/8"]'))
    host, port = smtp_address(node)
    result = subprocess.run(
        ["swaks", "--server", host, "--port", str(port), "--proxy-version", str(version),
         "--proxy-source", "203.0.113.7", "--proxy-source-port", "40000", "--proxy-dest",
         "192.0.2.25", "--proxy-dest-port", "25", "--proxy-family", "TCP4" if version == 1 else "AF_INET", "--from",
         "s@sender.test", "--to", "alice@example.test", "--helo", "proxied.test"],
        capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    entry = ctl(node, "queue", "list")[0]
    assert entry["envelope"]["client_ip"] == "203.0.113.7"
    shown = ctl(node, "queue", "show", entry["id"], "--message")
    assert "[203.0.113.7]" in shown["message"].split("\r\n")[0]


def test_proxy_v2_header_by_hand(backstop):
    node = backstop(standalone_with(
        smtp_extra='proxy_protocol = true\ntrusted_proxies = ["127.0.0.1"]'))
    client = RawClient(smtp_address(node))
    client.send(proxy_v2_header("198.51.100.4", 1234, "192.0.2.25", 25) + b"EHLO c\r\n")
    assert client.reply().startswith("220")
    assert client.reply().startswith("250")
    client.send(b"MAIL FROM:<s@sender.test>\r\nRCPT TO:<alice@example.test>\r\nDATA\r\n")
    assert client.reply().startswith("250")
    assert client.reply().startswith("250")
    assert client.reply().startswith("354")
    client.send(b"From: s@sender.test\r\nSubject: p\r\n\r\nx\r\n.\r\n")
    assert client.reply().startswith("250 2.0.0")
    assert ctl(node, "queue", "list")[0]["envelope"]["client_ip"] == "198.51.100.4"


def test_a_thousand_concurrent_connections(backstop):
    node = backstop(standalone_with(smtp_extra="max_connections_per_ip = 2000"))
    host, port = smtp_address(node)

    async def session(index, barrier):
        reader, writer = await asyncio.open_connection(host, port, limit=1 << 16)
        assert (await reader.readline()).startswith(b"220")
        await barrier.wait()  # every connection is open at once
        writer.write(b"EHLO c\r\nMAIL FROM:<s@sender.test>\r\nRCPT TO:<x%d@open.test>\r\nDATA\r\n"
                     % index)
        replies = []
        while len(replies) < 4:
            line = await reader.readline()
            if line[3:4] == b" ":
                replies.append(line)
        assert replies[-1].startswith(b"354"), replies
        writer.write(b"From: s@sender.test\r\nSubject: %d\r\n\r\nbody\r\n.\r\nQUIT\r\n" % index)
        final = await reader.readline()
        writer.close()
        return final

    async def main():
        barrier = asyncio.Barrier(1000)
        return await asyncio.gather(*(session(i, barrier) for i in range(1000)))

    if not hasattr(asyncio, "Barrier"):  # Python < 3.11 (Debian 12 has 3.11)
        pytest.fail("asyncio.Barrier is required")
    finals = asyncio.run(asyncio.wait_for(main(), timeout=120))
    assert all(f.startswith(b"250 2.0.0") for f in finals), [f for f in finals if
                                                              not f.startswith(b"250")][:3]
    assert len(ctl(node, "queue", "list", "--domain", "open.test")) == 1000


def test_dribbling_client_gets_421_while_others_are_served(backstop):
    node = backstop(standalone_with(smtp_extra='command_timeout = "2s"'))
    address = smtp_address(node)
    slow = RawClient(address)
    assert slow.reply().startswith("220")
    started = time.monotonic()
    got = ""
    for byte in b"EHLO slowloris.test\r\n":
        slow.send(bytes([byte]))
        time.sleep(0.5)
        # Meanwhile an ordinary client is served at once.
        with smtplib.SMTP(*address, timeout=5) as fast:
            assert fast.noop()[0] == 250
        slow.sock.setblocking(False)
        try:
            got += slow.sock.recv(4096).decode()
        except BlockingIOError:
            pass
        slow.sock.setblocking(True)
        if got:
            break
    assert got.startswith("421 4.4.2"), got
    assert time.monotonic() - started < 6
    assert slow.closed()


def test_sigterm_drains_sessions_with_421(backstop):
    node = backstop(standalone_with())
    client = RawClient(smtp_address(node))
    assert client.reply().startswith("220")
    client.send(b"EHLO c\r\n")
    assert client.reply().startswith("250")
    node.signal(signal.SIGTERM)
    assert client.reply().startswith("421 4.3.2")
    assert client.closed()
    assert node.wait_exit() == 0


def test_sighup_reloads_the_tls_certificate(backstop, tmp_path):
    ca, cert, config = tls_config(tmp_path)
    node = backstop(config)
    host, port = smtp_address(node)

    def served_subject():
        result = subprocess.run(
            ["openssl", "s_client", "-starttls", "smtp", "-connect", f"{host}:{port}",
             "-servername", "mx2.test"], input=b"QUIT\r\n", capture_output=True, timeout=60)
        match = re.search(rb"subject=.*CN ?= ?([\w.-]+)", result.stdout)
        assert match, result.stdout.decode(errors="replace")
        return match.group(1).decode()

    assert served_subject() == "mx2.test"
    # Renew: a new key and certificate with another name, written over the same files.
    key = tmp_path / "mx.key"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout",
                    str(key), "-out", str(cert), "-days", "2", "-subj", "/CN=renewed.mx2.test"],
                   check=True, capture_output=True, timeout=60)
    node.signal(signal.SIGHUP)
    node.wait_for_log(lambda e: e.get("msg") == "configuration reloaded", what="the reload")
    assert served_subject() == "renewed.mx2.test"
    # A broken file on the next reload keeps the renewed certificate in service.
    cert.write_text("not a certificate\n")
    node.signal(signal.SIGHUP)
    node.wait_for_log(lambda e: e.get("msg", "").startswith("TLS certificate reload failed"),
                      what="the failed reload")
    assert served_subject() == "renewed.mx2.test"
