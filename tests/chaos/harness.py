"""Chaos harness: a loaded Backstop cluster under a seeded fault schedule, checked for zero loss.

The cluster, all on loopback: 3 queue voters (their peer links through fault-injecting proxies,
one per direction), 2 ingest and 2 delivery processes, and an aiosmtpd primary that records the
number of every message it receives. A load generator sends uniquely numbered messages and
records, per message, how its client's transaction ended. Meanwhile a schedule drawn from the
seed injects one fault at a time (see FAULT_KINDS) and heals it. At the end every fault is
healed, the queue must drain, and DESIGN §3.1 is checked:

  * every message answered 250 arrived at the primary at least once (lost must be 0);
  * duplicates are counted (allowed);
  * a message arrived without a 250 only if its client was left in doubt at the end of DATA
    (451, timeout, connection lost);
  * the queue is empty.

The same seed replays the same schedule (the kinds, targets, timings and modes of the faults;
which process leads at a given moment is up to the cluster).
"""

import collections
import json
import os
import random
import re
import shutil
import signal
import smtplib
import socket
import subprocess
import sys
import threading
import time
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "system"))

from conftest import BACKSTOP_BIN, BackstopProcess, reserve_port  # noqa: E402
from proxy import BLACKHOLE, REFUSE, LinkProxy  # noqa: E402

BACKSTOPCTL_BIN = os.path.abspath(os.environ.get(
    "BACKSTOPCTL_BIN", os.path.join(os.path.dirname(BACKSTOP_BIN), "..", "backstopctl",
                                    "backstopctl")))

VOTERS = (1, 2, 3)
INGESTS = (11, 12)
DELIVERIES = (21, 22)
DOMAIN = "example.test"
SEQ_HEADER = re.compile(rb"^X-Chaos-Seq: (\d+)\r?$", re.MULTILINE)
# Election timeout of the voters: 10–20 ticks of 100 ms (QueueNodeOptions defaults).
ELECTION_TIMEOUT_MAX = 2.0
COMMIT_TIMEOUT = 10

FAULT_KINDS = (
    "kill_voter",          # kill -9 of a random voter, restarted on its data
    "kill_leader",         # kill -9 of the leader, restarted on its data
    "kill_leader_in_commit",  # kill -9 of the leader right after a client sent a DATA's end
    "pause_leader",        # SIGSTOP of the leader longer than the election timeout, SIGCONT
    "cut_link",            # one directed voter link cut (refused or blackholed)
    "partition_voter",     # both directions between two voters cut
    "isolate_leader",      # every link to and from the leader cut
    "wipe_voter",          # kill -9, data directory wiped, restarted to rejoin by snapshot
    "kill_ingest",         # kill -9 of an ingest process, restarted
    "kill_delivery",       # kill -9 of a delivery process, restarted
    "primary_down",        # the primary stops listening for a while
    "disk_fault",          # a voter's disk fails (EIO on write or fsync, ENOSPC): it must stop
                           # at once (fail-stop); restarted on a healthy disk
)
DISK_FAULTS = ("write_error", "sync_error", "nospace")
# Test-only (queue/fault_injection.h): each voter follows the file "fault" in its working
# directory.
FAULT_FILE = "fault"


def log(*parts):
    print(time.strftime("%H:%M:%S"), *parts, flush=True)


# --- the primary -------------------------------------------------------------------------------

class Primary:
    """aiosmtpd on a fixed port, recording the X-Chaos-Seq of each message; can go down and up."""

    def __init__(self, port):
        self.port = port
        self.arrivals = collections.Counter()  # seq → times received
        self.unnumbered = 0
        self.lock = threading.Lock()
        self.controller = None

    async def handle_DATA(self, server, session, envelope):
        match = SEQ_HEADER.search(envelope.original_content or b"")
        with self.lock:
            if match:
                self.arrivals[int(match.group(1))] += 1
            else:
                self.unnumbered += 1
        return "250 2.0.0 stored"

    def up(self):
        from aiosmtpd.controller import Controller
        if self.controller is None:
            self.controller = Controller(self, hostname="127.0.0.1", port=self.port,
                                         decode_data=False, enable_SMTPUTF8=True)
            for _ in range(50):
                try:
                    self.controller.start()
                    break
                except (OSError, RuntimeError):
                    time.sleep(0.1)  # the port lingers a moment after the last stop

    def down(self):
        if self.controller is not None:
            self.controller.stop()
            self.controller = None

    def snapshot(self):
        with self.lock:
            return collections.Counter(self.arrivals), self.unnumbered


