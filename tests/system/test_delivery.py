"""Delivery end to end: mail accepted by `backstop` over SMTP reaches a real primary (aiosmtpd on
loopback), waits while the primary is down, drains when it returns, and bounces with RFC 3464
DSNs that Python's email package parses."""

import email
import email.policy
import hashlib
import smtplib
import threading
import time

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP as AioSMTP

from conftest import reserve_port
from test_ingest import ctl, queued_ids, smtp_address


class Primary:
    """The customer's primary MX: records every message; answers per recipient."""

    def __init__(self, port, refuse=()):
        self.port = port
        self.refuse = set(refuse)
        self.messages = []
        self.connections = 0
        self.lock = threading.Lock()
        self.controller = None

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        if address in self.refuse:
            return "550 5.1.1 <%s>: no such user here" % address
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server, session, envelope):
        with self.lock:
            self.messages.append((envelope.mail_from, list(envelope.rcpt_tos),
                                  envelope.original_content))
        return "250 2.0.0 stored"

    def start(self):
        primary = self

        class CountingController(Controller):
            def factory(self):
                with primary.lock:
                    primary.connections += 1
                return AioSMTP(self.handler, decode_data=False, enable_SMTPUTF8=True)

        self.controller = CountingController(self, hostname="127.0.0.1", port=self.port)
        self.controller.start()
        return self

    def stop(self):
        if self.controller:
            self.controller.stop()
            self.controller = None

    def wait_for(self, count, timeout=30):
        deadline = time.monotonic() + timeout
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


def delivery_config(primary_port, lifetime="5d", extra=""):
    queue_port = reserve_port()
    return f"""
[node]
id = 1
hostname = "mx2.test"
data_dir = "data"
roles = ["ingest", "queue", "delivery"]

[smtp]
listen = ["127.0.0.1:0"]

[queue]
listen = "127.0.0.1:{queue_port}"
peers = ["1@127.0.0.1:{queue_port}"]

[delivery]
retry_initial = "1s"
retry_max = "2s"
max_queue_lifetime = "{lifetime}"

[http]
listen = "127.0.0.1:0"

[[domain]]
name = "example.test"
primary = ["127.0.0.1:{primary_port}"]

[[domain]]
name = "sender.test"
primary = ["127.0.0.1:{primary_port}"]
{extra}
"""


def wait_queue_empty(node, timeout=30):
    deadline = time.monotonic() + timeout
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
    finally:
        primary.stop()


def test_backlog_drains_when_the_primary_returns(backstop, primary_port):
    primary = Primary(primary_port)
    node = backstop(delivery_config(primary_port))
    address = smtp_address(node)
    with smtplib.SMTP(*address) as client:
        for i in range(200):
            assert client.sendmail("s@sender.test", [f"user{i}@example.test"],
                                   b"Subject: %d\r\n\r\nbody %d\r\n" % (i, i)) == {}
    time.sleep(3)  # the primary stays down through a few retry intervals
    summary = {d["domain"]: d for d in ctl(node, "queue", "summary")["domains"]}
    assert int(summary["example.test"]["queued_messages"]) == 200
    assert summary["example.test"]["down"] is True
    primary.start()
    try:
        messages = primary.wait_for(200, timeout=60)
        wait_queue_empty(node)
        subjects = sorted(email.message_from_bytes(m[2]).get("Subject") for m in messages)
        assert subjects == sorted(str(i) for i in range(200))  # every one, none twice
    finally:
        primary.stop()
    # While down, the domain cost one probe per retry interval (after the first batch's
    # connections_per_domain = 8 attempts found it down), not one attempt per message.
    failures = [e for e in node.logs() if e.get("msg") == "connection failed"]
    assert len(failures) <= 8 + 10, len(failures)


def test_permanent_failure_of_one_recipient_bounces_only_that_one(backstop, primary_port):
    primary = Primary(primary_port, refuse={"bob@example.test"}).start()
    try:
        node = backstop(delivery_config(primary_port))
        with smtplib.SMTP(*smtp_address(node)) as client:
            client.ehlo("client.test")
            client.mail("s@sender.test", ["ENVID=env1", "RET=HDRS"])
            client.rcpt("alice@example.test")
            client.rcpt("bob@example.test", ["NOTIFY=FAILURE", "ORCPT=rfc822;bob@example.test"])
            code, _ = client.data(b"Subject: mixed\r\nMessage-ID: <m1@sender.test>\r\n\r\nhi\r\n")
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
        config = delivery_config(primary_port, lifetime="2s").replace(
            f'name = "sender.test"\nprimary = ["127.0.0.1:{primary_port}"]',
            f'name = "sender.test"\nprimary = ["127.0.0.1:{sender_primary.port}"]')
        node = backstop(config)
        with smtplib.SMTP(*smtp_address(node)) as client:
            assert client.sendmail("s@sender.test", ["alice@example.test"],
                                   b"Subject: doomed\r\n\r\nx\r\n") == {}
            assert client.sendmail("<>", ["alice@example.test"],
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
                                   b"Subject: secret\r\n\r\nx\r\n") == {}
        node.wait_for_log(lambda e: e.get("msg") == "deferred", what="a deferral")
        assert primary.messages == []
        assert len(ctl(node, "queue", "list")) == 1
    finally:
        primary.stop()
