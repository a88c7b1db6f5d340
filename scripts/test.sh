#!/usr/bin/env bash
# The test command: install what is missing, run every Rust test in the workspace (etcd,
# kube-apiserver and network-namespace tests included: run as root), then the official Tencent
# Cloud Python SDK against the emulator.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
# Only the tests need these: kubectl (this machine kind has one; else Debian's), and Kubernetes
# built from Debian's source in one make (kube-apiserver for the store tests, all four and the
# pause binary for the `--kube` lab tests; 9-12 min once).
command -v kubectl >/dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq kubernetes-client >/dev/null
scripts/build-kube.sh kube-apiserver kube-controller-manager kube-scheduler kubelet pause
# The image (the shipped static binaries + a Debian rootfs from Debian's packages) the image test and the
# `--kube` lab import into containerd, and the lab's pause and busybox images.
scripts/build-image.sh
scripts/build-lab-images.sh
# Everything: the unprivileged tier and the tests marked #[ignore = "needs root | etcd |
# kube-apiserver"] (`cargo test --workspace` alone runs only the unprivileged tier).
cargo test --workspace --locked -- --include-ignored --test-threads="${TEST_THREADS:-4}"
cargo build --locked -p tencent-vpc-emulator
EMULATOR_BIN="$PWD/target/debug/tencent-vpc-emulator" .venv/bin/pytest -q tests/conformance
