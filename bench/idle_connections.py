#!/usr/bin/env python3
"""Resident memory of an ingest process per idle SMTP connection (issue #11: at most 64 KiB).

Starts Backstop (standalone: every role, one voter) with room for the connections, reads its
VmRSS, opens N connections that each read the 220 greeting and then sit idle, reads VmRSS
again, and prints one JSON line: the growth per connection. The process's own baseline (its
threads, RocksDB, gRPC) is measured in the same run, so only the connections' share counts.

usage: bench/idle_connections.py BUILD_DIR [--connections 10000]
"""

import argparse
import json
import os
import resource
import socket
import subprocess
import sys
import tempfile
import time


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def wait_for_greeting(port, timeout=30.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
                if s.recv(512).startswith(b"220"):
                    return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError("backstop did not greet")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("build_dir")
    parser.add_argument("--connections", type=int, default=10000)
    args = parser.parse_args()
    want = args.connections + 1000
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(max(want, soft), hard), hard))

    smtp, queue, http = free_port(), free_port(), free_port()
    with tempfile.TemporaryDirectory(prefix="backstop-idle-") as tmp:
        config = os.path.join(tmp, "backstop.toml")
        with open(config, "w") as out:
            out.write(f"""
[node]
id = 1
hostname = "backstop.bench.test"
data_dir = "{tmp}/data"
roles = ["ingest", "queue", "delivery"]

[smtp]
listen = ["127.0.0.1:{smtp}"]
max_connections = {args.connections + 100}
max_connections_per_ip = {args.connections + 100}
command_timeout = "1h"

[queue]
listen = "127.0.0.1:{queue}"
peers = ["1@127.0.0.1:{queue}"]

[http]
listen = "127.0.0.1:{http}"

[[domain]]
name = "example.com"
primary = ["127.0.0.1:9"]
""")
        binary = os.path.join(args.build_dir, "cmd/backstop/backstop")
        server = subprocess.Popen([binary, "--config", config], stdout=subprocess.DEVNULL,
                                  stderr=subprocess.DEVNULL)
        try:
            wait_for_greeting(smtp)
            time.sleep(1.0)
            before = rss_kib(server.pid)
            sockets = []
            for _ in range(args.connections):
                s = socket.create_connection(("127.0.0.1", smtp), timeout=30)
                sockets.append(s)
            greeted = 0
            for s in sockets:
                if s.recv(512).startswith(b"220"):
                    greeted += 1
            time.sleep(2.0)
            during = rss_kib(server.pid)
            for s in sockets:
                s.close()
            print(json.dumps({
                "benchmark": "idle_connections",
                "connections": args.connections,
                "greeted": greeted,
                "rss_before_kib": before,
                "rss_with_connections_kib": during,
                "kib_per_connection": round((during - before) / args.connections, 2),
                "target_kib_per_connection": 64,
            }))
            return 0 if greeted == args.connections else 1
        finally:
            server.terminate()
            server.wait(timeout=60)


if __name__ == "__main__":
    sys.exit(main())
