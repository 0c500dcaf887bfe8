"""Fixtures that run real `backstop` processes for the system tests.

Every process gets its own temporary directory and configuration. Listening ports are 0 where
the binary supports it (the bound address is read back from its JSON log), and every process is
stopped when the test ends, whatever happened.
"""

import json
import os
import pathlib
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request

import pytest

REPO = pathlib.Path(__file__).resolve().parents[2]
# Absolute, since each process runs in its own working directory.
BACKSTOP_BIN = os.path.abspath(
    os.environ.get("BACKSTOP_BIN", str(REPO / "build/release/cmd/backstop/backstop")))
# The build directory BACKSTOP_BIN comes from: the load generators default to its own, so that
# `make test PRESET=asan` drives the ASan build's.
BUILD_DIR = pathlib.Path(BACKSTOP_BIN).parents[2]
LOADGEN_BIN = os.path.abspath(
    os.environ.get("BACKSTOP_LOADGEN", str(BUILD_DIR / "bench/backstop-queue-loadgen")))
SMTP_LOADGEN_BIN = os.path.abspath(
    os.environ.get("BACKSTOP_SMTP_LOADGEN", str(BUILD_DIR / "bench/backstop-loadgen")))
START_TIMEOUT = 20.0
STOP_TIMEOUT = 15.0
# A sanitizer build runs 2-3x slower: `make test-asan` sets BACKSTOP_TIMEOUT_SCALE, and the
# waits of the helpers below (process start, log lines, exit, HTTP, run_backstop) are multiplied
# by it, so that a deadline tuned for the release build still holds.
TIMEOUT_SCALE = float(os.environ.get("BACKSTOP_TIMEOUT_SCALE", "1"))


def scaled(seconds):
    """A timeout of the release build, stretched for the build under test."""
    return seconds * TIMEOUT_SCALE


def reserve_port():
    """A currently free loopback TCP port, for addresses that cannot be 0 (queue peers)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def node_tables(data_dir, queue_port):
    """[node], [smtp], [queue] and [http] of one process with every role and one voter, on
    loopback with ephemeral ports."""
    return f"""
[node]
id = 1
hostname = "mx2.test"
data_dir = "{data_dir}"
roles = ["ingest", "queue", "delivery"]

[smtp]
listen = ["127.0.0.1:0"]

[queue]
listen = "127.0.0.1:{queue_port}"
peers = ["1@127.0.0.1:{queue_port}"]

[http]
listen = "127.0.0.1:0"
"""


def standalone_config(data_dir, queue_port, extra=""):
    """The embedded default (all roles, one voter) on loopback, with ephemeral ports."""
    return node_tables(data_dir, queue_port) + f"""
