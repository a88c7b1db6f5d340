//! The wireguard Backend section (upstream `wireguard.go`): its keys, defaults and checks.

use super::BackendConfigError;
use crate::gojson;
use secrecy::SecretString;
use serde_json::{Map, Value};

/// wireguard's `Mode` (upstream `wireguard.go`): how a dual-stack node reaches its peers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum WireguardMode {
    /// `flannel-wg` carries IPv4 over IPv4, `flannel-wg-v6` IPv6 over IPv6.
    #[default]
    Separate,
    /// One device for both families; per peer, IPv6 underlay when both ends have a public
    /// (non-private) IPv6 address and the peer's IPv4 one is private, else IPv4.
    Auto,
    /// One device for both families over the IPv4 underlay.
    Ipv4,
    /// One device for both families over the IPv6 underlay.
    Ipv6,
}

impl WireguardMode {
    pub fn name(self) -> &'static str {
        match self {
            WireguardMode::Separate => "separate",
            WireguardMode::Auto => "auto",
            WireguardMode::Ipv4 => "ipv4",
            WireguardMode::Ipv6 => "ipv6",
        }
    }
}

/// Upstream's wireguard ports.
pub const WIREGUARD_DEFAULT_PORT: u16 = 51820;
pub const WIREGUARD_DEFAULT_PORT_V6: u16 = 51821;

/// wireguard options (upstream `wireguard.go`). The PSK never prints (`SecretString`).
#[derive(Debug, Clone)]
pub struct WireguardConfig {
    pub listen_port: u16,
    pub listen_port_v6: u16,
    /// `MTU`: the underlay MTU to subtract the 80-byte overhead from; `None` = the
    /// interface's.
    pub mtu: Option<u32>,
    /// A base64 32-byte preshared key mixed into every peer's handshake.
    pub psk: Option<SecretString>,
    /// `PersistentKeepaliveInterval` in whole seconds; 0 = off.
    pub keepalive_secs: u16,
    pub mode: WireguardMode,
}

impl Default for WireguardConfig {
    fn default() -> Self {
        WireguardConfig {
            listen_port: WIREGUARD_DEFAULT_PORT,
            listen_port_v6: WIREGUARD_DEFAULT_PORT_V6,
            mtu: None,
            psk: None,
            keepalive_secs: 0,
            mode: WireguardMode::Separate,
        }
    }
}

/// A WireGuard key in its text form: base64 of 32 bytes.
pub fn decode_wireguard_key(text: &str) -> Option<[u8; 32]> {
    use base64::Engine;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(text.trim())
        .ok()?;
    bytes.try_into().ok()
}

pub(super) fn parse(obj: &Map<String, Value>) -> Result<WireguardConfig, BackendConfigError> {
    let mut c = WireguardConfig::default();
    const F: &[&str] = &[
        "ListenPort",
        "ListenPortV6",
        "MTU",
        "PSK",
        "PersistentKeepaliveInterval",
        "Mode",
    ];
    let invalid =
        |field: &'static str, problem: String| BackendConfigError::Invalid { field, problem };
    let port = |field: &'static str, v: &Value| -> Result<u16, BackendConfigError> {
        let n = gojson::as_int(field, v)?;
        u16::try_from(n)
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| invalid(field, format!("{n} is not a UDP port")))
    };
    for (field, v) in gojson::matched(obj, F) {
        match field {
            "ListenPort" => c.listen_port = port("ListenPort", v)?,
            "ListenPortV6" => c.listen_port_v6 = port("ListenPortV6", v)?,
            "MTU" => {
                let n = gojson::as_int(field, v)?;
                c.mtu = match u32::try_from(n) {
                    Ok(0) => None,
                    Ok(m) if m > 80 => Some(m),
                    _ => {
                        return Err(invalid(
                            "MTU",
                            format!("{n} leaves no room for the 80-byte WireGuard overhead"),
                        ))
                    }
                };
            }
            "PersistentKeepaliveInterval" => {
                let n = gojson::as_int(field, v)?;
                c.keepalive_secs = u16::try_from(n).map_err(|_| {
                    invalid(
                        "PersistentKeepaliveInterval",
                        format!("{n} is not a number of seconds in 0..65535"),
                    )
                })?;
            }
            "PSK" => {
                // Never echo the key in an error.
                let s = match v {
                    Value::String(s) => s.trim(),
                    other => {
                        return Err(invalid(
                            "PSK",
                            format!("expected a string, found {}", gojson::kind(other)),
                        ))
                    }
                };
                if s.is_empty() {
                    continue;
                }
                if decode_wireguard_key(s).is_none() {
                    return Err(invalid(
                        "PSK",
                        "is not a WireGuard key (base64 of 32 bytes, as `wg genpsk` prints)".into(),
                    ));
                }
                c.psk = Some(SecretString::from(s.to_string()));
            }
            "Mode" => {
                let s = gojson::as_str(field, v)?;
                c.mode = match s {
                    "separate" => WireguardMode::Separate,
                    "auto" => WireguardMode::Auto,
                    "ipv4" => WireguardMode::Ipv4,
                    "ipv6" => WireguardMode::Ipv6,
                    other => {
                        return Err(invalid(
                            "Mode",
                            format!("{other:?} is not separate, auto, ipv4 or ipv6"),
                        ))
                    }
                };
            }
            _ => unreachable!("field list and match arms agree"),
        }
    }
    Ok(c)
}
