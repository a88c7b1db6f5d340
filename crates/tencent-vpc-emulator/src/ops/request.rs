//! Request field access as the real API does it: names are case-sensitive, types checked,
//! unknown parameters refused, VPC paging as strings and CVM paging as integers.

use super::{err, ApiErr};
use serde_json::{Map, Value};

pub(crate) struct Req<'a>(pub(crate) &'a Map<String, Value>);

impl<'a> Req<'a> {
    pub(crate) fn only(&self, allowed: &[&str]) -> Result<(), ApiErr> {
        match self.0.keys().find(|k| !allowed.contains(&k.as_str())) {
            Some(k) => Err(err(
                "UnknownParameter",
                format!("The parameter `{k}` is not recognized."),
            )),
            None => Ok(()),
        }
    }
    pub(crate) fn str_opt(&self, name: &str) -> Result<Option<&'a str>, ApiErr> {
        match self.0.get(name) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(_) => Err(err(
                "InvalidParameter",
                format!("The value type of parameter `{name}` should be string."),
            )),
        }
    }
    pub(crate) fn str_req(&self, name: &str) -> Result<&'a str, ApiErr> {
        self.str_opt(name)?.ok_or_else(|| {
            err(
                "MissingParameter",
                format!("The request is missing a required parameter `{name}`."),
            )
        })
    }
    pub(crate) fn array_opt(&self, name: &str) -> Result<Option<&'a Vec<Value>>, ApiErr> {
        match self.0.get(name) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Array(a)) => Ok(Some(a)),
            Some(_) => Err(err(
                "InvalidParameter",
                format!("The value type of parameter `{name}` should be array."),
            )),
        }
    }
    pub(crate) fn strings_opt(&self, name: &str) -> Result<Option<Vec<&'a str>>, ApiErr> {
        let Some(a) = self.array_opt(name)? else {
            return Ok(None);
        };
        a.iter()
            .map(|v| {
                v.as_str().ok_or_else(|| {
                    err(
                        "InvalidParameter",
                        format!("`{name}` must be an array of strings."),
                    )
                })
            })
            .collect::<Result<Vec<_>, _>>()
            .map(Some)
    }
    /// Offset/Limit: strings in the VPC API, integers in CVM.
    pub(crate) fn paging(&self, as_string: bool) -> Result<(usize, usize), ApiErr> {
        let read = |name: &str, default: usize| -> Result<usize, ApiErr> {
            match (self.0.get(name), as_string) {
                (None | Some(Value::Null), _) => Ok(default),
                (Some(Value::String(s)), true) => s.parse().map_err(|_| {
                    err(
                        "InvalidParameterValue.Malformed",
                        format!("`{name}` must be a non-negative integer string, got {s:?}."),
                    )
                }),
                (Some(Value::Number(n)), false) => {
                    n.as_u64().map(|n| n as usize).ok_or_else(|| {
                        err(
                            "InvalidParameterValue",
                            format!("`{name}` must be a non-negative integer."),
                        )
                    })
                }
                (Some(_), true) => Err(err(
                    "InvalidParameter",
                    format!("The value type of parameter `{name}` should be string."),
                )),
                (Some(_), false) => Err(err(
                    "InvalidParameter",
                    format!("The value type of parameter `{name}` should be integer."),
                )),
            }
        };
        let offset = read("Offset", 0)?;
        let limit = read("Limit", 20)?;
        if limit > 100 {
            return Err(err(
                "InvalidParameterValue.LimitExceeded",
                format!("`Limit` {limit} exceeds 100."),
            ));
        }
        Ok((offset, limit))
    }
    pub(crate) fn has(&self, name: &str) -> bool {
        self.0.get(name).is_some_and(|v| !v.is_null())
    }
    pub(crate) fn filters(&self) -> Result<Vec<(&'a str, Vec<&'a str>)>, ApiErr> {
        let Some(a) = self.array_opt("Filters")? else {
            return Ok(Vec::new());
        };
        a.iter()
            .map(|f| {
                let f = f.as_object().ok_or_else(|| {
                    err("InvalidParameter", "Each of `Filters` must be an object.")
                })?;
                let r = Req(f);
                r.only(&["Name", "Values"])?;
                Ok((
                    r.str_req("Name")?,
                    r.strings_opt("Values")?.unwrap_or_default(),
                ))
            })
            .collect()
    }
}

pub(crate) fn check_filters(filters: &[(&str, Vec<&str>)], known: &[&str]) -> Result<(), ApiErr> {
    for (name, _) in filters {
        if !known.contains(name) {
            return Err(err(
                "InvalidParameter.FilterInvalidKey",
                format!("The filter key `{name}` is invalid."),
            ));
        }
    }
    Ok(())
}

pub(crate) fn filter_match(
    filters: &[(&str, Vec<&str>)],
    field: impl Fn(&str) -> Option<String>,
) -> bool {
    filters.iter().all(|(name, values)| {
        field(name).is_some_and(|v| values.iter().any(|x| x.eq_ignore_ascii_case(&v)))
    })
}

pub(crate) fn page(items: Vec<Value>, offset: usize, limit: usize) -> (usize, Vec<Value>) {
    let total = items.len();
    (total, items.into_iter().skip(offset).take(limit).collect())
}
