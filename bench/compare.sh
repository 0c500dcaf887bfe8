#!/usr/bin/env bash
# Backstop beside Postfix as a backup MX, on the same machine in one run (issue 11), every load
# from backstop-loadgen:
#   ingest  the primary is down, everything queues: accepted msg/s and p99 end of data → reply,
#           and for Backstop a second run capped at half the rate just measured (p99 there);
#   relay   the primary (Postfix's smtp-sink) is up: accepted msg/s, and msg/s until the queue
#           is empty again (accepted and relayed);
#   drain   a backlog of BENCH_BACKLOG messages queued while the primary was down is flushed
#           when it returns (Postfix: postqueue -f; Backstop: backstopctl queue flush): msg/s
#           until the queue is empty;
# for each message size and session count (drain: each size), Backstop as one voter and as a
# 3-voter cluster on the same machine (the load goes to node 1), beside the raw fsync rate of the
# disk. Prints one JSON line per run, then a table with the ratios Backstop/Postfix, and writes
# everything as one JSON document to BENCH_OUTPUT.
#   bench/compare.sh [BUILD_DIR]        (default build/release; make bench-compare)
#
# Postfix runs from Debian's package extracted by bench/lib.sh, which needs root or passwordless
# sudo (see bench/ingest_compare.sh).
#
# Environment: BENCH_SCENARIOS ("ingest relay drain"), BENCH_SIZES ("2048 51200", bytes),
# BENCH_SESSIONS ("10 50"), BENCH_MESSAGES (5000 per ingest or relay run), BENCH_BACKLOG (50000),
# BENCH_TOPOLOGIES ("standalone cluster3"), BENCH_SYSTEMS ("postfix backstop"),
# BENCH_PIPELINING (on), BENCH_MESSAGES_PER_CONNECTION (1, like smtp-source without -d),
# BENCH_HALF_RATE_SYSTEMS ("backstop"; "" for none), BENCH_FILL_SESSIONS (20),
# BENCH_OUTPUT (BUILD_DIR/bench-compare.json), BENCH_START_TIMEOUT (30 s), BENCH_RUN_TIMEOUT
# (1800 s), BACKSTOP_BENCH_DIR, BACKSTOP_BENCH_CACHE, BENCH_POSTFIX_MAIL_OWNER,
# BENCH_POSTFIX_SETGID_GROUP, BENCH_POSTFIX_DEFAULT_PRIVS.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(dirname "$here")
# shellcheck source=bench/lib.sh
. "$here/lib.sh"

build=$(realpath -m "${1:-build/release}")
scenarios=${BENCH_SCENARIOS:-ingest relay drain}
sizes=${BENCH_SIZES:-2048 51200}
sessions_list=${BENCH_SESSIONS:-10 50}
messages=${BENCH_MESSAGES:-5000}
backlog=${BENCH_BACKLOG:-50000}
topologies=${BENCH_TOPOLOGIES:-standalone cluster3}
systems=${BENCH_SYSTEMS:-postfix backstop}
pipelining=${BENCH_PIPELINING:-on}
per_connection=${BENCH_MESSAGES_PER_CONNECTION:-1}
half_rate_systems=${BENCH_HALF_RATE_SYSTEMS-backstop}
fill_sessions=${BENCH_FILL_SESSIONS:-20}
output=$(realpath -m "${BENCH_OUTPUT:-$build/bench-compare.json}")
start_timeout=${BENCH_START_TIMEOUT:-30}
run_timeout=${BENCH_RUN_TIMEOUT:-1800}
cache=$(realpath -m "${BACKSTOP_BENCH_CACHE:-$repo/build/bench-cache}")
backstop=$build/cmd/backstop/backstop
backstopctl=$build/cmd/backstopctl/backstopctl
loadgen=$build/bench/backstop-loadgen

note() { echo "compare: $*" >&2; }
die() { note "$@"; exit 1; }

[[ -x $loadgen ]] || die "no $loadgen: build it first (make build)"
bench_setup compare

