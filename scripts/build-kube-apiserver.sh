#!/usr/bin/env bash
# Build a real kube-apiserver (v1.20.2) for the Kubernetes tests from Debian's `kubernetes`
# source package, into /opt/flannel-rs/bin. No binary of it is packaged anywhere we may
# download from; Debian ships the full tree with vendor/. Takes 4-6 minutes. Idempotent.
set -euo pipefail
out=${KUBE_APISERVER_OUT:-/opt/flannel-rs/bin/kube-apiserver}
[ -x "$out" ] && exit 0
echo "setup: building kube-apiserver from Debian's kubernetes source package (4-6 min)"
export DEBIAN_FRONTEND=noninteractive
apt-get install -y -qq golang-go rsync >/dev/null
T=$(mktemp -d /tmp/kube-apiserver-build.XXXXXX)
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
HOME="$T/gohome" CGO_ENABLED=0 GOPROXY=off KUBE_GIT_VERSION_FILE="$T/version" \
  make WHAT=cmd/kube-apiserver >"$T/build.log" 2>&1 || { tail -30 "$T/build.log" >&2; exit 1; }
mkdir -p "$(dirname "$out")"
cp _output/bin/kube-apiserver "$out"
echo "setup: $out built"
