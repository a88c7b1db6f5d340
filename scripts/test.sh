#!/usr/bin/env bash
# The test command: install what is missing, then run every test in the workspace.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
cargo test --workspace --locked -- --test-threads="${TEST_THREADS:-4}"
