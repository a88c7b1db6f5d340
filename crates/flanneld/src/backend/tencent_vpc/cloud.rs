//! The narrow slice of the cloud the route writers use: read the VPC's tables and the route
//! quota, and write routes. `tencent_cloud::Client` is the real one (tested against the
//! emulator); [`fake::FakeVpc`] is an in-memory one for unit tests of the agent and the
//! controller.

use async_trait::async_trait;
use tencent_cloud::vpc::{
    Filter, NewRoute, ReplacementRoute, RouteTable, ROUTE_TABLE_MAX_POLICIES,
};
use tencent_cloud::{Client, Error};

#[async_trait]
pub trait VpcRoutes: Send + Sync {
    /// Every route table of the VPC (one DescribeRouteTables).
    async fn route_tables(&self, vpc_id: &str) -> Result<Vec<RouteTable>, Error>;
    /// The account's routes-per-table limit (DescribeVpcLimits), if the API says.
    async fn route_limit(&self) -> Result<Option<usize>, Error>;
    async fn create_routes(&self, table: &str, routes: &[NewRoute]) -> Result<(), Error>;
    async fn replace_routes(&self, table: &str, routes: &[ReplacementRoute]) -> Result<(), Error>;
    async fn enable_routes(&self, table: &str, route_ids: &[u64]) -> Result<(), Error>;
    async fn delete_routes(&self, table: &str, route_ids: &[u64]) -> Result<(), Error>;
}

#[async_trait]
impl VpcRoutes for Client {
    async fn route_tables(&self, vpc_id: &str) -> Result<Vec<RouteTable>, Error> {
        self.describe_route_tables(&[Filter::new("vpc-id", &[vpc_id])])
            .await
    }
    async fn route_limit(&self) -> Result<Option<usize>, Error> {
        let limits = self
            .describe_vpc_limits(&[ROUTE_TABLE_MAX_POLICIES])
            .await?;
        Ok(limits
            .iter()
            .find(|l| l.limit_type == ROUTE_TABLE_MAX_POLICIES)
            .map(|l| l.limit_value as usize))
    }
    async fn create_routes(&self, table: &str, routes: &[NewRoute]) -> Result<(), Error> {
        Client::create_routes(self, table, routes).await.map(drop)
    }
    async fn replace_routes(&self, table: &str, routes: &[ReplacementRoute]) -> Result<(), Error> {
        Client::replace_routes(self, table, routes).await.map(drop)
    }
    async fn enable_routes(&self, table: &str, route_ids: &[u64]) -> Result<(), Error> {
        Client::enable_routes(self, table, route_ids).await
    }
    async fn delete_routes(&self, table: &str, route_ids: &[u64]) -> Result<(), Error> {
        Client::delete_routes(self, table, route_ids)
            .await
            .map(drop)
    }
}

/// An in-memory VPC for unit tests: tables, a quota, next hops the API refuses, and call
/// counts. Writes behave as the API's: all or nothing per call.
#[cfg(test)]
pub mod fake {
    use super::*;
    use std::collections::{BTreeMap, BTreeSet};
    use std::sync::Mutex;
    use tencent_cloud::vpc::Route;

    #[derive(Default)]
    pub struct State {
        pub tables: Vec<RouteTable>,
        pub limit: usize,
        /// Next hops that are no CVM: a create or replace naming one fails.
        pub refused_next_hops: BTreeSet<String>,
        pub calls: BTreeMap<&'static str, usize>,
        next_id: u64,
    }

    pub struct FakeVpc(pub Mutex<State>);

    fn api(code: &str) -> Error {
        Error::Api(tencent_cloud::ApiError {
            action: String::new(),
            code: code.into(),
            message: String::new(),
            request_id: String::new(),
        })
    }

    impl FakeVpc {
        /// Tables `rtb-a` (main, subnet-a) and `rtb-b` (subnet-b), `limit` routes each.
        pub fn new(limit: usize) -> FakeVpc {
            let table = |id: &str, subnet: &str, main: bool| RouteTable {
                vpc_id: Some("vpc-1".into()),
                route_table_id: Some(id.into()),
                association_set: Some(vec![tencent_cloud::vpc::Association {
                    subnet_id: Some(subnet.into()),
                    route_table_id: Some(id.into()),
                }]),
                route_set: Some(Vec::new()),
                main: Some(main),
                ..RouteTable::default()
            };
            FakeVpc(Mutex::new(State {
                tables: vec![
                    table("rtb-a", "subnet-a", true),
                    table("rtb-b", "subnet-b", false),
                ],
                limit,
                ..State::default()
            }))
        }

