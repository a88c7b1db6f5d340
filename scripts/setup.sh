#!/usr/bin/env bash
# Install everything the build, the tests and the demo need on a fresh Debian machine.
# Idempotent; run as root (CI is root). Nothing is cached by hand.
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
for pkg in protobuf-compiler etcd-server etcd-client iproute2 iptables nftables iputils-ping iperf3 containernetworking-plugins python3-venv curl openssl mmdebstrap containerd runc wireguard-go wireguard-tools; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || need_apt+=("$pkg")
done
if [ "${#need_apt[@]}" -gt 0 ]; then
  echo "setup: apt-get install ${need_apt[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi
command -v cargo >/dev/null || { echo "setup: cargo not found (the machine's Rust toolchain is required)" >&2; exit 1; }

# The official Tencent Cloud Python SDK (a client of our emulator in the conformance tests).
if [ ! -x .venv/bin/pytest ]; then
  echo "setup: python venv with the Tencent Cloud SDK and pytest"
  python3 -m venv .venv
  .venv/bin/pip install -q --disable-pip-version-check \
    tencentcloud-sdk-python-common==3.1.195 tencentcloud-sdk-python-vpc==3.1.193 \
    tencentcloud-sdk-python-cvm==3.1.178 pytest==9.2.0
fi
