//! The cloud console: the emulator's admin API (reached from inside the router namespace),
//! the route tables as it holds them, the user's edits, and the API call counts; etcdctl.

use super::{ConsoleAction, Lab, LabError};
use crate::topology::ADMIN;
use tencent_vpc_emulator::scenario::Scenario;

impl Lab {
    /// The emulator's API call counts: action → result → calls.
    pub fn calls(
        &self,
    ) -> Result<std::collections::BTreeMap<String, std::collections::BTreeMap<String, u64>>, LabError>
    {
        let text = self.admin("GET", "/calls", None)?;
        serde_json::from_str(&text).map_err(|e| LabError::Admin(format!("unreadable calls: {e}")))
    }

    /// etcdctl against the lab's etcd (from inside the router namespace).
    pub fn etcdctl(&self, args: &[&str]) -> Result<String, LabError> {
        let endpoints = self.spec().etcd_endpoint();
        let mut all = vec!["env", "ETCDCTL_API=3", "etcdctl", "--endpoints", &endpoints];
        all.extend_from_slice(args);
        Ok(self.router().ok(&all)?)
    }

    /// The emulator's admin API (from inside the router namespace).
    pub fn admin(&self, method: &str, path: &str, body: Option<&str>) -> Result<String, LabError> {
        let url = format!("http://{ADMIN}{path}");
        let (status, text) = crate::netns::http(&self.spec().router(), method, &url, body)?;
        if (200..300).contains(&status) {
            Ok(text)
        } else {
            Err(LabError::Admin(format!(
                "{status} to {method} {path}: {text}"
            )))
        }
    }

    /// The VPC as the emulator holds it.
    pub fn cloud(&self) -> Result<Scenario, LabError> {
        let text = self.admin("GET", "/state", None)?;
        Scenario::from_json(&text).map_err(|e| LabError::Admin(format!("unreadable state: {e}")))
    }

    /// A console edit: delete or disable the routes to `destination` (in `table`, or every
    /// table); the route IDs touched.
    pub fn console(
        &self,
        action: ConsoleAction,
        destination: &str,
        table: Option<&str>,
    ) -> Result<Vec<String>, LabError> {
        let cloud = self.cloud()?;
        let mut touched = Vec::new();
        for t in cloud
            .route_tables
            .iter()
            .filter(|t| table.is_none_or(|want| t.route_table_id == want))
        {
            for r in t
                .routes
                .iter()
                .filter(|r| r.destination_cidr_block.to_string() == destination)
            {
                let path = format!("/route-tables/{}/routes/{}", t.route_table_id, r.route_id);
                match action {
                    ConsoleAction::DeleteRoute => self.admin("DELETE", &path, None)?,
                    ConsoleAction::DisableRoute => {
                        self.admin("POST", &format!("{path}/disable"), None)?
                    }
                };
                touched.push(format!("{}/{}", t.route_table_id, r.route_id));
            }
        }
        Ok(touched)
    }

    /// Which subnets a route table serves.
    pub fn table_subnets(cloud: &Scenario, table: &str) -> Vec<String> {
        let main = cloud
            .route_tables
            .iter()
            .find(|t| t.main)
            .map(|t| t.route_table_id.clone());
        cloud
            .subnets
            .iter()
            .filter(|s| {
                s.route_table_id
                    .as_ref()
                    .or(main.as_ref())
                    .map(String::as_str)
                    == Some(table)
            })
            .map(|s| s.subnet_id.clone())
            .collect()
    }
}
