//! The kernel layer: everything that reads or changes the host's network state, behind the
//! narrow traits the pure planners use. For now the system side of interface selection; the
//! data plane (routes, links, neighbours, FDB, packet filter) joins it here.

mod host;

pub use host::SystemNetwork;
