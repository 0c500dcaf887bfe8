"""Cluster mTLS ([cluster_tls]): three voters, an ingest-only and a delivery-only process and
backstopctl, every gRPC connection over TLS with certificates from one cluster CA. A client
from another CA, or without a certificate, is refused; admin changes need OU=backstop-admin;
SIGHUP reloads the certificates without a restart."""

import signal
import smtplib
import subprocess

import pytest

from conftest import reserve_port
from test_backstopctl import BACKSTOPCTL_BIN
from test_delivery import Primary
from test_ingest import queued_ids, smtp_address
from test_metrics import scrape, series
from test_queue_cluster import leader_of, wait_until


def openssl(*args, cwd):
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


class Pki:
    """A CA (openssl CLI, P-256) and the certificates it issues, as files in `directory`."""

    def __init__(self, directory, name):
        self.directory = directory
        self.name = name
        directory.mkdir(exist_ok=True)
        openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
                "-nodes", "-keyout", f"{name}-ca.key", "-out", f"{name}-ca.pem", "-days", "30",
                "-subj", f"/CN={name} cluster CA",
                "-addext", "basicConstraints=critical,CA:TRUE",
                "-addext", "keyUsage=critical,keyCertSign,cRLSign", cwd=directory)
        self.ca = directory / f"{name}-ca.pem"

    def issue(self, common_name, organizational_unit=None, days=10, usage="serverAuth,clientAuth"):
        """(cert, key) paths; the certificate carries OU=`organizational_unit` when given."""
        stem = f"{self.name}-{common_name}-{days}"
        subject = f"/CN={common_name}" + (f"/OU={organizational_unit}" if organizational_unit else "")
        (self.directory / f"{stem}.ext").write_text(
            f"basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\n"
            f"extendedKeyUsage={usage}\nsubjectAltName=DNS:{common_name}\n")
        openssl("req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                "-keyout", f"{stem}.key", "-out", f"{stem}.csr", "-subj", subject,
                cwd=self.directory)
        openssl("x509", "-req", "-in", f"{stem}.csr", "-CA", f"{self.name}-ca.pem",
                "-CAkey", f"{self.name}-ca.key", "-CAcreateserial", "-out", f"{stem}.pem",
                "-days", str(days), "-extfile", f"{stem}.ext", cwd=self.directory)
        return self.directory / f"{stem}.pem", self.directory / f"{stem}.key"


def tls_table(ca, cert, key):
    return f'[cluster_tls]\nca = "{ca}"\ncert = "{cert}"\nkey = "{key}"\n'


def node_config(node_id, roles, data_dir, ports, primary_port, tls):
    peers = ", ".join(f'"{i}@127.0.0.1:{port}"' for i, port in ports.items())
    role_list = ", ".join(f'"{role}"' for role in roles)
    smtp = '[smtp]\nlisten = ["127.0.0.1:0"]\n' if "ingest" in roles else ""
    listen = ports.get(node_id, reserve_port())
    endpoints = "" if "queue" in roles else "endpoints = [" + ", ".join(
        f'"127.0.0.1:{port}"' for port in ports.values()) + "]"
    return f"""
[node]
id = {node_id}
hostname = "n{node_id}.test"
data_dir = "{data_dir}"
roles = [{role_list}]

{smtp}
[queue]
listen = "127.0.0.1:{listen}"
peers = [{peers}]
{endpoints}

[http]
listen = "127.0.0.1:0"

[delivery]
retry_initial = "1h"
retry_max = "2h"

{tls}

[[domain]]
name = "example.test"
primary = ["127.0.0.1:{primary_port}"]

[[domain]]
name = "held.test"
primary = ["127.0.0.1:2"]
"""


class TlsCluster:
    def __init__(self, backstop, tmp_path):
        self.pki = Pki(tmp_path / "pki", "backstop")
        self.primary = Primary(reserve_port()).start()
        self.ports = {i: reserve_port() for i in (1, 2, 3)}
        self.certs = {i: self.pki.issue(f"n{i}.test") for i in (1, 2, 3, 4, 5)}
        self.nodes = {}
        roles = {1: ("queue",), 2: ("queue",), 3: ("queue",), 4: ("ingest",), 5: ("delivery",)}
        for i, node_roles in roles.items():
            config = node_config(i, node_roles, tmp_path / f"data{i}", self.ports,
                                 self.primary.port, tls_table(self.pki.ca, *self.certs[i]))
            self.nodes[i] = backstop(config_text=config)
        self.voters = {i: self.nodes[i] for i in (1, 2, 3)}
        wait_until(lambda: leader_of(self.voters), what="a leader")

    def endpoint(self, node_id=1):
        return f"127.0.0.1:{self.ports[node_id]}"

    def send(self, rcpt):
        """True when ingest accepted the message (sendmail raises on a refusal)."""
        with smtplib.SMTP(*smtp_address(self.nodes[4])) as client:
            refused = client.sendmail(
                "s@sender.test", [rcpt], b"From: s@sender.test\r\nSubject: tls\r\n\r\nover mTLS\r\n")
        return refused == {}

    def stop(self):
        self.primary.stop()


def ctl(cluster, *args, cert=None, ca=None, endpoint=None):
    command = [BACKSTOPCTL_BIN, "--endpoint", endpoint or cluster.endpoint(1), "-o", "json",
               "--timeout", "5s"]
    if cert is not None:
        command += ["--tls-ca", str(ca or cluster.pki.ca), "--tls-cert", str(cert[0]),
                    "--tls-key", str(cert[1])]
    return subprocess.run([*command, *args], capture_output=True, text=True, timeout=60)


