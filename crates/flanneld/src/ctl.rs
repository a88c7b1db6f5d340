//! flannelctl's commands that need more than a few lines: rendering route tables, building a
//! cloud client from flags and the credential chain.

use std::fmt::Write;
use std::sync::Arc;
use tencent_cloud::credentials::{resolve_chain, ChainInput};
use tencent_cloud::vpc::RouteTable;
use tencent_cloud::{Client, ClientConfig, Endpoint, MetadataClient};

/// Route tables as a human-readable table, one block per route table.
pub fn render_route_tables(tables: &[RouteTable]) -> String {
    let mut out = String::new();
    for t in tables {
        let subnets: Vec<&str> = t
            .associations()
            .iter()
            .filter_map(|a| a.subnet_id.as_deref())
            .collect();
        let _ = writeln!(
            out,
            "{}{}  {}  subnets: {}  routes: {}",
            t.id(),
            if t.main == Some(true) { " (main)" } else { "" },
            t.route_table_name.as_deref().unwrap_or("-"),
            if subnets.is_empty() {
                "-".to_string()
            } else {
                subnets.join(",")
            },
            t.routes().len()
        );
        let _ = writeln!(
            out,
            "  {:<9} {:<20} {:<14} {:<16} {:<8} {:<6} DESCRIPTION",
            "ROUTE-ID", "DESTINATION", "GATEWAY-TYPE", "GATEWAY", "ENABLED", "TYPE"
        );
        for r in t.routes() {
            let _ = writeln!(
                out,
                "  {:<9} {:<20} {:<14} {:<16} {:<8} {:<6} {}",
                r.route_id.map_or("-".to_string(), |i| i.to_string()),
                r.destination_cidr_block
                    .as_deref()
                    .or(r.destination_ipv6_cidr_block.as_deref())
                    .unwrap_or("-"),
                r.gateway_type.as_deref().unwrap_or("-"),
                r.gateway_id.as_deref().unwrap_or("-"),
                r.enabled.map_or("-", |e| if e { "yes" } else { "no" }),
                r.route_type.as_deref().unwrap_or("-"),
                r.route_description.as_deref().unwrap_or(""),
            );
        }
    }
    out
}

/// Why a cloud command could not even start.
#[derive(Debug, thiserror::Error)]
pub enum CloudSetupError {
    #[error("invalid --endpoint: {0}")]
    Endpoint(String),
    #[error("{0}")]
    Credentials(#[from] tencent_cloud::credentials::CredentialError),
    #[error("no region: pass --region or set TENCENTCLOUD_REGION ({0})")]
    Region(#[source] tencent_cloud::metadata::MetadataError),
}

/// A client from flags and the environment: region from the flag, `TENCENTCLOUD_REGION` or
/// the metadata service; credentials from the chain.
pub async fn cloud_client(
    region: Option<String>,
    endpoint: Option<String>,
    metadata_url: &str,
) -> Result<Client, CloudSetupError> {
    let endpoint: Endpoint = endpoint
        .as_deref()
        .unwrap_or("public")
        .parse()
        .map_err(CloudSetupError::Endpoint)?;
    let metadata = MetadataClient::new(metadata_url);
    let env = |k: &str| std::env::var(k).ok();
    let region = match region
        .or_else(|| env("TENCENTCLOUD_REGION"))
        .filter(|r| !r.is_empty())
    {
        Some(r) => r,
        None => metadata.region().await.map_err(CloudSetupError::Region)?,
    };
    let creds = resolve_chain(ChainInput {
        explicit_id: None,
        explicit_key: None,
        env: &env,
        home: std::env::var_os("HOME").map(Into::into),
        metadata: Some(metadata),
    })
    .await?;
    let mut cfg = ClientConfig::new(region);
    cfg.endpoint = endpoint;
    Ok(Client::new(
        cfg,
        Arc::<dyn tencent_cloud::CredentialProvider>::clone(&creds),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_tables_and_routes() {
        let t: RouteTable = serde_json::from_str(
            r#"{"RouteTableId":"rtb-1","RouteTableName":"default","Main":true,"AssociationSet":[{"SubnetId":"subnet-a"}],
                "RouteSet":[{"RouteId":7,"DestinationCidrBlock":"10.244.1.0/24","GatewayType":"NORMAL_CVM","GatewayId":"172.16.0.7","Enabled":true,"RouteType":"USER","RouteDescription":"flannel-rs"}]}"#,
        )
        .unwrap();
        let out = render_route_tables(&[t]);
        assert!(
            out.starts_with("rtb-1 (main)  default  subnets: subnet-a  routes: 1\n"),
            "{out}"
        );
        assert!(out.contains("  7         10.244.1.0/24        NORMAL_CVM     172.16.0.7       yes      USER   flannel-rs\n"), "{out}");
    }
}
