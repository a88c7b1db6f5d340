#!/usr/bin/env bash
# The main job, for now: a real flanneld run on this machine with the embedded local subnet
# store and the alloc backend. It acquires a lease, writes subnet.env, serves /readyz and
# /metrics, and stops on Ctrl-C (or after DEMO_SECONDS seconds when set).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
cargo build --release --locked -p flanneld

work=$(mktemp -d /tmp/flannel-demo.XXXXXX)
cat > "$work/net-conf.json" <<JSON
{"Network": "10.244.0.0/16", "Backend": {"Type": "alloc"}}
JSON
port=${DEMO_HEALTHZ_PORT:-18081}
target/release/flanneld -local-subnet-mgr -iptables-forward-rules=false \
  -net-config-path="$work/net-conf.json" -subnet-file="$work/subnet.env" \
  -healthz-ip=127.0.0.1 -healthz-port="$port" &
pid=$!
trap 'kill $pid 2>/dev/null || true; wait $pid 2>/dev/null || true' EXIT

for _ in $(seq 1 100); do
  curl -fsS "http://127.0.0.1:$port/readyz" >/dev/null 2>&1 && break
  sleep 0.1
done
echo "--- /readyz";  curl -sS "http://127.0.0.1:$port/readyz"; echo
echo "--- $work/subnet.env"; cat "$work/subnet.env"
echo "--- /metrics"; curl -sS "http://127.0.0.1:$port/metrics" | grep -v '^#'
if [ -n "${DEMO_SECONDS:-}" ]; then sleep "$DEMO_SECONDS"; else echo "flanneld is running (pid $pid); Ctrl-C to stop"; wait $pid; fi
