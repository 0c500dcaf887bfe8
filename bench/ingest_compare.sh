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

bench_setup ingest-compare

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


measure_postfix() {
  local sessions=$1 accepted
  start_postfix "postfix-s$sessions"
  load "postfix-s$sessions" "$sessions" "$postfix_address"
  # Stopped first, so that no file moves between queue directories while they are counted.
  stop_postfix
  accepted=$(postfix_queued)
  report postfix "$sessions" "$accepted" "$seconds"
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

prepare_systems "$systems"

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
