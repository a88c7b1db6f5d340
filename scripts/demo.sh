#!/usr/bin/env bash
# The main job, until the cluster-in-a-box lab lands: leases becoming Tencent VPC routes, with
# real components on this machine.
#  1. the Tencent VPC emulator (signed API, metadata, admin console) with the lab scenario:
#     VPC vpc-lab, subnet-a (main table rtb-main) and subnet-b (its own table rtb-b);
#  2. a real etcd holding upstream's config key, Backend tencent-vpc;
#  3. two flanneld agents, CVMs ins-a1 (172.16.1.7, subnet-a) and ins-b1 (172.16.2.7,
#     subnet-b): each acquires a lease and puts its pod subnet route into BOTH route tables;
#  4. flannelctl leases list, routes list, routes plan; a route deleted in the "console" comes
#     back at the next resync; the agents' /readyz and VPC metrics.
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
# wait_for SECONDS WHAT COMMAND...: poll until COMMAND succeeds, or fail naming WHAT.
wait_for() {
  local deadline=$((SECONDS + $1)) what=$2; shift 2
  until "$@" >/dev/null 2>&1; do
    if [ "$SECONDS" -ge "$deadline" ]; then echo "demo: timed out waiting for $what (logs: $work)" >&2; exit 1; fi
    sleep 0.2
  done
}
json_field() { python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))[sys.argv[2]])' "$1" "$2"; }

echo "== tencent-vpc-emulator (scenario crates/tencent-vpc-emulator/scenarios/lab.json)"
"$bin/tencent-vpc-emulator" --scenario crates/tencent-vpc-emulator/scenarios/lab.json \
  --listen 127.0.0.1:0 --metadata-listen 127.0.0.1:0 --admin-listen 127.0.0.1:0 \
  >"$work/emulator.addr" 2>"$work/emulator.log" &
pids+=($!)
wait_for 30 "the emulator" test -s "$work/emulator.addr"
api=$(json_field "$work/emulator.addr" api)
md=$(json_field "$work/emulator.addr" metadata)
admin=$(json_field "$work/emulator.addr" admin)
# The lab account's key, given to the agents by environment (never in etcd or a log).
export TENCENTCLOUD_SECRET_ID=AKIDlab0000000000000000000000000000
export TENCENTCLOUD_SECRET_KEY=lab-secret-key-0000000000000000
echo "   API http://$api, metadata http://$md, admin http://$admin"

etcd_port=$(free_port); peer_port=$(free_port)
etcd --name demo --data-dir "$work/etcd" --listen-client-urls "http://127.0.0.1:$etcd_port" \
  --advertise-client-urls "http://127.0.0.1:$etcd_port" --listen-peer-urls "http://127.0.0.1:$peer_port" \
  --initial-advertise-peer-urls "http://127.0.0.1:$peer_port" --initial-cluster "demo=http://127.0.0.1:$peer_port" \
  >"$work/etcd.log" 2>&1 &
pids+=($!)
export ETCDCTL_API=3
wait_for 30 etcd etcdctl --endpoints "127.0.0.1:$etcd_port" endpoint health
etcdctl --endpoints "127.0.0.1:$etcd_port" put /coreos.com/network/config \
  "{\"Network\": \"10.244.0.0/16\", \"Backend\": {\"Type\": \"tencent-vpc\", \"Endpoint\": \"http://$api\", \"ResyncInterval\": 10}}" >/dev/null
echo "== etcd on 127.0.0.1:$etcd_port, config: $(etcdctl --endpoints "127.0.0.1:$etcd_port" get --print-value-only /coreos.com/network/config)"

declare -A health
for node in a1:172.16.1.7 b1:172.16.2.7; do
  name=${node%%:*}; ip=${node#*:}
  health[$name]=$(free_port)
  # Each simulated CVM asks the metadata service as its own instance.
  FLANNEL_TENCENT_METADATA_URL="http://$md/instances/ins-$name/latest/meta-data/" \
  "$bin/flanneld" -etcd-endpoints="http://127.0.0.1:$etcd_port" -iface=lo -public-ip="$ip" \
    -iptables-forward-rules=false -subnet-file="$work/$name/subnet.env" \
    -healthz-ip=127.0.0.1 "-healthz-port=${health[$name]}" >"$work/flanneld-$name.log" 2>&1 &
  pids+=($!)
done
for name in a1 b1; do
  wait_for 60 "node $name ready (its route in every table)" curl -fsS "http://127.0.0.1:${health[$name]}/readyz"
done

echo; echo "== flannelctl leases list"
"$bin/flannelctl" leases list --etcd-endpoints "http://127.0.0.1:$etcd_port"
echo; echo "== flannelctl routes list --vpc-id vpc-lab: each lease routed in both tables, tagged as ours"
"$bin/flannelctl" routes list --vpc-id vpc-lab --region ap-guangzhou --endpoint "http://$api"

route=$(curl -fsS "http://$admin/state" | python3 -c '
import json,sys
t=[t for t in json.load(sys.stdin)["route_tables"] if t["route_table_id"]=="rtb-b"][0]
r=[r for r in t["routes"] if r["route_description"].endswith(":172.16.1.7")][0]
print(r["route_id"], r["destination_cidr_block"])')
echo; echo "== console: delete route ${route% *} (${route#* } via 172.16.1.7) from rtb-b; the agent restores it within one resync (10 s)"
curl -fsS -X DELETE "http://$admin/route-tables/rtb-b/routes/${route% *}" >/dev/null
restored() { curl -fsS "http://$admin/state" | python3 -c '
import json,sys
t=[t for t in json.load(sys.stdin)["route_tables"] if t["route_table_id"]=="rtb-b"][0]
sys.exit(0 if any(r["destination_cidr_block"]==sys.argv[1] for r in t["routes"]) else 1)' "${route#* }"; }
wait_for 30 "the route restored" restored
echo "   restored:"; "$bin/flannelctl" routes list --vpc-id vpc-lab --region ap-guangzhou --endpoint "http://$api" | grep -E "^rtb-b|${route#* }" || true

echo; echo "== flannelctl routes plan: nothing left to do"
"$bin/flannelctl" routes plan --etcd-endpoints "http://127.0.0.1:$etcd_port" --region ap-guangzhou --vpc-id vpc-lab
echo; echo "== node a1: /readyz"; curl -sS "http://127.0.0.1:${health[a1]}/readyz"; echo
echo "== node a1: subnet.env"; cat "$work/a1/subnet.env"
echo "== node a1: VPC metrics"; curl -sS "http://127.0.0.1:${health[a1]}/metrics" | grep -E '^flannel_(ready|vpc_(api_calls|routes|route_table))'
echo "== API calls by action and result (emulator)"; curl -fsS "http://$admin/calls"; echo

echo; echo "logs and files: $work"
if [ -n "${DEMO_SECONDS:-}" ]; then sleep "$DEMO_SECONDS"; else echo "running; Ctrl-C to stop"; wait "${pids[0]}"; fi
