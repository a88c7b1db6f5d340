//! TC3-HMAC-SHA256 as a pure function of (credentials, timestamp, request bytes).
//!
//! The canonical request covers `content-type`, `host` (and any further headers the caller
//! chooses to sign) and the SHA-256 of the exact body bytes; the date in the credential scope is the UTC date of the timestamp (never local
//! time). The token header (`X-TC-Token`) is not signed.

use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

type HmacSha256 = Hmac<Sha256>;

/// Everything the signature depends on.
#[derive(Clone, Copy)]
pub struct SigningInput<'a> {
    pub secret_id: &'a str,
    pub secret_key: &'a str,
    /// Product name, e.g. `vpc` or `cvm` (independent of the host variant).
    pub service: &'a str,
    /// The Host header exactly as sent (with `:port` when not the default).
    pub host: &'a str,
    pub method: &'a str,
    pub content_type: &'a str,
    /// Headers signed besides content-type and host (lowercase names, e.g. `x-tc-action`);
    /// our client signs none, other clients sign some, and a server verifies what was named.
    pub extra_headers: &'a [(&'a str, &'a str)],
    /// For GET, the URL query as sent; empty for POST.
    pub canonical_query: &'a str,
    pub payload: &'a [u8],
    /// Unix seconds, as sent in `X-TC-Timestamp`.
    pub timestamp: i64,
}

impl std::fmt::Debug for SigningInput<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningInput")
            .field("secret_id", &self.secret_id)
            .field("secret_key", &"[REDACTED]")
            .field("service", &self.service)
            .field("host", &self.host)
            .field("timestamp", &self.timestamp)
            .finish_non_exhaustive()
    }
}

/// Every intermediate, so tests can pin each against the official vectors.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signature {
    pub hashed_payload: String,
    pub canonical_request: String,
    pub hashed_canonical_request: String,
    pub credential_scope: String,
    pub string_to_sign: String,
    pub signature: String,
    /// The value of the `Authorization` header.
    pub authorization: String,
}

pub const ALGORITHM: &str = "TC3-HMAC-SHA256";

fn sha256_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

fn hmac(key: &[u8], msg: &[u8]) -> Vec<u8> {
    let mut mac = HmacSha256::new_from_slice(key).expect("HMAC accepts keys of any length");
    mac.update(msg);
    mac.finalize().into_bytes().to_vec()
}

/// `YYYY-MM-DD` of a Unix timestamp in UTC (civil-from-days, no time zone database).
pub fn utc_date(timestamp: i64) -> String {
    let days = timestamp.div_euclid(86_400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}")
}

/// The signing key `kSign` (exposed for the vectors' `secret_signing_hex`).
pub fn signing_key(secret_key: &str, date: &str, service: &str) -> Vec<u8> {
    let k_date = hmac(format!("TC3{secret_key}").as_bytes(), date.as_bytes());
    let k_service = hmac(&k_date, service.as_bytes());
    hmac(&k_service, b"tc3_request")
}

/// Sign one request.
pub fn sign(input: &SigningInput<'_>) -> Signature {
    let hashed_payload = sha256_hex(input.payload);
    // Names and values lowercased and trimmed, sorted by name (the documented rule).
    let mut headers: Vec<(String, String)> =
        [("content-type", input.content_type), ("host", input.host)]
            .iter()
            .chain(input.extra_headers)
            .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_ascii_lowercase()))
            .collect();
    headers.sort();
    let canonical_headers: String = headers.iter().map(|(k, v)| format!("{k}:{v}\n")).collect();
    let signed_headers = headers
        .iter()
        .map(|(k, _)| k.as_str())
        .collect::<Vec<_>>()
        .join(";");
    let canonical_request = format!(
        "{method}\n/\n{query}\n{canonical_headers}\n{signed_headers}\n{hashed_payload}",
        method = input.method,
        query = input.canonical_query,
    );
    let hashed_canonical_request = sha256_hex(canonical_request.as_bytes());
    let date = utc_date(input.timestamp);
    let credential_scope = format!("{date}/{}/tc3_request", input.service);
    let string_to_sign = format!(
        "{ALGORITHM}\n{}\n{credential_scope}\n{hashed_canonical_request}",
        input.timestamp
    );
    let key = signing_key(input.secret_key, &date, input.service);
    let signature = hex::encode(hmac(&key, string_to_sign.as_bytes()));
    let authorization = format!(
        "{ALGORITHM} Credential={}/{credential_scope}, SignedHeaders={signed_headers}, Signature={signature}",
        input.secret_id
    );
    Signature {
        hashed_payload,
        canonical_request,
        hashed_canonical_request,
        credential_scope,
        string_to_sign,
        signature,
        authorization,
    }
}

