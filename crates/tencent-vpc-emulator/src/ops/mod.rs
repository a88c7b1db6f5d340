//! The API actions as pure functions over the emulated account: request JSON in, response
//! JSON or a documented error out. No I/O, no clock (time is passed in).

mod describe;
mod render;
mod request;
mod routes;

pub use describe::{
    describe_instances, describe_route_tables, describe_subnets, describe_vpc_limits, describe_vpcs,
};
pub use render::route_json;
pub use routes::{create_routes, delete_routes, replace_routes, toggle_routes};

use crate::scenario::Scenario;
use serde_json::{Map, Value};

/// An API error: code and message, as sent in `Response.Error`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiErr {
    pub code: String,
    pub message: String,
}

pub fn err(code: &str, message: impl Into<String>) -> ApiErr {
    ApiErr {
        code: code.to_string(),
        message: message.into(),
    }
}

pub type OpResult = Result<Value, ApiErr>;

/// `YYYY-MM-DD HH:MM:SS` in UTC.
pub fn created_time(now: i64) -> String {
    let secs = now.rem_euclid(86_400);
    format!(
        "{} {:02}:{:02}:{:02}",
        tencent_cloud::signing::utc_date(now),
        secs / 3600,
        secs % 3600 / 60,
        secs % 60
    )
}

/// One API action: its product, its name and the pure function that runs it.
pub struct Action {
    pub service: &'static str,
    pub name: &'static str,
    pub run: Run,
}

/// A read leaves the account as it is; a write changes it on success (persistence and the
/// data plane follow).
pub enum Run {
    Read(fn(&Scenario, &Map<String, Value>) -> OpResult),
    Write(fn(&mut Scenario, &Map<String, Value>, i64) -> OpResult),
}

/// Every action the emulator serves.
pub const ACTIONS: &[Action] = &[
    Action {
        service: "vpc",
        name: "DescribeRouteTables",
        run: Run::Read(describe_route_tables),
    },
    Action {
        service: "vpc",
        name: "DescribeSubnets",
        run: Run::Read(describe_subnets),
    },
    Action {
        service: "vpc",
        name: "DescribeVpcs",
        run: Run::Read(describe_vpcs),
    },
    Action {
        service: "vpc",
        name: "DescribeVpcLimits",
        run: Run::Read(describe_vpc_limits),
    },
    Action {
        service: "vpc",
        name: "CreateRoutes",
        run: Run::Write(create_routes),
    },
    Action {
        service: "vpc",
        name: "DeleteRoutes",
        run: Run::Write(|s, r, _| delete_routes(s, r)),
    },
    Action {
        service: "vpc",
        name: "ReplaceRoutes",
        run: Run::Write(|s, r, _| replace_routes(s, r)),
    },
    Action {
        service: "vpc",
        name: "EnableRoutes",
        run: Run::Write(|s, r, _| toggle_routes(s, r, true)),
    },
    Action {
        service: "vpc",
        name: "DisableRoutes",
        run: Run::Write(|s, r, _| toggle_routes(s, r, false)),
    },
    Action {
        service: "cvm",
        name: "DescribeInstances",
        run: Run::Read(describe_instances),
    },
];

/// The action `name` of `service` (the product from the credential scope).
pub fn action(service: &str, name: &str) -> Result<&'static Action, ApiErr> {
    ACTIONS
        .iter()
        .find(|a| a.service == service && a.name == name)
        .ok_or_else(|| {
            err(
                "InvalidAction",
                format!("The action `{name}` does not exist for service `{service}`."),
            )
        })
}

impl Action {
    pub fn mutates(&self) -> bool {
        matches!(self.run, Run::Write(_))
    }
}

/// Run one action. `service` is the product from the credential scope.
pub fn dispatch(
    s: &mut Scenario,
    service: &str,
    action_name: &str,
    req: &Map<String, Value>,
    now: i64,
) -> OpResult {
    match action(service, action_name)?.run {
        Run::Read(f) => f(s, req),
        Run::Write(f) => f(s, req, now),
    }
}
