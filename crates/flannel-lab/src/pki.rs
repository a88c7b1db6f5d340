//! Throw-away certificates for the lab and the tests (rcgen, no openssl): a CA and leaves it
//! signs. Nothing here is trusted by anyone until a user adds the CA.

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use std::net::IpAddr;

/// A CA and one leaf it signed, as PEM.
#[derive(Debug, Clone)]
pub struct Pki {
    pub ca_pem: String,
    pub cert_pem: String,
    pub key_pem: String,
}

/// A CA and a leaf signed by it.
pub struct Authority {
    pub ca_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl Authority {
    /// A new CA named `name`.
    pub fn new(name: &str) -> Result<Authority, rcgen::Error> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca = params.self_signed(&key)?;
        Ok(Authority {
            ca_pem: ca.pem(),
            issuer: Issuer::new(params, key),
        })
    }

    /// A leaf for `ip`, named `name`, for a server, a client or both: (certificate, key).
    pub fn leaf(
        &self,
        name: &str,
        ip: IpAddr,
        server: bool,
        client: bool,
    ) -> Result<(String, String), rcgen::Error> {
        self.leaf_for(name, &[ip], &[], server, client)
    }

    /// A leaf for several addresses and DNS names (e.g. a kube-apiserver: its address, the
    /// `kubernetes` Service's ClusterIP and names).
    pub fn leaf_for(
        &self,
        name: &str,
        ips: &[IpAddr],
        dns: &[&str],
        server: bool,
        client: bool,
    ) -> Result<(String, String), rcgen::Error> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.distinguished_name.push(DnType::CommonName, name);
        params.subject_alt_names = ips.iter().map(|ip| SanType::IpAddress(*ip)).collect();
        for d in dns {
            params
                .subject_alt_names
                .push(SanType::DnsName((*d).try_into()?));
        }
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = [
            server.then_some(ExtendedKeyUsagePurpose::ServerAuth),
            client.then_some(ExtendedKeyUsagePurpose::ClientAuth),
        ]
        .into_iter()
        .flatten()
        .collect();
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok((cert.pem(), key.serialize_pem()))
    }
}

/// A CA named `ca` and a server certificate for `ip`.
pub fn server_for_ip(ca: &str, ip: IpAddr) -> Result<Pki, rcgen::Error> {
    let authority = Authority::new(ca)?;
    let (cert_pem, key_pem) = authority.leaf(&ip.to_string(), ip, true, false)?;
    Ok(Pki {
        ca_pem: authority.ca_pem,
        cert_pem,
        key_pem,
    })
}

/// A key pair alone (ECDSA P-256), e.g. a service-account signing key: (private key PEM,
/// public key PEM).
pub fn key_pair() -> Result<(String, String), rcgen::Error> {
    let k = KeyPair::generate()?;
    Ok((k.serialize_pem(), k.public_key_pem()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ca_and_a_leaf_in_pem() {
        let p = server_for_ip("lab CA", "172.16.1.1".parse().unwrap()).unwrap();
        assert!(p.ca_pem.starts_with("-----BEGIN CERTIFICATE-----"));
        assert!(p.cert_pem.starts_with("-----BEGIN CERTIFICATE-----"));
        assert!(p.key_pem.starts_with("-----BEGIN PRIVATE KEY-----"));
        assert_ne!(p.ca_pem, p.cert_pem);
    }
}