/// The parts of an `Authorization` header, for servers (the emulator) that verify requests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsedAuthorization {
    pub secret_id: String,
    pub date: String,
    pub service: String,
    pub signed_headers: String,
    pub signature: String,
}

/// Parse `TC3-HMAC-SHA256 Credential=<id>/<date>/<service>/tc3_request, SignedHeaders=..., Signature=...`.
pub fn parse_authorization(header: &str) -> Option<ParsedAuthorization> {
    let rest = header.strip_prefix(ALGORITHM)?.trim_start();
    let mut credential = None;
    let mut signed_headers = None;
    let mut signature = None;
    for part in rest.split(',') {
        let (k, v) = part.trim().split_once('=')?;
        match k {
            "Credential" => credential = Some(v),
            "SignedHeaders" => signed_headers = Some(v),
            "Signature" => signature = Some(v),
            _ => return None,
        }
    }
    let mut c = credential?.splitn(4, '/');
    let (secret_id, date, service, term) = (c.next()?, c.next()?, c.next()?, c.next()?);
    if term != "tc3_request" {
        return None;
    }
    Some(ParsedAuthorization {
        secret_id: secret_id.to_string(),
        date: date.to_string(),
        service: service.to_string(),
        signed_headers: signed_headers?.to_string(),
        signature: signature?.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_date_is_utc_not_local() {
        // 2019-02-26 00:44:25 in UTC+8 is still 2019-02-25 in UTC.
        assert_eq!(utc_date(1_551_113_065), "2019-02-25");
        assert_eq!(utc_date(0), "1970-01-01");
        assert_eq!(utc_date(1_735_689_600), "2025-01-01");
        assert_eq!(utc_date(951_782_400), "2000-02-29");
        assert_eq!(utc_date(4_102_444_799), "2099-12-31");
    }

    #[test]
    fn authorization_round_trip() {
        let a = "TC3-HMAC-SHA256 Credential=AKID/2025-01-01/vpc/tc3_request, SignedHeaders=content-type;host, Signature=abc";
        let p = parse_authorization(a).unwrap();
        assert_eq!(
            (p.secret_id.as_str(), p.date.as_str(), p.service.as_str()),
            ("AKID", "2025-01-01", "vpc")
        );
        assert_eq!(p.signed_headers, "content-type;host");
        assert!(parse_authorization("HMAC Credential=x").is_none());
        assert!(parse_authorization(
            "TC3-HMAC-SHA256 Credential=a/b/c/d, SignedHeaders=x, Signature=y"
        )
        .is_none());
    }

    #[test]
    fn extra_signed_headers_are_lowercased_sorted_and_listed() {
        let sig = sign(&SigningInput {
            secret_id: "AKID",
            secret_key: "k",
            service: "cvm",
            host: "cvm.tencentcloudapi.com",
            method: "POST",
            content_type: "application/json; charset=utf-8",
            extra_headers: &[("x-tc-action", " DescribeInstances ")],
            canonical_query: "",
            payload: b"{}",
            timestamp: 1_551_113_065,
        });
        assert_eq!(
            sig.canonical_request,
            "POST\n/\n\ncontent-type:application/json; charset=utf-8\nhost:cvm.tencentcloudapi.com\nx-tc-action:describeinstances\n\ncontent-type;host;x-tc-action\n44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a"
        );
        assert!(sig
            .authorization
            .contains(", SignedHeaders=content-type;host;x-tc-action, "));
    }

    #[test]
    fn debug_hides_the_key() {
        let i = SigningInput {
            secret_id: "AKID",
            secret_key: "hide-me",
            service: "vpc",
            host: "h",
            method: "POST",
            content_type: "application/json",
            extra_headers: &[],
            canonical_query: "",
            payload: b"{}",
            timestamp: 0,
        };
        assert!(!format!("{i:?}").contains("hide-me"));
    }
}
