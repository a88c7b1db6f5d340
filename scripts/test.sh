#!/usr/bin/env bash
# The test command: install what is missing, run every Rust test in the workspace (etcd and
# network-namespace tests included: run as root), then the official Tencent Cloud Python SDK
# against the emulator.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
cargo test --workspace --locked -- --test-threads="${TEST_THREADS:-4}"
cargo build --locked -p tencent-vpc-emulator
EMULATOR_BIN="$PWD/target/debug/tencent-vpc-emulator" .venv/bin/pytest -q tests/conformance
