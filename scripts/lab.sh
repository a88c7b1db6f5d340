#!/usr/bin/env bash
# The main job: set up this machine (apt packages, release build) and bring up the cluster in a
# box: a Tencent-VPC-style cluster in network namespaces (flannel-lab up, tencent-vpc backend,
# 3 nodes), then print its status. Arguments go to flannel-lab: `scripts/lab.sh status`,
# `scripts/lab.sh down`, `scripts/lab.sh up --backend vxlan --nodes 5`. With `up --kube` it
# also builds what that needs (Kubernetes from Debian's source once, the images). Run as root.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
echo "building flanneld, flannel (CNI), tencent-vpc-emulator and flannel-lab (release; the first build takes a few minutes)"
cargo build --release --locked -q -p flanneld -p tencent-vpc-emulator -p flannel-lab
if [ "$#" -eq 0 ]; then set -- up; fi
case " $* " in *" --kube "*)
  scripts/build-kube.sh kube-apiserver kube-controller-manager kube-scheduler kubelet pause
  [ -f "target/image/flannel-rs-$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1).oci.tar" ] || scripts/build-image.sh
  scripts/build-lab-images.sh ;;
esac
exec target/release/flannel-lab "$@"
