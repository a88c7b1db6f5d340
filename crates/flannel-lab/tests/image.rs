//! The image as a container runtime sees it (root; CI runs as root after
//! scripts/build-image.sh): `ctr images import` takes the OCI archive, a container from it runs
//! flanneld, flannelctl and the CNI plugin with what flanneld execs (iptables-restore, nft), the
//! binaries are static and resolve names from /etc/hosts whatever nsswitch.conf says, the
//! package versions are recorded inside, and a second build from the same inputs has the same
//! digest. A private containerd (its own root, state and socket; no CRI) serves the test, and
//! everything it made is removed at the end.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output};
use std::time::{Duration, Instant};

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn image() -> PathBuf {
    std::env::var_os("FLANNEL_IMAGE").map_or_else(
        || {
            workspace().join(format!(
                "target/image/flannel-rs-{}.oci.tar",
                env!("CARGO_PKG_VERSION")
            ))
        },
        PathBuf::from,
    )
}

fn ok(out: Output, what: &str) -> String {
    assert!(
        out.status.success(),
        "{what}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A containerd of the test's own, stopped and removed on drop with what its containers left
/// in /run/containerd and the cgroup hierarchies.
struct Runtime {
    dir: PathBuf,
    namespace: String,
    child: Child,
    run_containerd_existed: bool,
}

impl Runtime {
    fn start() -> Runtime {
        let dir = std::env::temp_dir().join(format!("flannel-rs-image-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let d = dir.display();
        let config = format!(
            "version = 2\nroot = \"{d}/root\"\nstate = \"{d}/state\"\n\
             disabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n\
             [grpc]\n  address = \"{d}/sock\"\n[ttrpc]\n  address = \"{d}/sock.ttrpc\"\n"
        );
        std::fs::write(dir.join("config.toml"), config).unwrap();
        let run_containerd_existed = Path::new("/run/containerd").exists();
        let log = std::fs::File::create(dir.join("containerd.log")).unwrap();
        let child = Command::new("containerd")
            .arg("--config")
            .arg(dir.join("config.toml"))
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("containerd (scripts/setup.sh installs it)");
        let rt = Runtime {
            namespace: format!("flannel-rs-image-{}", std::process::id()),
            dir,
            child,
            run_containerd_existed,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while Command::new("ctr")
            .args(rt.args(&["version"]))
            .output()
            .map_or(true, |o| !o.status.success())
        {
            assert!(
                Instant::now() < deadline,
                "containerd did not answer in 20 s"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        rt
    }

    fn args<'a>(&'a self, rest: &[&'a str]) -> Vec<String> {
        let mut v = vec![
            "-a".to_string(),
            self.dir.join("sock").display().to_string(),
            "-n".to_string(),
            self.namespace.clone(),
        ];
        v.extend(rest.iter().map(|s| s.to_string()));
        v
    }

    fn ctr(&self, rest: &[&str]) -> String {
        let out = Command::new("ctr").args(self.args(rest)).output().unwrap();
        ok(out, &format!("ctr {}", rest.join(" ")))
    }
}

impl Drop for Runtime {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = Command::new("umount").arg("-R").arg(&self.dir).output();
        let _ = std::fs::remove_dir_all(&self.dir);
        // What runc and the shims keep outside the runtime's own dirs.
        let _ = std::fs::remove_dir(Path::new("/run/containerd/runc").join(&self.namespace));
        if !self.run_containerd_existed {
            for d in ["runc", "fifo", "s"] {
                let _ = std::fs::remove_dir(Path::new("/run/containerd").join(d));
            }
            let _ = std::fs::remove_dir("/run/containerd");
        }
        if let Ok(hierarchies) = std::fs::read_dir("/sys/fs/cgroup") {
            for h in hierarchies.flatten() {
                let _ = std::fs::remove_dir(h.path().join(&self.namespace));
            }
        }
    }
}

#[test]
#[ignore = "needs root, containerd and the image (scripts/build-image.sh): run with --include-ignored"]
fn the_image_imports_into_containerd_and_runs_what_the_daemonset_runs() {
    let image = image();
    assert!(
        image.exists(),
        "{} is missing: run scripts/build-image.sh first",
        image.display()
    );
    let rt = Runtime::start();
    rt.ctr(&[
        "images",
        "import",
        "--base-name",
        "docker.io/library/flannel-rs",
        image.to_str().unwrap(),
    ]);
    let name = format!("docker.io/library/flannel-rs:{}", env!("CARGO_PKG_VERSION"));
    let listed = rt.ctr(&["images", "ls", "-q"]);
    assert!(listed.lines().any(|l| l == name), "{listed}");

    // What the DaemonSet's containers run (flanneld prints its version on stderr, as upstream): the init containers' cp of the plugin, flanneld,
    // and what flanneld execs for the traffic rules.
    let script = "flanneld --version 2>&1 && flannelctl --version && test -x /usr/bin/flannel \
        && cp -f /usr/bin/flannel /tmp/flannel && iptables-restore --version \
        && iptables-legacy-restore --version && nft --version && ip -V \
        && cat /usr/share/flannel-rs/packages \
        && for b in flanneld flannelctl flannel; do echo \"$b: $(ldd /usr/bin/$b 2>&1)\"; done \
        && echo 'hosts: mymachines resolve [!UNAVAIL=return] myhostname dns' > /etc/nsswitch.conf \
        && { timeout 5 flanneld --etcd-endpoints=http://localhost:1 > /tmp/flanneld.log 2>&1; \
             cat /tmp/flanneld.log; \
             echo \"resolved: $(grep -m1 -o -E 'tcp connect error[^)]*(127.0.0.1|\\[::1\\]):1' /tmp/flanneld.log)\"; }";
    let out = rt.ctr(&[
        "run",
        "--rm",
        "--net-host",
        &name,
        "contents",
        "/bin/sh",
        "-c",
        script,
    ]);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], env!("CARGO_PKG_VERSION"), "{out}");
    assert_eq!(
        lines[1],
        format!("flannelctl {}", env!("CARGO_PKG_VERSION")),
        "{out}"
    );
    assert!(
        out.contains("iptables-restore v1.8") && out.contains("nftables v"),
        "{out}"
    );
    for package in [
        "iptables\t",
        "nftables\t",
        "iproute2\t",
        "ca-certificates\t",
    ] {
        assert!(
            out.lines().any(|l| l.starts_with(package)),
            "{package} in {out}"
        );
    }
    // Static (scripts/build-dist.sh): the CNI plugin runs on the host whatever its glibc.
    for b in ["flanneld", "flannelctl", "flannel"] {
        assert!(
            out.lines()
                .any(|l| l.starts_with(&format!("{b}:")) && l.contains("statically linked")),
            "{b} static in {out}"
        );
    }
    // The static daemon looks names up in /etc/hosts (then DNS) although nsswitch.conf lists
    // services it would have to dlopen and not `files`: the etcd endpoint's name (localhost,
    // from the hosts file ctr mounts) became a loopback address where nothing listens (a
    // connect error, not a lookup error).
    assert!(
        out.lines()
            .last()
            .is_some_and(|l| l.starts_with("resolved: tcp connect error")
                && (l.ends_with("127.0.0.1:1") || l.ends_with("[::1]:1"))),
        "{out}"
    );
    drop(rt);

    // Reproducible: the same inputs (package versions, the same binaries, SOURCE_DATE_EPOCH)
    // again give the same bytes.
    let again = std::env::temp_dir().join(format!("flannel-rs-image-again-{}", std::process::id()));
    let epoch = ok(
        Command::new("git")
            .args(["log", "-1", "--format=%ct"])
            .current_dir(workspace())
            .output()
            .unwrap(),
        "git log",
    );
    let out = Command::new(workspace().join("scripts/build-image.sh"))
        .arg("--no-cargo")
        .env("IMAGE_OUT", &again)
        .env("SOURCE_DATE_EPOCH", epoch.trim())
        .output()
        .unwrap();
    ok(out, "scripts/build-image.sh again");
    let rebuilt = again.join(image.file_name().unwrap());
    let same = std::fs::read(&rebuilt).unwrap() == std::fs::read(&image).unwrap();
    let _ = std::fs::remove_dir_all(&again);
    assert!(
        same,
        "a second build from the same inputs differs from {}",
        image.display()
    );
}
