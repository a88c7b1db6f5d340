//! Golden tests: every vector from the official docs and the official Python SDK.

use base64_free::decode_b64;
use tencent_cloud::signing::{sign, signing_key, utc_date, SigningInput};

mod base64_free {
    /// Minimal standard-alphabet base64 decoder for the vectors' `payload_b64`.
    pub fn decode_b64(s: &str) -> Vec<u8> {
        let val = |c: u8| -> u32 {
            match c {
                b'A'..=b'Z' => (c - b'A') as u32,
                b'a'..=b'z' => (c - b'a' + 26) as u32,
                b'0'..=b'9' => (c - b'0' + 52) as u32,
                b'+' => 62,
                b'/' => 63,
                _ => panic!("bad base64 byte {c}"),
            }
        };
        let bytes: Vec<u8> = s.bytes().filter(|b| *b != b'=').collect();
        let mut out = Vec::new();
        for chunk in bytes.chunks(4) {
            let mut n = 0u32;
            for (i, c) in chunk.iter().enumerate() {
                n |= val(*c) << (18 - 6 * i);
            }
            for i in 0..chunk.len().saturating_sub(1) {
                out.push((n >> (16 - 8 * i)) as u8);
            }
        }
        out
    }
}

#[test]
fn every_vector_matches() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/vectors");
    let mut checked = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let v: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        let i = &v["inputs"];
        let e = &v["expected"];
        let s = |x: &serde_json::Value| x.as_str().unwrap().to_string();
        let payload = decode_b64(i["payload_b64"].as_str().unwrap());
        assert_eq!(
            payload,
            i["payload"].as_str().unwrap().as_bytes(),
            "{path:?}: payload_b64 decodes to payload"
        );
        let input = SigningInput {
            secret_id: i["secret_id"].as_str().unwrap(),
            secret_key: i["secret_key"].as_str().unwrap(),
            service: i["service"].as_str().unwrap(),
            host: i["host"].as_str().unwrap(),
            method: i["http_method"].as_str().unwrap(),
            content_type: i["content_type"].as_str().unwrap(),
            canonical_query: i["canonical_query_string"].as_str().unwrap(),
            payload: &payload,
            timestamp: i["timestamp"].as_i64().unwrap(),
        };
        let got = sign(&input);
        assert_eq!(got.hashed_payload, s(&e["hashed_payload"]), "{path:?}");
        assert_eq!(
            got.canonical_request,
            s(&e["canonical_request"]),
            "{path:?}"
        );
        assert_eq!(
            got.hashed_canonical_request,
            s(&e["hashed_canonical_request"]),
            "{path:?}"
        );
        assert_eq!(got.credential_scope, s(&e["credential_scope"]), "{path:?}");
        assert_eq!(got.string_to_sign, s(&e["string_to_sign"]), "{path:?}");
        let date = utc_date(input.timestamp);
        assert_eq!(
            hex::encode(signing_key(input.secret_key, &date, input.service)),
            s(&e["secret_signing_hex"]),
            "{path:?}"
        );
        assert_eq!(got.signature, s(&e["signature"]), "{path:?}");
        assert_eq!(got.authorization, s(&e["authorization"]), "{path:?}");
        checked += 1;
    }
    assert_eq!(checked, 5, "all five vectors were checked");
}

#[test]
fn official_doc_older_revision_signature() {
    // The CN doc revision masks the key with seven asterisks; same request, other signature.
    let payload = br#"{"Limit": 1, "Filters": [{"Values": ["\u672a\u547d\u540d"], "Name": "instance-name"}]}"#;
    let got = sign(&SigningInput {
        secret_id: "AKIDz8krbsJ5yKBZQpn74WFkmLPx3*******",
        secret_key: "Gu5t9xGARNpq86cd98joQYCN3*******",
        service: "cvm",
        host: "cvm.tencentcloudapi.com",
        method: "POST",
        content_type: "application/json; charset=utf-8",
        canonical_query: "",
        payload,
        timestamp: 1_551_113_065,
    });
    assert_eq!(
        got.signature,
        "2230eefd229f582d8b1b891af7107b91597240707d778ab3738f756258d7652c"
    );
}