# --- the load generator ------------------------------------------------------------------------

class ChaosSMTP(smtplib.SMTP):
    """smtplib that reports when the end of DATA has gone out (a commit is then in flight)."""

    on_data_sent = None

    def send(self, s):
        super().send(s)
        if self.on_data_sent is not None and isinstance(s, bytes) and s.endswith(b"\r\n.\r\n"):
            self.on_data_sent()


# Outcomes. In doubt (the message may be queued): the end of DATA went out and the client got a
# 4xx, a timeout or a lost connection instead of the final reply.
OK = "250"
DOUBT_4XX = "data_4xx"
DOUBT_TIMEOUT = "data_timeout"
DOUBT_LOST = "data_connection_lost"
IN_DOUBT = (DOUBT_4XX, DOUBT_TIMEOUT, DOUBT_LOST)
# Refused for sure: nothing of the transaction may arrive.
REFUSED_5XX = "5xx"
REFUSED_4XX_BEFORE_DATA = "4xx_before_data"
FAILED_BEFORE_DATA = "failed_before_data"  # connection refused / lost before the end of DATA


def message_bytes(seq):
    return (f"From: chaos <s@sender.test>\r\nTo: u{seq % 50}@{DOMAIN}\r\n"
            f"Subject: chaos message {seq}\r\nMessage-ID: <chaos.{seq}@sender.test>\r\n"
            f"X-Chaos-Seq: {seq}\r\n\r\nmessage {seq}\r\n" + "x" * 200 + "\r\n").encode()


class LoadGenerator:
    def __init__(self, ingest_addresses, rate, threads=6):
        self.ingest_addresses = ingest_addresses  # callable → list of (host, port)
        self.rate = rate
        self.threads = threads
        self.outcomes = {}  # seq → (outcome, detail, reply time)
        self.lock = threading.Lock()
        self.next_seq = 0
        self.stopping = threading.Event()
        self.data_sent = threading.Event()  # set each time an end of DATA goes out
        self.workers = []
        self.start_time = None

    def start(self):
        self.start_time = time.monotonic()
        for i in range(self.threads):
            worker = threading.Thread(target=self._run, args=(i,), daemon=True)
            worker.start()
            self.workers.append(worker)

    def stop(self):
        self.stopping.set()
        for worker in self.workers:
            worker.join(timeout=COMMIT_TIMEOUT + 40)

    def _take(self):
        with self.lock:
            seq = self.next_seq
            self.next_seq += 1
        return seq

    def _run(self, index):
        chooser = random.Random(index)
        while not self.stopping.is_set():
            seq = self._take()
            due = self.start_time + seq / self.rate
            delay = due - time.monotonic()
            if delay > 0:
                if self.stopping.wait(delay):
                    return
            addresses = self.ingest_addresses()
            chooser.shuffle(addresses)
            # Like a sending MTA with two MX hosts: the next one when a connection fails.
            for address in addresses:
                outcome, detail = self._send(seq, address)
                if outcome != FAILED_BEFORE_DATA:
                    break
            with self.lock:
                self.outcomes[seq] = (outcome, detail, time.monotonic())

    def _send(self, seq, address):
        sent = False
        sent_at = None

        def mark():
            nonlocal sent, sent_at
            sent = True
            sent_at = time.monotonic()
            self.data_sent.set()

        try:
            client = ChaosSMTP(*address, timeout=COMMIT_TIMEOUT + 20)
        except (OSError, smtplib.SMTPException) as error:
            return FAILED_BEFORE_DATA, f"connect: {error!r}"[:200]
        try:
            client.ehlo("loadgen.chaos")
            code, reply = client.mail("s@sender.test")
            if code != 250:
                return (REFUSED_5XX if code >= 500 else REFUSED_4XX_BEFORE_DATA), f"MAIL {code}"
            code, reply = client.rcpt(f"u{seq % 50}@{DOMAIN}")
            if code not in (250, 251):
                return (REFUSED_5XX if code >= 500 else REFUSED_4XX_BEFORE_DATA), f"RCPT {code}"
            client.on_data_sent = mark
            code, reply = client.data(message_bytes(seq))
            if code == 250:
                return OK, time.monotonic() - sent_at
            if code >= 500:
                return REFUSED_5XX, f"DATA {code} {reply[:80]!r}"
            return (DOUBT_4XX if sent else REFUSED_4XX_BEFORE_DATA), f"DATA {code} {reply[:80]!r}"
        except (socket.timeout, TimeoutError) as error:
            return (DOUBT_TIMEOUT if sent else FAILED_BEFORE_DATA), repr(error)[:200]
        except (OSError, smtplib.SMTPException) as error:
            return (DOUBT_LOST if sent else FAILED_BEFORE_DATA), repr(error)[:200]
        finally:
            try:
                client.close()
            except OSError:
                pass


