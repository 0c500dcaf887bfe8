#!/bin/sh
# preStop hook of a queue voter: if this voter leads, hand leadership to another voter before
# Kubernetes sends SIGTERM, so that appends pause for one transfer instead of an election
# timeout. backstop's SIGTERM handling steps down too; this hook only does it earlier, while the
# pod still serves, and never fails the termination (a failure here just leaves it to SIGTERM).
#
# With cluster mTLS both backstopctl calls present the client certificate that
# $BACKSTOP_TLS_CA, $BACKSTOP_TLS_CERT and $BACKSTOP_TLS_KEY name (the queue container's env: the
# cluster CA and the backstop-admin-tls Secret): transfer-leader is an admin call, which needs a
# certificate with OU=backstop-admin.
endpoint="127.0.0.1:${BACKSTOP_QUEUE_PORT:-7025}"
status="$(backstopctl --endpoint "$endpoint" --timeout 5s -o json cluster status 2>/dev/null)" || exit 0
node_id="$(printf '%s' "$status" | sed -n 's/.*"node_id":"\{0,1\}\([0-9]*\).*/\1/p')"
leader_id="$(printf '%s' "$status" | sed -n 's/.*"leader_id":"\{0,1\}\([0-9]*\).*/\1/p')"
if [ -n "$node_id" ] && [ "$node_id" = "$leader_id" ]; then
  backstopctl --endpoint "$endpoint" --timeout 10s cluster transfer-leader || true
fi
exit 0
