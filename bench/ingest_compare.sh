#!/usr/bin/env bash
# Ingest while the primary is down (issue 5's benchmark): accepted messages/s of Postfix as a
# backup MX and of the standalone Backstop node, both loaded by Postfix's smtp-source (2 KiB
# messages, 10 and 50 sessions, one connection per message) in the same run, beside the raw
# fsync rate of the disk they queue on. Prints one JSON line per run, then a summary line with
# the ratios Backstop/Postfix.
#   bench/ingest_compare.sh [BUILD_DIR]        (default build/release)
#
# Postfix comes from Debian's package, downloaded once (`apt-get download postfix`, cached in
# $BACKSTOP_BENCH_CACHE, default build/bench-cache) and extracted with `dpkg -x`: no service is
# installed. Its master refuses to run as anyone but root ("the master command is reserved for
# the superuser"), so its half needs root or passwordless sudo; the daemons drop to
# $BENCH_POSTFIX_MAIL_OWNER (default: postfix if that account exists, else daemon).
#
# Environment: BENCH_MESSAGES (5000 per run), BENCH_SESSIONS ("10 50"), BENCH_SIZE (2048),
# BENCH_SYSTEMS ("postfix backstop"), BENCH_START_TIMEOUT (30 s), BENCH_RUN_TIMEOUT (600 s),
# BENCH_REUSE_CONNECTIONS (0; 1 = smtp-source -d, many messages per connection),
# BACKSTOP_BENCH_DIR (where the temporary work dir goes: keep it on the disk you measure),
# BACKSTOP_BENCH_CACHE, BENCH_POSTFIX_MAIL_OWNER, BENCH_POSTFIX_SETGID_GROUP,
# BENCH_POSTFIX_DEFAULT_PRIVS.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(dirname "$here")
# shellcheck source=bench/lib.sh
. "$here/lib.sh"

build=$(realpath -m "${1:-build/release}")
messages=${BENCH_MESSAGES:-5000}
sessions_list=${BENCH_SESSIONS:-10 50}
size=${BENCH_SIZE:-2048}
systems=${BENCH_SYSTEMS:-postfix backstop}
start_timeout=${BENCH_START_TIMEOUT:-30}
run_timeout=${BENCH_RUN_TIMEOUT:-600}
cache=$(realpath -m "${BACKSTOP_BENCH_CACHE:-$repo/build/bench-cache}")
backstop=$build/cmd/backstop/backstop
backstopctl=$build/cmd/backstopctl/backstopctl
source_flags=(-A)  # keep going past a refusal: what was accepted is counted from the queue
[[ ${BENCH_REUSE_CONNECTIONS:-0} == 1 ]] && source_flags+=(-d)

note() { echo "ingest_compare: $*" >&2; }
die() { note "$@"; exit 1; }

work=$(mktemp -d "${BACKSTOP_BENCH_DIR:-${TMPDIR:-/tmp}}/ingest-compare.XXXXXX")
# Postfix's daemons run as an unprivileged account and must reach their instance below here.
chmod 755 "$work"
as_root=()       # prefix for the commands that need root (empty when we are root)
postfix_pid=""   # the process that runs the Postfix master (itself, or sudo)
postfix_pgid=""  # the master's process group: the master and every daemon
backstop_pid=""
load_pid=""      # smtp-source, while it runs

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
  [[ -n $backstop_pid ]] || return 0
  stop "$backstop_pid"
  wait "$backstop_pid" 2>/dev/null || true
  backstop_pid=""
}

