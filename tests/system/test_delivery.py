"""Delivery end to end: mail accepted by `backstop` over SMTP reaches a real primary (aiosmtpd on
loopback), waits while the primary is down, drains when it returns, and bounces with RFC 3464
DSNs that Python's email package parses."""

import asyncio
import collections
import email
import email.policy
import hashlib
import re
import smtplib
import socket
import subprocess
import threading
import time

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP as AioSMTP

from conftest import LOADGEN_BIN, node_tables, reserve_port, scaled
from test_ingest import ctl, queued_ids, smtp_address


class Primary:
    """The customer's primary MX: records every message; answers per recipient."""

    def __init__(self, port, refuse=(), host="127.0.0.1", tempfail_rcpts=0, data_delay=0):
        self.port = port
        self.host = host
        self.refuse = set(refuse)
        self.tempfail_rcpts = tempfail_rcpts  # the first this many RCPTs get 451
        self.data_delay = data_delay  # seconds between the end of DATA and the reply
        self.rcpt_times = []
        self.messages = []
        self.per_connection = collections.Counter()  # messages by client (address, port)
        self.connections = 0
        self.active = 0  # connections open now
        self.max_active = 0
        self.lock = threading.Lock()
        self.controller = None

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        with self.lock:
            self.rcpt_times.append(time.monotonic())
            if len(self.rcpt_times) <= self.tempfail_rcpts:
                return "451 4.3.0 try again later"
        if address in self.refuse:
            return "550 5.1.1 <%s>: no such user here" % address
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server, session, envelope):
        with self.lock:
            self.messages.append((envelope.mail_from, list(envelope.rcpt_tos),
                                  envelope.original_content))
            self.per_connection[session.peer] += 1
        if self.data_delay:
            await asyncio.sleep(self.data_delay)
        return "250 2.0.0 stored"

    def start(self):
        primary = self

        class CountingSMTP(AioSMTP):
            def connection_made(self, transport):
                with primary.lock:
                    primary.active += 1
                    primary.max_active = max(primary.max_active, primary.active)
                super().connection_made(transport)

            def connection_lost(self, error):
                with primary.lock:
                    primary.active -= 1
                super().connection_lost(error)

        class CountingController(Controller):
            def factory(self):
                with primary.lock:
                    primary.connections += 1
                return CountingSMTP(self.handler, decode_data=False, enable_SMTPUTF8=True)

        self.controller = CountingController(self, hostname=self.host, port=self.port)
        self.controller.start()
        with self.lock:
            self.connections = 0  # Controller.start() connects once to check the server is up
            self.max_active = 0
        return self

    def stop(self):
        if self.controller:
            self.controller.stop()
            self.controller = None

    def wait_for(self, count, timeout=30):
        deadline = time.monotonic() + scaled(timeout)
        while time.monotonic() < deadline:
            with self.lock:
                if len(self.messages) >= count:
                    return list(self.messages)
            time.sleep(0.05)
        with self.lock:
            raise AssertionError(f"{len(self.messages)} of {count} messages arrived")


@pytest.fixture
def primary_port():
    return reserve_port()