        pub fn s(&self) -> std::sync::MutexGuard<'_, State> {
            self.0.lock().unwrap()
        }

        pub fn calls(&self, action: &str) -> usize {
            self.s().calls.get(action).copied().unwrap_or(0)
        }

        /// (destination, next hop) of every route in `table`.
        pub fn routes(&self, table: &str) -> Vec<(String, String)> {
            let s = self.s();
            let t = s.tables.iter().find(|t| t.id() == table).unwrap();
            t.routes()
                .iter()
                .map(|r| {
                    (
                        r.destination_cidr_block.clone().unwrap_or_default(),
                        r.gateway_id.clone().unwrap_or_default(),
                    )
                })
                .collect()
        }

        fn count(&self, action: &'static str) {
            *self.s().calls.entry(action).or_default() += 1;
        }

        fn with_table<T>(
            &self,
            table: &str,
            f: impl FnOnce(&mut Vec<Route>, &mut State) -> Result<T, Error>,
        ) -> Result<T, Error> {
            let mut s = self.s();
            let mut st = std::mem::take(&mut *s);
            let r = match st.tables.iter().position(|t| t.id() == table) {
                None => Err(api("ResourceNotFound")),
                Some(i) => {
                    let mut routes = st.tables[i].route_set.take().unwrap_or_default();
                    let r = f(&mut routes, &mut st);
                    st.tables[i].route_set = Some(routes);
                    r
                }
            };
            *s = st;
            r
        }
    }

    #[async_trait]
    impl VpcRoutes for FakeVpc {
        async fn route_tables(&self, _vpc_id: &str) -> Result<Vec<RouteTable>, Error> {
            self.count("DescribeRouteTables");
            Ok(self.s().tables.clone())
        }
        async fn route_limit(&self) -> Result<Option<usize>, Error> {
            self.count("DescribeVpcLimits");
            Ok(Some(self.s().limit))
        }
        async fn create_routes(&self, table: &str, new: &[NewRoute]) -> Result<(), Error> {
            self.count("CreateRoutes");
            self.with_table(table, |routes, st| {
                if new
                    .iter()
                    .any(|r| st.refused_next_hops.contains(&r.gateway_id))
                {
                    return Err(api("InvalidParameterValue.RouteNextHopInvalid"));
                }
                if routes.len() + new.len() > st.limit {
                    return Err(api("LimitExceeded"));
                }
                for r in new {
                    st.next_id += 1;
                    routes.push(Route {
                        destination_cidr_block: Some(r.destination_cidr_block.clone()),
                        gateway_type: Some(r.gateway_type.clone()),
                        gateway_id: Some(r.gateway_id.clone()),
                        route_id: Some(st.next_id),
                        route_description: r.route_description.clone(),
                        enabled: Some(true),
                        ..Route::default()
                    });
                }
                Ok(())
            })
        }
        async fn replace_routes(&self, table: &str, new: &[ReplacementRoute]) -> Result<(), Error> {
            self.count("ReplaceRoutes");
            self.with_table(table, |routes, st| {
                if new
                    .iter()
                    .any(|r| st.refused_next_hops.contains(&r.gateway_id))
                {
                    return Err(api("InvalidParameterValue.RouteNextHopInvalid"));
                }
                for n in new {
                    let r = routes
                        .iter_mut()
                        .find(|r| r.route_id == Some(n.route_id))
                        .ok_or_else(|| api("UnsupportedOperation.RecordNotExists"))?;
                    r.gateway_id = Some(n.gateway_id.clone());
                    r.route_description = n.route_description.clone();
                }
                Ok(())
            })
        }
        async fn enable_routes(&self, table: &str, ids: &[u64]) -> Result<(), Error> {
            self.count("EnableRoutes");
            self.with_table(table, |routes, _| {
                for r in routes
                    .iter_mut()
                    .filter(|r| r.route_id.is_some_and(|i| ids.contains(&i)))
                {
                    r.enabled = Some(true);
                }
                Ok(())
            })
        }
        async fn delete_routes(&self, table: &str, ids: &[u64]) -> Result<(), Error> {
            self.count("DeleteRoutes");
            self.with_table(table, |routes, _| {
                routes.retain(|r| !r.route_id.is_some_and(|i| ids.contains(&i)));
                Ok(())
            })
        }
    }
}
