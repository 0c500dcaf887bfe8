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

# --- Queue-only voters (bench/queue_append.sh, bench/queue_scale.sh) ---------------------------

# bench_start_queue_cluster N: N voters with only the queue role (nothing delivers), in
# $work/cN-I, run by $backstop; appends their PIDs to the caller's pids array and sets
# $endpoints (their gRPC addresses) and $http (the first voter's admin address).
bench_start_queue_cluster() {
  local n=$1 peers="" ports=() https=()
  for i in $(seq 1 "$n"); do ports+=("$(bench_free_port)"); https+=("$(bench_free_port)"); done
  for i in $(seq 1 "$n"); do peers+="${peers:+, }\"$i@127.0.0.1:${ports[$((i-1))]}\""; done
  endpoints=""
  for i in $(seq 1 "$n"); do
    local dir=$work/c$n-$i
    mkdir -p "$dir"
    cat > "$dir/config.toml" <<TOML
[node]
id = $i
hostname = "q$i.bench"
data_dir = "$dir/data"
roles = ["queue"]
[queue]
listen = "127.0.0.1:${ports[$((i-1))]}"
peers = [$peers]
[http]
listen = "127.0.0.1:${https[$((i-1))]}"
TOML
    "$backstop" --config "$dir/config.toml" > "$dir/log" 2>&1 &
    pids+=($!)
    endpoints+="${endpoints:+,}127.0.0.1:${ports[$((i-1))]}"
  done
  http=127.0.0.1:${https[0]}
  for _ in $(seq 1 200); do
    curl -sf "http://$http/readyz" > /dev/null && return 0
    sleep 0.1
  done
  echo "cluster of $n did not become ready" >&2
  return 1
}

# bench_stop_queue_cluster: stops every PID in pids and empties it.
bench_stop_queue_cluster() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; pids=(); }

# --- Postfix and Backstop instances, for the scripts that compare them ------------------------

# bench_setup NAME: the run's temporary directory $work (on BACKSTOP_BENCH_DIR's disk), the
# bookkeeping of the processes below, and traps that stop them all and remove $work on exit.
bench_setup() {
  work=$(mktemp -d "${BACKSTOP_BENCH_DIR:-${TMPDIR:-/tmp}}/$1.XXXXXX")
  # Postfix's daemons run as an unprivileged account and must reach their instance below here.
  chmod 755 "$work"
  as_root=()       # prefix for the commands that need root (empty when we are root)
  postfix_pid=""   # the process that runs the Postfix master (itself, or sudo)
  postfix_pgid=""  # the master's process group: the master and every daemon
  backstop_pid=""
  backstop_pids=()
  sink_pid=""      # smtp-sink, the primary, while it runs
  load_pid=""      # the load generator, while it runs
  trap bench_cleanup EXIT
  trap 'exit 130' INT TERM
}

bench_cleanup() {
  set +e
  [[ -z $load_pid ]] || kill "$load_pid" 2>/dev/null
  stop_sink
  stop_postfix
  stop_backstop
  # Can take a minute: each queue file is unlinked, and some disks discard synchronously.
  note "removing $work"
  "${as_root[@]}" rm -rf "$work"
}
# The caller defines note and die, and sets $here (bench/), $work (a temporary directory),
# $cache (where the postfix .deb is kept), $start_timeout (seconds), $backstop and $backstopctl
# (the binaries), and as_root=() (prepare_postfix fills it in when sudo is needed); these
# functions keep postfix_pid, postfix_pgid, backstop_pids (backstop_pid: the first) and sink_pid.

# signal SIGNAL PID|-PGID (as root for Postfix's processes); fails when the target is gone.
signal() { "${as_root[@]}" kill "-$1" -- "$2" 2>/dev/null; }

# stop PID|-PGID: SIGTERM, then SIGKILL if it is still there after $start_timeout seconds.
stop() {
  signal TERM "$1" || return 0
  for _ in $(seq 1 $((start_timeout * 10))); do
    signal 0 "$1" || return 0
    sleep 0.1
  done
  signal KILL "$1" || true
}

stop_postfix() {
  [[ -n $postfix_pgid ]] || return 0
  stop "-$postfix_pgid"  # the master and every daemon
  wait "$postfix_pid" 2>/dev/null || true
  postfix_pgid=""
}

stop_backstop() {
  local pid
  for pid in ${backstop_pids[@]+"${backstop_pids[@]}"} ${backstop_pid:+"$backstop_pid"}; do
    stop "$pid"
    wait "$pid" 2>/dev/null || true
  done
  backstop_pids=()
  backstop_pid=""
}

