#!/usr/bin/env bash
# The shipped binaries (flanneld, flannelctl and the `flannel` CNI plugin) as the image holds
# them: `cargo build --profile dist` linked statically, glibc included (static-pie), for this
# machine's target, then copied to target/shipped/. Static because the CNI plugin runs on the
# host, whatever its glibc, and because a daemon that maps no shared libraries is ~1 MB smaller
# in memory (docs/benchmarks.md). The explicit --target keeps build scripts and proc macros
# (which cannot be static) out of RUSTFLAGS. Extra arguments go to cargo.
set -euo pipefail
cd "$(dirname "$0")/.."
triple=$(rustc -vV | sed -n 's/^host: //p')
RUSTFLAGS="${RUSTFLAGS:-} -C target-feature=+crt-static" \
  cargo build --profile dist --locked --target "$triple" -p flanneld "$@"
mkdir -p target/shipped
for b in flanneld flannelctl flannel; do
  install -m 0755 "target/$triple/dist/$b" target/shipped/
done
echo "build-dist: target/shipped/{flanneld,flannelctl,flannel} ($triple, static)"
