"""The DNS-based filters end to end (issue #7): rDNS (PTR and forward-confirmed), DNSBL/DNSWL and
sender domain checks of a real `backstop` against dnsmasq serving PTR/A/MX/TXT records and a
local block list. Clients present their addresses through the PROXY protocol from 127.0.0.1.

Names outside the zones dnsmasq is authoritative for (the .test domains, 192.0.2.0/24's reverse
zone) get REFUSED from it (it has no upstream): that is the tests' DNS error."""

import re

import pytest

from test_delivery import dnsmasq  # noqa: F401 (the fixture)
from test_ingest import RawClient, ctl, queued_ids, smtp_address, standalone_with

RECORDS = (
    "--local=/2.0.192.in-addr.arpa/",
    # rDNS: 192.0.2.10 has a PTR that resolves back; .11 has none; .12 names a host elsewhere;
    # 198.51.100.13's reverse zone is not served (REFUSED).
    "--host-record=good.example.test,192.0.2.10",
    "--ptr-record=12.2.0.192.in-addr.arpa,forged.test",
    "--host-record=forged.test,198.51.100.1",
    # DNSBL bl.test lists .20 (with a reason), .21 (also in the allow list wl.test) and answers
    # .22 with an error code.
    "--host-record=20.2.0.192.bl.test,127.0.0.2",
    "--txt-record=20.2.0.192.bl.test,Listed: see http://bl.test/q/192.0.2.20",
    "--host-record=21.2.0.192.bl.test,127.0.0.2",
    "--host-record=21.2.0.192.wl.test,127.0.0.2",
    "--host-record=22.2.0.192.bl.test,127.255.255.254",
    # 2001:db8::7, in RFC 5782's nibble form.
    "--host-record=7.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2.bl.test,127.0.0.3",
    # Sender domains.
    "--mx-host=mx.test,mail.mx.test,10",
    "--host-record=aonly.test,192.0.2.50",
    "--mx-host=nullmx.test,.,0",
)


def dns_node(backstop, dnsmasq, filters, sender_check=False):  # noqa: F811
    dns = dnsmasq(*RECORDS)
    config = standalone_with(
        f'\n[dns]\nservers = ["127.0.0.1:{dns.port}"]\n\n[filters]\n{filters}\n',
        smtp_extra='proxy_protocol = true\ntrusted_proxies = ["127.0.0.1/32"]')
    return backstop(config, sender_check=sender_check)


def session(node, client_ip):
    """A connection that claims `client_ip` (PROXY v1), after the banner and EHLO."""
    client = RawClient(smtp_address(node))
    family = "TCP6" if ":" in client_ip else "TCP4"
    dest = "2001:db8::25" if family == "TCP6" else "192.0.2.25"
    client.send(f"PROXY {family} {client_ip} {dest} 40000 25\r\n".encode())
    banner = client.reply()
    assert banner.startswith("220 "), banner
    client.send(b"EHLO client.test\r\n")
    assert client.reply().startswith("250")
    return client


def mail_reply(node, client_ip, sender="s@sender.test"):
    client = session(node, client_ip)
    client.send(f"MAIL FROM:<{sender}>\r\n".encode())
    reply = client.reply()
    client.close()
    return reply


def send_message(client, sender="s@sender.test"):
    """A whole transaction; returns the final reply."""
    client.send(f"MAIL FROM:<{sender}>\r\n".encode())
    reply = client.reply()
    assert reply.startswith("250"), reply
    client.send(b"RCPT TO:<alice@example.test>\r\n")
    assert client.reply().startswith("250")
    client.send(b"DATA\r\n")
    assert client.reply().startswith("354")
    client.send(b"From: s@sender.test\r\nSubject: dns\r\n\r\nx\r\n.\r\n")
    return client.reply()


def filter_results(node):
    """backstop_filter_results_total as {(filter, stage, result, reason): value}."""
    status, _, body = node.http_get("/metrics")
    assert status == 200
    results = {}
    for line in body.decode().splitlines():
        if line.startswith("backstop_filter_results_total{"):
            labels = dict(re.findall(r'(\w+)="([^"]*)"', line))
            results[(labels["filter"], labels["stage"], labels["result"], labels["reason"])] = \
                float(line.rsplit(" ", 1)[1])
    return results


@pytest.mark.parametrize("require", ["ptr", "fcrdns"])
def test_rdns_accepts_client_whose_ptr_resolves_and_names_it(backstop, dnsmasq, require):  # noqa: F811
    node = dns_node(backstop, dnsmasq, f'rdns = {{ enabled = true, require = "{require}" }}')
    client = session(node, "192.0.2.10")
    reply = send_message(client)
    client.close()
    assert reply.startswith("250 2.0.0"), reply
    assert ctl(node, "queue", "list")[0]["envelope"]["rdns"] == "good.example.test"
    shown = ctl(node, "queue", "show", queued_ids(reply)[0], "--message")
    assert "(good.example.test [192.0.2.10])" in shown["message"].split("\r\n\r\n")[0]


