use super::*;
use crate::backend::testing::Peers;
use crate::kernel::fake::FakeKernel;
use crate::kernel::Links;
use flannel_core::lease::{Expiry, SubnetKey};

fn vx_lease(subnet: &str, ip: &str, mac: &str) -> Lease {
    let mut attrs = LeaseAttrs::new(ip.parse().unwrap());
    attrs.backend_type = "vxlan".into();
    // Upstream's BackendData, as upstream flanneld writes it.
    attrs.backend_data =
        Some(serde_json::from_str(&format!(r#"{{"VNI":1,"VtepMAC":"{mac}"}}"#)).unwrap());
    Lease {
        key: SubnetKey::v4(subnet.parse().unwrap()),
        attrs,
        expiry: Expiry::Never,
    }
}

fn config(json: &str) -> (ValidatedNetConfig, VxlanConfig) {
    let net = flannel_core::config::parse_and_check(json).unwrap();
    let c = match flannel_core::backend_config::BackendConfig::parse(
        &net.backend_type,
        net.backend.as_ref(),
    )
    .unwrap()
    {
        flannel_core::backend_config::BackendConfig::Vxlan(c) => c,
        other => panic!("{other:?}"),
    };
    (net, c)
}

async fn backend(kernel: &Arc<FakeKernel>, json: &str) -> VxlanBackend {
    let ext = ExternalInterface::ipv4("eth0", 2, 1500, Ipv4Addr::new(172, 16, 0, 1));
    let (net, c) = config(json);
    VxlanBackend::new(ext, &net, &c, kernel.clone())
        .await
        .unwrap()
}

const NET: &str = r#"{"Network":"10.5.0.0/16","Backend":{"Type":"vxlan"}}"#;

#[tokio::test]
async fn device_lease_data_and_peer_entries() {
    let kernel = Arc::new(FakeKernel::with_link("eth0", 2, 1500));
    let b = backend(&kernel, NET).await;
    let dev = kernel.s().links["flannel.1"].clone();
    assert_eq!(dev.mtu, 1450);
    assert_eq!(b.mtu(), 1450);
    let attrs = b.lease_attrs().await.unwrap();
    assert_eq!(
        serde_json::to_string(attrs.backend_data.as_ref().unwrap()).unwrap(),
        format!(r#"{{"VNI":1,"VtepMAC":"{}"}}"#, dev.mac.unwrap())
    );

    let own = vx_lease("10.5.1.0/24", "172.16.0.1", "02:00:00:00:00:01");
    let peer = vx_lease("10.5.2.0/24", "172.16.0.2", "02:42:0a:05:02:00");
    let mut peers = Peers::new(&config(NET).0, &own);
    peers.set(&[own.clone(), peer.clone()]);
    peers.reconcile(&b, &own, Trigger::Start).await;
    let idx = dev.index;
    {
        let s = kernel.s();
        assert_eq!(
            s.addrs[&idx]
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>(),
            ["10.5.1.0/32"]
        );
        let mac: Mac = "02:42:0a:05:02:00".parse().unwrap();
        assert_eq!(
            s.neigh[&idx].iter().copied().collect::<Vec<_>>(),
            [Neighbour {
                ip: "10.5.2.0".parse().unwrap(),
                mac
            }]
        );
        assert_eq!(
            s.fdb[&idx].iter().copied().collect::<Vec<_>>(),
            [FdbEntry {
                mac,
                dst: "172.16.0.2".parse().unwrap()
            }]
        );
        let routes: Vec<String> = s.routes.values().map(|r| r.route.to_string()).collect();
        assert_eq!(
            routes,
            [format!("10.5.2.0/24 via 10.5.2.0 dev #{idx} onlink")]
        );
    }

    // The peer's VTEP changes (a restarted upstream node), then the lease goes: its
    // neighbour, FDB entry and route go. At no point is a route left without its L2
    // entries (a packet routed then would wait for an ARP that never resolves).
    let moved = vx_lease("10.5.2.0/24", "172.16.0.2", "02:42:0a:05:02:99");
    peers.add(&moved);
    let added = [moved.clone()];
    let trigger = Trigger::Leases {
        added: &added,
        removed: &[],
    };
    peers.reconcile(&b, &own, trigger).await;
    peers.remove(&moved);
    let trigger = Trigger::Leases {
        added: &[],
        removed: &added,
    };
    peers.reconcile(&b, &own, trigger).await;
    let s = kernel.s();
    assert!(s.neigh[&idx].is_empty() && s.fdb[&idx].is_empty() && s.routes.is_empty());
    assert_eq!(s.path_gaps, Vec::<String>::new());
}

#[tokio::test]
async fn a_deleted_device_comes_back_with_the_same_mac_and_entries() {
    let kernel = Arc::new(FakeKernel::with_link("eth0", 2, 1500));
    let b = backend(&kernel, NET).await;
    let own = vx_lease("10.5.1.0/24", "172.16.0.1", "02:00:00:00:00:01");
    let peer = vx_lease("10.5.2.0/24", "172.16.0.2", "02:42:0a:05:02:00");
    let mut peers = Peers::new(&config(NET).0, &own);
    peers.set(&[own.clone(), peer]);
    peers.reconcile(&b, &own, Trigger::Start).await;
    let old = kernel.s().links["flannel.1"].clone();
    kernel.delete_link(&old).await.unwrap();
    peers
        .reconcile(&b, &own, Trigger::Resync { fresh: true })
        .await;
    let new = kernel.s().links["flannel.1"].clone();
    assert_eq!(new.mac, old.mac);
    assert_ne!(new.index, old.index);
    assert_eq!(kernel.routes().len(), 1);
    assert_eq!(kernel.routes()[0].dev, new.index);
    // A restarted daemon keeps the device's MAC (the VtepMAC in peers' FDBs).
    let again = backend(&kernel, NET).await;
    assert_eq!(again.vtep().1, old.mac.unwrap());
}

#[tokio::test]
async fn direct_routing_uses_the_public_ip_for_peers_on_link() {
    let kernel = Arc::new(FakeKernel::with_link("eth0", 2, 1500));
    kernel.s().on_link.insert("172.16.0.2".parse().unwrap());
    let json = r#"{"Network":"10.5.0.0/16","Backend":{"Type":"vxlan","DirectRouting":true}}"#;
    let b = backend(&kernel, json).await;
    let own = vx_lease("10.5.1.0/24", "172.16.0.1", "02:00:00:00:00:01");
    let near = vx_lease("10.5.2.0/24", "172.16.0.2", "02:42:0a:05:02:00");
    let far = vx_lease("10.5.3.0/24", "192.168.9.3", "02:42:0a:05:03:00");
    let mut peers = Peers::new(&config(json).0, &own);
    peers.set(&[near, far]);
    peers.reconcile(&b, &own, Trigger::Start).await;
    let routes: Vec<String> = kernel.routes().iter().map(ToString::to_string).collect();
    let idx = kernel.s().links["flannel.1"].index;
    assert_eq!(
        routes,
        [
            "10.5.2.0/24 via 172.16.0.2 dev #2".to_string(),
            format!("10.5.3.0/24 via 10.5.3.0 dev #{idx} onlink")
        ]
    );
}

fn dual_lease(v4: &str, v6: &str, ip: &str, ip6: &str, mac: &str, mac6: &str) -> Lease {
    let mut l = vx_lease(v4, ip, mac);
    l.key.ipv6 = Some(v6.parse().unwrap());
    l.attrs.public_ipv6 = Some(ip6.parse().unwrap());
    // Upstream's BackendV6Data.
    l.attrs.backend_v6_data =
        Some(serde_json::from_str(&format!(r#"{{"VNI":1,"VtepMAC":"{mac6}"}}"#)).unwrap());
    l
}

fn dual_ext() -> ExternalInterface {
    let mut ext = ExternalInterface::ipv4("eth0", 2, 1500, Ipv4Addr::new(172, 16, 0, 1));
    ext.iface_v6_addr = Some("fd10::1".parse().unwrap());
    ext.ext_v6_addr = ext.iface_v6_addr;
    ext
}

const DUAL: &str = r#"{"Network":"10.5.0.0/16","EnableIPv6":true,"IPv6Network":"fd00::/48","Backend":{"Type":"vxlan"}}"#;

#[tokio::test]
async fn dual_stack_has_a_v6_device_its_lease_data_and_entries() {
    let kernel = Arc::new(FakeKernel::with_link("eth0", 2, 1500));
    let (net, c) = config(DUAL);
    let b = VxlanBackend::new(dual_ext(), &net, &c, kernel.clone())
        .await
        .unwrap();
    let (dev4, dev6) = {
        let s = kernel.s();
        (
            s.links["flannel.1"].clone(),
            s.links["flannel-v6.1"].clone(),
        )
    };
    assert_eq!((dev4.mtu, dev6.mtu), (1450, 1430));
    assert_eq!(b.mtu(), 1430, "a pod packet fits both tunnels");
    assert_ne!(dev4.mac, dev6.mac);
    let attrs = b.lease_attrs().await.unwrap();
    assert_eq!(attrs.public_ipv6, Some("fd10::1".parse().unwrap()));
    assert_eq!(
        serde_json::to_string(attrs.backend_v6_data.as_ref().unwrap()).unwrap(),
        format!(r#"{{"VNI":1,"VtepMAC":"{}"}}"#, dev6.mac.unwrap())
    );

    let own = dual_lease(
        "10.5.1.0/24",
        "fd00:0:0:1::/64",
        "172.16.0.1",
        "fd10::1",
        "02:00:00:00:00:01",
        "02:00:00:00:06:01",
    );
    let peer = dual_lease(
        "10.5.2.0/24",
        "fd00:0:0:2::/64",
        "172.16.0.2",
        "fd10::2",
        "02:42:0a:05:02:00",
        "02:42:0a:05:06:00",
    );
    let mut peers = Peers::new(&net, &own);
    peers.set(&[own.clone(), peer.clone()]);
    peers.reconcile(&b, &own, Trigger::Start).await;
    let s = kernel.s();
    let idx6 = dev6.index;
    assert_eq!(
        s.addrs[&idx6]
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>(),
        ["fd00:0:0:1::/128"]
    );
    let mac6: Mac = "02:42:0a:05:06:00".parse().unwrap();
    assert_eq!(
        s.neigh[&idx6].iter().copied().collect::<Vec<_>>(),
        [Neighbour {
            ip: "fd00:0:0:2::".parse().unwrap(),
            mac: mac6
        }]
    );
    assert_eq!(
        s.fdb[&idx6].iter().copied().collect::<Vec<_>>(),
        [FdbEntry {
            mac: mac6,
            dst: "fd10::2".parse().unwrap()
        }]
    );
    let mut routes: Vec<String> = s.routes.values().map(|r| r.route.to_string()).collect();
    routes.sort();
    assert_eq!(
        routes,
        [
            format!("10.5.2.0/24 via 10.5.2.0 dev #{} onlink", dev4.index),
            format!("fd00:0:0:2::/64 via fd00:0:0:2:: dev #{idx6} onlink"),
        ]
    );
}

#[tokio::test]
async fn ipv6_only_has_only_the_v6_device() {
    let kernel = Arc::new(FakeKernel::with_link("eth0", 2, 1500));
    let (net, c) = config(
        r#"{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"fd00::/48","Backend":{"Type":"vxlan"}}"#,
    );
    let b = VxlanBackend::new(dual_ext(), &net, &c, kernel.clone())
        .await
        .unwrap();
    {
        let s = kernel.s();
        assert!(!s.links.contains_key("flannel.1") && s.links.contains_key("flannel-v6.1"));
    }
    let attrs = b.lease_attrs().await.unwrap();
    assert!(attrs.backend_data.is_none() && attrs.backend_v6_data.is_some());
    assert_eq!(b.mtu(), 1430);
}

#[tokio::test]
async fn ipv6_without_an_interface_address_names_the_interface() {
    let kernel = Arc::new(FakeKernel::with_link("eth0", 2, 1500));
    let ext = ExternalInterface::ipv4("eth0", 2, 1500, Ipv4Addr::new(172, 16, 0, 1));
    let (net, c) = config(DUAL);
    let err = VxlanBackend::new(ext, &net, &c, kernel)
        .await
        .err()
        .unwrap();
    assert_eq!(
        err.to_string(),
        "EnableIPv6: interface eth0 has no IPv6 address for flannel-v6.1"
    );
}

#[tokio::test]
async fn a_node_whose_device_is_gone_takes_its_previous_leases_vtep_mac() {
    let ext = ExternalInterface::ipv4("eth0", 2, 1500, Ipv4Addr::new(172, 16, 0, 1));
    let mine = vx_lease("10.5.1.0/24", "172.16.0.1", "02:aa:00:00:00:01");
    let other = vx_lease("10.5.2.0/24", "172.16.0.2", "02:aa:00:00:00:02");
    let previous = PreviousVteps::from_leases(&[other, mine], &ext);
    assert_eq!(previous.v4, Some("02:aa:00:00:00:01".parse().unwrap()));
    assert_eq!(previous.v6, None);

    let kernel = Arc::new(FakeKernel::with_link("eth0", 2, 1500));
    let (net, c) = config(NET);
    let b = VxlanBackend::reaching(
        ext.clone(),
        &net,
        &c,
        kernel.clone(),
        BackendKind::Vxlan,
        previous,
    )
    .await
    .unwrap();
    assert_eq!(b.vtep().1, "02:aa:00:00:00:01".parse().unwrap());
    assert_eq!(kernel.s().links["flannel.1"].mac, previous.v4);

    // An existing device's MAC wins over the lease (it is what peers were told last).
    let kept = kernel.s().links["flannel.1"].mac;
    let other_mac = PreviousVteps {
        v4: Some("02:bb:00:00:00:01".parse().unwrap()),
        v6: None,
    };
    let again = VxlanBackend::reaching(
        ext.clone(),
        &net,
        &c,
        kernel.clone(),
        BackendKind::Vxlan,
        other_mac,
    )
    .await
    .unwrap();
    assert_eq!(Some(again.vtep().1), kept);
    // A lease's MAC that is not unicast is never taken.
    let bad = PreviousVteps {
        v4: Some("ff:ff:ff:ff:ff:ff".parse().unwrap()),
        v6: None,
    };
    let fresh = Arc::new(FakeKernel::with_link("eth0", 2, 1500));
    let b = VxlanBackend::reaching(ext, &net, &c, fresh, BackendKind::Vxlan, bad)
        .await
        .unwrap();
    assert!(b.vtep().1.is_unicast());
}
