//! A small typed client for the parts of Tencent Cloud a VPC-routing node agent needs:
//! TC3-HMAC-SHA256 signing, VPC route tables and subnets, CVM instances, the instance
//! metadata service and a credential chain (config, environment, profile file, CVM role).
//!
//! Built for daemons: retries with backoff and jitter (re-signed each attempt), a client-side
//! rate limiter, per-request timeouts, typed error classes, and secrets that never print.

pub mod client;
pub mod credentials;
pub mod cvm;
pub mod error;
pub mod metadata;
pub mod ratelimit;
pub mod signing;
pub mod vpc;

pub use client::{CallObserver, Client, ClientConfig, Endpoint};
pub use credentials::{CredentialProvider, Credentials};
pub use error::{ApiError, Error, ErrorClass};
pub use metadata::MetadataClient;

/// Unix seconds now (0 if the clock is before 1970).
pub fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}
