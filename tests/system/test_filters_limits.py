"""Greylisting and limits end to end (issue #7): greylisting across two ingest processes that
share one queue, the directory-harvest tarpit, the daily sessions of a domain, the per-IP
connection rate and a domain's queued-message quota."""

import smtplib
import time

from conftest import reserve_port, standalone_config
from test_ingest import RawClient, ctl, smtp_address

GREYLIST_DELAY = 3  # seconds, the delay of the greylisting test


def config_with(filters="", smtp_extra="", domains="", queue_port=None, primary_port=None):
    """The standalone configuration (all roles, one voter) with extra keys. Its domain's primary
    is a port nobody listens on, so nothing queued drains while a test looks."""
    text = standalone_config("data", queue_port or reserve_port(), domains)
    text = text.replace("127.0.0.1:2526", f"127.0.0.1:{primary_port or reserve_port()}")
    if smtp_extra:
        text = text.replace('[smtp]\nlisten = ["127.0.0.1:0"]',
                            '[smtp]\nlisten = ["127.0.0.1:0"]\n' + smtp_extra)
    if filters:
        text += "\n[filters]\n" + filters + "\n"
    return text


def ingest_only_config(queue_port, filters):
    """A second process with the ingest role alone, reaching the first one's voter."""
    return f"""
[node]
id = 2
hostname = "mx3.test"
data_dir = "data"
roles = ["ingest"]

[smtp]
listen = ["127.0.0.1:0"]

[queue]
listen = "127.0.0.1:{reserve_port()}"
peers = ["1@127.0.0.1:{queue_port}"]
endpoints = ["127.0.0.1:{queue_port}"]

[http]
listen = "127.0.0.1:0"

[[domain]]
name = "example.test"
primary = ["127.0.0.1:{reserve_port()}"]
recipients = ["alice", "bob"]

[filters]
{filters}
"""


def wait_for_domain(node, domain, timeout=20.0):
    """The leader creates the configured domains (with their limits) through the log just after
    it starts: limits apply from then on."""
    deadline = time.monotonic() + timeout
    while not any(d["domain"] == domain and d.get("configured")
                  for d in ctl(node, "queue", "summary").get("domains", [])):
        assert time.monotonic() < deadline, f"{domain} was never created"
        time.sleep(0.05)


def rcpt(address, sender, recipient):
    """(code, enhanced code + text) of one RCPT in a fresh session; the session is then quit."""
    with smtplib.SMTP(*address) as client:
        client.ehlo("client.test")
        code, _ = client.mail(sender)
        assert code == 250
        code, text = client.rcpt(recipient)
        return code, text.decode()


# --- Greylisting --------------------------------------------------------------------------------

def test_greylisting_is_shared_by_two_ingest_processes(backstop):
    filters = (f'greylist = {{ enabled = true, delay = "{GREYLIST_DELAY}s", '
               'retry_window = "1h", auto_allow_after = 1 }')
    queue_port = reserve_port()
    first = backstop(config_with(filters, queue_port=queue_port))
    second = backstop(ingest_only_config(queue_port, filters))
    address_a, address_b = smtp_address(first), smtp_address(second)

    code, text = rcpt(address_a, "s@sender.test", "alice@example.test")
    # The queue saw the triplet first before this moment.
    first_seen_by = time.monotonic()
    assert (code, text[:5]) == (451, "4.7.1"), text
    assert "try again in" in text
    # An early retry, on the other process: still too soon, and it does not restart the delay.
    code, text = rcpt(address_b, "S@Sender.TEST", "alice@example.test")
    assert (code, text[:5]) == (451, "4.7.1"), text

    time.sleep(max(0.0, first_seen_by + GREYLIST_DELAY + 0.2 - time.monotonic()))
    with smtplib.SMTP(*address_b) as client:
        client.ehlo("client.test")
        client.mail("s@sender.test")
        code, text = client.rcpt("alice@example.test")
        assert code == 250, text
        code, text = client.data(b"From: s@sender.test\r\nSubject: greylisted\r\n\r\nretried\r\n")
        assert code == 250, text
    assert len(ctl(first, "queue", "list")) == 1

    # auto_allow_after = 1: the client network passed a triplet, so a new one passes at once.
    code, text = rcpt(address_a, "t@other.test", "bob@example.test")
    assert code == 250, text


