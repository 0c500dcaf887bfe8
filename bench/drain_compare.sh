#!/usr/bin/env bash
# Drain when the primary comes back (issue 6's benchmark): a backlog of N messages of 2 KiB is
# queued while the primary is down, then the primary (Postfix's smtp-sink) starts and the queue
# is flushed (Postfix: `postqueue -f`; Backstop: `backstopctl queue flush`, as ETRN would); the
# drain is timed until the queue is empty. Postfix as a backup MX and the standalone Backstop
# node drain the same backlog (smtp-source messages to the same sink) in the same run. Prints
# one JSON line per system, then a summary with the ratio Backstop/Postfix.
#   bench/drain_compare.sh [BUILD_DIR]        (default build/release)
#
# Both run with their default delivery concurrency (Postfix: 20 connections per destination;
# Backstop: connections_per_domain = 8). Postfix's part needs root or passwordless sudo (see
# bench/ingest_compare.sh, which runs Postfix the same way, through bench/lib.sh).
#
# Environment: BENCH_MESSAGES (50000), BENCH_SIZE (2048), BENCH_SYSTEMS ("postfix backstop"),
# BENCH_FILL_SESSIONS (20 smtp-source sessions filling the queue), BENCH_START_TIMEOUT (30 s),
# BENCH_RUN_TIMEOUT (1800 s for a fill or a drain), BACKSTOP_BENCH_DIR, BACKSTOP_BENCH_CACHE,
# BENCH_POSTFIX_MAIL_OWNER, BENCH_POSTFIX_SETGID_GROUP, BENCH_POSTFIX_DEFAULT_PRIVS.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(dirname "$here")
# shellcheck source=bench/lib.sh
. "$here/lib.sh"

build=$(realpath -m "${1:-build/release}")
messages=${BENCH_MESSAGES:-50000}
size=${BENCH_SIZE:-2048}
systems=${BENCH_SYSTEMS:-postfix backstop}
fill_sessions=${BENCH_FILL_SESSIONS:-20}
start_timeout=${BENCH_START_TIMEOUT:-30}
run_timeout=${BENCH_RUN_TIMEOUT:-1800}
cache=$(realpath -m "${BACKSTOP_BENCH_CACHE:-$repo/build/bench-cache}")
backstop=$build/cmd/backstop/backstop
backstopctl=$build/cmd/backstopctl/backstopctl

note() { echo "drain_compare: $*" >&2; }
die() { note "$@"; exit 1; }

bench_setup drain-compare

# fill NAME ADDRESS: queues $messages messages through SMTP (many per connection; not timed).
fill() {
  local name=$1 address=$2
  note "$name: queueing $messages messages of $size bytes"
  LD_LIBRARY_PATH=$postfix_lib timeout "$run_timeout" "$smtp_source" -A -d \
      -s "$fill_sessions" -m "$messages" -l "$size" -f "sender@example.com" \
      -t "rcpt@example.com" "$address" > "$work/$name.fill.log" 2>&1 &
  load_pid=$!
  wait "$load_pid" || die "smtp-source against $name failed:
$(tail -n 20 "$work/$name.fill.log")"
  load_pid=""
}

# report SYSTEM SECONDS DELIVERED: one JSON line, also kept for the summary.
report() {
  local line
  line=$(python3 - "$@" "$messages" "$size" <<'PY'
import json, sys
system, seconds, delivered, messages, size = sys.argv[1:]
print(json.dumps({"system": system, "messages": int(messages), "size": int(size),
                  "delivered": int(delivered), "drain_seconds": float(seconds),
                  "msg_per_s": round(int(messages) / float(seconds), 1)}))
PY
)
  echo "$line"
  echo "$line" >> "$work/results"
  [[ $3 == "$messages" ]] || note "$1 delivered $3 of $messages messages to the sink"
}

# --- Postfix -----------------------------------------------------------------------------------

measure_postfix() {
  local sink_port start end
  sink_port=$(bench_free_port)
  start_postfix postfix "$sink_port"
  fill postfix "$postfix_address"
  # Every message tried once against the dead primary and deferred: the backlog.
  wait_until postfix_undeferred 0 "postfix: messages not yet deferred"
  [[ $(postfix_queued) == "$messages" ]] || die "postfix queued $(postfix_queued) of $messages"
  start_sink "$sink_port" postfix
  start=$EPOCHREALTIME
  "${as_root[@]}" env LD_LIBRARY_PATH="$postfix_lib" "$postfix_root/usr/sbin/postqueue" \
      -c "$postfix_conf" -f || die "postqueue -f failed"
  wait_until postfix_queued 0 "postfix: messages queued"
  end=$EPOCHREALTIME
  stop_sink
  stop_postfix
  report postfix "$(python3 -c "print(round($end - $start, 3))")" \
      "$("${as_root[@]}" grep -c "status=sent" "$work/postfix/maillog" || true)"
}

# --- Backstop ----------------------------------------------------------------------------------

measure_backstop() {
  local sink_port start end
  sink_port=$(bench_free_port)
  start_backstop backstop "$sink_port"
  fill backstop "$backstop_address"
  [[ $(backstop_queued) == "$messages" ]] || die "backstop queued $(backstop_queued) of $messages"
  start_sink "$sink_port" backstop
  start=$EPOCHREALTIME
  "$backstopctl" --endpoint "$backstop_queue" queue flush example.com > /dev/null \
    || die "backstopctl queue flush failed"
  wait_until backstop_queued 0 "backstop: messages queued"
  end=$EPOCHREALTIME
  stop_sink
  stop_backstop
  report backstop "$(python3 -c "print(round($end - $start, 3))")" \
      "$(grep -c '"msg":"delivered"' "$backstop_log" || true)"
}

# --- The run -----------------------------------------------------------------------------------

prepare_systems "$systems"

loadavg=$(cut -d' ' -f1-3 /proc/loadavg)
for system in $systems; do
  "measure_$system"
done

python3 - "$work/results" "$loadavg" "$(nproc)" "$(cut -d' ' -f1-3 /proc/loadavg)" <<'PY'
import json, sys
rate = {r["system"]: r["msg_per_s"] for r in map(json.loads, open(sys.argv[1]))}
summary = {"summary": "drain of a backlog when the primary returns", "msg_per_s": rate,
           "cores": int(sys.argv[3]), "loadavg_before": sys.argv[2], "loadavg_after": sys.argv[4]}
if rate.get("postfix") and rate.get("backstop"):
    summary["ratio_backstop_over_postfix"] = round(rate["backstop"] / rate["postfix"], 2)
print(json.dumps(summary))
PY
