//! Faults a user or the cloud inflicts: a node's flanneld killed or restarted, the route
//! quota changed, the API throttled, the VPC's forwarding lagging its API.

use super::{kill, Lab, LabError};

impl Lab {
    /// Kill a node's flanneld (SIGKILL: no cleanup, its lease and routes stay behind).
    pub fn kill_node(&mut self, name: &str) -> Result<(), LabError> {
        let n = self.find(name)?;
        if let Some(s) = self.state.nodes.iter_mut().find(|s| s.index == n.index) {
            if let Some(pid) = s.flanneld_pid.take() {
                kill(pid, nix::sys::signal::Signal::SIGKILL);
            }
        }
        self.save()
    }

    /// Start a node's flanneld again (killing a running one first).
    pub fn restart_node(&mut self, name: &str) -> Result<(), LabError> {
        let n = self.find(name)?;
        self.kill_node(name)?;
        self.start_flanneld(&n)
    }

    /// Change the routes-per-table quota, as a raise by support would.
    pub fn set_quota(&mut self, quota: usize) -> Result<(), LabError> {
        self.admin(
            "POST",
            "/quota",
            Some(&format!(r#"{{"route_quota":{quota}}}"#)),
        )?;
        self.state.spec.route_quota = quota;
        self.save()
    }

    /// Make the VPC forward a route only `lag` after the API accepted it (None: not until
    /// [`Lab::forward_now`]), as a cloud whose data plane trails its API.
    pub fn lag_forwarding(&self, lag: Option<std::time::Duration>) -> Result<(), LabError> {
        let body = match lag {
            Some(d) => format!(r#"{{"delay_ms":{}}}"#, d.as_millis()),
            None => r#"{"never":true}"#.to_string(),
        };
        self.admin("POST", "/dataplane-lag", Some(&body)).map(drop)
    }

    /// The VPC's forwarding catches up with its API and follows it again.
    pub fn forward_now(&self) -> Result<(), LabError> {
        self.admin("DELETE", "/dataplane-lag", None).map(drop)
    }

    /// Answer `percent` % of all API calls with RequestLimitExceeded (0 clears).
    pub fn throttle(&self, percent: u8) -> Result<(), LabError> {
        if percent > 100 {
            return Err(LabError::Invalid(format!(
                "throttle {percent}: a percentage is 0 to 100"
            )));
        }
        self.admin("DELETE", "/faults", None)?;
        if percent > 0 {
            let body = format!(
                r#"{{"action":"*","error_rate":{},"error_code":"RequestLimitExceeded"}}"#,
                f64::from(percent) / 100.0
            );
            self.admin("POST", "/faults", Some(&body))?;
        }
        Ok(())
    }
}