def test_greylisting_allow_list_of_sender_domains(backstop):
    node = backstop(config_with(
        'greylist = { enabled = true, delay = "1h", retry_window = "2h", '
        'allow = ["partner.test"] }'))
    address = smtp_address(node)
    assert rcpt(address, "a@mail.partner.test", "alice@example.test")[0] == 250
    assert rcpt(address, "a@partner.test", "alice@example.test")[0] == 250
    code, text = rcpt(address, "a@notpartner.test", "alice@example.test")
    assert (code, text[:5]) == (451, "4.7.1"), text


# --- Directory-harvest tarpit -------------------------------------------------------------------

def test_harvest_slows_replies_after_ten_rejections_and_ends_the_session_after_twenty(backstop):
    delay = 0.3
    node = backstop(config_with('harvest = { delay = "300ms" }'))
    with smtplib.SMTP(*smtp_address(node)) as client:
        client.ehlo("client.test")
        client.mail("s@sender.test")
        for i in range(10):
            started = time.monotonic()
            code, _ = client.rcpt(f"nobody{i}@example.test")
            assert code == 550
            assert time.monotonic() - started < delay, f"RCPT {i + 1} was slowed"
        # From the 11th on every reply waits, accepted or not.
        for i in range(10, 20):
            started = time.monotonic()
            code, _ = client.rcpt(f"nobody{i}@example.test" if i != 10 else "alice@example.test")
            assert code == (250 if i == 10 else 550)
            assert time.monotonic() - started >= delay * 0.9, f"RCPT {i + 1} was not slowed"
        # 19 rejected so far (the 11th was accepted): one more, then the next one ends it.
        assert client.rcpt("nobody20@example.test")[0] == 550
        code, text = client.rcpt("nobody21@example.test")
        assert (code, text[:5]) == (421, b"4.7.0"), text


# --- Daily sessions per domain ------------------------------------------------------------------

DAILY_MESSAGE = b"From: s@sender.test\r\nSubject: daily\r\n\r\nx\r\n"


def daily_node(backstop, limit):
    """A standalone node whose domain daily.test allows `limit` sessions a day; its SMTP
    address."""
    node = backstop(config_with(domains=f"""
[[domain]]
name = "daily.test"
primary = ["127.0.0.1:{reserve_port()}"]
max_daily_connections = {limit}
"""))
    wait_for_domain(node, "daily.test")
    return node, smtp_address(node)


def daily_session(address, messages=0):
    """One session naming a@daily.test and sending `messages` messages, all accepted."""
    with smtplib.SMTP(*address) as client:
        client.ehlo("client.test")
        client.mail("s@sender.test")
        assert client.rcpt("a@daily.test")[0] == 250
        for i in range(messages):
            if i:
                client.mail("s@sender.test")
                assert client.rcpt("a@daily.test")[0] == 250
            assert client.data(DAILY_MESSAGE)[0] == 250


def assert_daily_refusal_at_rcpt(address, *rcpts):
    """A session whose recipients all pass but the last, a@daily.test: 421 4.7.0 for it, and
    the connection closes."""
    client = RawClient(address)
    assert client.reply().startswith("220")
    client.send(b"EHLO client.test\r\nMAIL FROM:<s@sender.test>\r\n" +
                b"".join(b"RCPT TO:<%s>\r\n" % r.encode() for r in rcpts + ("a@daily.test",)))
    for _ in range(2 + len(rcpts)):  # EHLO, MAIL and each recipient before the last
        assert client.reply().startswith("250")
    assert client.reply().startswith("421 4.7.0")
    assert client.closed()
    client.close()


def test_a_domain_over_its_daily_sessions_gets_421(backstop):
    _, address = daily_node(backstop, 2)
    for _ in range(2):
        with smtplib.SMTP(*address) as client:
            client.ehlo("client.test")
            client.mail("s@sender.test")
            assert client.rcpt("a@daily.test")[0] == 250
            # A second recipient of the domain in the same session is not another session.
            assert client.rcpt("b@daily.test")[0] == 250
    # Another domain is not limited; the third session naming daily.test is.
    assert_daily_refusal_at_rcpt(address, "alice@example.test")


