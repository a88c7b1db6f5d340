//! VPC route tables and subnets (API version 2017-03-12). Field names and JSON types follow
//! the API docs: `Offset`/`Limit` are strings, `RouteId` is an integer, `Enabled` a bool.
//! Response fields are optional: the API omits or nulls fields freely.

use crate::client::{Client, VPC};
use crate::error::Error;
use serde::{Deserialize, Serialize};

/// Page size for Describe calls (the API's maximum).
pub const PAGE: usize = 100;
/// Never read more than this many pages (a misbehaving server cannot loop us forever).
const MAX_PAGES: usize = 1000;

/// `{Name, Values}`: separate filters are ANDed, values inside one filter ORed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Filter {
    pub name: String,
    pub values: Vec<String>,
}

impl Filter {
    pub fn new(name: &str, values: &[&str]) -> Self {
        Filter {
            name: name.to_string(),
            values: values.iter().map(|v| v.to_string()).collect(),
        }
    }
}

/// A route as the API returns it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct Route {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub destination_cidr_block: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gateway_type: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gateway_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub route_id: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub route_description: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub route_type: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub route_table_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub destination_ipv6_cidr_block: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub route_item_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub published_to_vbc: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub created_time: Option<String>,
}

/// A route to create: destination, next hop and an optional description (our ownership tag).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct NewRoute {
    pub destination_cidr_block: String,
    pub gateway_type: String,
    pub gateway_id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub route_description: Option<String>,
}

