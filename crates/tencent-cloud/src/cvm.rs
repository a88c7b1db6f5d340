//! CVM DescribeInstances by private IP (API version 2017-03-12; `Offset`/`Limit` integers).

use crate::client::{Client, CVM};
use crate::error::Error;
use crate::vpc::Filter;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct VirtualPrivateCloud {
    pub vpc_id: Option<String>,
    pub subnet_id: Option<String>,
    pub as_vpc_gateway: Option<bool>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct Instance {
    pub instance_id: Option<String>,
    pub instance_name: Option<String>,
    pub instance_state: Option<String>,
    pub private_ip_addresses: Option<Vec<String>>,
    pub virtual_private_cloud: Option<VirtualPrivateCloud>,
    pub placement: Option<serde_json::Value>,
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct DescribeInstancesRequest<'a> {
    filters: &'a [Filter],
    offset: u64,
    limit: u64,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct DescribeInstancesResponse {
    total_count: u64,
    #[serde(default)]
    instance_set: Option<Vec<Instance>>,
}

impl Client {
    /// The instances that own any of `private_ips` (at most 100 per call).
    pub async fn describe_instances_by_private_ip(
        &self,
        private_ips: &[&str],
    ) -> Result<Vec<Instance>, Error> {
        let filters = [Filter::new("private-ip-address", private_ips)];
        let mut all = Vec::new();
        loop {
            let req = DescribeInstancesRequest {
                filters: &filters,
                offset: all.len() as u64,
                limit: 100,
            };
            let r: DescribeInstancesResponse =
                self.call(CVM, "DescribeInstances", &req, true).await?;
            let page = r.instance_set.unwrap_or_default();
            let got = page.len();
            all.extend(page);
            if got == 0 || all.len() as u64 >= r.total_count {
                return Ok(all);
            }
        }
    }
}