voters_of() {
  case $1 in
    standalone) echo 1 ;;
    cluster3) echo 3 ;;
    *) die "unknown topology '$1' in BENCH_TOPOLOGIES (standalone, cluster3)" ;;
  esac
}

# load NAME ADDRESS SESSIONS SIZE COUNT [LOADGEN FLAGS...]: runs backstop-loadgen; its JSON
# document goes to $work/NAME.json.
load() {
  local name=$1 address=$2 sessions=$3 size=$4 count=$5
  shift 5
  # In the background, so that a signal to this script is handled at once (see cleanup).
  timeout "$run_timeout" "$loadgen" --json --sessions "$sessions" --messages "$count" \
      --size "$size" --pipelining "$pipelining" --sender sender@example.net \
      --domain example.com "$@" "$address" > "$work/$name.json" 2> "$work/$name.err" &
  load_pid=$!
  wait "$load_pid" || note "$name: backstop-loadgen exited with $? $(head -c 300 "$work/$name.err")"
  load_pid=""
  [[ -s $work/$name.json ]] || die "$name: backstop-loadgen printed nothing:
$(tail -n 20 "$work/$name.err")"
}

# record KEY=VALUE... [-- LOADGEN_JSON_FILE]: one JSON line for a run (numbers stay numbers),
# with the loadgen figures folded in; printed and kept for the summary.
record() {
  local line
  line=$(python3 - "$@" <<'PY'
import json, sys
args = sys.argv[1:]
run, loadgen = {}, None
if "--" in args:
    loadgen = json.load(open(args[args.index("--") + 1]))
    args = args[:args.index("--")]
for arg in args:
    key, value = arg.split("=", 1)
    try:
        run[key] = json.loads(value)
    except ValueError:
        run[key] = value
if loadgen:
    run.setdefault("accepted", loadgen["accepted"])
    run["accepted_msg_per_s"] = loadgen["msg_per_s"]
    run["replies"] = loadgen["replies"]
    run["p99_ms"] = loadgen["latency_ms"]["data_end_to_reply"]["p99"]
    run["latency_ms"] = loadgen["latency_ms"]
    run["loadgen_seconds"] = loadgen["seconds"]
print(json.dumps(run))
PY
)
  echo "$line"
  echo "$line" >> "$work/results"
}

seconds_since() { python3 -c "import sys; print(round($EPOCHREALTIME - $1, 3))"; }
rate_of() { python3 -c "print(round($1 / $2, 1) if $2 > 0 else 0)"; }
json_field() { python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))[sys.argv[2]])' "$@"; }

# start_system SYSTEM TOPOLOGY NAME [PRIMARY_PORT]: sets $address and $queued_cmd.
start_system() {
  case $1 in
    postfix)
      start_postfix "$3" ${4:+"$4"}
      address=$postfix_address
      queued_cmd=postfix_queued
      ;;
    backstop)
      start_backstop "$3" "${4:-$(bench_free_port)}" "$(voters_of "$2")"
      address=$backstop_address
      queued_cmd=backstop_queued
      ;;
  esac
}

stop_system() {
  case $1 in
    postfix) stop_postfix ;;
    backstop) stop_backstop ;;
  esac
}

# The topologies a system is measured in (Postfix has no cluster).
topologies_of() { if [[ $1 == postfix ]]; then echo single; else echo "$topologies"; fi; }

# --- (a) ingest while the primary is down ----------------------------------------------------------

