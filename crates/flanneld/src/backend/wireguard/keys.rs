//! The node's WireGuard key: kept in a file readable only by root (upstream's
//! `/run/flannel/wgkey`, or `WIREGUARD_KEY_FILE`), base64 text as `wg genkey` writes it, so a
//! restart keeps the public key the peers know. The private key never prints.

use base64::Engine;
use boringtun::x25519::{PublicKey, StaticSecret};
use std::fmt;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Upstream's key file.
pub const DEFAULT_KEY_FILE: &str = "/run/flannel/wgkey";
/// Upstream's variable naming another key file.
pub const KEY_FILE_ENV: &str = "WIREGUARD_KEY_FILE";

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("read WireGuard key file {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("write WireGuard key file {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("WireGuard key file {path} does not hold a key (base64 of 32 bytes)")]
    Malformed { path: PathBuf },
}

/// 32 key bytes. `Debug` and `Display` never show a private key.
#[derive(Clone, PartialEq, Eq)]
pub struct PrivateKey([u8; 32]);

impl fmt::Debug for PrivateKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PrivateKey(<redacted>, public {})", self.public())
    }
}

/// The `PSK` as 32 bytes. `Debug` never shows it.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct PresharedKey(pub [u8; 32]);

impl fmt::Debug for PresharedKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PresharedKey(<redacted>)")
    }
}

/// A public key; its text (base64) is what leases carry.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Key(pub [u8; 32]);

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&base64::engine::general_purpose::STANDARD.encode(self.0))
    }
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Key({self})")
    }
}

impl Key {
    pub fn parse(text: &str) -> Option<Key> {
        flannel_core::backend_config::decode_wireguard_key(text).map(Key)
    }
}

impl PrivateKey {
    /// A fresh key, clamped as Curve25519 wants (as `wg genkey`).
    pub fn generate() -> PrivateKey {
        let mut k: [u8; 32] = rand::random();
        k[0] &= 248;
        k[31] &= 127;
        k[31] |= 64;
        PrivateKey(k)
    }

    pub fn from_bytes(k: [u8; 32]) -> PrivateKey {
        PrivateKey(k)
    }

    pub fn secret(&self) -> StaticSecret {
        StaticSecret::from(self.0)
    }

    pub fn bytes(&self) -> &[u8; 32] {
        &self.0
    }

    pub fn public(&self) -> Key {
        Key(PublicKey::from(&self.secret()).to_bytes())
    }

    /// The key in `path`, or a new one written there (mode 0400, created atomically so
    /// no other mode is ever seen). A file others can read is narrowed to 0400.
    pub fn load_or_create(path: &Path) -> Result<PrivateKey, KeyError> {
        match std::fs::read_to_string(path) {
            Ok(text) => {
                let key = flannel_core::backend_config::decode_wireguard_key(&text)
                    .ok_or_else(|| KeyError::Malformed { path: path.into() })?;
                let meta = std::fs::metadata(path).map_err(|source| KeyError::Read {
                    path: path.into(),
                    source,
                })?;
                if meta.permissions().mode() & 0o077 != 0 {
                    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o400))
                        .map_err(|source| KeyError::Write {
                            path: path.into(),
                            source,
                        })?;
                }
                Ok(PrivateKey(key))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let key = PrivateKey::generate();
                write_key(path, &key).map_err(|source| KeyError::Write {
                    path: path.into(),
                    source,
                })?;
                Ok(key)
            }
            Err(source) => Err(KeyError::Read {
                path: path.into(),
                source,
            }),
        }
    }
}

/// Write `key` to a 0400 temporary file beside `path` and rename it into place.
fn write_key(path: &Path, key: &PrivateKey) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let tmp = dir.join(format!(
        ".{}.{}",
        path.file_name()
            .map_or("wgkey".into(), |n| n.to_string_lossy()),
        std::process::id()
    ));
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o400)
        .open(&tmp)?;
    let text = base64::engine::general_purpose::STANDARD.encode(key.0);
    let written = f.write_all(text.as_bytes()).and_then(|()| f.sync_all());
    if let Err(e) = written.and_then(|()| std::fs::rename(&tmp, path)) {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    Ok(())
}

/// The key file flanneld uses: `WIREGUARD_KEY_FILE` or upstream's default.
pub fn key_file() -> PathBuf {
    std::env::var_os(KEY_FILE_ENV)
        .filter(|v| !v.is_empty())
        .map_or_else(|| PathBuf::from(DEFAULT_KEY_FILE), PathBuf::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn public_key_matches_rfc7748_vector() {
        // RFC 7748 §6.1: Alice's private and public keys.
        let hex = |s: &str| -> [u8; 32] {
            let v: Vec<u8> = (0..s.len())
                .step_by(2)
                .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
                .collect();
            v.try_into().unwrap()
        };
        let k = PrivateKey::from_bytes(hex(
            "77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a",
        ));
        assert_eq!(
            k.public().0,
            hex("8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a")
        );
        assert_eq!(Key::parse(&k.public().to_string()), Some(k.public()));
    }

    #[test]
    fn key_file_is_0400_and_kept_across_loads() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/wgkey");
        let first = PrivateKey::load_or_create(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o400);
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text.len(), 44, "base64 of 32 bytes, as wg genkey");
        assert_eq!(PrivateKey::load_or_create(&path).unwrap(), first);
        // No temporary file left beside it.
        assert_eq!(
            std::fs::read_dir(path.parent().unwrap()).unwrap().count(),
            1
        );
        // Generated keys are clamped.
        assert_eq!(first.0[0] & 7, 0);
        assert_eq!(first.0[31] & 0xc0, 0x40);
    }

    #[test]
    fn a_readable_key_file_is_narrowed_and_a_bad_one_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("wgkey");
        std::fs::write(&path, "yAnz5TF+lXXJte14tji3zlMNq+hd2rYUIgJBgB3fBmk=\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        PrivateKey::load_or_create(&path).unwrap();
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o400
        );
        let bad = dir.path().join("bad");
        std::fs::write(&bad, "c2VjcmV0LXRleHQ=").unwrap();
        let e = PrivateKey::load_or_create(&bad).unwrap_err().to_string();
        assert_eq!(
            e,
            format!(
                "WireGuard key file {} does not hold a key (base64 of 32 bytes)",
                bad.display()
            )
        );
    }

    #[test]
    fn preshared_key_never_prints() {
        let shown = format!("{:?}", Some(PresharedKey([7; 32])));
        assert_eq!(shown, "Some(PresharedKey(<redacted>))");
    }

    #[test]
    fn private_key_never_prints() {
        let k = PrivateKey::generate();
        let text = base64::engine::general_purpose::STANDARD.encode(k.0);
        let shown = format!("{k:?}");
        assert!(!shown.contains(&text), "{shown}");
        assert!(shown.contains(&k.public().to_string()));
    }
}