cleanup() {
  set +e
  [[ -z $load_pid ]] || kill "$load_pid" 2>/dev/null
  stop_postfix
  stop_backstop
  # Can take a minute: each queue file is unlinked, and some disks discard synchronously.
  note "removing $work"
  "${as_root[@]}" rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

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

# load NAME SESSIONS ADDRESS: runs smtp-source; sets $seconds (wall clock).
load() {
  local name=$1 sessions=$2 address=$3 start end
  start=$EPOCHREALTIME
  # In the background, so that a signal to this script is handled at once (see cleanup).
  LD_LIBRARY_PATH=$postfix_lib timeout "$run_timeout" "$smtp_source" "${source_flags[@]}" \
      -s "$sessions" -m "$messages" -l "$size" -f "sender@example.com" -t "rcpt@example.com" \
      "$address" > "$work/$name.source.log" 2>&1 &
  load_pid=$!
  wait "$load_pid" || die "smtp-source against $name failed or took over ${run_timeout}s:
$(tail -n 20 "$work/$name.source.log")"
  end=$EPOCHREALTIME
  load_pid=""
  seconds=$(python3 -c "print(round($end - $start, 3))")
  if grep -q . "$work/$name.source.log"; then
    note "$name: smtp-source reported $(grep -c . "$work/$name.source.log") line(s), first:" \
         "$(head -n 1 "$work/$name.source.log")"
  fi
}

# report SYSTEM SESSIONS ACCEPTED SECONDS: one JSON line, also kept for the summary.
report() {
  local line
  line=$(python3 - "$@" "$size" "$messages" <<'PY'
import json, sys
system, sessions, accepted, seconds, size, messages = sys.argv[1:]
print(json.dumps({"system": system, "sessions": int(sessions), "size": int(size),
                  "messages": int(messages), "accepted": int(accepted),
                  "seconds": float(seconds),
                  "msg_per_s": round(int(accepted) / float(seconds), 1)}))
PY
)
  echo "$line"
  echo "$line" >> "$work/results"
  [[ $3 == "$messages" ]] || note "$1 with $2 sessions accepted $3 of $messages messages"
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

# start_postfix NAME: a fresh instance in $work/NAME; sets $postfix_address and $postfix_spool.
start_postfix() {
  local instance=$work/$1 dead_port
  mkdir -p "$instance/conf" "$instance/spool"
  chmod 755 "$instance"
  postfix_address=127.0.0.1:$(bench_free_port)
  dead_port=$(bench_free_port)  # the primary: nothing listens here
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

# Messages in the stopped instance's queue (incoming, active, deferred, hold).
postfix_queued() {
  "${as_root[@]}" find "$postfix_spool/incoming" "$postfix_spool/active" \
      "$postfix_spool/deferred" "$postfix_spool/hold" -type f | wc -l
}

measure_postfix() {
  local sessions=$1 accepted
  start_postfix "postfix-s$sessions"
  load "postfix-s$sessions" "$sessions" "$postfix_address"
  # Stopped first, so that no file moves between queue directories while they are counted.
  stop_postfix
  accepted=$(postfix_queued)
  report postfix "$sessions" "$accepted" "$seconds"
}

# --- Backstop ----------------------------------------------------------------------------------

prepare_backstop() {
  [[ -x $backstop ]] || die "no $backstop: build it first (make build)"
  [[ -x $backstopctl ]] || die "no $backstopctl: build it first (make build)"
  fetch_postfix  # for smtp-source
}

# start_backstop NAME: the standalone node (all roles, one voter) in $work/NAME; sets
# $backstop_address (SMTP) and $backstop_queue (gRPC, for backstopctl).
start_backstop() {
  local dir=$work/$1 queue_port dead_port log
  mkdir -p "$dir"
  queue_port=$(bench_free_port)
  dead_port=$(bench_free_port)
  backstop_queue=127.0.0.1:$queue_port
  cat > "$dir/backstop.toml" <<TOML
[node]
id = 1
hostname = "backstop.bench.test"
data_dir = "$dir/data"
roles = ["ingest", "queue", "delivery"]

[smtp]
listen = ["127.0.0.1:0"]
max_connections_per_ip = 1000

[queue]
listen = "$backstop_queue"
peers = ["1@$backstop_queue"]

[http]
listen = "127.0.0.1:0"

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
  log=$dir/backstop.log
  "$backstop" --config "$dir/backstop.toml" > "$log" 2> "$dir/backstop.stderr" < /dev/null &
  backstop_pid=$!
  backstop_address=""
  for _ in $(seq 1 $((start_timeout * 10))); do
    backstop_address=$(python3 - "$log" <<'PY'
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
$(tail -n 20 "$dir/backstop.stderr" "$log")"
    sleep 0.1
  done
  [[ -n $backstop_address ]] || die "no 'smtp listening' in $log within ${start_timeout}s (does this
binary have the ingest role?):
$(tail -n 20 "$log")"
  wait_smtp "$backstop_address" "$backstop_pid" "$log"
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

measure_backstop() {
  local sessions=$1 accepted
  start_backstop "backstop-s$sessions"
  load "backstop-s$sessions" "$sessions" "$backstop_address"
  accepted=$(backstop_queued)
  stop_backstop
  report backstop "$sessions" "$accepted" "$seconds"
}

# --- The run -----------------------------------------------------------------------------------

for system in $systems; do
  case $system in
    postfix) prepare_postfix ;;
    backstop) prepare_backstop ;;
    *) die "unknown system '$system' in BENCH_SYSTEMS (postfix, backstop)" ;;
  esac
done

baseline=$(bench_fsync_rate "$work")
echo "$baseline"
loadavg=$(cut -d' ' -f1-3 /proc/loadavg)
for sessions in $sessions_list; do
  for system in $systems; do
    "measure_$system" "$sessions"
  done
done

python3 - "$work/results" "$baseline" "$loadavg" "$(nproc)" "$(cut -d' ' -f1-3 /proc/loadavg)" <<'PY'
import json, sys
runs = [json.loads(line) for line in open(sys.argv[1])]
rate = {(r["system"], r["sessions"]): r["msg_per_s"] for r in runs}
ratios = {}
for (system, sessions), backstop in rate.items():
    postfix = rate.get(("postfix", sessions))
    if system == "backstop" and postfix:
        ratios[str(sessions)] = round(backstop / postfix, 2)
print(json.dumps({"summary": "ingest, primary down", "ratio_backstop_over_postfix": ratios,
                  "fsyncs_per_second": json.loads(sys.argv[2])["fsyncs_per_second"],
                  "cores": int(sys.argv[4]),
                  "loadavg_before": sys.argv[3], "loadavg_after": sys.argv[5]}))
PY