@pytest.fixture
def tls_cluster(backstop, tmp_path):
    cluster = TlsCluster(backstop, tmp_path)
    yield cluster
    cluster.stop()


def test_mail_flows_through_ingest_queue_and_delivery_over_mtls(tls_cluster):
    # Ingest (node 4) appends over mTLS, the voters replicate over mTLS, delivery (node 5)
    # leases over mTLS and hands the message to the primary.
    with smtplib.SMTP(*smtp_address(tls_cluster.nodes[4])) as client:
        client.ehlo("client.test")
        client.mail("s@sender.test")
        assert client.rcpt("alice@example.test")[0] == 250
        code, text = client.data(b"From: s@sender.test\r\nSubject: tls\r\n\r\nover mTLS\r\n")
    assert code == 250, text
    assert len(queued_ids(text.decode())) == 1
    messages = tls_cluster.primary.wait_for(1, timeout=60)
    assert messages[0][1] == ["alice@example.test"]
    assert b"over mTLS" in messages[0][2]


def test_clients_outside_the_cluster_ca_are_refused(tls_cluster, tmp_path):
    admin = tls_cluster.pki.issue("ops.test", organizational_unit="backstop-admin",
                                  usage="clientAuth")
    ok = ctl(tls_cluster, "cluster", "status", cert=admin)
    assert ok.returncode == 0, ok.stderr

    # A certificate from another CA (the client even trusts our CA): the handshake fails.
    other = Pki(tmp_path / "other", "other")
    foreign = other.issue("ops.test", organizational_unit="backstop-admin", usage="clientAuth")
    both = tmp_path / "both-cas.pem"
    both.write_text(tls_cluster.pki.ca.read_text() + other.ca.read_text())
    refused = ctl(tls_cluster, "cluster", "status", cert=foreign, ca=both)
    assert refused.returncode == 1
    assert "backstopctl: " in refused.stderr

    # No certificate at all (plaintext).
    plaintext = ctl(tls_cluster, "cluster", "status")
    assert plaintext.returncode == 1

    # Half the TLS flags is a usage error.
    half = subprocess.run([BACKSTOPCTL_BIN, "--endpoint", tls_cluster.endpoint(1), "--tls-ca",
                           str(tls_cluster.pki.ca), "cluster", "status"],
                          capture_output=True, text=True, timeout=60)
    assert half.returncode == 2 and "--tls-cert" in half.stderr


def test_only_an_admin_certificate_can_delete(tls_cluster):
    assert tls_cluster.send("bob@held.test")
    viewer = tls_cluster.pki.issue("viewer.test", organizational_unit="ops", usage="clientAuth")
    admin = tls_cluster.pki.issue("ops.test", organizational_unit="backstop-admin",
                                  usage="clientAuth")

    def held(cert):
        result = ctl(tls_cluster, "queue", "list", "--domain", "held.test", cert=cert)
        assert result.returncode == 0, result.stderr
        return result.stdout

    wait_until(lambda: "held.test" in held(viewer), what="the entry listed")  # reads are open
    denied = ctl(tls_cluster, "queue", "delete", "--domain", "held.test", "--yes", cert=viewer)
    assert denied.returncode == 1
    assert "OU=backstop-admin" in denied.stderr
    assert "held.test" in held(viewer), "a refused delete deletes nothing"
    # Node certificates are not admin certificates either.
    node = ctl(tls_cluster, "queue", "delete", "--domain", "held.test", "--yes",
               cert=tls_cluster.certs[2])
    assert node.returncode == 1 and "OU=backstop-admin" in node.stderr

    deleted = ctl(tls_cluster, "queue", "delete", "--domain", "held.test", "--yes", cert=admin)
    assert deleted.returncode == 0, deleted.stderr
    assert '"affected":1' in deleted.stdout.replace(" ", "")
    assert "held.test" not in held(admin)


def test_sighup_reloads_the_cluster_certificate(tls_cluster):
    node = tls_cluster.nodes[1]

    def expiry():
        values = series(scrape(node)[1])
        return values['backstop_tls_certificate_expiry_timestamp_seconds{kind="cluster"}']

    before = expiry()
    cert, key = tls_cluster.certs[1]
    # A renewed certificate (new key, later expiry) written over the configured files.
    renewed_cert, renewed_key = tls_cluster.pki.issue("n1.test", days=20)
    cert.write_bytes(renewed_cert.read_bytes())
    key.write_bytes(renewed_key.read_bytes())
    node.signal(signal.SIGHUP)
    wait_until(lambda: expiry() > before + 9 * 86400, what="the renewed certificate in force")
    assert not [e for e in node.logs() if e.get("msg", "").startswith("cluster TLS reload failed")]
    admin = tls_cluster.pki.issue("ops.test", organizational_unit="backstop-admin",
                                  usage="clientAuth")
    # New connections to node 1 handshake with the renewed certificate; the cluster still has
    # its leader and replicates (a write through ingest commits).
    wait_until(lambda: ctl(tls_cluster, "cluster", "status", cert=admin).returncode == 0,
               what="node 1 answering over the renewed certificate")
    assert tls_cluster.send("carol@example.test")

    # A key that does not match: refused, the renewed set stays in force.
    other_cert, other_key = tls_cluster.pki.issue("other.test")
    key.write_bytes(other_key.read_bytes())
    node.signal(signal.SIGHUP)
    failure = node.wait_for_log(
        lambda e: e.get("msg", "").startswith("cluster TLS reload failed"), what="the refusal")
    assert "does not match" in failure["error"]
    renewed = expiry()
    assert renewed > before + 9 * 86400
    assert ctl(tls_cluster, "cluster", "status", cert=admin).returncode == 0
