#!/usr/bin/env bash
# The flannel-rs image, offline and reproducibly, as an OCI archive `ctr images import` takes:
# a minimal Debian 12 rootfs from Debian's packages (mmdebstrap, the packages listed in
# deploy/image-contents) and the shipped binaries (scripts/build-dist.sh: `dist`, static). Every timestamp is SOURCE_DATE_EPOCH (default:
# the commit's time), so the same package versions and binaries give the same digest; the
# versions are recorded in the image (/usr/share/flannel-rs/packages).
#   scripts/build-image.sh            -> target/image/flannel-rs-<tag>.oci.tar
#   scripts/build-image.sh --no-cargo    the same from the binaries already in target/shipped
# Env: IMAGE_TAG (default: the workspace version), IMAGE_OUT (default target/image),
# SOURCE_DATE_EPOCH.
set -euo pipefail
cd "$(dirname "$0")/.."
tag="${IMAGE_TAG:-$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)}"
export SOURCE_DATE_EPOCH="${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct 2>/dev/null || echo 0)}"
out="${IMAGE_OUT:-target/image}"
mkdir -p "$out"

command -v mmdebstrap >/dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mmdebstrap >/dev/null

start=$(date +%s)
[ "${1:-}" = --no-cargo ] || scripts/build-dist.sh
built=$(date +%s)

packages=$(awk '$1 == "package" { print $2 }' deploy/image-contents | paste -sd, -)
rootfs="$out/rootfs-$SOURCE_DATE_EPOCH.tar"
mmdebstrap --quiet --mode=root --variant=essential --include="$packages" \
  --dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/locale/*' \
  --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-include=/usr/share/doc/*/copyright' \
  --dpkgopt='path-exclude=/usr/share/info/*' \
  bookworm "$rootfs" \
  "deb http://deb.debian.org/debian bookworm main" \
  "deb http://deb.debian.org/debian bookworm-updates main" \
  "deb http://deb.debian.org/debian-security bookworm-security main"
based=$(date +%s)

python3 scripts/oci-image.py --rootfs "$rootfs" --contents deploy/image-contents \
  --dist target/shipped --name docker.io/library/flannel-rs --tag "$tag" \
  --out "$out/flannel-rs-$tag.oci.tar"
rm -f "$rootfs"
echo "build-image: cargo dist $((built - start)) s, rootfs $((based - built)) s, pack $(($(date +%s) - based)) s -> $out/flannel-rs-$tag.oci.tar"
