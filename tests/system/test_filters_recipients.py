"""Recipient validation and header checks end to end (issue #7): the callout to an aiosmtpd
primary that knows two users (and what happens once it is down), recipient lists read from a
file and reloaded on SIGHUP, and the RFC 5322 header checks at the end of DATA."""

import signal
import smtplib
import threading

import pytest
from aiosmtpd.controller import Controller

from conftest import reserve_port, standalone_config
from test_ingest import ctl, queued_ids, smtp_address

# The sender check (DNS) is not what these tests are about.
FILTERS = """
[filters]
sender = { enabled = false }
"""

MESSAGE = b"From: s@sender.test\r\nSubject: hello\r\n\r\nbody\r\n"


class KnowingPrimary:
    """A primary that knows some users: 250 for them, 550 5.1.1 for anyone else."""

    def __init__(self, port, users):
        self.port = port
        self.users = set(users)
        self.probes = []
        self.lock = threading.Lock()
        self.controller = None

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        with self.lock:
            self.probes.append(address)
        if address not in self.users:
            return "550 5.1.1 <%s>: no such user here" % address
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server, session, envelope):
        return "250 2.0.0 stored"

    def start(self):
        self.controller = Controller(self, hostname="127.0.0.1", port=self.port)
        self.controller.start()
        return self

    def stop(self):
        if self.controller:
            self.controller.stop()
            self.controller = None


@pytest.fixture
def primary():
    started = KnowingPrimary(reserve_port(), ["alice@callout.test", "bob@callout.test"]).start()
    yield started
    started.stop()


def rcpt_reply(address, recipient):
    """(code, text) of RCPT TO:<recipient> in a fresh transaction."""
    with smtplib.SMTP(*address) as client:
        client.ehlo("client.test")
        assert client.mail("s@sender.test")[0] == 250
        code, text = client.rcpt(recipient)
        return code, text.decode()


def test_callout_asks_the_primary_and_keeps_refusing_cached_unknown_users_when_it_is_down(
        backstop, primary):
    node = backstop(standalone_config("data", reserve_port(), f"""
[[domain]]
name = "callout.test"
primary = ["127.0.0.1:{primary.port}"]
recipient_callout = true
{FILTERS}
callout = {{ timeout = "5s", positive_ttl = "1h", negative_ttl = "1h" }}
"""))
    address = smtp_address(node)
    assert rcpt_reply(address, "alice@callout.test")[0] == 250
    code, text = rcpt_reply(address, "mallory@callout.test")
    assert code == 550 and text.startswith("5.1.1"), text
    assert primary.probes == ["alice@callout.test", "mallory@callout.test"]
    # A second question about a known user is answered from the cache.
    assert rcpt_reply(address, "Alice@callout.test")[0] == 250
    assert len(primary.probes) == 2

    primary.stop()
    # The primary is down: what the cache knows still counts ...
    code, text = rcpt_reply(address, "mallory@callout.test")
    assert code == 550 and text.startswith("5.1.1"), text
    # ... and anyone else is accepted and queued: the backup case.
    with smtplib.SMTP(*address) as client:
        client.ehlo("client.test")
        assert client.mail("s@sender.test")[0] == 250
        assert client.rcpt("newcomer@callout.test")[0] == 250
        code, text = client.data(MESSAGE)
        assert code == 250, text
        entry_id = queued_ids(text.decode())[0]
    entry = ctl(node, "queue", "show", entry_id)["entry"]
    assert entry["domain"] == "callout.test"
    assert [r["address"] for r in entry["envelope"]["recipients"]] == ["newcomer@callout.test"]
    # Postmaster is never probed nor refused.
    assert rcpt_reply(address, "postmaster@callout.test")[0] == 250


