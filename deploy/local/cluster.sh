#!/usr/bin/env bash
# The Kubernetes topology as processes on loopback: 3 queue voters, 2 ingest, 2 delivery, each a
# `backstop` with one role, from configurations generated here. The way to try the cluster (and
# the Grafana dashboard) without Kubernetes.
#
#   deploy/local/cluster.sh start    # generate configs, start, wait until ready, print endpoints
#   deploy/local/cluster.sh start --plaintext   # the same without cluster mTLS
#   deploy/local/cluster.sh status   # each process: pid, alive, ready; then the Raft view
#   deploy/local/cluster.sh stop     # SIGTERM (drain), SIGKILL after 40s; data is kept
#
# Environment (defaults in brackets):
#   BACKSTOP_LOCAL_DIR      state: configs, data, logs, pids [build/local-cluster]
#   BACKSTOP_LOCAL_PORT     base port P [17000]: queue gRPC P+1..3, ingest SMTP P+11..12,
#                           HTTP (metrics, probes) queue P+101..103, ingest P+111..112,
#                           delivery P+121..122
#   BACKSTOP_LOCAL_DOMAIN   the relay domain [example.test]
#   BACKSTOP_LOCAL_PRIMARY  its primary MX, host:port [127.0.0.1:2526]; mail waits while down
#   BACKSTOP_BIN, BACKSTOPCTL_BIN  the binaries [build/release/cmd/...]
#
# gRPC between the processes is mTLS ([cluster_tls]) unless started with --plaintext: the first
# start writes a cluster CA, one node certificate every process shares and an admin client
# certificate (OU=backstop-admin, for backstopctl's changes) into <state>/tls with the openssl
# CLI, as the README's "Cluster security (mTLS)" recipe does. Later starts reuse them until one
# is within a day of expiring.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
dir="${BACKSTOP_LOCAL_DIR:-$repo/build/local-cluster}"
port="${BACKSTOP_LOCAL_PORT:-17000}"
domain="${BACKSTOP_LOCAL_DOMAIN:-example.test}"
primary="${BACKSTOP_LOCAL_PRIMARY:-127.0.0.1:2526}"
backstop="${BACKSTOP_BIN:-$repo/build/release/cmd/backstop/backstop}"
backstopctl="${BACKSTOPCTL_BIN:-$repo/build/release/cmd/backstopctl/backstopctl}"

queue_nodes=(q1 q2 q3)
ingest_nodes=(i1 i2)
delivery_nodes=(d1 d2)
all_nodes=("${queue_nodes[@]}" "${ingest_nodes[@]}" "${delivery_nodes[@]}")
tls="$dir/tls"

# Node n of each role: its id, its ports.
index() { echo "${1:1}"; }
role_of() {
  case "$1" in q*) echo queue ;; i*) echo ingest ;; d*) echo delivery ;; esac
}
node_id() {
  case "$1" in q*) index "$1" ;; i*) echo $((10 + $(index "$1"))) ;; d*) echo $((20 + $(index "$1"))) ;; esac
}
grpc_port() { echo $((port + $(index "$1"))); }
smtp_port() { echo $((port + 10 + $(index "$1"))); }
http_port() {
  case "$1" in
    q*) echo $((port + 100 + $(index "$1"))) ;;
    i*) echo $((port + 110 + $(index "$1"))) ;;
    d*) echo $((port + 120 + $(index "$1"))) ;;
  esac
}

peer_list() {
  local list="" q
  for q in "${queue_nodes[@]}"; do
    list+="${list:+, }\"$(index "$q")@127.0.0.1:$(grpc_port "$q")\""
  done
  echo "$list"
}
endpoint_list() {
  local list="" q
  for q in "${queue_nodes[@]}"; do
    list+="${list:+, }\"127.0.0.1:$(grpc_port "$q")\""
  done
  echo "$list"
}

# The README's recipe: an EC P-256 CA, and certificates it signs.
issue_certificate() { # name subject extended-key-usage
  openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
    -keyout "$1.key" -out "$1.csr" -subj "$2" 2>/dev/null
  printf 'basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=%s\n' \
    "$3" > "$1.ext"
  openssl x509 -req -in "$1.csr" -CA ca.crt -CAkey ca.key -CAcreateserial -days 365 \
    -extfile "$1.ext" -out "$1.crt" 2>/dev/null
  rm -f "$1.csr" "$1.ext"
}