def test_sessions_answered_before_their_count_are_held_to_the_daily_limit_at_end_of_data(backstop):
    """Far from the limit, RCPT does not wait for the count: the session is counted with its
    message in the same commit. Sessions that raced past the limit that way are refused at the
    end of data, and the limit holds exactly."""
    node, address = daily_node(backstop, 20)
    # The first session waits for its count (none known yet): 1 of 20.
    daily_session(address, messages=1)
    # 19 left, more than the last 10 that are always waited for: 21 sessions in parallel all
    # get their RCPT answered at once...
    clients = []
    for _ in range(21):
        client = smtplib.SMTP(*address)
        client.ehlo("client.test")
        client.mail("s@sender.test")
        assert client.rcpt("a@daily.test")[0] == 250
        clients.append(client)
    # ... and only 19 of their messages fit in the day.
    replies = []
    for client in clients:
        code, text = client.data(DAILY_MESSAGE)
        replies.append((code, text[:5]))
        client.close()
    assert sorted(replies) == [(250, b"2.0.0")] * 19 + [(421, b"4.7.0")] * 2, replies
    assert len(ctl(node, "queue", "list")) == 20
    # Now the count is known to be at the limit: the next session is refused at RCPT.
    assert_daily_refusal_at_rcpt(address)


def test_sessions_answered_before_their_count_are_counted_once_with_or_without_a_message(backstop):
    """A session whose RCPT did not wait is counted by its message's commit, or, when it ends
    without a message, when it closes; never twice."""
    node, address = daily_node(backstop, 100)
    # The first session waits for its count; the next ones find headroom (99 left). A second
    # message of a session is not another session.
    daily_session(address)
    for messages in (0, 0, 2, 0, 2, 2):
        daily_session(address, messages)

    def sessions_today():
        for domain in ctl(node, "queue", "summary")["domains"]:
            if domain["domain"] == "daily.test":
                return int(domain.get("day_connections", 0))
        return 0

    deadline = time.monotonic() + 20
    while sessions_today() < 7 and time.monotonic() < deadline:
        time.sleep(0.1)
    time.sleep(0.5)  # a count sent twice would land by now
    assert sessions_today() == 7
    assert len(ctl(node, "queue", "list")) == 6


# --- Per-IP connection rate ---------------------------------------------------------------------

def proxied_banner(address, source_ip):
    """Connects through a PROXY v1 header from `source_ip`; returns the banner line."""
    client = RawClient(address)
    try:
        client.send(f"PROXY TCP4 {source_ip} 192.0.2.25 40000 25\r\n".encode())
        return client.reply()
    finally:
        client.close()


def test_connection_rate_per_ip_gets_421_at_connect(backstop):
    node = backstop(config_with(smtp_extra='max_connection_rate_per_ip = 3\n'
                                           'proxy_protocol = true\n'
                                           'trusted_proxies = ["127.0.0.1"]'))
    address = smtp_address(node)
    for _ in range(3):
        assert proxied_banner(address, "203.0.113.7").startswith("220 ")
    assert proxied_banner(address, "203.0.113.7").startswith("421 4.7.0")
    # Another client address has its own count.
    assert proxied_banner(address, "198.51.100.4").startswith("220 ")


# --- Quotas -------------------------------------------------------------------------------------

def test_a_domains_queued_message_quota_is_reached_at_exactly_its_limit(backstop):
    node = backstop(config_with(domains=f"""
[[domain]]
name = "quota.test"
primary = ["127.0.0.1:{reserve_port()}"]
max_queued_messages = 5
"""))
    wait_for_domain(node, "quota.test")
    with smtplib.SMTP(*smtp_address(node)) as client:
        for i in range(1, 6):
            client.ehlo_or_helo_if_needed()
            client.mail("s@sender.test")
            assert client.rcpt("user@quota.test")[0] == 250
            code, text = client.data(f"From: s@sender.test\r\nSubject: {i}\r\n\r\nx\r\n".encode())
            assert code == 250, f"message {i}: {text}"
        client.mail("s@sender.test")
        assert client.rcpt("user@quota.test")[0] == 250
        code, text = client.data(b"From: s@sender.test\r\nSubject: 6\r\n\r\nx\r\n")
        assert (code, text[:5]) == (452, b"4.3.1"), text
    entries = ctl(node, "queue", "list")
    assert len(entries) == 5
    assert {e["domain"] for e in entries} == {"quota.test"}
