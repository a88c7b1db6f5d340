//! flannel-core: the pure heart of flannel-rs.
//!
//! Everything here is a value-in, value-out function: no sockets, no files, no clocks
//! (time is passed in). The daemon, the subnet managers and the backends build on it.
//! Formats that users and upstream flannel can see (net-conf.json, lease JSON, subnet
//! keys, subnet.env) are reproduced byte for byte and pinned by golden tests.

pub mod admission;
pub mod alloc;
pub mod backend_config;
pub mod config;
pub mod gojson;
pub mod ip;
pub mod kube;
pub mod lease;
pub mod mac;
pub mod subnet_env;
pub mod traffic;
pub mod watch;

pub use config::{RawNetConfig, ValidatedNetConfig};
pub use lease::{Lease, LeaseAttrs, LeaseEvent, SubnetKey};
