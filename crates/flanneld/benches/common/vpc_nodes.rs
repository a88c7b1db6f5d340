//! What the tencent-vpc benches share: simulated nodes spread over the lab VPC's two subnets
//! (widened to fit), their pod subnets, and the emulator scenario that knows them all.

use ipnet::Ipv4Net;
use std::net::Ipv4Addr;
use tencent_vpc_emulator::scenario::{InstanceSpec, Scenario};

/// Where the nodes live: subnet-a's and subnet-b's CIDRs and the third octet each starts at.
pub struct Layout {
    pub subnet_a: &'static str,
    pub subnet_b: &'static str,
    pub a_from: u8,
    pub b_from: u8,
}

/// Node i: its private IP (even i in subnet-a, odd in subnet-b, 250 per third octet), its VPC
/// subnet, and its pod subnet, the i-th /24 of 10.0.0.0/8 after 10.1.0.0.
pub fn node(l: &Layout, i: usize) -> (Ipv4Addr, &'static str, Ipv4Net) {
    let b = i / 2;
    let (from, subnet) = if i.is_multiple_of(2) {
        (l.a_from, "subnet-a")
    } else {
        (l.b_from, "subnet-b")
    };
    let ip = Ipv4Addr::new(172, 16, from + (b / 250) as u8, 2 + (b % 250) as u8);
    let pod = Ipv4Net::new(
        Ipv4Addr::new(10, (i / 256) as u8 + 1, (i % 256) as u8, 0),
        24,
    )
    .unwrap();
    (ip, subnet, pod)
}

/// The lab scenario with `total` instances, the quota raised to fit and Tencent's documented
/// 100 requests per second per action.
pub fn scenario(l: &Layout, total: usize) -> Scenario {
    let mut s = Scenario::from_json(include_str!(
        "../../../tencent-vpc-emulator/scenarios/lab.json"
    ))
    .unwrap();
    s.subnets[0].cidr_block = l.subnet_a.parse().unwrap();
    s.subnets[1].cidr_block = l.subnet_b.parse().unwrap();
    s.instances.clear();
    for i in 0..total {
        let (ip, subnet, _) = node(l, i);
        s.instances.push(InstanceSpec {
            instance_id: format!("ins-{i}"),
            private_ip: ip,
            subnet_id: subnet.into(),
            mac: format!(
                "52:54:00:{:02x}:{:02x}:{:02x}",
                i >> 16 & 0xff,
                i >> 8 & 0xff,
                i & 0xff
            ),
            name: String::new(),
            role: None,
        });
    }
    s.route_quota = total + 10;
    s.rate_limit_per_second = 100.0;
    s
}
