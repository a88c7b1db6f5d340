#!/usr/bin/env bash
# The main job, until the cluster-in-a-box lab lands: real components on this machine.
#  1. a real etcd with upstream's config key;
#  2. two flanneld agents (nodes 172.16.1.7 and 172.16.2.7) acquiring leases in it;
#  3. flannelctl leases list, /readyz and /metrics of an agent, its subnet.env;
#  4. the Tencent VPC emulator and flannelctl routes list against it.
# Stops everything on exit (DEMO_SECONDS=n keeps it up n seconds; default: until Ctrl-C).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
cargo build --release --locked -p flanneld -p tencent-vpc-emulator
bin=target/release
work=$(mktemp -d /tmp/flannel-demo.XXXXXX)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

etcd_port=$(free_port); peer_port=$(free_port)
etcd --name demo --data-dir "$work/etcd" --listen-client-urls "http://127.0.0.1:$etcd_port" \
  --advertise-client-urls "http://127.0.0.1:$etcd_port" --listen-peer-urls "http://127.0.0.1:$peer_port" \
  --initial-advertise-peer-urls "http://127.0.0.1:$peer_port" --initial-cluster "demo=http://127.0.0.1:$peer_port" \
  >"$work/etcd.log" 2>&1 &
pids+=($!)
export ETCDCTL_API=3
until etcdctl --endpoints "127.0.0.1:$etcd_port" endpoint health >/dev/null 2>&1; do sleep 0.1; done
etcdctl --endpoints "127.0.0.1:$etcd_port" put /coreos.com/network/config \
  '{"Network": "10.244.0.0/16", "Backend": {"Type": "alloc"}}' >/dev/null
echo "== etcd on 127.0.0.1:$etcd_port, config: $(etcdctl --endpoints "127.0.0.1:$etcd_port" get --print-value-only /coreos.com/network/config)"

health_port=$(free_port)
for node in 172.16.1.7 172.16.2.7; do
  extra=()
  [ "$node" = 172.16.1.7 ] && extra=(-healthz-ip=127.0.0.1 "-healthz-port=$health_port")
  "$bin/flanneld" -etcd-endpoints="http://127.0.0.1:$etcd_port" -iface=lo -public-ip="$node" \
    -iptables-forward-rules=false -subnet-file="$work/$node/subnet.env" "${extra[@]}" \
    >"$work/flanneld-$node.log" 2>&1 &
  pids+=($!)
done
until curl -fsS "http://127.0.0.1:$health_port/readyz" >/dev/null 2>&1; do sleep 0.1; done
until [ -s "$work/172.16.2.7/subnet.env" ]; do sleep 0.1; done

echo; echo "== flannelctl leases list"
"$bin/flannelctl" leases list --etcd-endpoints "http://127.0.0.1:$etcd_port"
echo; echo "== node 172.16.1.7: /readyz"; curl -sS "http://127.0.0.1:$health_port/readyz"; echo
echo "== node 172.16.1.7: subnet.env"; cat "$work/172.16.1.7/subnet.env"
echo "== node 172.16.1.7: /metrics"; curl -sS "http://127.0.0.1:$health_port/metrics" | grep -v '^#'

echo; echo "== tencent-vpc-emulator (scenario crates/tencent-vpc-emulator/scenarios/lab.json)"
"$bin/tencent-vpc-emulator" --scenario crates/tencent-vpc-emulator/scenarios/lab.json \
  --listen 127.0.0.1:0 --admin-listen 127.0.0.1:0 >"$work/emulator.addr" 2>"$work/emulator.log" &
pids+=($!)
until [ -s "$work/emulator.addr" ]; do sleep 0.1; done
api=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["api"])' "$work/emulator.addr")
echo "== flannelctl routes list --vpc-id vpc-lab (signed TC3 requests to http://$api)"
TENCENTCLOUD_SECRET_ID=AKIDlab0000000000000000000000000000 TENCENTCLOUD_SECRET_KEY=lab-secret-key-0000000000000000 \
  "$bin/flannelctl" routes list --vpc-id vpc-lab --region ap-guangzhou --endpoint "http://$api"

echo; echo "logs and files: $work"
if [ -n "${DEMO_SECONDS:-}" ]; then sleep "$DEMO_SECONDS"; else echo "running; Ctrl-C to stop"; wait "${pids[0]}"; fi