# --- the cluster -------------------------------------------------------------------------------

def common_tables(primary_port):
    return f"""
[delivery]
retry_initial = "1s"
retry_max = "2s"
lease_duration = "4s"

[filters]
sender = {{ enabled = false }}

[[domain]]
name = "{DOMAIN}"
primary = ["127.0.0.1:{primary_port}"]
"""


class Cluster:
    def __init__(self, workdir, primary_port, snapshot_entries=400):
        self.workdir = workdir
        self.primary_port = primary_port
        self.snapshot_entries = snapshot_entries
        self.queue_ports = {i: reserve_port() for i in VOTERS}
        # proxies[(a, b)]: the link a → b.
        self.proxies = {(a, b): LinkProxy(self.queue_ports[b], name=f"{a}to{b}")
                        for a in VOTERS for b in VOTERS if a != b}
        self.processes = {}  # node id → BackstopProcess (the latest incarnation)
        self.paused = set()
        self.lock = threading.Lock()

    # Configuration.
    def _voter_config(self, node_id, join=False):
        # Itself at its own port, every other voter at the proxy of the link to it.
        ports = {j: self.queue_ports[j] if j == node_id else self.proxies[(node_id, j)].port
                 for j in VOTERS}
        peers = ", ".join(f'"{j}@127.0.0.1:{port}"' for j, port in ports.items())
        return f"""
[node]
id = {node_id}
hostname = "q{node_id}.chaos"
data_dir = "{self.workdir}/node{node_id}/data"
roles = ["queue"]

[queue]
listen = "127.0.0.1:{self.queue_ports[node_id]}"
peers = [{peers}]
snapshot_entries = {self.snapshot_entries}
{"join = true" if join else ""}

[http]
listen = "127.0.0.1:0"
""" + common_tables(self.primary_port)

    def _client_config(self, node_id, role):
        endpoints = ", ".join(f'"127.0.0.1:{self.queue_ports[j]}"' for j in VOTERS)
        smtp = f'[smtp]\nlisten = ["127.0.0.1:0"]\ncommit_timeout = "{COMMIT_TIMEOUT}s"\n' \
            if role == "ingest" else ""
        return f"""
[node]
id = {node_id}
hostname = "{role}{node_id}.chaos"
data_dir = "{self.workdir}/node{node_id}/data"
roles = ["{role}"]

{smtp}
[queue]
endpoints = [{endpoints}]

[http]
listen = "127.0.0.1:0"
""" + common_tables(self.primary_port)

    def config_for(self, node_id, join=False):
        if node_id in VOTERS:
            return self._voter_config(node_id, join)
        return self._client_config(node_id, "ingest" if node_id in INGESTS else "delivery")

    # Processes.
    def start(self, node_id, join=False):
        workdir = self.workdir / f"node{node_id}"
        workdir.mkdir(exist_ok=True)
        config_path = workdir / "backstop.toml"
        config_path.write_text(self.config_for(node_id, join))
        log_path = workdir / "backstop.log"
        earlier = len(log_path.read_text().splitlines()) if log_path.exists() else 0
        process = BackstopProcess(workdir, config_path, [])
        process.wait_started()
        if node_id in INGESTS:
            # The log keeps the earlier incarnations' lines (and their ports): this one's only.
            listening = [e for e in process.logs()[earlier:] if e.get("msg") == "smtp listening"]
            if not listening:
                raise AssertionError(f"ingest {node_id} logged no 'smtp listening'")
            host, port = listening[-1]["address"].rsplit(":", 1)
            process.smtp = (host, int(port))
        with self.lock:
            self.processes[node_id] = process
        return process

    def start_all(self):
        for node_id in VOTERS + INGESTS + DELIVERIES:
            self.start(node_id)

    def alive(self, node_id):
        process = self.processes.get(node_id)
        return process is not None and process.proc.poll() is None

    def kill(self, node_id):
        process = self.processes[node_id]
        if node_id in self.paused:
            self.paused.discard(node_id)
        process.proc.send_signal(signal.SIGKILL)
        process.proc.wait()
        process.stop()  # closes its log files

    def restart(self, node_id, join=False):
        return self.start(node_id, join)

    def pause(self, node_id):
        self.paused.add(node_id)
        self.processes[node_id].proc.send_signal(signal.SIGSTOP)

    def resume(self, node_id):
        self.paused.discard(node_id)
        self.processes[node_id].proc.send_signal(signal.SIGCONT)

    def wipe(self, node_id):
        shutil.rmtree(self.workdir / f"node{node_id}" / "data", ignore_errors=True)

    def ingest_addresses(self):
        with self.lock:
            return [self.processes[i].smtp for i in INGESTS if i in self.processes]

    # Observation.
    def voter_status(self, node_id, timeout=1.0):
        if node_id in self.paused or not self.alive(node_id):
            return None
        process = self.processes[node_id]
        try:
            with urllib.request.urlopen(f"http://{process.http_address}/status",
                                        timeout=timeout) as response:
                return json.loads(response.read())["queue"]
        except (OSError, ValueError, KeyError):
            return None

    def leader(self):
        """The voter that leads in the highest term any live voter reports, or None."""
        statuses = {i: self.voter_status(i) for i in VOTERS}
        leaders = [(s["term"], i) for i, s in statuses.items() if s and s["is_leader"]]
        return max(leaders)[1] if leaders else None

    def wait_leader(self, timeout=30):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            leader = self.leader()
            if leader is not None:
                return leader
            time.sleep(0.1)
        return None

    def wait_healthy(self, timeout=60):
        """Every voter alive, one leader, every voter applied up to the leader's commit index as
        it was when we asked. Returns whether that happened in time."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            leader = self.leader()
            if leader is not None:
                target = (self.voter_status(leader) or {}).get("commit_index")
                statuses = [self.voter_status(i) for i in VOTERS]
                if target is not None and all(s and s["applied_index"] >= target - 50
                                              for s in statuses):
                    return True
            time.sleep(0.2)
        return False

    def ctl(self, *args, node_id=None):
        node_id = node_id or self.leader() or 1
        result = subprocess.run(
            [BACKSTOPCTL_BIN, "--endpoint", f"127.0.0.1:{self.queue_ports[node_id]}", "-o",
             "json", *args], capture_output=True, text=True, timeout=30)
        if result.returncode != 0:
            raise RuntimeError(result.stderr)
        return json.loads(result.stdout)

    def queued(self):
        summary = self.ctl("queue", "summary")
        # Protobuf's JSON: 64-bit counts are strings, zero values are left out.
        return sum(int(d.get("queued_messages", 0)) for d in summary.get("domains", []))

    def stop_all(self):
        for node_id in list(self.paused):
            self.resume(node_id)
        # In parallel: each one drains on SIGTERM for a moment.
        stoppers = [threading.Thread(target=p.stop) for p in self.processes.values()]
        for stopper in stoppers:
            stopper.start()
        for stopper in stoppers:
            stopper.join()
        for proxy in self.proxies.values():
            proxy.close()


# --- the fault schedule ------------------------------------------------------------------------

class FaultInjector:
    """Draws the schedule from the seed: each step picks a kind, its targets and durations."""

    def __init__(self, cluster, primary, load, seed, kinds=FAULT_KINDS):
        self.cluster = cluster
        self.primary = primary
        self.load = load
        self.rng = random.Random(seed)
        self.kinds = kinds
        self.injected = collections.Counter()
        self.events = []  # (monotonic time, kind, detail), for the report and the 451 windows
        self.rejoined_by_snapshot = 0
        self.bag = []
        self.failures = []  # a fault that did not have the effect it must have

    def note(self, kind, detail):
        self.injected[kind] += 1
        self.events.append((time.monotonic(), kind, detail))
        log("fault", kind, detail)

    def step(self):
        # Kinds come from a shuffled bag, refilled when empty: a short run still meets each.
        if not self.bag:
            self.bag = list(self.kinds)
            self.rng.shuffle(self.bag)
        kind = self.bag.pop()
        # Every random number this step uses is drawn here, so the schedule does not depend on
        # what the cluster did (e.g. which voter leads).
        draw = {
            "voter": self.rng.choice(VOTERS),
            "other": self.rng.random(),
            "ingest": self.rng.choice(INGESTS),
            "delivery": self.rng.choice(DELIVERIES),
            "down": self.rng.uniform(0.5, 4.0),
            "pause": self.rng.uniform(ELECTION_TIMEOUT_MAX + 0.5, ELECTION_TIMEOUT_MAX + 3.0),
            "cut": self.rng.uniform(2.0, 6.0),
            "mode": self.rng.choice((REFUSE, BLACKHOLE)),
            "in_commit_delay": self.rng.uniform(0.0, 0.005),
            "disk_fault": self.rng.choice(DISK_FAULTS),
        }
        getattr(self, kind)(draw)
        return kind

    def _leader(self):
        return self.cluster.wait_leader(timeout=30) or 1

    def _other(self, voter, draw):
        others = [v for v in VOTERS if v != voter]
        return others[int(draw["other"] * len(others)) % len(others)]

    def _kill_restart(self, kind, node_id, draw, wipe=False):
        self.cluster.kill(node_id)
        self.note(kind, {"node": node_id})
        time.sleep(draw["down"])
        if wipe:
            self.cluster.wipe(node_id)
        self.cluster.restart(node_id, join=wipe)

    def kill_voter(self, draw):
        self._kill_restart("kill_voter", draw["voter"], draw)

    def kill_leader(self, draw):
        self._kill_restart("kill_leader", self._leader(), draw)

    def kill_leader_in_commit(self, draw):
        leader = self._leader()
        self.load.data_sent.clear()
        self.load.data_sent.wait(timeout=10)
        time.sleep(draw["in_commit_delay"])
        self._kill_restart("kill_leader_in_commit", leader, draw)

    def pause_leader(self, draw):
        leader = self._leader()
        self.cluster.pause(leader)
        self.note("pause_leader", {"node": leader, "seconds": round(draw["pause"], 2)})
        time.sleep(draw["pause"])
        self.cluster.resume(leader)

    def _cut(self, kind, links, draw):
        for link in links:
            self.cluster.proxies[link].cut(draw["mode"])
        self.note(kind, {"links": [f"{a}->{b}" for a, b in links], "mode": draw["mode"],
                         "seconds": round(draw["cut"], 2)})
        time.sleep(draw["cut"])
        for link in links:
            self.cluster.proxies[link].heal()

    def cut_link(self, draw):
        a = draw["voter"]
        self._cut("cut_link", [(a, self._other(a, draw))], draw)

    def partition_voter(self, draw):
        a = draw["voter"]
        b = self._other(a, draw)
        self._cut("partition_voter", [(a, b), (b, a)], draw)

    def isolate_leader(self, draw):
        leader = self._leader()
        links = [(leader, v) for v in VOTERS if v != leader] + \
            [(v, leader) for v in VOTERS if v != leader]
        self._cut("isolate_leader", links, draw)

    def wipe_voter(self, draw):
        node_id = draw["voter"]
        self._kill_restart("wipe_voter", node_id, draw, wipe=True)
        process = self.cluster.processes[node_id]
        try:
            process.wait_for_log(lambda e: e.get("msg") == "installed a snapshot from the leader"
                                 and e.get("index", 0) > 1, timeout=60,
                                 what="the wiped voter's snapshot install")
            self.rejoined_by_snapshot += 1
        except AssertionError as error:
            log("warning:", str(error)[:300])

    def kill_ingest(self, draw):
        self._kill_restart("kill_ingest", draw["ingest"], draw)

    def kill_delivery(self, draw):
        self._kill_restart("kill_delivery", draw["delivery"], draw)

    def disk_fault(self, draw):
        node_id = draw["voter"]
        process = self.cluster.processes[node_id]
        fault_file = process.workdir / FAULT_FILE
        fault_file.write_text(draw["disk_fault"] + "\n")
        self.note("disk_fault", {"node": node_id, "fault": draw["disk_fault"]})
        try:
            # It fails at its next write: at once under load.
            code = process.proc.wait(timeout=30)
            if code != -signal.SIGABRT:
                self.failures.append(f"voter {node_id} with {draw['disk_fault']} exited {code}")
        except subprocess.TimeoutExpired:
            self.failures.append(f"voter {node_id} with {draw['disk_fault']} kept running")
            self.cluster.kill(node_id)
        process.stop()
        fault_file.unlink()
        time.sleep(draw["down"])
        self.cluster.restart(node_id)

    def primary_down(self, draw):
        self.primary.down()
        self.note("primary_down", {"seconds": round(draw["down"] * 2, 2)})
        time.sleep(draw["down"] * 2)
        self.primary.up()


# --- the run -----------------------------------------------------------------------------------

def longest_tempfail_window(outcomes):
    """The longest time from a client's first in-doubt answer (451, timeout, connection lost at
    the end of DATA) to the next 250 after it: how long ingest could not accept during a
    failover, as the senders saw it."""
    events = sorted((t, outcome) for outcome, _, t in outcomes.values()
                    if outcome == OK or outcome in IN_DOUBT)
    longest = 0.0
    start = None
    for t, outcome in events:
        if outcome == OK:
            if start is not None:
                longest = max(longest, t - start)
                start = None
        elif start is None:
            start = t
    return longest


def run(workdir, seconds, seed, rate=30, gap=(2.0, 5.0), kinds=FAULT_KINDS, report_path=None,
        drain_timeout=180):
    """Runs the cluster under load and faults for `seconds`, heals, drains, checks. Returns the
    summary (a dict); summary["ok"] says whether every check passed."""
    workdir = workdir.resolve() if hasattr(workdir, "resolve") else workdir
    log(f"chaos seed {seed} ({seconds}s); replay with --seed {seed}")
    saved_fault_env = os.environ.get("BACKSTOP_FAULT_FILE")
    os.environ["BACKSTOP_FAULT_FILE"] = FAULT_FILE  # relative: each process's own directory
    primary = Primary(reserve_port())
    primary.up()
    cluster = Cluster(workdir, primary.port)
    load = None
    summary = {"seed": seed, "seconds": seconds}
    try:
        cluster.start_all()
        if cluster.wait_leader(60) is None:
            raise AssertionError("no queue leader at the start")
        # The domain must be seeded before ingest accepts mail for it.
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if any(d["spec"]["name"] == DOMAIN
                       for d in cluster.ctl("domain", "list").get("domains", [])):
                    break
            except (RuntimeError, ValueError, TypeError):
                pass
            time.sleep(0.2)
        load = LoadGenerator(cluster.ingest_addresses, rate)
        load.start()
        injector = FaultInjector(cluster, primary, load, seed, kinds)
        rng = random.Random(seed ^ 0x5EED)
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            time.sleep(rng.uniform(*gap))
            if time.monotonic() >= end:
                break
            # One fault at a time, each on a cluster that has a quorum again.
            if not cluster.wait_healthy(timeout=60):
                log("warning: voters not all caught up before the next fault")
            injector.step()
        load.stop()
        log("load stopped")
        if not cluster.wait_healthy(timeout=90):
            log("warning: voters not all caught up at the end")
        log("voters caught up; draining")

        outcomes = dict(load.outcomes)
        acked = {seq for seq, (o, _, _) in outcomes.items() if o == OK}
        doubtful = {seq for seq, (o, _, _) in outcomes.items() if o in IN_DOUBT}

        # Drained: everything acknowledged arrived and the queue is empty.
        deadline = time.monotonic() + drain_timeout
        queued = None
        while time.monotonic() < deadline:
            arrivals, _ = primary.snapshot()
            try:
                queued = cluster.queued()
            except (RuntimeError, ValueError, subprocess.TimeoutExpired):
                queued = None
            if queued == 0 and acked <= set(arrivals):
                break
            time.sleep(0.5)
        log("drained" if queued == 0 else f"not drained: {queued} queued")
        time.sleep(2)  # late duplicates (a delivery whose completion was lost)
        arrivals, unnumbered = primary.snapshot()
        arrived = set(arrivals)
        lost = sorted(acked - arrived)
        unexpected = sorted(arrived - acked - doubtful)
        outcome_counts = collections.Counter(o for o, _, _ in outcomes.values())
        # Why the others failed, for a reader of the report (a few of each kind of reason).
        reasons = collections.Counter(f"{o}: {str(d)[:60]}" for o, d, _ in outcomes.values()
                                      if o != OK)
        summary.update({
            "faults_injected": sum(injector.injected.values()),
            "faults_by_kind": dict(sorted(injector.injected.items())),
            "messages_sent": len(outcomes),
            "acked": len(acked),
            "outcomes": dict(sorted(outcome_counts.items())),
            "failure_reasons": dict(reasons.most_common(8)),
            "in_doubt": len(doubtful),
            "in_doubt_arrived": len(doubtful & arrived),
            "arrived_distinct": len(arrived),
            "lost": len(lost),
            "lost_sample": lost[:20],
            "duplicates": sum(n - 1 for n in arrivals.values()),
            "unexpected_arrivals": len(unexpected),
            "unexpected_sample": unexpected[:20],
            "unnumbered_arrivals": unnumbered,
            "queue_left": queued,
            "longest_451_window_seconds": round(longest_tempfail_window(outcomes), 3),
            "fault_log": [{"t": round(t - load.start_time, 2), "kind": k, **d}
                          for t, k, d in injector.events],
        })
        delays = sorted(d for o, d, _ in outcomes.values() if o == OK)
        summary["commit_delay_seconds"] = {
            "p50": round(delays[len(delays) // 2], 3) if delays else None,
            "p99": round(delays[int(len(delays) * 0.99)], 3) if delays else None,
            "max": round(delays[-1], 3) if delays else None,
        }
        summary["wiped_voters_rejoined_by_snapshot"] = injector.rejoined_by_snapshot
        summary["fault_effect_failures"] = injector.failures
        summary["ok"] = (not injector.failures and not lost and not unexpected and queued == 0
                         and len(acked) > 0)
        return summary
    except BaseException as error:
        summary["ok"] = False
        summary["error"] = repr(error)
        raise
    finally:
        if load is not None:
            load.stopping.set()
        cluster.stop_all()
        primary.down()
        if saved_fault_env is None:
            os.environ.pop("BACKSTOP_FAULT_FILE", None)
        else:
            os.environ["BACKSTOP_FAULT_FILE"] = saved_fault_env
        summary["workdir"] = str(workdir)
        printable = {k: v for k, v in summary.items() if k != "fault_log"}
        log("chaos summary:", json.dumps(printable, indent=1))
        if report_path is not None:
            with open(report_path, "w") as out:
                json.dump(summary, out, indent=1)
            log("report written to", report_path)
        log(f"seed {seed}: replay with --seed {seed}")