[[domain]]
name = "example.test"
primary = ["127.0.0.1:2526"]
recipients = ["alice", "bob"]
{extra}
"""


def without_sender_check(config_text):
    """The configuration with `[filters] sender = { enabled = false }`, added to the file's own
    [filters] table when it has one (TOML allows a table once), unless it sets `sender` itself."""
    lines = config_text.split("\n")
    if "[filters]" not in lines:
        return config_text + "\n[filters]\nsender = { enabled = false }\n"
    start = lines.index("[filters]") + 1
    end = next((i for i in range(start, len(lines)) if lines[i].startswith("[")), len(lines))
    if any(line.split("=")[0].strip() == "sender" for line in lines[start:end]):
        return config_text
    lines.insert(start, "sender = { enabled = false }")
    return "\n".join(lines)


class BackstopProcess:
    """One running `backstop` and its log (JSON lines on stdout, captured to a file)."""

    def __init__(self, workdir, config_path, args):
        self.workdir = workdir
        self.config_path = config_path
        self.log_path = workdir / "backstop.log"
        self.stderr_path = workdir / "backstop.stderr"
        # Appending: a restarted process (same directory) keeps its predecessor's lines.
        self._log = open(self.log_path, "ab")
        self._stderr = open(self.stderr_path, "ab")
        self.proc = subprocess.Popen(
            [BACKSTOP_BIN, "--config", str(config_path), *args],
            stdout=self._log, stderr=self._stderr, stdin=subprocess.DEVNULL, cwd=workdir)
        self.http_address = None

    def logs(self):
        """Every JSON log line written so far, parsed (a line that is not JSON fails the test)."""
        lines = self.log_path.read_text(errors="strict").splitlines()
        return [json.loads(line) for line in lines if line.strip()]

    def wait_for_log(self, predicate, timeout=START_TIMEOUT, what="log line"):
        timeout = scaled(timeout)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for entry in self.logs():
                if predicate(entry):
                    return entry
            if self.proc.poll() is not None:
                raise AssertionError(
                    f"backstop exited with {self.proc.returncode} before {what}; "
                    f"stderr: {self.stderr_path.read_text()}")
            time.sleep(0.05)
        raise AssertionError(f"no {what} within {timeout}s; log: {self.log_path.read_text()}")

    def wait_started(self):
        entry = self.wait_for_log(
            lambda e: e.get("msg") == "http admin listening" and e.get("pid") == self.proc.pid,
            what="'http admin listening'")
        self.http_address = entry["address"]
        return self

    def status(self):
        """The parsed /status document."""
        status, _, body = self.http_get("/status")
        assert status == 200, body
        return json.loads(body)

    def http_get(self, path, timeout=5.0):
        """(status, content type, body) of GET http://<admin address><path>."""
        try:
            with urllib.request.urlopen(f"http://{self.http_address}{path}",
                                        timeout=scaled(timeout)) as response:
                return response.status, response.headers.get("Content-Type"), response.read()
        except urllib.error.HTTPError as error:
            return error.code, error.headers.get("Content-Type"), error.read()

    def signal(self, signum):
        self.proc.send_signal(signum)

    def wait_exit(self, timeout=STOP_TIMEOUT):
        return self.proc.wait(timeout=scaled(timeout))

    def stop(self):
        """SIGTERM, then SIGKILL if it does not exit in time. Returns the exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=scaled(STOP_TIMEOUT))
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        self._stderr.close()
        return self.proc.returncode


@pytest.fixture
def backstop(tmp_path):
    """Factory: backstop(config_text=None, args=()) starts a process and waits until it serves.

    Without config_text it runs the standalone configuration. Every process is stopped at the
    end of the test.
    """
    started = []

    def start(config_text=None, args=(), wait=True, restart_of=None, sender_check=False):
        """restart_of: a stopped or killed process to start again on its directory and file.

        sender_check: the sender check ([filters] sender, on by default) wants the reverse-path's
        domain to resolve, which the tests' senders (s@sender.test) do not; unless this is True,
        it is turned off (see without_sender_check).
        """
        if restart_of is not None:
            workdir, config_path = restart_of.workdir, restart_of.config_path
        else:
            workdir = tmp_path / f"node{len(started)}"
            workdir.mkdir()
            if config_text is None:
                config_text = standalone_config(workdir / "data", reserve_port())
            if not sender_check:
                config_text = without_sender_check(config_text)
            config_path = workdir / "backstop.toml"
            config_path.write_text(config_text)
        process = BackstopProcess(workdir, config_path, list(args))
        started.append(process)
        return process.wait_started() if wait else process

    yield start
    for process in started:
        process.stop()
    for process in started:
        report = sanitizer_report(process.stderr_path)
        assert not report, f"sanitizer report in {process.stderr_path}:\n{report}"


# What ASan, LSan, UBSan and TSan print (`make test-asan` runs this suite on an ASan+UBSan build).
SANITIZER_MARKERS = ("ERROR: AddressSanitizer", "ERROR: LeakSanitizer", "runtime error:",
                     "WARNING: ThreadSanitizer")


def sanitizer_report(stderr_path):
    """The sanitizer findings in a process's stderr, or "" when there are none."""
    text = stderr_path.read_text(errors="replace") if stderr_path.exists() else ""
    return text if any(marker in text for marker in SANITIZER_MARKERS) else ""


def run_backstop(*args, timeout=30):
    """Runs the binary to completion (for --check-config, --version)."""
    return subprocess.run([BACKSTOP_BIN, *args], capture_output=True, text=True,
                          timeout=scaled(timeout), stdin=subprocess.DEVNULL)