measure_ingest() {
  local system=$1 topology=$2 size=$3 sessions=$4 name queued accepted rate
  local entries="null" per_fsync="null"
  name=ingest-$system-$topology-$size-$sessions
  start_system "$system" "$topology" "$name"
  load "$name" "$address" "$sessions" "$size" "$messages" \
      --messages-per-connection "$per_connection"
  [[ $system == backstop ]] \
    && read -r entries per_fsync < <(backstop_fsync_factors "$(json_field "$work/$name.json" accepted)")
  if [[ " $half_rate_systems " == *" $system "* ]]; then
    rate=$(python3 -c "print(max(1, round($(json_field "$work/$name.json" msg_per_s) / 2)))")
    load "$name-half" "$address" "$sessions" "$size" "$messages" \
        --messages-per-connection "$per_connection" --rate "$rate"
  fi
  # Postfix is stopped first, so that no file moves between queue directories while counted.
  [[ $system == postfix ]] && stop_system "$system"
  queued=$($queued_cmd)
  stop_system "$system"
  accepted=$(json_field "$work/$name.json" accepted)
  [[ -f $work/$name-half.json ]] \
    && accepted=$((accepted + $(json_field "$work/$name-half.json" accepted)))
  [[ $queued == "$accepted" ]] \
    || note "$name: the loadgen counted $accepted accepted, but $queued are queued"
  record scenario=ingest "system=$system" "topology=$topology" "size=$size" \
      "sessions=$sessions" "messages=$messages" "queued_total=$queued" \
      "msg_per_s=$(json_field "$work/$name.json" msg_per_s)" \
      "entries_per_fsync=$entries" "messages_per_fsync=$per_fsync" -- "$work/$name.json"
  if [[ -f $work/$name-half.json ]]; then
    record scenario=ingest-half-rate "system=$system" "topology=$topology" "size=$size" \
        "sessions=$sessions" "messages=$messages" "rate_cap=$rate" \
        "msg_per_s=$(json_field "$work/$name-half.json" msg_per_s)" -- "$work/$name-half.json"
  fi
}

# --- (b) relay while the primary is up ---------------------------------------------------------------

measure_relay() {
  local system=$1 topology=$2 size=$3 sessions=$4 name sink_port start accepted
  name=relay-$system-$topology-$size-$sessions
  sink_port=$(bench_free_port)
  start_sink "$sink_port" "$name"
  start_system "$system" "$topology" "$name" "$sink_port"
  start=$EPOCHREALTIME
  load "$name" "$address" "$sessions" "$size" "$messages" \
      --messages-per-connection "$per_connection"
  wait_until "$queued_cmd" 0 "$name: messages still queued"
  seconds=$(seconds_since "$start")
  stop_system "$system"
  stop_sink
  accepted=$(json_field "$work/$name.json" accepted)
  record scenario=relay "system=$system" "topology=$topology" "size=$size" \
      "sessions=$sessions" "messages=$messages" "relay_seconds=$seconds" \
      "msg_per_s=$(rate_of "$accepted" "$seconds")" -- "$work/$name.json"
}

# --- (c) drain of a backlog when the primary returns ------------------------------------------------

measure_drain() {
  local system=$1 topology=$2 size=$3 name sink_port start queued
  name=drain-$system-$topology-$size
  sink_port=$(bench_free_port)
  start_system "$system" "$topology" "$name" "$sink_port"
  note "$name: queueing $backlog messages of $size bytes"
  load "$name-fill" "$address" "$fill_sessions" "$size" "$backlog" --messages-per-connection 100
  if [[ $system == postfix ]]; then
    # Every message tried once against the dead primary and deferred: the backlog.
    wait_until postfix_undeferred 0 "$name: messages not yet deferred" "$backlog"
  fi
  queued=$($queued_cmd)
  [[ $queued == "$(json_field "$work/$name-fill.json" accepted)" ]] \
    || note "$name: $queued queued, but the loadgen counted $(json_field "$work/$name-fill.json" accepted) accepted"
  start_sink "$sink_port" "$name"
  start=$EPOCHREALTIME
  if [[ $system == postfix ]]; then
    "${as_root[@]}" env LD_LIBRARY_PATH="$postfix_lib" "$postfix_root/usr/sbin/postqueue" \
        -c "$postfix_conf" -f || die "postqueue -f failed"
  else
    "$backstopctl" --endpoint "$backstop_queue" queue flush example.com > /dev/null \
      || die "backstopctl queue flush failed"
  fi
  wait_until "$queued_cmd" 0 "$name: messages still queued" "$backlog"
  seconds=$(seconds_since "$start")
  stop_sink
  stop_system "$system"
  record scenario=drain "system=$system" "topology=$topology" "size=$size" \
      "backlog=$queued" "drain_seconds=$seconds" "msg_per_s=$(rate_of "$queued" "$seconds")"
}