def test_recipients_file_is_read_at_startup_and_on_sighup(backstop, tmp_path):
    recipients = tmp_path / "listed.recipients"
    recipients.write_text("# the staff\nalice\nBob@listed.test\n\n")
    node = backstop(standalone_config("data", reserve_port(), f"""
[[domain]]
name = "listed.test"
primary = ["127.0.0.1:2526"]
recipients = ["dave"]
recipients_file = "{recipients}"
{FILTERS}
"""))
    address = smtp_address(node)
    assert rcpt_reply(address, "alice@listed.test")[0] == 250
    assert rcpt_reply(address, "bob@listed.test")[0] == 250
    assert rcpt_reply(address, "dave@listed.test")[0] == 250
    code, text = rcpt_reply(address, "carol@listed.test")
    assert code == 550 and text.startswith("5.1.1"), text

    # Bob leaves, Carol arrives.
    recipients.write_text("alice\ncarol\n")
    node.signal(signal.SIGHUP)
    node.wait_for_log(lambda e: e.get("msg") == "configuration reloaded", what="the reload")
    assert rcpt_reply(address, "carol@listed.test")[0] == 250
    assert rcpt_reply(address, "bob@listed.test")[0] == 550

    # A file that cannot be read on a reload keeps the list in force.
    recipients.unlink()
    node.signal(signal.SIGHUP)
    node.wait_for_log(lambda e: e.get("msg") == "recipients file not reloaded",
                      what="the failed recipients file reload")
    assert rcpt_reply(address, "carol@listed.test")[0] == 250
    assert rcpt_reply(address, "bob@listed.test")[0] == 550


def test_an_unreadable_recipients_file_stops_the_start(backstop, tmp_path):
    node = backstop(standalone_config("data", reserve_port(), f"""
[[domain]]
name = "listed.test"
primary = ["127.0.0.1:2526"]
recipients_file = "{tmp_path / 'missing'}"
"""), wait=False)
    assert node.wait_exit() != 0
    assert "recipients_file" in node.stderr_path.read_text()


@pytest.fixture
def header_node(backstop):
    return backstop(standalone_config("data", reserve_port(), FILTERS + """
headers = { enabled = true, max_size = "2KiB" }
"""))


def data_reply(node, message, mail_options=()):
    """(code, text) of DATA for `message` to alice@example.test."""
    with smtplib.SMTP(*smtp_address(node)) as client:
        client.ehlo("client.test")
        assert client.mail("s@sender.test", list(mail_options))[0] == 250
        assert client.rcpt("alice@example.test")[0] == 250
        code, text = client.data(message)
        return code, text.decode()


@pytest.mark.parametrize("message, explanation", [
    (b"From: a@sender.test\r\nFrom: b@sender.test\r\n\r\nx\r\n", "more than one From: header"),
    (b"Subject: no sender\r\n\r\nx\r\n", "no From: header"),
    (b"From: a@sender.test\r\nSubject: one\r\nSubject: two\r\n\r\nx\r\n",
     "more than one Subject: header"),
    (b"From: Alice\r\n\r\nx\r\n", "no valid address in the From: header"),
    (b"From: a@sender.test\r\n" + b"X-Filler: %s\r\n" % (b"y" * 80) * 30 + b"\r\nx\r\n",
     "header section larger than 2048 octets"),
], ids=["two_from", "no_from", "two_subjects", "bad_from", "too_large"])
def test_header_checks_refuse_broken_headers_with_554(header_node, message, explanation):
    code, text = data_reply(header_node, message)
    assert code == 554, text
    assert text == f"5.6.0 Message header rejected: {explanation}"


def test_eight_bit_headers_need_smtputf8(header_node):
    message = "From: j\u00f6rg@sender.test\r\nSubject: caf\u00e9\r\n\r\nx\r\n".encode()
    code, text = data_reply(header_node, message, ["BODY=8BITMIME"])
    assert code == 554 and text.startswith("5.6.0"), text
    code, text = data_reply(header_node, message, ["SMTPUTF8", "BODY=8BITMIME"])
    assert code == 250, text


def test_a_well_formed_message_passes_the_header_checks(header_node):
    code, text = data_reply(header_node, MESSAGE)
    assert code == 250, text
