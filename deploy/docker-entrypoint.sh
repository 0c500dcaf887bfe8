#!/bin/sh
# Writes this pod's Backstop configuration, then runs backstop with it.
#
# The [node] and [queue] tables depend on the pod's identity and are generated here; every other
# table comes from the TOML fragments of the mounted ConfigMap (BACKSTOP_CONFIG_DIR/*.toml, in
# name order), which must not contain [node] or [queue].
#
#   node.id   queue role: StatefulSet ordinal + 1 (pod backstop-queue-2 is voter 3); ingest and
#             delivery: 65536 + the low 16 bits of the pod IP, so never a voter's id, and unique
#             among the running pods while the pod network is a /16 or smaller (message ids
#             carry the low 16 bits of the node id).
#   peers     voters 1..BACKSTOP_VOTERS at <statefulset>-<ordinal>.<peer service>.<namespace>.
#             svc.<cluster domain>:7025; a queue pod whose id is above BACKSTOP_VOTERS starts
#             with join = true, empty, to be added with `backstopctl cluster add`.
#   endpoints ingest and delivery reach the queue through the same voter addresses (the client
#             follows the leader from any of them).
#
# `backstop-entrypoint render` prints the configuration instead of starting backstop.
set -eu

role="${BACKSTOP_ROLE:?set BACKSTOP_ROLE to queue, ingest or delivery}"
voters="${BACKSTOP_VOTERS:?set BACKSTOP_VOTERS to the number of initial queue voters}"
hostname="${BACKSTOP_HOSTNAME:?set BACKSTOP_HOSTNAME to the name MX records give this cluster}"
statefulset="${BACKSTOP_QUEUE_STATEFULSET:-backstop-queue}"
peer_service="${BACKSTOP_QUEUE_PEER_SERVICE:-backstop-queue-peers}"
namespace="${POD_NAMESPACE:-default}"
cluster_domain="${BACKSTOP_CLUSTER_DOMAIN:-cluster.local}"
pod_name="${POD_NAME:-$(hostname)}"
config_dir="${BACKSTOP_CONFIG_DIR:-/etc/backstop/config}"
data_dir="${BACKSTOP_DATA_DIR:-/var/lib/backstop}"
out="${BACKSTOP_RUNTIME_CONFIG:-/run/backstop/backstop.toml}"
queue_port=7025

fail() {
  echo "backstop-entrypoint: $*" >&2
  exit 64
}

case "$voters" in
  '' | *[!0-9]*) fail "BACKSTOP_VOTERS must be a number, got \"$voters\"" ;;
esac

voter_address() { # ordinal
  echo "$statefulset-$1.$peer_service.$namespace.svc.$cluster_domain:$queue_port"
}

voter_list() { # with_ids: "1@host:port" when 1, "host:port" when 0
  list=""
  i=0
  while [ "$i" -lt "$voters" ]; do
    if [ "$1" = 1 ]; then entry="$((i + 1))@$(voter_address "$i")"; else entry="$(voter_address "$i")"; fi
    list="$list${list:+, }\"$entry\""
    i=$((i + 1))
  done
  echo "$list"
}

# 65536 + the low 16 bits of the pod's IPv4 or IPv6 address.
id_from_ip() {
  ip="${POD_IP:?set POD_IP (downward API status.podIP) for the $role role}"
  case "$ip" in
    *:*)
      last="${ip##*:}"
      low=$((0x${last:-0}))
      ;;
    *.*.*.*)
      rest="${ip#*.*.}"
      third="${rest%%.*}"
      fourth="${rest#*.}"
      low=$((third * 256 + fourth))
      ;;
    *) fail "POD_IP \"$ip\" is not an IP address" ;;
  esac
  echo $((65536 + low))
}

case "$role" in
  queue)
    ordinal="${pod_name##*-}"
    case "$ordinal" in
      '' | *[!0-9]*) fail "pod name \"$pod_name\" does not end in a StatefulSet ordinal" ;;
    esac
    id=$((ordinal + 1))
    if [ "$id" -le "$voters" ]; then join=false; else join=true; fi
    queue_table="listen = \"0.0.0.0:$queue_port\"
peers = [$(voter_list 1)]
join = $join"
    ;;
  ingest | delivery)
    id="$(id_from_ip)"
    queue_table="endpoints = [$(voter_list 0)]"
    ;;
  *) fail "BACKSTOP_ROLE must be queue, ingest or delivery, got \"$role\"" ;;
esac

mkdir -p "$(dirname "$out")"
{
  echo "# Written by backstop-entrypoint for pod $pod_name; edit the ConfigMap, not this file."
  echo "[node]"
  echo "id = $id"
  echo "hostname = \"$hostname\""
  echo "data_dir = \"$data_dir\""
  echo "roles = [\"$role\"]"
  echo
  echo "[queue]"
  echo "$queue_table"
  for fragment in "$config_dir"/*.toml; do
    [ -f "$fragment" ] || continue
    echo
    echo "# --- $fragment"
    cat "$fragment"
  done
} > "$out.tmp"
mv "$out.tmp" "$out"

if [ "${1:-}" = render ]; then
  cat "$out"
  exit 0
fi
exec /usr/local/bin/backstop --config "$out" "$@"
