//! TC3-HMAC-SHA256 verification with the documented AuthFailure codes.

use super::{header, Shared, MAX_SKEW_SECS};
use crate::ops::{err, ApiErr};
use axum::http::HeaderMap;
use tencent_cloud::signing::{parse_authorization, sign, SigningInput};

impl Shared {
    /// Verify TC3 authentication; returns the service named in the credential scope.
    pub(super) fn authenticate(
        &self,
        headers: &HeaderMap,
        body: &[u8],
        now: i64,
    ) -> Result<String, ApiErr> {
        let h = |k: &str| header(headers, k);
        let auth = parse_authorization(h("authorization")).ok_or_else(|| {
            err(
                "AuthFailure.InvalidAuthorization",
                "The Authorization header is missing or malformed.",
            )
        })?;
        let ts: i64 = h("x-tc-timestamp").parse().map_err(|_| {
            err(
                "AuthFailure.InvalidAuthorization",
                "X-TC-Timestamp is missing or not a number.",
            )
        })?;
        if (now - ts).abs() > MAX_SKEW_SECS {
            return Err(err(
                "AuthFailure.SignatureExpire",
                format!(
                    "The request timestamp {ts} is more than 5 minutes from the server time {now}."
                ),
            ));
        }
        let cred = self
            .creds
            .lock()
            .unwrap()
            .get(&auth.secret_id)
            .cloned()
            .ok_or_else(|| err("AuthFailure.SecretIdNotFound", "The SecretId is not found."))?;
        // Any signed header list will do if it names content-type and host, sorted and
        // without repeats (as the client had to sort it); exactly those headers are verified.
        let names: Vec<&str> = auth.signed_headers.split(';').collect();
        let well_formed = names.windows(2).all(|w| w[0] < w[1])
            && names.iter().all(|n| {
                !n.is_empty()
                    && n.bytes()
                        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            });
        if !well_formed || !names.contains(&"content-type") || !names.contains(&"host") {
            return Err(err(
                "AuthFailure.SignatureFailure",
                format!(
                    "SignedHeaders {:?} must list content-type and host, in lowercase, sorted.",
                    auth.signed_headers
                ),
            ));
        }
        let extra: Vec<(&str, &str)> = names
            .iter()
            .filter(|n| !matches!(**n, "content-type" | "host"))
            .map(|n| (*n, h(n)))
            .collect();
        let expected = sign(&SigningInput {
            secret_id: &auth.secret_id,
            secret_key: &cred.secret_key,
            service: &auth.service,
            host: h("host"),
            method: "POST",
            content_type: h("content-type"),
            extra_headers: &extra,
            canonical_query: "",
            payload: body,
            timestamp: ts,
        });
        if expected.signature != auth.signature || auth.date != tencent_cloud::signing::utc_date(ts)
        {
            return Err(err(
                "AuthFailure.SignatureFailure",
                "The provided credentials could not be validated.",
            ));
        }
        if let Some(token) = &cred.token {
            if h("x-tc-token") != token {
                return Err(err(
                    "AuthFailure.TokenFailure",
                    "The token is missing or invalid.",
                ));
            }
        }
        if cred.expires_at.is_some_and(|e| now >= e) {
            return Err(err(
                "AuthFailure.TokenFailure",
                "The temporary credentials have expired.",
            ));
        }
        Ok(auth.service)
    }
}
