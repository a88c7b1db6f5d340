//! The Kubernetes manager against a scripted API server (tower-test): what it sends and what
//! it makes of the answers, for the cases a real kube-apiserver will not readily produce.

use super::leases::{LeaseElection, LEASE_SECS};
use super::*;
use http::{Request, Response};
use kube::client::Body;
use tower_test::mock::{self, Handle};

type ApiServer = Handle<Request<Body>, Response<Body>>;

fn manager() -> (KubeManager, ApiServer) {
    let (service, handle) = mock::pair::<Request<Body>, Response<Body>>();
    let client = kube::Client::new(service, "kube-flannel");
    let config = flannel_core::config::parse_and_check(
        r#"{"Network":"10.244.0.0/16","Backend":{"Type":"host-gw"}}"#,
    )
    .unwrap();
    let m = KubeManager {
        client,
        node: "node-1".into(),
        namespace: "kube-flannel".into(),
        prefix: AnnotationPrefix::parse(fk::DEFAULT_PREFIX).unwrap(),
        config,
        set_network_unavailable: true,
    };
    (m, handle)
}

fn answer(status: u16, body: serde_json::Value) -> Response<Body> {
    Response::builder()
        .status(status)
        .body(Body::from(serde_json::to_vec(&body).unwrap()))
        .unwrap()
}

fn status(code: u16, reason: &str) -> serde_json::Value {
    serde_json::json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
        "message": reason, "reason": reason, "code": code})
}

async fn body_of(req: Request<Body>) -> serde_json::Value {
    let bytes = req.into_body().collect_bytes().await.unwrap();
    serde_json::from_slice(&bytes).unwrap_or_default()
}

#[tokio::test]
async fn readiness_is_a_strategic_status_patch_of_network_unavailable_with_timestamps() {
    let (m, mut api) = manager();
    let server = tokio::spawn(async move {
        let (req, send) = api.next_request().await.expect("a request");
        assert_eq!(req.method(), http::Method::PATCH);
        assert!(
            req.uri().path() == "/api/v1/nodes/node-1/status",
            "{}",
            req.uri()
        );
        assert_eq!(
            req.headers()["content-type"],
            "application/strategic-merge-patch+json"
        );
        let patch = body_of(req).await;
        send.send_response(answer(
            200,
            serde_json::json!({"kind": "Node", "apiVersion": "v1",
            "metadata": {"name": "node-1"}}),
        ));
        patch
    });
    m.report_ready(true, None, None).await.unwrap();
    let patch = server.await.unwrap();
    let c = &patch["status"]["conditions"][0];
    assert_eq!(c["type"], "NetworkUnavailable");
    assert_eq!(c["status"], "False");
    assert_eq!(c["reason"], "FlannelIsUp");
    let stamp = c["lastHeartbeatTime"].as_str().unwrap();
    assert!(stamp.ends_with('Z') && stamp.len() == 20, "{stamp}");
    assert_eq!(c["lastTransitionTime"], c["lastHeartbeatTime"]);
}

#[tokio::test]
async fn a_lease_another_candidate_wrote_first_is_a_409_and_not_ours() {
    let (m, mut api) = manager();
    let election = LeaseElection::new(
        Api::namespaced(m.client.clone(), "kube-flannel"),
        "tencent-vpc-gc-c1",
        "node-1",
    );
    let server = tokio::spawn(async move {
        // GET: no Lease yet.
        let (req, send) = api.next_request().await.unwrap();
        assert_eq!(req.method(), http::Method::GET);
        assert!(
            req.uri().path().ends_with("/leases/tencent-vpc-gc-c1"),
            "{}",
            req.uri()
        );
        send.send_response(answer(404, status(404, "NotFound")));
        // POST: another candidate created it in between.
        let (req, send) = api.next_request().await.unwrap();
        assert_eq!(req.method(), http::Method::POST);
        let lease = body_of(req).await;
        assert_eq!(lease["spec"]["holderIdentity"], "node-1");
        assert_eq!(lease["spec"]["leaseDurationSeconds"], LEASE_SECS);
        send.send_response(answer(409, status(409, "AlreadyExists")));
    });
    assert!(
        !election.try_hold().await.unwrap(),
        "a lost race is not leadership"
    );
    server.await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_failing_node_watch_is_an_error_item_and_lists_again_only_after_a_pause() {
    let (m, mut api) = manager();
    let mut stream = m.watch_leases().await.unwrap();
    let lists = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let seen = lists.clone();
    let server = tokio::spawn(async move {
        while let Some((req, send)) = api.next_request().await {
            assert!(req.uri().path() == "/api/v1/nodes", "{}", req.uri());
            seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            send.send_response(answer(403, status(403, "Forbidden")));
        }
    });
    let first = stream.next().await.unwrap();
    let e = first.unwrap_err();
    assert!(
        e.is_retryable(),
        "a failed LIST is the store's, retried: {e}"
    );
    assert!(
        crate::report(&e).contains("watch nodes"),
        "{}",
        crate::report(&e)
    );
    // The watcher's own retries are paced: within 100 ms of paused time at most one more
    // LIST, never a tight loop.
    let _ = tokio::time::timeout(Duration::from_millis(100), stream.next()).await;
    assert!(lists.load(std::sync::atomic::Ordering::SeqCst) <= 2);
    drop(stream);
    server.abort();
}

use std::sync::Arc;
