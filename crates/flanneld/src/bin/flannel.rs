//! `flannel`: the CNI plugin kubelet runs for pods (kube-flannel.yml's `"type": "flannel"`),
//! shipped with flanneld. The logic lives in the `flannel-cni` crate.

fn main() -> std::process::ExitCode {
    flannel_cni::plugin::main()
}
