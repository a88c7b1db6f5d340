//! The backend against the fake kernel (which, as this machine kind's, has no wireguard
//! link type): lease data, MTU, key reuse, the data path chosen. The data path itself is
//! tested in network namespaces (tests/wireguard.rs).

use super::*;
use crate::kernel::fake::FakeKernel;
use crate::kernel::Links;
use flannel_core::backend_config::BackendConfig;
use std::net::Ipv4Addr;

fn parse(json: &str) -> (ValidatedNetConfig, WireguardConfig) {
    let net = flannel_core::config::parse_and_check(json).unwrap();
    match BackendConfig::parse(&net.backend_type, net.backend.as_ref()).unwrap() {
        BackendConfig::Wireguard(c) => (net, c),
        other => panic!("{other:?}"),
    }
}

async fn backend(
    kernel: &Arc<FakeKernel>,
    json: &str,
    key_file: &std::path::Path,
) -> WireguardBackend {
    let mut ext = ExternalInterface::ipv4("eth0", 2, 1500, Ipv4Addr::new(172, 16, 0, 1));
    ext.ext_v6_addr = Some("2001:db8::1".parse().unwrap());
    let (net, mut c) = parse(json);
    // Ephemeral ports: a unit test binds in whatever namespace it runs in.
    c.listen_port = 0;
    c.listen_port_v6 = 0;
    WireguardBackend::new(ext, &net, &c, kernel.clone(), key_file)
        .await
        .unwrap()
}

#[tokio::test]
async fn lease_data_as_upstream_and_the_key_kept() {
    let dir = tempfile::tempdir().unwrap();
    let key_file = dir.path().join("wgkey");
    let kernel = Arc::new(FakeKernel::with_link("eth0", 2, 1500));
    let json = r#"{"Network":"10.5.0.0/16","EnableIPv6":true,"IPv6Network":"fd00:5::/56","Backend":{"Type":"wireguard"}}"#;
    let b = backend(&kernel, json, &key_file).await;
    assert_eq!(b.data_path(), DataPathKind::Userspace);
    assert_eq!(b.mtu(), 1420);
    let attrs = b.lease_attrs().await.unwrap();
    assert_eq!(attrs.backend_type, "wireguard");
    let public = b.public_key().to_string();
    assert_eq!(
        serde_json::to_string(attrs.backend_data.as_ref().unwrap()).unwrap(),
        format!(r#"{{"PublicKey":"{public}","Port":0}}"#)
    );
    assert_eq!(
        serde_json::to_string(attrs.backend_v6_data.as_ref().unwrap()).unwrap(),
        format!(r#"{{"PublicKey":"{public}","Port":0}}"#)
    );
    drop(b);
    // A restart keeps the key.
    let again = backend(&kernel, json, &key_file).await;
    assert_eq!(again.public_key().to_string(), public);
}

#[tokio::test]
async fn mtu_from_config_and_v4_only_has_no_v6_data() {
    let dir = tempfile::tempdir().unwrap();
    let kernel = Arc::new(FakeKernel::with_link("eth0", 2, 9000));
    let b = backend(
        &kernel,
        r#"{"Network":"10.5.0.0/16","Backend":{"Type":"wireguard","MTU":1400}}"#,
        &dir.path().join("k"),
    )
    .await;
    assert_eq!(b.mtu(), 1320);
    let attrs = b.lease_attrs().await.unwrap();
    assert!(attrs.backend_v6_data.is_none());
    assert_eq!(b.devices.len(), 1);
    assert_eq!(b.devices[0].name, "flannel-wg");
}

#[tokio::test]
async fn a_device_left_behind_is_removed_before_choosing() {
    let kernel = Arc::new(FakeKernel::with_link("eth0", 2, 1500));
    kernel.s().links.insert(
        "flannel-wg".into(),
        Link {
            index: 9,
            name: "flannel-wg".into(),
            mtu: 1420,
            mac: None,
            up: true,
            vxlan: None,
        },
    );
    assert_eq!(
        choose_data_path(kernel.as_ref(), 1420).await.unwrap(),
        DataPathKind::Userspace
    );
    assert!(kernel.link_by_name("flannel-wg").await.unwrap().is_none());
}

#[test]
fn ipv6_mode_needs_ipv6() {
    let net = flannel_core::config::parse_and_check(
        r#"{"Network":"10.5.0.0/16","Backend":{"Type":"wireguard","Mode":"ipv6"}}"#,
    )
    .unwrap();
    let e = crate::backend::Builtin::check(&net)
        .unwrap_err()
        .to_string();
    assert_eq!(
        e,
        "wireguard Mode ipv6 needs EnableIPv6 (an IPv6 underlay address)"
    );
}
