//! Reading JSON objects the way Go's `encoding/json` fills a struct: keys match field names
//! case-insensitively, unknown keys are ignored, `null` leaves the default in place and, when
//! a key appears twice, the last one wins. Type errors name the field.

use serde_json::{Map, Value};
use std::fmt;

/// A JSON value had the wrong type or form for the named field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {problem}")]
pub struct FieldError {
    /// The field as upstream spells it, e.g. `SubnetLen` or `Backend.VNI`.
    pub field: String,
    /// What was wrong, including what was found.
    pub problem: String,
}

impl FieldError {
    pub fn new(field: impl Into<String>, problem: impl Into<String>) -> Self {
        FieldError {
            field: field.into(),
            problem: problem.into(),
        }
    }
}

/// The kind of a JSON value, as an error message names it.
pub fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Short rendering of a value for error messages (strings quoted, long values cut).
pub fn show(v: &Value) -> String {
    let s = v.to_string();
    if s.len() > 60 {
        format!(
            "{}…",
            &s[..s.char_indices().nth(57).map_or(s.len(), |(i, _)| i)]
        )
    } else {
        s
    }
}

/// Iterate `(field, value)` pairs of `obj` whose key matches one of `fields`
/// case-insensitively, in document order, skipping `null` values. The yielded field is the
/// canonical (upstream) spelling, so errors and matches never depend on the user's casing.
pub fn matched<'a>(
    obj: &'a Map<String, Value>,
    fields: &'a [&'static str],
) -> impl Iterator<Item = (&'static str, &'a Value)> + 'a {
    obj.iter().filter_map(move |(k, v)| {
        if v.is_null() {
            return None;
        }
        fields
            .iter()
            .find(|f| f.eq_ignore_ascii_case(k))
            .map(|f| (*f, v))
    })
}

/// The last non-null value of `field` in `obj`, matched case-insensitively.
pub fn get<'a>(obj: &'a Map<String, Value>, field: &'static str) -> Option<&'a Value> {
    obj.iter()
        .rev()
        .find(|(k, v)| !v.is_null() && field.eq_ignore_ascii_case(k))
        .map(|(_, v)| v)
}

pub fn as_bool(field: &str, v: &Value) -> Result<bool, FieldError> {
    v.as_bool()
        .ok_or_else(|| FieldError::new(field, format!("expected a boolean, found {}", show(v))))
}

pub fn as_str<'a>(field: &str, v: &'a Value) -> Result<&'a str, FieldError> {
    v.as_str()
        .ok_or_else(|| FieldError::new(field, format!("expected a string, found {}", show(v))))
}

/// An unsigned integer (Go `uint`): negative and fractional numbers are refused.
pub fn as_uint(field: &str, v: &Value) -> Result<u64, FieldError> {
    v.as_u64().ok_or_else(|| {
        FieldError::new(
            field,
            format!("expected a non-negative integer, found {}", show(v)),
        )
    })
}

/// A signed integer (Go `int`).
pub fn as_int(field: &str, v: &Value) -> Result<i64, FieldError> {
    v.as_i64()
        .ok_or_else(|| FieldError::new(field, format!("expected an integer, found {}", show(v))))
}

pub fn as_object<'a>(field: &str, v: &'a Value) -> Result<&'a Map<String, Value>, FieldError> {
    v.as_object()
        .ok_or_else(|| FieldError::new(field, format!("expected an object, found {}", kind(v))))
}

/// Serialise like Go's `json.Marshal`: compact, with `<`, `>`, `&`, U+2028 and U+2029
/// escaped. Those characters can only occur inside JSON strings, so replacing them in
/// serde_json's compact output is exact.
pub fn go_marshal(v: &Value) -> String {
    go_escape(&v.to_string())
}

/// Apply Go's HTML-safe escaping to already-serialised compact JSON.
pub fn go_escape(json: &str) -> String {
    let mut out = String::with_capacity(json.len());
    for c in json.chars() {
        match c {
            '<' => out.push_str("\\u003c"),
            '>' => out.push_str("\\u003e"),
            '&' => out.push_str("\\u0026"),
            '\u{2028}' => out.push_str("\\u2028"),
            '\u{2029}' => out.push_str("\\u2029"),
            c => out.push(c),
        }
    }
    out
}

/// Malformed JSON, with the position serde_json reported.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JsonSyntaxError {
    pub line: usize,
    pub column: usize,
    pub message: String,
}

impl fmt::Display for JsonSyntaxError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "malformed JSON at line {} column {}: {}",
            self.line, self.column, self.message
        )
    }
}

impl std::error::Error for JsonSyntaxError {}

/// Parse a JSON document into a value, keeping the position of a syntax error.
pub fn parse(text: &str) -> Result<Value, JsonSyntaxError> {
    serde_json::from_str(text).map_err(|e| {
        let full = e.to_string();
        // serde_json appends " at line L column C"; keep only the description.
        let message = match full.rfind(" at line ") {
            Some(i) => full[..i].to_string(),
            None => full,
        };
        JsonSyntaxError {
            line: e.line(),
            column: e.column(),
            message,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn keys_match_case_insensitively_and_last_wins() {
        let v = json!({"network": "a", "NETWORK": "b", "other": 1});
        let obj = v.as_object().unwrap();
        assert_eq!(get(obj, "Network"), Some(&json!("b")));
        assert_eq!(get(obj, "Missing"), None);
    }

    #[test]
    fn null_is_skipped() {
        let v = json!({"Network": null});
        assert_eq!(get(v.as_object().unwrap(), "Network"), None);
    }

    #[test]
    fn go_marshal_escapes_html() {
        assert_eq!(
            go_marshal(&json!({"a": "<&>"})),
            r#"{"a":"\u003c\u0026\u003e"}"#
        );
    }

    #[test]
    fn syntax_error_has_position() {
        let e = parse("{\n  \"a\": ,\n}").unwrap_err();
        assert_eq!(e.line, 2);
        assert!(e.to_string().starts_with("malformed JSON at line 2"), "{e}");
    }
}