# --- The run -------------------------------------------------------------------------------------

prepare_systems "$systems"
for topology in $topologies; do voters_of "$topology" > /dev/null; done

fsync=$(bench_fsync_rate "$work")
echo "$fsync"
loadavg_before=$(cut -d' ' -f1-3 /proc/loadavg)
started_at=$(date -u +%FT%TZ)
for scenario in $scenarios; do
  for size in $sizes; do
    case $scenario in
      ingest | relay)
        for sessions in $sessions_list; do
          for system in $systems; do
            for topology in $(topologies_of "$system"); do
              "measure_$scenario" "$system" "$topology" "$size" "$sessions"
            done
          done
        done
        ;;
      drain)
        for system in $systems; do
          for topology in $(topologies_of "$system"); do
            measure_drain "$system" "$topology" "$size"
          done
        done
        ;;
      *) die "unknown scenario '$scenario' in BENCH_SCENARIOS (ingest, relay, drain)" ;;
    esac
  done
done

python3 - "$work/results" "$fsync" "$output" "$loadavg_before" "$(cut -d' ' -f1-3 /proc/loadavg)" \
    "$(nproc)" "$started_at" "$(git -C "$repo" rev-parse --short HEAD 2>/dev/null || echo unknown)" \
    "$(uname -r)" <<'PY'
import json, sys
results, fsync, output, before, after, cores, started, commit, kernel = sys.argv[1:]
runs = [json.loads(line) for line in open(results)]
postfix = {(r["scenario"], r["size"], r.get("sessions")): r for r in runs if r["system"] == "postfix"}
ratios = []
for r in runs:
    p = postfix.get((r["scenario"], r["size"], r.get("sessions")))
    if r["system"] != "backstop" or not p or not p["msg_per_s"]:
        continue
    ratios.append({"scenario": r["scenario"], "topology": r["topology"], "size": r["size"],
                   "sessions": r.get("sessions"),
                   "backstop_msg_per_s": r["msg_per_s"], "postfix_msg_per_s": p["msg_per_s"],
                   "ratio": round(r["msg_per_s"] / p["msg_per_s"], 2)})
document = {"benchmark": "bench/compare.sh", "commit": commit, "started": started,
            "machine": {"cores": int(cores), "kernel": kernel, "loadavg_before": before,
                        "loadavg_after": after},
            "fsyncs_per_second": json.loads(fsync)["fsyncs_per_second"],
            "runs": runs, "ratios": ratios}
with open(output, "w") as f:
    json.dump(document, f, indent=1)
    f.write("\n")

print(f"\n{cores} cores, load average {before} before, {after} after; "
      f"raw fdatasync {document['fsyncs_per_second']}/s; commit {commit}")
header = f"{'scenario':<17}{'system':<9}{'topology':<11}{'size':>6}{'sess':>5}" \
         f"{'msg/s':>9}{'p99 ms':>9}{'entries/fsync':>14}{'msgs/fsync':>11}"
print(header)
for r in runs:
    p99 = r.get("p99_ms")
    epf = r.get("entries_per_fsync")
    mpf = r.get("messages_per_fsync")
    print(f"{r['scenario']:<17}{r['system']:<9}{r['topology']:<11}{r['size']:>6}"
          f"{r.get('sessions') or '':>5}{r['msg_per_s']:>9}"
          f"{'' if p99 is None else p99:>9}{'' if epf is None else epf:>14}"
          f"{'' if mpf is None else mpf:>11}")
print("\nratios Backstop/Postfix")
for x in ratios:
    print(f"  {x['scenario']:<8}{x['topology']:<11}{x['size']:>6} B {x['sessions'] or '':>3} sessions:"
          f" {x['ratio']}x ({x['backstop_msg_per_s']} / {x['postfix_msg_per_s']} msg/s)")
print(f"\nJSON: {output}")
PY