# start_sink PORT NAME: the primary (Postfix's smtp-sink) comes up on 127.0.0.1:PORT.
start_sink() {
  LD_LIBRARY_PATH=$postfix_lib "$postfix_root/usr/sbin/smtp-sink" -u nobody "127.0.0.1:$1" 1024 \
      > "$work/$2.sink.log" 2>&1 &
  sink_pid=$!
  wait_smtp "127.0.0.1:$1" "$sink_pid" "$work/$2.sink.log"
}

stop_sink() {
  [[ -n ${sink_pid:-} ]] || return 0
  kill "$sink_pid" 2>/dev/null || true
  wait "$sink_pid" 2>/dev/null || true
  sink_pid=""
}

# wait_until COUNT_COMMAND TARGET WHAT [SCALE]: until the command prints TARGET, for at most
# $run_timeout seconds; polls gently while far from it (the poll competes with the work for the
# CPU), closely within SCALE/20 of it (SCALE: $messages by default).
wait_until() {
  local command=$1 target=$2 what=$3 scale=${4:-$messages} count
  local deadline=$((SECONDS + run_timeout))
  while true; do
    count=$($command)
    [[ $count == "$target" ]] && return 0
    ((SECONDS < deadline)) || die "$what: still $count after ${run_timeout}s (want $target)"
    if ((count > target + scale / 20 || count < target - scale / 20)); then
      sleep 0.5
    else
      sleep 0.05
    fi
  done
}

# wait_smtp HOST:PORT PID LOG: until HOST:PORT greets with 220, while PID lives.
wait_smtp() {
  local address=$1 pid=$2 log=$3
  for _ in $(seq 1 $((start_timeout * 10))); do
    kill -0 "$pid" 2>/dev/null || die "the server exited before listening on $address; see $log:
$(tail -n 20 "$log" 2>/dev/null)"
    python3 - "$address" <<'PY' 2>/dev/null && return 0
import socket, sys
host, port = sys.argv[1].rsplit(":", 1)
with socket.create_connection((host, int(port)), timeout=1) as s:
    s.settimeout(2)
    sys.exit(0 if s.recv(512).startswith(b"220") else 1)
PY
    sleep 0.1
  done
  die "no SMTP greeting on $address within ${start_timeout}s; see $log:
$(tail -n 20 "$log" 2>/dev/null)"
}

# --- Postfix -----------------------------------------------------------------------------------

