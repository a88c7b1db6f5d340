//! Name lookups in the shipped (statically linked) binaries.
//!
//! The shipped build links glibc in (scripts/build-dist.sh): the CNI plugin runs on the host,
//! whatever its glibc, and the daemon maps no shared libraries. glibc's `files` and `dns`
//! name services are built into such a binary; any other service `/etc/nsswitch.conf` names
//! for `hosts` (`myhostname`, `resolve`, `mdns4_minimal`...) would be loaded with `dlopen`,
//! pulling a second, possibly different glibc into the process. So a static binary looks
//! names up in `/etc/hosts`, then DNS (`/etc/resolv.conf`), whatever nsswitch.conf says:
//! what upstream's statically built Go flanneld does too. A dynamically linked build (tests,
//! `cargo run`) follows nsswitch.conf as usual.

/// Pin the `hosts` database to `files dns` when glibc is linked in; nothing otherwise. Call first thing in `main`, before any thread or lookup exists.
pub fn pin_for_static_glibc() {
    #[cfg(all(target_env = "gnu", target_feature = "crt-static"))]
    static_glibc::configure_hosts();
}

#[cfg(all(target_env = "gnu", target_feature = "crt-static"))]
#[allow(unsafe_code)] // the workspace's one FFI call of its own; see SAFETY
mod static_glibc {
    use std::ffi::{c_char, c_int, CStr};

    extern "C" {
        // glibc's <nss.h>: replace the service list of one database, as if nsswitch.conf
        // said so. Returns 0, or -1 when the database or the list is unknown.
        fn __nss_configure_lookup(dbname: *const c_char, service_line: *const c_char) -> c_int;
    }

    pub fn configure_hosts() {
        const DB: &CStr = c"hosts";
        const SERVICES: &CStr = c"files dns";
        // SAFETY: both arguments are NUL-terminated static strings that glibc only reads;
        // this runs at the top of `main`, before any other thread or name lookup, as glibc
        // requires of a call that rewrites the service table.
        let rc = unsafe { __nss_configure_lookup(DB.as_ptr(), SERVICES.as_ptr()) };
        if rc != 0 {
            eprintln!("warning: could not limit host name lookups to files and DNS; nsswitch.conf applies");
        }
    }
}
