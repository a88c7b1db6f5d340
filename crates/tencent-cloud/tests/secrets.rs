//! No secret in trace-level logs, errors or Debug output. Its own test binary: tracing's
//! callsite cache is process-wide, so a capturing subscriber must not race other tests.

mod common;

use common::*;
use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tencent_cloud::credentials::{CredentialProvider, CvmRoleProvider};

#[derive(Clone)]
struct Capture(Arc<Mutex<Vec<u8>>>);

impl Write for Capture {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn no_secret_in_trace_logs_errors_or_debug() {
    let buf = Arc::new(Mutex::new(Vec::new()));
    let cap = Capture(buf.clone());
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(move || cap.clone())
        .with_ansi(false)
        .finish();
    tracing::subscriber::set_global_default(subscriber)
        .expect("the only subscriber in this binary");

    let (md, _) = metadata_server(3600).await;
    let role: Arc<dyn CredentialProvider> = Arc::new(CvmRoleProvider::new(md, "flannel-role"));
    let mut texts = Vec::new();
    let (url, _) = start(
        |_, n| match n {
            0 => api_error("AuthFailure.TokenFailure"),
            1 => api_error("RequestLimitExceeded"),
            2 => ok(r#""TotalCount":0,"#),
            _ => api_error("UnauthorizedOperation"),
        },
        Duration::ZERO,
    )
    .await;
    let c = client(&url, role.clone());
    c.describe_subnets(&[]).await.unwrap();
    let e = c.describe_route_tables(&[]).await.unwrap_err();
    texts.push(e.to_string());
    texts.push(format!("{e:?}"));
    texts.push(format!("{c:?}"));
    texts.push(format!("{role:?}"));
    texts.push(format!("{:?}", role.credentials().await.unwrap()));
    let e = client(&url, static_creds(Some(TOKEN)))
        .describe_route_tables(&[])
        .await
        .unwrap_err();
    texts.push(format!("{e} {e:?}"));

    let logs = String::from_utf8(buf.lock().unwrap().clone()).unwrap();
    assert!(
        logs.contains("request"),
        "trace logging was captured: {logs}"
    );
    assert!(logs.contains("credentials rejected"), "{logs}");
    for text in texts.iter().chain(std::iter::once(&logs)) {
        assert!(!text.contains(SECRET_KEY), "secret key leaked: {text}");
        assert!(!text.contains(TOKEN), "token leaked: {text}");
    }
}