# Extracts the cached (or freshly downloaded) package, for smtp-source and for Postfix itself;
# sets $postfix_root, $postfix_lib and $smtp_source.
fetch_postfix() {
  [[ -z ${smtp_source:-} ]] || return 0
  mkdir -p "$cache"
  local debs
  shopt -s nullglob
  debs=("$cache"/postfix_*.deb)
  shopt -u nullglob
  if ((${#debs[@]} == 0)); then
    note "downloading Debian's postfix package into $cache"
    (cd "$cache" && apt-get download postfix) > "$work/apt.log" 2>&1 \
      || die "apt-get download postfix failed (try 'apt-get update' first):
$(tail -n 5 "$work/apt.log")"
    shopt -s nullglob
    debs=("$cache"/postfix_*.deb)
    shopt -u nullglob
    ((${#debs[@]} > 0)) || die "apt-get download postfix left no postfix_*.deb in $cache"
  fi
  postfix_root=$work/postfix-root
  dpkg -x "${debs[-1]}" "$postfix_root" || die "dpkg -x ${debs[-1]} failed"
  postfix_lib=$postfix_root/usr/lib/postfix
  smtp_source=$postfix_root/usr/sbin/smtp-source
}

prepare_postfix() {
  if [[ $(id -u) != 0 ]]; then
    if ! { command -v sudo > /dev/null && sudo -n true 2> /dev/null; }; then
      die "Postfix's master runs only as root: run this as root or with passwordless sudo" \
          "(or BENCH_SYSTEMS=backstop to measure Backstop alone)"
    fi
    as_root=(sudo -n)
  fi
  fetch_postfix
  # Accounts for the daemons: Postfix wants a dedicated owner, and three distinct groups.
  if getent passwd postfix > /dev/null; then mail_owner=postfix; else mail_owner=daemon; fi
  if getent group postdrop > /dev/null; then setgid_group=postdrop; else setgid_group=mail; fi
  mail_owner=${BENCH_POSTFIX_MAIL_OWNER:-$mail_owner}
  setgid_group=${BENCH_POSTFIX_SETGID_GROUP:-$setgid_group}
  default_privs=${BENCH_POSTFIX_DEFAULT_PRIVS:-nobody}
  getent passwd "$mail_owner" > /dev/null || die "no account $mail_owner (BENCH_POSTFIX_MAIL_OWNER)"
  getent passwd "$default_privs" > /dev/null \
    || die "no account $default_privs (BENCH_POSTFIX_DEFAULT_PRIVS)"
  getent group "$setgid_group" > /dev/null \
    || die "no group $setgid_group (BENCH_POSTFIX_SETGID_GROUP)"
}

# start_postfix NAME [PRIMARY_PORT]: a fresh instance in $work/NAME that relays example.com to
# 127.0.0.1:PRIMARY_PORT (default: a free port, where nothing listens); sets $postfix_address,
# $postfix_conf and $postfix_spool.
start_postfix() {
  local instance=$work/$1 dead_port
  mkdir -p "$instance/conf" "$instance/spool"
  chmod 755 "$instance"
  postfix_address=127.0.0.1:$(bench_free_port)
  dead_port=${2:-$(bench_free_port)}  # the primary: nothing listens here (yet)
  postfix_conf=$instance/conf
  postfix_spool=$instance/spool
  for file in main.cf master.cf; do
    sed -e "s|@ROOT@|$postfix_root|g" -e "s|@INSTANCE@|$instance|g" \
        -e "s|@MAIL_OWNER@|$mail_owner|g" -e "s|@SETGID_GROUP@|$setgid_group|g" \
        -e "s|@DEFAULT_PRIVS@|$default_privs|g" -e "s|@DEAD_PORT@|$dead_port|g" \
        -e "s|@LISTEN@|$postfix_address|g" "$here/postfix/$file.in" > "$instance/conf/$file"
  done
  # `postfix check` validates the configuration and creates the queue directories with their
  # owners; it logs to the maillog file only.
  "${as_root[@]}" env LD_LIBRARY_PATH="$postfix_lib" "$postfix_root/usr/sbin/postfix" \
      -c "$instance/conf" check \
    || die "postfix check failed; $instance/maillog says:
$(tail -n 20 "$instance/maillog" 2>/dev/null)"
  # setsid: the master kills its own process group on exit, so it must lead one (--wait: the
  # process we watch lives as long as the master, even if setsid had to fork).
  "${as_root[@]}" env LD_LIBRARY_PATH="$postfix_lib" MAIL_CONFIG="$instance/conf" \
      setsid --wait "$postfix_root/usr/lib/postfix/sbin/master" -c "$instance/conf" -d \
      > "$instance/master.out" 2>&1 &
  postfix_pid=$!
  for _ in $(seq 1 $((start_timeout * 10))); do
    postfix_pgid=$("${as_root[@]}" cat "$postfix_spool/pid/master.pid" 2>/dev/null | tr -d ' ' \
                     || true)
    [[ -n $postfix_pgid ]] && break
    kill -0 "$postfix_pid" 2>/dev/null || break
    sleep 0.1
  done
  [[ -n $postfix_pgid ]] || die "the Postfix master did not start; $instance/maillog says:
$(tail -n 20 "$instance/maillog" 2>/dev/null)"
  wait_smtp "$postfix_address" "$postfix_pid" "$instance/maillog"
}

# postfix_count DIR...: files in those queue directories of the instance.
postfix_count() {
  "${as_root[@]}" find "${@/#/$postfix_spool/}" -type f | wc -l
}
# Messages in the instance's queue (incoming, active, deferred, hold): exact once it stopped.
postfix_queued() { postfix_count incoming active deferred hold; }
# Messages not yet tried once (and deferred) by the queue manager.
postfix_undeferred() { postfix_count incoming active; }

# --- Backstop ----------------------------------------------------------------------------------

prepare_backstop() {
  [[ -x $backstop ]] || die "no $backstop: build it first (make build)"
  [[ -x $backstopctl ]] || die "no $backstopctl: build it first (make build)"
  fetch_postfix  # for smtp-source
}

# start_backstop NAME [PRIMARY_PORT] [VOTERS]: VOTERS nodes (default 1: the standalone node) with
# every role, in $work/NAME/node-I, the primary of example.com on 127.0.0.1:PRIMARY_PORT
# (default: a free port, where nothing listens). Sets $backstop_address (node 1's SMTP),
# $backstop_queue (node 1's gRPC, for backstopctl), $backstop_http (node 1's admin HTTP),
# $backstop_log (node 1's log) and backstop_pids.
start_backstop() {
  local name=$1 dead_port=${2:-$(bench_free_port)} voters=${3:-1} i dir peers="" ports=()
  for i in $(seq 1 "$voters"); do ports+=("$(bench_free_port)"); done
  for i in $(seq 1 "$voters"); do peers+="${peers:+, }\"$i@127.0.0.1:${ports[$((i - 1))]}\""; done
  backstop_pids=()
  for i in $(seq 1 "$voters"); do
    dir=$work/$name/node-$i
    mkdir -p "$dir"
    local http=127.0.0.1:$(bench_free_port)
    cat > "$dir/backstop.toml" <<TOML
[node]
id = $i
hostname = "backstop$i.bench.test"
data_dir = "$dir/data"
roles = ["ingest", "queue", "delivery"]

[smtp]
listen = ["127.0.0.1:0"]
max_connections_per_ip = 1000

[queue]
listen = "127.0.0.1:${ports[$((i - 1))]}"
peers = [$peers]

[http]
listen = "$http"

# Like Postfix's defaults: no DNS lookup of the sender's domain.
[filters]
sender = { enabled = false }

[[domain]]
name = "example.com"
primary = ["127.0.0.1:$dead_port"]
TOML
    "$backstop" --check-config "$dir/backstop.toml" > "$dir/check.log" 2>&1 \
      || die "backstop --check-config rejected $dir/backstop.toml:
$(cat "$dir/check.log")"
    "$backstop" --config "$dir/backstop.toml" > "$dir/backstop.log" 2> "$dir/backstop.stderr" \
        < /dev/null &
    backstop_pids+=($!)
    if ((i == 1)); then
      backstop_pid=$!
      backstop_log=$dir/backstop.log
      backstop_http=$http
      backstop_queue=127.0.0.1:${ports[0]}
    fi
  done
  backstop_address=""
  for _ in $(seq 1 $((start_timeout * 10))); do
    backstop_address=$(python3 - "$backstop_log" <<'PY'
import json, sys
for line in open(sys.argv[1], errors="replace"):
    try:
        entry = json.loads(line)
    except ValueError:
        continue
    if entry.get("msg") == "smtp listening":
        print(entry["address"])
        break
PY
)
    [[ -n $backstop_address ]] && break
    kill -0 "$backstop_pid" 2>/dev/null || die "backstop exited before 'smtp listening':
$(tail -n 20 "$(dirname "$backstop_log")/backstop.stderr" "$backstop_log")"
    sleep 0.1
  done
  [[ -n $backstop_address ]] || die "no 'smtp listening' in $backstop_log within ${start_timeout}s
(does this binary have the ingest role?):
$(tail -n 20 "$backstop_log")"
  # A cluster takes an election before it queues anything.
  for _ in $(seq 1 $((start_timeout * 10))); do
    python3 -c 'import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=1)' \
        "http://$backstop_http/readyz" 2>/dev/null && break
    sleep 0.1
  done
  wait_smtp "$backstop_address" "$backstop_pid" "$backstop_log"
}

# The group-commit factors of node 1, from /metrics: Raft log entries per fsync
# (backstop_queue_entries_persisted_total / backstop_queue_fsyncs_total), and, given the messages
# accepted so far as $1, messages per fsync (one log entry carries many messages and session
# counts: the ingest's group commit). Prints "ENTRIES MESSAGES"; "null null" before any fsync.
backstop_fsync_factors() {
  python3 - "$backstop_http" "$1" <<'PY'
import re, sys, urllib.request
base = "http://" + sys.argv[1]
def get(path):
    return urllib.request.urlopen(base + path, timeout=5).read().decode()
try:
    metrics = get("/metrics")
    def total(name):
        return sum(float(m) for m in re.findall(r"^%s(?:\{[^}]*\})? (\S+)$" % name, metrics, re.M))
    entries, fsyncs = total("backstop_queue_entries_persisted_total"), total("backstop_queue_fsyncs_total")
    if fsyncs:
        print(round(entries / fsyncs, 2), round(int(sys.argv[2]) / fsyncs, 2))
    else:
        print("null null")
except Exception:
    print("null null")
PY
}

# Messages queued for example.com, from the queue's admin API.
backstop_queued() {
  local summary
  summary=$("$backstopctl" --endpoint "$backstop_queue" -o json queue summary) \
    || die "backstopctl queue summary failed"
  python3 - "$summary" <<'PY'
import json, sys
domains = json.loads(sys.argv[1]).get("domains", [])
print(sum(int(d.get("queued_messages", 0)) for d in domains if d.get("domain") == "example.com"))
PY
}

# Runs the script's prepare_postfix / prepare_backstop for each system of the space-separated
# list $1 (BENCH_SYSTEMS).
prepare_systems() {
  local system
  for system in $1; do
    case $system in
      postfix) prepare_postfix ;;
      backstop) prepare_backstop ;;
      *) die "unknown system '$system' in BENCH_SYSTEMS (postfix, backstop)" ;;
    esac
  done
}
