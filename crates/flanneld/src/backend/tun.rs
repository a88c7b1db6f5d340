//! The TUN device of a tunnel backend (udp, wireguard's userspace path): held in a slot its
//! forwarding tasks read from, made anew when someone deleted it (the tasks move to the new
//! one), released when the backend stops (the kernel removes a TUN device with its last
//! descriptor).

use crate::kernel::KernelError;
use std::sync::{Arc, RwLock};
use std::time::Duration;
use tokio::sync::Notify;
use tokio_tun::Tun;
use tracing::warn;

/// Pause after a failed read, so a broken device never spins.
const READ_ERROR_PAUSE: Duration = Duration::from_millis(100);

pub struct TunSlot {
    name: &'static str,
    tun: RwLock<Option<Arc<Tun>>>,
    /// A new device replaced the old one (or none is held any more).
    replaced: Notify,
}

impl TunSlot {
    pub fn new(name: &'static str) -> TunSlot {
        TunSlot {
            name,
            tun: RwLock::new(None),
            replaced: Notify::new(),
        }
    }

    pub fn get(&self) -> Option<Arc<Tun>> {
        self.tun.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn set(&self, tun: Option<Arc<Tun>>) {
        *self.tun.write().unwrap_or_else(|e| e.into_inner()) = tun;
        self.replaced.notify_waiters();
    }

    /// A new device (up, this MTU, no packet information) in place of the old one.
    pub fn create(&self, mtu: u32) -> Result<(), KernelError> {
        let op = || format!("create TUN device {}", self.name);
        let tun = Tun::builder()
            .name(self.name)
            .mtu(i32::try_from(mtu).unwrap_or(i32::MAX))
            .up()
            .build()
            .map_err(|e| KernelError::new(op(), std::io::Error::other(e.to_string())))?
            .into_iter()
            .next()
            .ok_or_else(|| KernelError::new(op(), std::io::Error::other("no queue")))?;
        self.set(Some(Arc::new(tun)));
        Ok(())
    }

    /// Drop our hold on the device.
    pub fn release(&self) {
        self.set(None);
    }

    /// The next packet read from the device, with the device it came from. Waits while no
    /// device is held, follows a replacement, and pauses after a failed read.
    pub async fn recv(&self, buf: &mut [u8]) -> (Arc<Tun>, usize) {
        loop {
            let Some(tun) = self.get() else {
                self.replaced.notified().await;
                continue;
            };
            let read = tokio::select! {
                r = tun.recv(buf) => r,
                () = self.replaced.notified() => continue,
            };
            match read {
                Ok(n) => return (tun, n),
                Err(e) => {
                    warn!(device = self.name, error = %e, "read failed");
                    tokio::time::sleep(READ_ERROR_PAUSE).await;
                }
            }
        }
    }
}
