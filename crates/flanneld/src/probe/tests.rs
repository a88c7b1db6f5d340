use super::*;
use std::sync::Mutex;

fn ip(s: &str) -> Ipv4Addr {
    s.parse().unwrap()
}

fn plan() -> ProbePlan {
    ProbePlan {
        source: ip("10.244.1.0"),
        groups: vec![
            ProbeGroup {
                name: "subnet-a".into(),
                targets: vec![ip("10.244.2.0"), ip("10.244.3.0")],
            },
            ProbeGroup {
                name: "subnet-b".into(),
                targets: vec![ip("10.244.4.0")],
            },
        ],
    }
}

#[test]
fn one_answer_per_group_verifies_and_only_silent_groups_are_probed_again() {
    let mut p = Progress::new(plan());
    assert!(!p.verified());
    assert_eq!(
        p.outstanding(),
        [ip("10.244.2.0"), ip("10.244.3.0"), ip("10.244.4.0")]
    );
    p.record([ip("10.244.3.0")]);
    assert!(!p.verified());
    assert_eq!(p.outstanding(), [ip("10.244.4.0")], "subnet-a answered");
    let why = p.explain(Duration::from_secs(30));
    assert_eq!(
        why,
        "DataPathUnverified: the routes are listed but no probe from 10.244.1.0 was answered within 30 s by a node of subnet-b (10.244.4.0): the VPC does not forward this node's pod traffic yet"
    );
    p.record([ip("10.244.4.0")]);
    assert!(p.verified());
    assert!(p.outstanding().is_empty());
    assert!(Progress::new(ProbePlan {
        source: ip("10.244.1.0"),
        groups: vec![],
    })
    .verified());
}

#[test]
fn echo_request_bytes_and_checksum() {
    let p = echo_request(0x1234, 7);
    assert_eq!(
        p,
        [8, 0, 0x43, 0x63, 0x12, 0x34, 0, 7, b'f', b'l', b'a', b'n', b'n', b'e', b'l', b'!']
    );
    // A packet with its checksum sums to zero.
    assert_eq!(checksum(&p), 0);
}

#[test]
fn only_echo_replies_with_our_ident_are_answers() {
    let reply = |ty: u8, ident: u16| {
        let mut pkt = vec![
            0x45, 0, 0, 36, 0, 0, 0, 0, 64, 1, 0, 0, 10, 244, 2, 0, 10, 244, 1, 0,
        ];
        pkt.extend_from_slice(&[ty, 0, 0, 0]);
        pkt.extend_from_slice(&ident.to_be_bytes());
        pkt.extend_from_slice(&[0, 1]);
        pkt
    };
    assert_eq!(echo_reply_from(&reply(0, 9), 9), Some(ip("10.244.2.0")));
    assert_eq!(echo_reply_from(&reply(0, 8), 9), None, "another prober's");
    assert_eq!(echo_reply_from(&reply(8, 9), 9), None, "a request");
    assert_eq!(echo_reply_from(&reply(0, 9)[..22], 9), None, "truncated");
    let mut udp = reply(0, 9);
    udp[9] = 17;
    assert_eq!(echo_reply_from(&udp, 9), None);
}

/// Answers from the targets in `up`, which the test changes.
struct FakeEcho {
    up: Mutex<BTreeSet<Ipv4Addr>>,
    rounds: Mutex<u32>,
}

#[async_trait]
impl Prober for FakeEcho {
    async fn ensure_source(&self, _source: Ipv4Addr) -> Result<(), ProbeError> {
        Ok(())
    }
    async fn echo(
        &self,
        _source: Ipv4Addr,
        targets: &[Ipv4Addr],
        _wait: Duration,
    ) -> Result<BTreeSet<Ipv4Addr>, ProbeError> {
        *self.rounds.lock().unwrap() += 1;
        let up = self.up.lock().unwrap();
        Ok(targets.iter().filter(|t| up.contains(t)).copied().collect())
    }
}

#[tokio::test(start_paused = true)]
async fn unverified_after_30_s_then_verified_when_the_path_answers() {
    let echo = Arc::new(FakeEcho {
        up: Mutex::new([ip("10.244.2.0")].into()),
        rounds: Mutex::new(0),
    });
    let mut rx = spawn(plan(), echo.clone());
    rx.changed().await.unwrap();
    let ProbeState::Unverified(why) = rx.borrow_and_update().clone() else {
        panic!("expected unverified first");
    };
    assert!(why.contains("subnet-b (10.244.4.0)"), "{why}");
    assert!(!why.contains("subnet-a"), "{why}");
    let rounds = *echo.rounds.lock().unwrap();
    assert!(
        (25..=70).contains(&rounds),
        "paced rounds in 30 s: {rounds}"
    );
    echo.up.lock().unwrap().insert(ip("10.244.4.0"));
    rx.changed().await.unwrap();
    let state = rx.borrow().clone();
    match state {
        ProbeState::Verified(after) => assert!(after >= UNVERIFIED_AFTER, "{after:?}"),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn the_source_is_the_only_probe_address_on_lo() {
    use crate::kernel::fake::FakeKernel;
    use crate::kernel::Links;
    let kernel = FakeKernel::with_link("lo", 1, 65536);
    let lo = kernel.link_by_name("lo").await.unwrap().unwrap();
    for a in ["127.0.0.1/8", "10.244.7.0/32", "192.168.9.9/32"] {
        kernel.add_address(&lo, a.parse().unwrap()).await.unwrap();
    }
    let networks = ["10.244.0.0/16".parse().unwrap()];
    ensure_source_on_lo(&kernel, &networks, ip("10.244.1.0"))
        .await
        .unwrap();
    let have: Vec<String> = kernel
        .addresses(&lo)
        .await
        .unwrap()
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(
        have,
        ["10.244.1.0/32", "127.0.0.1/8", "192.168.9.9/32"],
        "the earlier lease's address gone, nothing outside the Network touched"
    );
}