/// A replacement for the route `route_id` (same table).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct ReplacementRoute {
    pub route_id: u64,
    pub destination_cidr_block: String,
    pub gateway_type: String,
    pub gateway_id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub route_description: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct Association {
    pub subnet_id: Option<String>,
    pub route_table_id: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct RouteTable {
    pub vpc_id: Option<String>,
    pub route_table_id: Option<String>,
    pub route_table_name: Option<String>,
    pub association_set: Option<Vec<Association>>,
    pub route_set: Option<Vec<Route>>,
    pub main: Option<bool>,
    pub created_time: Option<String>,
}

impl RouteTable {
    pub fn id(&self) -> &str {
        self.route_table_id.as_deref().unwrap_or_default()
    }
    pub fn routes(&self) -> &[Route] {
        self.route_set.as_deref().unwrap_or_default()
    }
    pub fn associations(&self) -> &[Association] {
        self.association_set.as_deref().unwrap_or_default()
    }
}

/// A VPC (DescribeVpcs).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct Vpc {
    pub vpc_id: Option<String>,
    pub vpc_name: Option<String>,
    pub cidr_block: Option<String>,
    /// Secondary CIDRs.
    pub assistant_cidr_set: Option<Vec<AssistantCidr>>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct AssistantCidr {
    pub cidr_block: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct Subnet {
    pub vpc_id: Option<String>,
    pub subnet_id: Option<String>,
    pub subnet_name: Option<String>,
    pub cidr_block: Option<String>,
    pub is_default: Option<bool>,
    pub zone: Option<String>,
    pub route_table_id: Option<String>,
    pub available_ip_address_count: Option<u64>,
    pub ipv6_cidr_block: Option<String>,
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct DescribeRequest<'a> {
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    filters: &'a [Filter],
    offset: String,
    limit: String,
}

/// An item of a Describe action, and the field of the answer that lists it.
pub trait DescribeItem: serde::de::DeserializeOwned {
    const SET_FIELD: &'static str;
}

impl DescribeItem for RouteTable {
    const SET_FIELD: &'static str = "RouteTableSet";
}

impl DescribeItem for Vpc {
    const SET_FIELD: &'static str = "VpcSet";
}

impl DescribeItem for Subnet {
    const SET_FIELD: &'static str = "SubnetSet";
}

/// One page of a Describe call: the total and the items, typed as they are read (no
/// document tree: a page of tables with thousands of routes is megabytes of JSON).
struct DescribePage<T> {
    total_count: u64,
    items: Vec<T>,
}

impl<'de, T: DescribeItem> Deserialize<'de> for DescribePage<T> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Page<T>(std::marker::PhantomData<T>);
        impl<'de, T: DescribeItem> serde::de::Visitor<'de> for Page<T> {
            type Value = DescribePage<T>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                write!(f, "a Describe answer with TotalCount and {}", T::SET_FIELD)
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut m: A,
            ) -> Result<Self::Value, A::Error> {
                let mut total_count = None;
                let mut items = Vec::new();
                while let Some(key) = m.next_key::<std::borrow::Cow<'de, str>>()? {
                    if key == "TotalCount" {
                        total_count = Some(m.next_value::<u64>()?);
                    } else if key == T::SET_FIELD {
                        items = m.next_value::<Option<Vec<T>>>()?.unwrap_or_default();
                    } else {
                        m.next_value::<serde::de::IgnoredAny>()?;
                    }
                }
                Ok(DescribePage {
                    total_count: total_count
                        .ok_or_else(|| serde::de::Error::missing_field("TotalCount"))?,
                    items,
                })
            }
        }
        d.deserialize_map(Page(std::marker::PhantomData))
    }
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct RoutesRequest<'a, R: Serialize> {
    route_table_id: &'a str,
    routes: &'a [R],
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct CreateRoutesResponse {
    #[serde(default)]
    pub total_count: Option<u64>,
    #[serde(default)]
    pub route_table_set: Option<Vec<RouteTable>>,
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct RouteIdOnly {
    route_id: u64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct DeleteRoutesResponse {
    #[serde(default)]
    pub route_set: Option<Vec<Route>>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ReplaceRoutesResponse {
    #[serde(default)]
    pub old_route_set: Option<Vec<Route>>,
    #[serde(default)]
    pub new_route_set: Option<Vec<Route>>,
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct ToggleRoutesRequest<'a> {
    route_table_id: &'a str,
    route_ids: &'a [u64],
}

#[derive(Deserialize)]
struct Empty {}

/// The routes-per-table quota's `LimitType` in DescribeVpcLimits.
pub const ROUTE_TABLE_MAX_POLICIES: &str = "route-table-max-policies";

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct LimitsRequest<'a> {
    limit_types: &'a [&'a str],
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct VpcLimit {
    pub limit_type: String,
    pub limit_value: u64,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct LimitsResponse {
    #[serde(default)]
    vpc_limit_set: Option<Vec<VpcLimit>>,
}

impl Client {
    /// Read every page of a Describe action.
    async fn describe_all<T: DescribeItem>(
        &self,
        action: &'static str,
        filters: &[Filter],
    ) -> Result<Vec<T>, Error> {
        let mut all: Vec<T> = Vec::new();
        for _ in 0..MAX_PAGES {
            let req = DescribeRequest {
                filters,
                offset: all.len().to_string(),
                limit: PAGE.to_string(),
            };
            let page: DescribePage<T> = self.call(VPC, action, &req, true).await?;
            let got = page.items.len();
            all.extend(page.items);
            if got == 0 || all.len() as u64 >= page.total_count {
                break;
            }
        }
        Ok(all)
    }

    /// Every route table matching `filters`, all pages read.
    pub async fn describe_route_tables(
        &self,
        filters: &[Filter],
    ) -> Result<Vec<RouteTable>, Error> {
        self.describe_all("DescribeRouteTables", filters).await
    }

    /// Every VPC matching `filters`, all pages read.
    pub async fn describe_vpcs(&self, filters: &[Filter]) -> Result<Vec<Vpc>, Error> {
        self.describe_all("DescribeVpcs", filters).await
    }

    /// Every subnet matching `filters`, all pages read.
    pub async fn describe_subnets(&self, filters: &[Filter]) -> Result<Vec<Subnet>, Error> {
        self.describe_all("DescribeSubnets", filters).await
    }

    /// Create routes in one table, all or nothing.
    pub async fn create_routes(
        &self,
        table: &str,
        routes: &[NewRoute],
    ) -> Result<CreateRoutesResponse, Error> {
        self.call(
            VPC,
            "CreateRoutes",
            &RoutesRequest {
                route_table_id: table,
                routes,
            },
            false,
        )
        .await
    }

    /// Delete routes by RouteId.
    pub async fn delete_routes(
        &self,
        table: &str,
        route_ids: &[u64],
    ) -> Result<DeleteRoutesResponse, Error> {
        let routes: Vec<RouteIdOnly> = route_ids
            .iter()
            .map(|&route_id| RouteIdOnly { route_id })
            .collect();
        self.call(
            VPC,
            "DeleteRoutes",
            &RoutesRequest {
                route_table_id: table,
                routes: &routes,
            },
            false,
        )
        .await
    }

    /// Change routes in place (no gap in forwarding).
    pub async fn replace_routes(
        &self,
        table: &str,
        routes: &[ReplacementRoute],
    ) -> Result<ReplaceRoutesResponse, Error> {
        self.call(
            VPC,
            "ReplaceRoutes",
            &RoutesRequest {
                route_table_id: table,
                routes,
            },
            false,
        )
        .await
    }

    /// The account's VPC quotas of the given types (e.g. [`ROUTE_TABLE_MAX_POLICIES`]).
    pub async fn describe_vpc_limits(&self, types: &[&str]) -> Result<Vec<VpcLimit>, Error> {
        let r: LimitsResponse = self
            .call(
                VPC,
                "DescribeVpcLimits",
                &LimitsRequest { limit_types: types },
                true,
            )
            .await?;
        Ok(r.vpc_limit_set.unwrap_or_default())
    }

    pub async fn enable_routes(&self, table: &str, route_ids: &[u64]) -> Result<(), Error> {
        let _: Empty = self
            .call(
                VPC,
                "EnableRoutes",
                &ToggleRoutesRequest {
                    route_table_id: table,
                    route_ids,
                },
                true,
            )
            .await?;
        Ok(())
    }

    pub async fn disable_routes(&self, table: &str, route_ids: &[u64]) -> Result<(), Error> {
        let _: Empty = self
            .call(
                VPC,
                "DisableRoutes",
                &ToggleRoutesRequest {
                    route_table_id: table,
                    route_ids,
                },
                true,
            )
            .await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_describe_page_reads_its_set_and_skips_the_rest() {
        let page: DescribePage<Subnet> = serde_json::from_str(
            r#"{"RequestId":"r1","VpcSet":[{"x":1}],"SubnetSet":[{"SubnetId":"subnet-a"},{"SubnetId":"subnet-b"}],"TotalCount":7}"#,
        )
        .unwrap();
        assert_eq!(page.total_count, 7);
        let ids: Vec<_> = page.items.iter().map(|s| s.subnet_id.as_deref()).collect();
        assert_eq!(ids, [Some("subnet-a"), Some("subnet-b")]);
        let empty: DescribePage<RouteTable> =
            serde_json::from_str(r#"{"RouteTableSet":null,"TotalCount":0}"#).unwrap();
        assert!(empty.items.is_empty());
        let e = serde_json::from_str::<DescribePage<Vpc>>(r#"{"VpcSet":[]}"#)
            .err()
            .unwrap();
        assert!(e.to_string().contains("missing field `TotalCount`"), "{e}");
    }

    #[test]
    fn request_json_types() {
        let req = DescribeRequest {
            filters: &[Filter::new("vpc-id", &["vpc-1"])],
            offset: "0".into(),
            limit: "100".into(),
        };
        assert_eq!(
            serde_json::to_string(&req).unwrap(),
            r#"{"Filters":[{"Name":"vpc-id","Values":["vpc-1"]}],"Offset":"0","Limit":"100"}"#
        );
        let routes = [RouteIdOnly { route_id: 14915 }];
        assert_eq!(
            serde_json::to_string(&RoutesRequest {
                route_table_id: "rtb-n0yejvje",
                routes: &routes
            })
            .unwrap(),
            r#"{"RouteTableId":"rtb-n0yejvje","Routes":[{"RouteId":14915}]}"#
        );
        let new = [NewRoute {
            destination_cidr_block: "10.244.1.0/24".into(),
            gateway_type: "NORMAL_CVM".into(),
            gateway_id: "172.16.0.25".into(),
            route_description: None,
        }];
        assert_eq!(
            serde_json::to_string(&RoutesRequest {
                route_table_id: "rtb-1",
                routes: &new
            })
            .unwrap(),
            r#"{"RouteTableId":"rtb-1","Routes":[{"DestinationCidrBlock":"10.244.1.0/24","GatewayType":"NORMAL_CVM","GatewayId":"172.16.0.25"}]}"#
        );
    }

    #[test]
    fn tolerant_route_table_decoding() {
        let t: RouteTable = serde_json::from_str(
            r#"{"RouteTableId":"rtb-1","Main":true,"RouteSet":[{"DestinationCidrBlock":"10.0.0.0/24","RouteId":7,"Enabled":true,"RouteDescription":null,"Unknown":1}],"AssociationSet":null}"#,
        )
        .unwrap();
        assert_eq!(t.id(), "rtb-1");
        assert_eq!(t.routes()[0].route_id, Some(7));
        assert!(t.associations().is_empty());
    }
}