def test_rdns_refuses_client_without_ptr_at_mail(backstop, dnsmasq):  # noqa: F811
    node = dns_node(backstop, dnsmasq, 'rdns = { enabled = true, require = "ptr" }')
    reply = mail_reply(node, "192.0.2.11")
    assert reply.startswith("550 5.7.25 "), reply
    assert filter_results(node)[("rdns", "mail", "reject", "no_ptr")] == 1


def test_rdns_tempfails_when_the_ptr_lookup_fails(backstop, dnsmasq):  # noqa: F811
    node = dns_node(backstop, dnsmasq, 'rdns = { enabled = true, require = "ptr" }')
    assert mail_reply(node, "198.51.100.13").startswith("450 4.7.25 ")
    assert filter_results(node)[("rdns", "mail", "tempfail", "dns_error")] == 1


def test_fcrdns_refuses_ptr_name_that_does_not_resolve_back(backstop, dnsmasq):  # noqa: F811
    node = dns_node(backstop, dnsmasq, 'rdns = { enabled = true, require = "fcrdns" }')
    assert mail_reply(node, "192.0.2.12").startswith("550 5.7.25 ")
    assert filter_results(node)[("rdns", "mail", "reject", "not_confirmed")] == 1


def test_rdns_refusal_is_logged(backstop, dnsmasq):  # noqa: F811
    node = dns_node(backstop, dnsmasq, 'rdns = { enabled = true, require = "ptr" }')
    mail_reply(node, "192.0.2.11")
    entry = node.wait_for_log(lambda e: e.get("msg") == "rejected" and e.get("stage") == "mail",
                              what="the rejection")
    assert entry["reason"] == "no_ptr" and entry["client"] == "192.0.2.11"


DNSBL = 'dnsbl = { enabled = true, zones = ["bl.test"], allow_zones = ["wl.test"] }'


def test_dnsbl_listed_client_is_refused_with_the_lists_reason(backstop, dnsmasq):  # noqa: F811
    node = dns_node(backstop, dnsmasq, DNSBL)
    reply = mail_reply(node, "192.0.2.20")
    assert reply == ("554 5.7.1 Client host [192.0.2.20] blocked using bl.test: "
                     "Listed: see http://bl.test/q/192.0.2.20\r\n"), reply
    assert filter_results(node)[("dnsbl", "mail", "reject", "listed")] == 1


def test_dnswl_listed_client_passes_the_dnsbl(backstop, dnsmasq):  # noqa: F811
    node = dns_node(backstop, dnsmasq, DNSBL)
    client = session(node, "192.0.2.21")
    assert send_message(client).startswith("250 2.0.0")
    client.close()
    assert filter_results(node)[("dnsbl", "connect", "pass", "allowlisted")] == 1


def test_dnsbl_lists_ipv6_clients_by_nibbles(backstop, dnsmasq):  # noqa: F811
    node = dns_node(backstop, dnsmasq, DNSBL)
    assert mail_reply(node, "2001:db8::7") == (
        "554 5.7.1 Client host [2001:db8::7] listed in bl.test\r\n")
    assert mail_reply(node, "2001:db8::8").startswith("250")


def test_dnsbl_error_code_fails_open(backstop, dnsmasq):  # noqa: F811
    node = dns_node(backstop, dnsmasq, DNSBL)
    assert mail_reply(node, "192.0.2.22").startswith("250")
    results = filter_results(node)
    assert results[("dnsbl", "connect", "pass", "bad_answer")] == 1
    assert ("dnsbl", "mail", "reject", "listed") not in results


def test_dnsbl_fails_open_when_the_list_does_not_answer(backstop, dnsmasq):  # noqa: F811
    node = dns_node(backstop, dnsmasq, 'dnsbl = { enabled = true, zones = ["bl.invalid"] }')
    assert mail_reply(node, "192.0.2.20").startswith("250")
    assert filter_results(node)[("dnsbl", "connect", "pass", "dns_error")] == 1


@pytest.mark.parametrize("sender,expected,reason", [
    ("s@mx.test", "250 ", None),
    ("s@aonly.test", "250 ", None),
    ("", "250 ", None),
    ("s@[192.0.2.1]", "250 ", None),
    ("s@nowhere.test", "550 5.1.8 ", "nxdomain"),
    ("s@nullmx.test", "550 5.1.8 ", "null_mx"),
    ("s@broken.invalid", "451 4.1.8 ", "dns_error"),
])
def test_sender_domain_must_accept_mail(backstop, dnsmasq, sender, expected, reason):  # noqa: F811
    node = dns_node(backstop, dnsmasq, "sender = { enabled = true }", sender_check=True)
    reply = mail_reply(node, "192.0.2.10", sender)
    assert reply.startswith(expected), reply
    results = filter_results(node)
    if reason is None:
        assert not any(key[0] == "sender" for key in results), results
    else:
        result = "tempfail" if expected.startswith("4") else "reject"
        assert results[("sender", "mail", result, reason)] == 1
