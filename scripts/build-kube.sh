#!/usr/bin/env bash
# Build Kubernetes v1.20.2 binaries from Debian's `kubernetes` source package into
# /opt/flannel-rs/bin, all asked for in one `make` so they share the compile:
#   scripts/build-kube.sh kube-apiserver            (4-6 min)
#   scripts/build-kube.sh kube-apiserver kube-controller-manager kube-scheduler kubelet pause
# `pause` is the pod sandbox's process, the tree's build/pause/linux/pause.c compiled static
# (1 s; `flannel-lab up --kube` makes its pause image from it).
# No binary of them is packaged anywhere we may download from; Debian ships the full tree with
# vendor/. Idempotent: builds only when one asked for is missing.
# Env: KUBE_BIN_DIR (default /opt/flannel-rs/bin).
set -euo pipefail
bin=${KUBE_BIN_DIR:-/opt/flannel-rs/bin}
cmds=("${@:-kube-apiserver}")
for c in "${cmds[@]}"; do
  case "$c" in kube-apiserver|kube-controller-manager|kube-scheduler|kubelet|pause) ;;
    *) echo "build-kube.sh: unknown binary $c" >&2; exit 2 ;; esac
done
missing=0
for c in "${cmds[@]}"; do [ -x "$bin/$c" ] || missing=1; done
[ "$missing" = 0 ] && exit 0
start=$(date +%s)
echo "setup: building ${cmds[*]} from Debian's kubernetes source package"
export DEBIAN_FRONTEND=noninteractive
apt-get install -y -qq golang-go rsync gcc libc6-dev >/dev/null
T=$(mktemp -d /tmp/kube-build.XXXXXX)
trap 'rm -rf "$T"' EXIT
mkdir -p "$T/lists/partial" "$T/parts"
uri=$(awk '/^URIs:/{print $2; exit}' /etc/apt/sources.list.d/debian.sources)
echo "deb-src $uri bookworm main" > "$T/sources.list"
O=(-o "Dir::Etc::SourceList=$T/sources.list" -o "Dir::Etc::SourceParts=$T/parts" -o "Dir::State::Lists=$T/lists")
apt-get "${O[@]}" update -qq
(cd "$T" && apt-get "${O[@]}" source --download-only kubernetes >/dev/null 2>&1)
cd "$T" && tar xzf kubernetes_*.orig.tar.gz && cd kubernetes-1.20.2
# Debian 12's Go needs the fixed reflect2 (the vendored 1.0.1 panics on the first Node).
apt-get download golang-github-modern-go-reflect2-dev >/dev/null 2>&1
dpkg-deb -x golang-github-modern-go-reflect2-dev_*.deb r2
rm -f vendor/github.com/modern-go/reflect2/*.go vendor/github.com/modern-go/reflect2/*.s
find r2/usr/share/gocode/src/github.com/modern-go/reflect2 -maxdepth 1 \( -name '*.go' -o -name '*.s' \) \
  ! -name '*_test.go' -exec cp {} vendor/github.com/modern-go/reflect2/ \;
printf "KUBE_GIT_VERSION='v1.20.2'\nKUBE_GIT_MAJOR='1'\nKUBE_GIT_MINOR='20'\n" > "$T/version"
mkdir -p "$bin"
what=""
for c in "${cmds[@]}"; do
  [ -x "$bin/$c" ] && continue
  if [ "$c" = pause ]; then
    gcc -Os -static -DVERSION=v1.20.2-flannel-rs -o "$bin/pause" build/pause/linux/pause.c
  else
    what="$what cmd/$c"
  fi
done
if [ -n "$what" ]; then
  HOME="$T/gohome" CGO_ENABLED=0 GOPROXY=off KUBE_GIT_VERSION_FILE="$T/version" \
    make WHAT="${what# }" >"$T/build.log" 2>&1 || { tail -30 "$T/build.log" >&2; exit 1; }
  for c in $what; do cp "_output/bin/${c#cmd/}" "$bin/${c#cmd/}"; done
fi
echo "setup: ${cmds[*]} built into $bin in $(($(date +%s) - start)) s"