class Dnsmasq:
    """dnsmasq on a loopback UDP port, authoritative for *.test with the given records."""

    def __init__(self, *records):
        self.proc = None
        for _ in range(20):
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                s.bind(("127.0.0.1", 0))
                self.port = s.getsockname()[1]
            self.proc = subprocess.Popen(
                ["/usr/sbin/dnsmasq", "--keep-in-foreground", f"--port={self.port}",
                 "--listen-address=127.0.0.1", "--bind-interfaces", "--no-resolv", "--no-hosts",
                 "--conf-file=/dev/null", "--pid-file=", "--user=nobody", "--local=/test/",
                 *records],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            time.sleep(0.2)
            if self.proc.poll() is None:
                return
        raise AssertionError("dnsmasq did not start")

    def stop(self):
        self.proc.terminate()
        self.proc.wait(timeout=10)


@pytest.fixture
def dnsmasq():
    servers = []

    def start(*records):
        server = Dnsmasq(*records)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


def node_config(delivery, domains):
    """One node with every role; `delivery` adds to the [delivery] table, then [dns] and the
    rest may follow it; `domains` is the [[domain]] tables."""
    return node_tables("data", reserve_port()) + f"""
[delivery]
retry_initial = "1s"
retry_max = "2s"
{delivery}
{domains}"""


def mx_config(dns_port, smtp_port, domains, delivery=""):
    """No primaries: every domain is routed by its MX records, served by dnsmasq. `delivery`
    adds to the [delivery] table."""
    return node_config(
        f'smtp_port = {smtp_port}\n{delivery}\n\n[dns]\nservers = ["127.0.0.1:{dns_port}"]',
        "".join(f'\n[[domain]]\nname = "{d}"\n' for d in domains))


def delivery_config(primary_port, lifetime="5d", extra=""):
    return node_config(f'max_queue_lifetime = "{lifetime}"', f"""
[[domain]]
name = "example.test"
primary = ["127.0.0.1:{primary_port}"]

[[domain]]
name = "sender.test"
primary = ["127.0.0.1:{primary_port}"]
{extra}""")


def with_sender_primary(config, primary_port, sender_port):
    """sender.test (where the DSNs go) gets a primary of its own."""
    return config.replace(f'name = "sender.test"\nprimary = ["127.0.0.1:{primary_port}"]',
                          f'name = "sender.test"\nprimary = ["127.0.0.1:{sender_port}"]')


def wait_queue_empty(node, timeout=30):
    deadline = time.monotonic() + scaled(timeout)
    while time.monotonic() < deadline:
        if ctl(node, "queue", "list") == []:
            return
        time.sleep(0.1)
    raise AssertionError(f"queue not empty: {ctl(node, 'queue', 'list')}")


def strip_our_received(raw):
    """The message as the sender sent it: without the first (our) Received: header."""
    assert raw.startswith(b"Received: from ")
    end = raw.index(b"\r\n", raw.index(b";\r\n\t") + 4) + 2
    return raw[end:]


def test_primary_up_gets_the_message_byte_identical(backstop, primary_port):
    primary = Primary(primary_port).start()
    try:
        node = backstop(delivery_config(primary_port))
        body = (b"Subject: relay me\r\nFrom: s@sender.test\r\n\r\n"
                b"first line\r\n.leading dot\r\n" + b"x" * 900 + b"\r\n" * 50)
        with smtplib.SMTP(*smtp_address(node)) as client:
            assert client.sendmail("s@sender.test", ["alice@example.test"], body) == {}
        (mail_from, rcpts, content), = primary.wait_for(1)
        assert mail_from == "s@sender.test"
        assert rcpts == ["alice@example.test"]
        assert hashlib.sha256(strip_our_received(content)).hexdigest() == \
            hashlib.sha256(body).hexdigest()
        wait_queue_empty(node)
        assert any(e.get("msg") == "delivered" for e in node.logs())
        _, _, page = node.http_get("/metrics")
        assert b'backstop_delivery_results_total{result="delivered"} 1\n' in page
        assert b"backstop_delivery_time_in_queue_seconds_count 1\n" in page
    finally:
        primary.stop()


def test_backlog_drains_when_the_primary_returns(backstop, primary_port):
    primary = Primary(primary_port)
    node = backstop(node_config("connections_per_domain = 3", f"""
[[domain]]
name = "example.test"
primary = ["127.0.0.1:{primary_port}"]
"""))
    address = smtp_address(node)
    with smtplib.SMTP(*address) as client:
        for i in range(500):
            assert client.sendmail("s@sender.test", [f"user{i}@example.test"],
                                   b"From: s@sender.test\r\nSubject: %d\r\n\r\nbody %d\r\n"
                                   % (i, i)) == {}
    time.sleep(3)  # the primary stays down through a few retry intervals
    summary = {d["domain"]: d for d in ctl(node, "queue", "summary")["domains"]}
    assert int(summary["example.test"]["queued_messages"]) == 500
    assert summary["example.test"]["down"] is True
    primary.start()
    try:
        messages = primary.wait_for(500, timeout=90)
        wait_queue_empty(node, timeout=60)
        subjects = sorted(email.message_from_bytes(m[2]).get("Subject") for m in messages)
        assert subjects == sorted(str(i) for i in range(500))  # every one, none twice
        # The drain used parallel connections, never more than connections_per_domain at once.
        assert 1 <= primary.max_active <= 3, primary.max_active
    finally:
        primary.stop()
    # While down, the domain cost one probe per retry interval (after the first batches'
    # connections found it down), not one attempt per message.
    failures = [e for e in node.logs() if e.get("msg") == "connection failed"]
    assert len(failures) <= 3 + 10, len(failures)


def test_permanent_failure_of_one_recipient_bounces_only_that_one(backstop, primary_port):
    primary = Primary(primary_port, refuse={"bob@example.test"}).start()
    try:
        node = backstop(delivery_config(primary_port))
        with smtplib.SMTP(*smtp_address(node)) as client:
            client.ehlo("client.test")
            client.mail("s@sender.test", ["ENVID=env1", "RET=HDRS"])
            client.rcpt("alice@example.test")
            client.rcpt("bob@example.test", ["NOTIFY=FAILURE", "ORCPT=rfc822;bob@example.test"])
            code, _ = client.data(b"From: s@sender.test\r\nSubject: mixed\r\n"
                                  b"Message-ID: <m1@sender.test>\r\n\r\nhi\r\n")
            assert code == 250
        messages = primary.wait_for(2)
        delivered = [m for m in messages if m[0] == "s@sender.test"]
        dsns = [m for m in messages if m[0] in ("", "<>")]
        assert [m[1] for m in delivered] == [["alice@example.test"]]
        assert len(dsns) == 1 and dsns[0][1] == ["s@sender.test"]
        report = email.message_from_bytes(dsns[0][2], policy=email.policy.compat32)
        assert report.get_content_type() == "multipart/report"
        assert report.get_param("report-type") == "delivery-status"
        parts = report.get_payload()
        assert parts[1].get_content_type() == "message/delivery-status"
        fields = parts[1].get_payload()
        per_message, per_recipient = fields[0], fields[1:]
        assert per_message["Reporting-MTA"] == "dns; mx2.test"
        assert per_message["Original-Envelope-Id"] == "env1"
        assert len(per_recipient) == 1
        recipient = per_recipient[0]
        assert recipient["Final-Recipient"] == "rfc822; bob@example.test"
        assert recipient["Original-Recipient"].replace(" ", "") == "rfc822;bob@example.test"
        assert recipient["Action"] == "failed"
        assert recipient["Status"] == "5.1.1"
        assert "550 5.1.1" in recipient["Diagnostic-Code"]
        assert parts[2].get_content_type() == "text/rfc822-headers"  # RET=HDRS
        wait_queue_empty(node)
    finally:
        primary.stop()


def test_expired_message_bounces_with_5_4_7_and_null_sender_gets_none(backstop, primary_port):
    # The primary of example.test is down for good; sender.test's DSNs go to a live one.
    sender_primary = Primary(reserve_port()).start()
    try:
        node = backstop(with_sender_primary(delivery_config(primary_port, lifetime="2s"),
                                            primary_port, sender_primary.port))
        with smtplib.SMTP(*smtp_address(node)) as client:
            assert client.sendmail("s@sender.test", ["alice@example.test"],
                                   b"From: s@sender.test\r\nSubject: doomed\r\n\r\nx\r\n") == {}
            assert client.sendmail("<>", ["alice@example.test"],
                                   b"From: s@sender.test\r\n"
                                   b"Subject: bounce of a bounce\r\n\r\nx\r\n") == {}
        (mail_from, rcpts, content), = sender_primary.wait_for(1)
        report = email.message_from_bytes(content, policy=email.policy.compat32)
        recipient = report.get_payload()[1].get_payload()[1]
        assert recipient["Status"] == "5.4.7"
        assert recipient["Action"] == "failed"
        assert rcpts == ["s@sender.test"]
        wait_queue_empty(node)
        time.sleep(1)
        assert len(sender_primary.messages) == 1  # nothing for the <> sender
    finally:
        sender_primary.stop()


def test_required_tls_to_a_primary_without_starttls_stays_queued(backstop, primary_port):
    primary = Primary(primary_port).start()
    try:
        config = delivery_config(primary_port).replace(
            f'name = "example.test"\nprimary = ["127.0.0.1:{primary_port}"]',
            f'name = "example.test"\nprimary = ["127.0.0.1:{primary_port}"]\ntls = "required"')
        node = backstop(config)
        with smtplib.SMTP(*smtp_address(node)) as client:
            assert client.sendmail("s@sender.test", ["alice@example.test"],
                                   b"From: s@sender.test\r\nSubject: secret\r\n\r\nx\r\n") == {}
        node.wait_for_log(lambda e: e.get("msg") == "deferred", what="a deferral")
        assert primary.messages == []
        assert len(ctl(node, "queue", "list")) == 1
    finally:
        primary.stop()


def test_domain_without_primary_is_routed_by_its_mx_records(backstop, primary_port, dnsmasq):
    primary = Primary(primary_port).start()
    try:
        # The better MX has no address: delivery falls through to the next one.
        dns = dnsmasq("--mx-host=example.test,mx1.example.test,20",
                      "--mx-host=example.test,gone.example.test,10",
                      "--host-record=mx1.example.test,127.0.0.1")
        node = backstop(mx_config(dns.port, primary_port, ["example.test"]))
        with smtplib.SMTP(*smtp_address(node)) as client:
            assert client.sendmail("s@sender.test", ["alice@example.test"],
                                   b"From: s@sender.test\r\nSubject: by mx\r\n\r\nx\r\n") == {}
        (mail_from, rcpts, _), = primary.wait_for(1)
        assert (mail_from, rcpts) == ("s@sender.test", ["alice@example.test"])
        wait_queue_empty(node)
        delivered = node.wait_for_log(lambda e: e.get("msg") == "delivered", what="a delivery")
        assert delivered["relay"] == "mx1.example.test"
    finally:
        primary.stop()


def test_our_own_hostname_as_best_mx_stays_queued_without_a_connection(
        backstop, primary_port, dnsmasq):
    primary = Primary(primary_port).start()
    try:
        # We (mx2.test) are the most preferred MX: every other one is a worse backup.
        dns = dnsmasq("--mx-host=example.test,mx2.test,5",
                      "--mx-host=example.test,mx1.example.test,10",
                      "--host-record=mx1.example.test,127.0.0.1",
                      "--host-record=mx2.test,127.0.0.1")
        node = backstop(mx_config(dns.port, primary_port, ["example.test"]))
        with smtplib.SMTP(*smtp_address(node)) as client:
            assert client.sendmail("s@sender.test", ["alice@example.test"],
                                   b"From: s@sender.test\r\nSubject: loop?\r\n\r\nx\r\n") == {}
        node.wait_for_log(lambda e: e.get("msg") == "deferred" and e.get("attempts", 0) >= 2,
                          what="two deferrals")
        assert primary.connections == 0
        assert primary.messages == []
        assert len(ctl(node, "queue", "list")) == 1
        assert not any(e.get("msg") == "connection failed" for e in node.logs())
    finally:
        primary.stop()


def test_dsn_is_routed_by_the_mx_of_the_senders_domain(backstop, primary_port, dnsmasq):
    # example.test's MX refuses the recipient. The sender's domain is not one of ours; its MX
    # listens on 127.0.0.2 (smtp_port is one port for every MX host).
    primary = Primary(primary_port, refuse={"bob@example.test"}).start()
    senders_mx = Primary(primary_port, host="127.0.0.2").start()
    try:
        dns = dnsmasq("--mx-host=example.test,mx1.example.test,10",
                      "--host-record=mx1.example.test,127.0.0.1",
                      "--mx-host=far.test,mx.far.test,10", "--host-record=mx.far.test,127.0.0.2")
        node = backstop(mx_config(dns.port, primary_port, ["example.test"]))
        with smtplib.SMTP(*smtp_address(node)) as client:
            assert client.sendmail("s@far.test", ["bob@example.test"],
                                   b"From: s@sender.test\r\nSubject: refused\r\n\r\nx\r\n") == {}
        (mail_from, rcpts, content), = senders_mx.wait_for(1)
        assert mail_from in ("", "<>")
        assert rcpts == ["s@far.test"]
        report = email.message_from_bytes(content, policy=email.policy.compat32)
        recipient = report.get_payload()[1].get_payload()[1]
        assert recipient["Final-Recipient"] == "rfc822; bob@example.test"
        assert recipient["Status"] == "5.1.1"
        wait_queue_empty(node)
        assert primary.messages == []  # the DSN did not go to example.test's MX
    finally:
        primary.stop()
        senders_mx.stop()


def test_primary_answering_4xx_for_a_while_gets_the_message_once(backstop, primary_port):
    primary = Primary(primary_port, tempfail_rcpts=3).start()
    try:
        node = backstop(delivery_config(primary_port))
        with smtplib.SMTP(*smtp_address(node)) as client:
            assert client.sendmail("s@sender.test", ["alice@example.test"],
                                   b"From: s@sender.test\r\nSubject: patience\r\n\r\nx\r\n") == {}
        (mail_from, rcpts, _), = primary.wait_for(1)
        wait_queue_empty(node)
        time.sleep(2.5)  # longer than retry_max: a second delivery would have come
        assert len(primary.messages) == 1
        assert len(primary.rcpt_times) == 4  # three refusals, then the delivery
        # Each 451 deferred the domain by the retry schedule (1s, then 2s), not a busy loop.
        gaps = [b - a for a, b in zip(primary.rcpt_times, primary.rcpt_times[1:])]
        assert all(gap >= 0.8 for gap in gaps), gaps
        deferrals = [e for e in node.logs() if e.get("msg") == "deferred"]
        assert len(deferrals) == 3
        assert all("451 4.3.0" in e["error"] for e in deferrals)
    finally:
        primary.stop()


def test_backstopctl_queue_flush_makes_a_waiting_domain_due_now(backstop, primary_port):
    primary = Primary(primary_port)
    node = backstop(delivery_config(primary_port).replace('retry_initial = "1s"\nretry_max = "2s"',
                                                          'retry_initial = "1h"\nretry_max = "2h"'))
    with smtplib.SMTP(*smtp_address(node)) as client:
        assert client.sendmail("s@sender.test", ["alice@example.test"],
                               b"From: s@sender.test\r\nSubject: flush me\r\n\r\nx\r\n") == {}
    node.wait_for_log(lambda e: e.get("msg") == "deferred", what="a deferral")
    primary.start()
    try:
        time.sleep(1.5)
        assert primary.messages == []  # waiting for its hour
        ctl(node, "queue", "flush", "example.test")
        primary.wait_for(1, timeout=10)
        wait_queue_empty(node)
    finally:
        primary.stop()


def test_delay_warning_is_sent_once_and_honours_notify(backstop, primary_port):
    # example.test's primary stays down; sender.test's DSNs go to a live one.
    sender_primary = Primary(reserve_port()).start()
    try:
        # One domain per message: a domain that is down leases one probe per interval, and
        # each entry here must be tried.
        down_domains = "".join(
            f'\n[[domain]]\nname = "{name}"\nprimary = ["127.0.0.1:{primary_port}"]\n'
            for name in ("quiet.test", "null.test"))
        config = with_sender_primary(
            delivery_config(primary_port, lifetime="1h", extra=down_domains), primary_port,
            sender_primary.port)
        node = backstop(config.replace('max_queue_lifetime = "1h"',
                                       'max_queue_lifetime = "1h"\ndelay_warning = "2s"'))
        with smtplib.SMTP(*smtp_address(node)) as client:
            assert client.sendmail("s@sender.test", ["alice@example.test"],
                                   b"From: s@sender.test\r\nSubject: slow\r\n\r\nx\r\n") == {}
            assert client.sendmail("t@sender.test", ["bob@quiet.test"],
                                   b"From: s@sender.test\r\nSubject: quiet\r\n\r\nx\r\n",
                                   rcpt_options=["NOTIFY=FAILURE"]) == {}
            assert client.sendmail("<>", ["carol@null.test"],
                                   b"From: s@sender.test\r\nSubject: a bounce\r\n\r\nx\r\n") == {}
        (mail_from, rcpts, content), = sender_primary.wait_for(1)
        assert mail_from in ("", "<>")
        assert rcpts == ["s@sender.test"]
        report = email.message_from_bytes(content, policy=email.policy.compat32)
        assert report.get_content_type() == "multipart/report"
        parts = report.get_payload()
        assert parts[1].get_content_type() == "message/delivery-status"
        recipient = parts[1].get_payload()[1]
        assert recipient["Final-Recipient"] == "rfc822; alice@example.test"
        assert recipient["Action"] == "delayed"
        assert recipient["Status"].startswith("4.")
        assert "Will-Retry-Until" in recipient
        assert parts[2].get_content_type() == "text/rfc822-headers"
        # Several more retries of each later: still that one warning, and the entries wait on.
        for domain in ("example.test", "quiet.test", "null.test"):
            node.wait_for_log(lambda e, d=domain: e.get("msg") == "deferred" and
                              e.get("domain") == d and e.get("attempts", 0) >= 4,
                              timeout=30, what=f"more retries of {domain}")
        time.sleep(0.5)
        assert len(sender_primary.messages) == 1
        warnings = {e["domain"]: e["dsn"] for e in node.logs() if e.get("msg") == "delay warning"}
        assert warnings == {"example.test": True, "quiet.test": False, "null.test": False}
        assert len([e for e in node.logs() if e.get("msg") == "delay warning"]) == 3
        assert len(ctl(node, "queue", "list")) == 3
    finally:
        sender_primary.stop()


def test_etrn_from_the_primary_flushes_its_domain(backstop, primary_port):
    primary = Primary(primary_port)
    config = delivery_config(primary_port).replace(
        'retry_initial = "1s"\nretry_max = "2s"', 'retry_initial = "1h"\nretry_max = "2h"').replace(
        f'name = "sender.test"\nprimary = ["127.0.0.1:{primary_port}"]',
        f'name = "sender.test"\nprimary = ["127.0.0.2:{primary_port}"]')
    node = backstop(config)
    with smtplib.SMTP(*smtp_address(node)) as client:
        assert client.sendmail("s@sender.test", ["alice@example.test"],
                               b"From: s@sender.test\r\nSubject: etrn me\r\n\r\nx\r\n") == {}
    node.wait_for_log(lambda e: e.get("msg") == "deferred", what="a deferral")
    primary.start()
    try:
        time.sleep(1.5)
        assert primary.messages == []  # waiting for its hour
        with smtplib.SMTP(*smtp_address(node)) as client:
            client.ehlo("primary.example.test")
            assert "etrn" in client.esmtp_features
            # We (127.0.0.1) are not sender.test's primary, and other.test is not ours.
            code, text = client.docmd("ETRN", "sender.test")
            assert code == 458, text
            code, text = client.docmd("ETRN", "other.test")
            assert code == 459, text
            assert primary.messages == []
            code, text = client.docmd("ETRN", "@example.test")
            assert code == 250, text
            assert b"example.test" in text
        primary.wait_for(1, timeout=10)
        wait_queue_empty(node)
    finally:
        primary.stop()


def test_slow_primary_outlasting_the_lease_gets_the_message_once(backstop, primary_port):
    # The primary answers the end of DATA after 9 s, past two 4 s leases: the worker extends its
    # lease meanwhile (every 2 s), so the entry is not leased (and delivered) a second time.
    primary = Primary(primary_port, data_delay=9).start()
    try:
        node = backstop(delivery_config(primary_port).replace(
            "[delivery]\n", '[delivery]\nlease_duration = "4s"\n'))
        with smtplib.SMTP(*smtp_address(node)) as client:
            assert client.sendmail("s@sender.test", ["alice@example.test"],
                                   b"From: s@sender.test\r\nSubject: slow\r\n\r\nx\r\n") == {}
        primary.wait_for(1)
        wait_queue_empty(node, timeout=30)
        time.sleep(4.5)  # longer than a lease: a second delivery would have begun
        assert len(primary.messages) == 1
        assert primary.connections == 1
        assert not any(e.get("msg") == "leases expired before they were extended"
                       for e in node.logs())
        assert len([e for e in node.logs() if e.get("msg") == "delivered"]) == 1
    finally:
        primary.stop()


def test_every_entry_of_a_down_domain_gets_one_delay_warning(backstop, primary_port, dnsmasq):
    # example.test's MX (127.0.0.1) stays down; the senders' domain far.test has a live MX on
    # 127.0.0.2 that receives the warnings.
    senders_mx = Primary(primary_port, host="127.0.0.2").start()
    try:
        dns = dnsmasq("--mx-host=example.test,mx1.example.test,10",
                      "--host-record=mx1.example.test,127.0.0.1",
                      "--mx-host=far.test,mx.far.test,10", "--host-record=mx.far.test,127.0.0.2")
        config = mx_config(dns.port, primary_port, ["example.test"],
                           'delay_warning = "2s"\nconnections_per_domain = 1')
        node = backstop(config.replace('retry_initial = "1s"\nretry_max = "2s"',
                                       'retry_initial = "3s"\nretry_max = "3s"'))
        started = time.monotonic()
        count = 20
        with smtplib.SMTP(*smtp_address(node)) as client:
            for i in range(count):
                assert client.sendmail(f"s{i}@far.test", [f"user{i}@example.test"],
                                       b"From: s@sender.test\r\nSubject: waiting %d\r\n\r\nx\r\n" % i) == {}
        warnings = senders_mx.wait_for(count, timeout=30)
        time.sleep(4)  # past another retry: no entry is warned twice
        elapsed = time.monotonic() - started
        assert len(senders_mx.messages) == count
        warned = set()
        for mail_from, rcpts, content in warnings:
            assert mail_from in ("", "<>")
            (rcpt,) = rcpts
            report = email.message_from_bytes(content, policy=email.policy.compat32)
            assert report.get_content_type() == "multipart/report"
            parts = report.get_payload()
            recipient = parts[1].get_payload()[1]
            assert recipient["Action"] == "delayed"
            assert recipient["Status"].startswith("4.")
            i = int(rcpt.split("@")[0][1:])
            assert recipient["Final-Recipient"] == f"rfc822; user{i}@example.test"
            warned.add(i)
        assert warned == set(range(count))
        assert len([e for e in node.logs() if e.get("msg") == "delay warning"]) == count
        assert len(ctl(node, "queue", "list")) == count  # all still waiting for the primary
        # Connection attempts follow the retry schedule (one probe per 3 s once down, after the
        # batches leased before the first failure), not the backlog or the warnings.
        failures = [e for e in node.logs() if e.get("msg") == "connection failed"]
        assert len(failures) <= 4 + elapsed / 3 + 1, (len(failures), elapsed)
    finally:
        senders_mx.stop()


def test_connection_cap_holds_across_lease_batches(backstop, primary_port):
    # 1,200 entries: three lease batches of at most 512. Every batch's job shares the domain's 3
    # connections with the others, and each connection carries at most 100 messages, so the
    # later batches drain in parallel too instead of queueing behind one connection.
    primary = Primary(primary_port)
    config = node_config("connections_per_domain = 3", f"""
[[domain]]
name = "example.test"
primary = ["127.0.0.1:{primary_port}"]
""")
    node = backstop(config)
    queue_port = re.search(r'\[queue\]\nlisten = "127.0.0.1:(\d+)"', config).group(1)
    count = 1200
    subprocess.run([LOADGEN_BIN, "--endpoints", f"127.0.0.1:{queue_port}", "--messages",
                    str(count), "--batch", "100", "--concurrency", "4", "--size", "512",
                    "--domain", "example.test"], check=True, capture_output=True, timeout=120)
    node.wait_for_log(lambda e: e.get("msg") == "connection failed", what="the primary down")
    primary.start()
    try:
        ctl(node, "queue", "flush", "example.test")
        messages = primary.wait_for(count, timeout=120)
        wait_queue_empty(node, timeout=60)
        subjects = [email.message_from_bytes(m[2]).get("Subject") for m in messages]
        assert sorted(subjects) == sorted(str(i) for i in range(count))  # each one, once
        assert primary.max_active == 3, primary.max_active
        assert max(primary.per_connection.values()) <= 100, primary.per_connection
        assert len(primary.per_connection) >= count // 100
    finally:
        primary.stop()


def parse_delays(entry):
    """The four parts of a log line's Postfix-like `delays` ("a/b/c/d", two decimals each)."""
    parts = entry["delays"].split("/")
    assert len(parts) == 4 and all(re.fullmatch(r"\d+\.\d\d", p) for p in parts), entry
    return [float(p) for p in parts]


def test_log_lines_carry_postfix_like_delay_fields(backstop, primary_port):
    primary = Primary(primary_port, data_delay=0.5)  # down at first; slow to take the data
    node = backstop(delivery_config(primary_port))
    with smtplib.SMTP(*smtp_address(node)) as client:
        _, reply = client.ehlo("client.test")
        client.mail("s@sender.test")
        client.rcpt("alice@example.test")
        code, reply = client.data(b"From: s@sender.test\r\nSubject: delays\r\n\r\nx\r\n")
        assert code == 250
    (message_id,) = queued_ids(reply.decode())
    received = node.wait_for_log(lambda e: e.get("msg") == "received", what="the reception")
    assert received["ids"] == message_id
    assert 0 <= received["delay"] < 30  # end of data → the 250
    deferred = node.wait_for_log(lambda e: e.get("msg") == "deferred", what="a deferral")
    assert deferred["id"] == message_id
    assert abs(sum(parse_delays(deferred)) - deferred["delay"]) <= 0.03, deferred
    primary.start()
    try:
        primary.wait_for(1)
        delivered = node.wait_for_log(lambda e: e.get("msg") == "delivered", what="a delivery")
    finally:
        primary.stop()
    assert delivered["id"] == message_id
    a, b, c, d = parse_delays(delivered)
    assert abs(a + b + c + d - delivered["delay"]) <= 0.03, delivered
    # It waited in the queue through at least one retry interval (1 s) before this attempt.
    assert b >= 0.9, delivered
    assert d >= 0.45, delivered  # the transmission: MAIL → the (delayed) reply to the data