# Keeps the certificates of an earlier start unless one is missing or expires within a day.
make_certificates() {
  command -v openssl >/dev/null || { echo "openssl missing (or start with --plaintext)" >&2; exit 1; }
  local name fresh=1
  for name in ca node admin; do
    openssl x509 -checkend 86400 -noout -in "$tls/$name.crt" >/dev/null 2>&1 || fresh=0
  done
  [ "$fresh" = 1 ] && return
  rm -rf "$tls"
  mkdir -p "$tls"
  (
    cd "$tls"
    umask 077
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 3650 \
      -keyout ca.key -out ca.crt -subj "/CN=Backstop local cluster CA" \
      -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign \
      2>/dev/null
    issue_certificate node "/CN=backstop-node" serverAuth,clientAuth
    issue_certificate admin "/CN=local-admin/OU=backstop-admin" clientAuth
  ) || { echo "could not write the certificates into $tls" >&2; exit 1; }
}

# Whether the running (or last started) cluster uses mTLS: its configurations say.
mutual_tls() { grep -q '^\[cluster_tls\]' "$dir/q1/backstop.toml" 2>/dev/null; }

# backstopctl's TLS flags for this cluster: the admin certificate, or none in plaintext.
ctl_tls_flags() {
  ctl_tls=()
  if mutual_tls; then
    ctl_tls=(--tls-ca "$tls/ca.crt" --tls-cert "$tls/admin.crt" --tls-key "$tls/admin.key")
  fi
}

write_config() { # node mode (mtls or plaintext)
  local node="$1" mode="$2" role
  role="$(role_of "$node")"
  {
    echo "[node]"
    echo "id = $(node_id "$node")"
    echo "hostname = \"mx2.local.test\""
    echo "data_dir = \"$dir/$node/data\""
    echo "roles = [\"$role\"]"
    echo
    echo "[queue]"
    if [ "$role" = queue ]; then
      echo "listen = \"127.0.0.1:$(grpc_port "$node")\""
      echo "peers = [$(peer_list)]"
    else
      echo "endpoints = [$(endpoint_list)]"
    fi
    if [ "$role" = ingest ]; then
      echo
      echo "[smtp]"
      echo "listen = [\"127.0.0.1:$(smtp_port "$node")\"]"
      echo "commit_timeout = \"10s\""
      echo
      echo "[filters]"
      echo "# Test mail comes from made-up domains: skip the check that the sender's exists."
      echo "sender = { enabled = false }"
    fi
    echo
    echo "[http]"
    echo "listen = \"127.0.0.1:$(http_port "$node")\""
    echo
    echo "[delivery]"
    echo "retry_initial = \"5s\""
    echo "retry_max = \"30s\""
    echo
    echo "[[domain]]"
    echo "name = \"$domain\""
    echo "primary = [\"$primary\"]"
    echo "recipients = []"
    if [ "$mode" = mtls ]; then
      echo
      echo "[cluster_tls]"
      echo "ca = \"$tls/ca.crt\""
      echo "cert = \"$tls/node.crt\""
      echo "key = \"$tls/node.key\""
    fi
  } > "$dir/$node/backstop.toml"
}

