#!/usr/bin/env bash
# The Postfix baseline for BENCHMARKS.md: smtp-source → Postfix → smtp-sink on
# loopback, 2 KiB messages, 20 sessions. It RECONFIGURES the local Postfix
# (relayhost = the sink, loopback only): run it on a bench machine, not a
# mail server. Prints accepted/s (Postfix's own durable enqueue) and end-to-end/s.
#   N=20000 SESSIONS=20 SIZE=2048 bash benches/postfix-baseline.sh
set -euo pipefail
N=${N:-20000}; SESSIONS=${SESSIONS:-20}; SIZE=${SIZE:-2048}; SINK_PORT=${SINK_PORT:-2526}
if [ ! -x /usr/sbin/postfix ]; then
  echo "installing postfix"; DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postfix >/dev/null
fi
postconf -e "relayhost = [127.0.0.1]:${SINK_PORT}" "inet_interfaces = loopback-only" "mydestination =" \
  "smtp_tls_security_level = none" "mynetworks = 127.0.0.0/8" \
  "smtpd_relay_restrictions = permit_mynetworks, reject" "default_destination_concurrency_limit = 20" \
  "smtp_destination_concurrency_limit = 20"
pkill -f "smtp-sink.*:${SINK_PORT}" 2>/dev/null || true
smtp-sink -u nobody 127.0.0.1:${SINK_PORT} 256 &
SINK=$!
trap 'kill $SINK 2>/dev/null || true' EXIT
postfix stop >/dev/null 2>&1 || true
postfix start >/dev/null 2>&1
postsuper -d ALL >/dev/null 2>&1 || true
sleep 1
start=$(date +%s.%N)
smtp-source -s "$SESSIONS" -l "$SIZE" -m "$N" -f bench@example.com -t user@example.org 127.0.0.1:25
accepted=$(date +%s.%N)
# Drained when the queue is empty.
while ! postqueue -p 2>/dev/null | grep -q "Mail queue is empty"; do sleep 0.2; done
done_at=$(date +%s.%N)
python3 - "$N" "$start" "$accepted" "$done_at" <<'PY'
import sys
n, s, a, d = int(sys.argv[1]), *map(float, sys.argv[2:])
print(f"| Postfix: smtp-source accepted, {n} × 2 KiB, 20 sessions | {n/(a-s):.0f} msg/s |")
print(f"| Postfix: end to end to smtp-sink | {n} in {d-s:.1f} s = {n/(d-s):.0f} msg/s |")
PY
