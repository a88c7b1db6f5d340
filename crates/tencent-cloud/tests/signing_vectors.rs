//! Golden tests: every vector from the official docs and the official Python SDK.

use base64::Engine;
use tencent_cloud::signing::{sign, signing_key, utc_date, SigningInput};

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
        // The exact body bytes the official tools signed.
        let payload = base64::engine::general_purpose::STANDARD
            .decode(i["payload_b64"].as_str().unwrap())
            .unwrap();
        let input = SigningInput {
            secret_id: i["secret_id"].as_str().unwrap(),
            secret_key: i["secret_key"].as_str().unwrap(),
            service: i["service"].as_str().unwrap(),
            host: i["host"].as_str().unwrap(),
            method: i["http_method"].as_str().unwrap(),
            content_type: i["content_type"].as_str().unwrap(),
            extra_headers: &[],
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
        extra_headers: &[],
        canonical_query: "",
        payload,
        timestamp: 1_551_113_065,
    });
    assert_eq!(
        got.signature,
        "2230eefd229f582d8b1b891af7107b91597240707d778ab3738f756258d7652c"
    );
}