pid_of() { cat "$dir/$1/pid" 2>/dev/null || true; }
alive() { local pid; pid="$(pid_of "$1")"; [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; }
ready() { curl -fs -o /dev/null --max-time 2 "http://127.0.0.1:$(http_port "$1")/readyz"; }

prometheus_config() {
  local node role targets
  {
    echo "# Scrapes this local cluster: prometheus --config.file=$dir/prometheus.yml"
    echo "global: {scrape_interval: 5s, evaluation_interval: 5s}"
    echo "rule_files: [\"$repo/deploy/prometheus/alerts.yml\"]"
    echo "scrape_configs:"
    echo "  - job_name: backstop"
    echo "    static_configs:"
    for role in queue ingest delivery; do
      targets=""
      for node in "${all_nodes[@]}"; do
        [ "$(role_of "$node")" = "$role" ] || continue
        targets+="${targets:+, }\"127.0.0.1:$(http_port "$node")\""
      done
      echo "      - {targets: [$targets], labels: {component: $role}}"
    done
  } > "$dir/prometheus.yml"
}

print_endpoints() {
  local node
  echo "SMTP (ingest):        $(for n in "${ingest_nodes[@]}"; do printf '127.0.0.1:%s ' "$(smtp_port "$n")"; done)"
  echo "queue gRPC (voters):  $(for n in "${queue_nodes[@]}"; do printf '127.0.0.1:%s ' "$(grpc_port "$n")"; done)"
  for node in "${all_nodes[@]}"; do
    printf 'HTTP %-9s %-3s http://127.0.0.1:%s/metrics  /status /readyz /livez\n' \
      "$(role_of "$node")" "$node" "$(http_port "$node")"
  done
  ctl_tls_flags
  if mutual_tls; then
    echo "backstopctl (admin):  $backstopctl --endpoint 127.0.0.1:$(grpc_port q1) ${ctl_tls[*]} cluster status"
    echo "  or in a shell:      export BACKSTOP_ENDPOINT=127.0.0.1:$(grpc_port q1) BACKSTOP_TLS_CA=$tls/ca.crt BACKSTOP_TLS_CERT=$tls/admin.crt BACKSTOP_TLS_KEY=$tls/admin.key"
    echo "cluster mTLS:         CA $tls/ca.crt, node certificate $tls/node.crt, admin $tls/admin.crt"
  else
    echo "backstopctl:          BACKSTOP_ENDPOINT=127.0.0.1:$(grpc_port q1) $backstopctl cluster status"
    echo "cluster gRPC:         plaintext (--plaintext)"
  fi
  echo "Prometheus config:    $dir/prometheus.yml (relay domain $domain, primary $primary)"
}

start() {
  local node mode=mtls
  case "${1:-}" in
    '') ;;
    --plaintext) mode=plaintext ;;
    *)
      echo "usage: $0 start [--plaintext]" >&2
      exit 2
      ;;
  esac
  [ -x "$backstop" ] || { echo "no backstop binary at $backstop (run: make build)" >&2; exit 1; }
  for node in "${all_nodes[@]}"; do
    if alive "$node"; then
      echo "already running ($node, pid $(pid_of "$node")): deploy/local/cluster.sh stop first" >&2
      exit 1
    fi
  done
  if [ "$mode" = mtls ]; then make_certificates; fi
  for node in "${all_nodes[@]}"; do
    mkdir -p "$dir/$node/data"
    write_config "$node" "$mode"
  done
  prometheus_config
  # Voters first, together (like podManagementPolicy: Parallel), then the clients.
  for node in "${all_nodes[@]}"; do
    (cd "$dir/$node" && exec "$backstop" --config backstop.toml >>"$dir/$node/log" 2>&1) &
    echo $! > "$dir/$node/pid"
  done
  local deadline=$((SECONDS + 60))
  for node in "${all_nodes[@]}"; do
    until ready "$node"; do
      if ! alive "$node"; then
        echo "$node exited; its log:" >&2
        tail -n 20 "$dir/$node/log" >&2
        stop >/dev/null
        exit 1
      fi
      if [ "$SECONDS" -ge "$deadline" ]; then
        echo "$node not ready after 60s; see $dir/$node/log" >&2
        stop >/dev/null
        exit 1
      fi
      sleep 0.2
    done
  done
  echo "Backstop local cluster ready in $dir"
  print_endpoints
}

status() {
  local node state ok=0
  printf '%-4s %-9s %-8s %s\n' NODE ROLE PID STATE
  for node in "${all_nodes[@]}"; do
    if ! alive "$node"; then
      state=stopped
      ok=1
    elif ready "$node"; then
      state=ready
    else
      state="running, not ready"
      ok=1
    fi
    printf '%-4s %-9s %-8s %s\n' "$node" "$(role_of "$node")" "$(pid_of "$node")" "$state"
  done
  if [ -x "$backstopctl" ] && alive q1; then
    echo
    ctl_tls_flags
    "$backstopctl" --endpoint "127.0.0.1:$(grpc_port q1)" "${ctl_tls[@]}" --timeout 3s \
      cluster status || ok=1
  fi
  return "$ok"
}

# SIGTERM drains: ingest finishes its sessions, delivery its transactions, a leading voter hands
# over. The clients go first, while the queue they report to is still there.
stop_nodes() {
  local node pid waited
  for node in "$@"; do
    if alive "$node"; then kill -TERM "$(pid_of "$node")"; fi
  done
  for node in "$@"; do
    pid="$(pid_of "$node")"
    waited=0
    while [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; do
      if [ "$waited" -ge 400 ]; then
        echo "$node (pid $pid) did not drain in 40s: SIGKILL" >&2
        kill -KILL "$pid" 2>/dev/null || true
        break
      fi
      sleep 0.1
      waited=$((waited + 1))
    done
    rm -f "$dir/$node/pid"
  done
}

stop() {
  stop_nodes "${ingest_nodes[@]}" "${delivery_nodes[@]}"
  stop_nodes "${queue_nodes[@]}"
  echo "stopped (data kept in $dir)"
}

case "${1:-}" in
  start) start "${2:-}" ;;
  status) status ;;
  stop) stop ;;
  *)
    echo "usage: $0 start [--plaintext]|status|stop" >&2
    exit 2
    ;;
esac
