#!/usr/bin/env bash
# The two small images `flannel-lab up --kube` imports beside flannel-rs: the pod sandbox
# (pause, from the Kubernetes tree's pause.c: scripts/build-kube.sh pause) and the test pods'
# busybox (Debian's busybox-static). Offline from Debian packages, deterministic like the
# flannel-rs image:
#   scripts/build-lab-images.sh -> target/image/{pause,busybox}.oci.tar
# Env: IMAGE_OUT (default target/image), KUBE_BIN_DIR (default /opt/flannel-rs/bin).
set -euo pipefail
cd "$(dirname "$0")/.."
out="${IMAGE_OUT:-target/image}"
bin="${KUBE_BIN_DIR:-/opt/flannel-rs/bin}"
export SOURCE_DATE_EPOCH="${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct 2>/dev/null || echo 0)}"
mkdir -p "$out"
[ -x "$bin/pause" ] || scripts/build-kube.sh pause
python3 scripts/oci-image.py --file "$bin/pause:/pause" --entrypoint /pause \
  --name docker.io/library/flannel-lab-pause --tag lab --out "$out/pause.oci.tar"

T=$(mktemp -d /tmp/lab-images.XXXXXX)
trap 'rm -rf "$T"' EXIT
(cd "$T" && apt-get download busybox-static >/dev/null 2>&1) || {
  DEBIAN_FRONTEND=noninteractive apt-get update -qq
  (cd "$T" && apt-get download busybox-static >/dev/null)
}
dpkg-deb -x "$T"/busybox-static_*.deb "$T/root"
links=()
for applet in sh ping nc sleep ip cat echo wget hostname ls; do links+=(--link "/bin/busybox:/bin/$applet"); done
python3 scripts/oci-image.py --file "$T/root/bin/busybox:/bin/busybox" "${links[@]}" \
  --entrypoint /bin/sh --name docker.io/library/flannel-lab-busybox --tag lab \
  --out "$out/busybox.oci.tar"
