# shellcheck shell=bash
# Helpers shared by the benchmark scripts in bench/ (sourced, not run).

# A currently free loopback TCP port.
bench_free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# bench_fsync_rate DIR [SECONDS]: the raw fsync rate of DIR's disk (4 KiB pwrite + fdatasync in
# a loop, 2 s by default), printed as one JSON line: the baseline every durable queue is bounded
# by.
bench_fsync_rate() {
  python3 - "$1" "${2:-2}" <<'PY'
import os, sys, time
path = os.path.join(sys.argv[1], "fsync-probe")
seconds = float(sys.argv[2])
fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
os.ftruncate(fd, 4096 * 1024)
block = b"x" * 4096
n, start = 0, time.monotonic()
while time.monotonic() - start < seconds:
    os.pwrite(fd, block, (n % 1024) * 4096)
    os.fdatasync(fd)
    n += 1
os.close(fd)
os.unlink(path)
print('{"baseline":"raw fdatasync","fsyncs_per_second":%.1f}' % (n / (time.monotonic() - start)))
PY
}
