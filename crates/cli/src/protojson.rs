//! `-output json` as SPIRE prints it, so that `jq` lines written for SPIRE read ours.
//!
//! SPIRE marshals the API's response with protojson (proto field names, unset scalars and
//! lists emitted, unset messages left out), int64 values as strings and int32 as numbers,
//! bytes in standard base64, SPIFFE IDs as `{trust_domain, path}`; then prints it compact on
//! one line with keys sorted at every level and `<`, `>`, `&` escaped. Our admin API's
//! messages are not SPIRE's (IDs are strings, for one), so each command builds SPIRE's shape
//! from ours with these helpers rather than by a generic protojson encoder.

use base64::Engine;
use serde_json::{Value, json};

/// A SPIFFE ID as SPIRE's `spire.api.types.SPIFFEID`: `{"path": "/w", "trust_domain": "td"}`.
pub fn id(s: &str) -> Value {
    let (td, path) = match s.strip_prefix("spiffe://") {
        Some(rest) => match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, ""),
        },
        None => ("", s),
    };
    json!({"trust_domain": td, "path": path})
}

/// An int64 field: protojson writes it as a string.
pub fn int64(n: i64) -> Value {
    Value::String(n.to_string())
}

/// A bytes field: standard base64 with padding.
pub fn bytes(b: &[u8]) -> Value {
    Value::String(base64::engine::general_purpose::STANDARD.encode(b))
}

/// A `spire.api.types.Status`.
pub fn status(code: i32, message: &str) -> Value {
    json!({"code": code, "message": message})
}

/// One value as SPIRE prints it: compact, keys sorted at every level, and `<`, `>`, `&`
/// escaped as Go's encoder does. Those three only ever occur inside strings in JSON text, so
/// replacing them everywhere keeps the document valid.
pub fn render(v: &Value) -> String {
    escape(&sorted(v).to_string())
}

/// The same value with every object's keys in order (serde_json keeps insertion order in
/// this workspace, where a dependency turns on its `preserve_order`).
fn sorted(v: &Value) -> Value {
    match v {
        Value::Object(m) => {
            let mut keys: Vec<&String> = m.keys().collect();
            keys.sort();
            Value::Object(
                keys.into_iter()
                    .map(|k| (k.clone(), sorted(&m[k])))
                    .collect(),
            )
        }
        Value::Array(a) => Value::Array(a.iter().map(sorted).collect()),
        other => other.clone(),
    }
}

/// A Go struct SPIRE prints with encoding/json: fields in declaration order (a serde struct
/// keeps its order), wrapped in a one-element array as SPIRE's printer does for structs.
pub fn render_struct<T: serde::Serialize>(v: &T) -> anyhow::Result<String> {
    Ok(escape(&serde_json::to_string(&[v])?))
}

fn escape(s: &str) -> String {
    s.replace('<', "\\u003c")
        .replace('>', "\\u003e")
        .replace('&', "\\u0026")
}

/// Prints one value (see [`render`]).
pub fn print(v: &Value) {
    println!("{}", render(v));
}

/// A number from a protobuf `Struct` (a JWT claim): Go prints integral float64 values without
/// a fraction (`1700000000`, not `1700000000.0`).
pub fn number(n: f64) -> Value {
    if n.fract() == 0.0 && n.abs() < 9_007_199_254_740_992.0 {
        json!(n as i64)
    } else {
        json!(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shapes_follow_spire() {
        assert_eq!(
            render(&id("spiffe://example.org/a/b")),
            r#"{"path":"/a/b","trust_domain":"example.org"}"#
        );
        assert_eq!(
            render(&id("spiffe://example.org")),
            r#"{"path":"","trust_domain":"example.org"}"#
        );
        assert_eq!(
            render(&json!({"b": int64(5), "a": 1})),
            r#"{"a":1,"b":"5"}"#
        );
        assert_eq!(
            render(&json!({"m": "<&>"})),
            r#"{"m":"\u003c\u0026\u003e"}"#
        );
        assert_eq!(render(&number(1.7e9)), "1700000000");
        assert_eq!(render(&number(0.5)), "0.5");
        #[derive(serde::Serialize)]
        struct S {
            z: u8,
            a: u8,
        }
        assert_eq!(
            render_struct(&S { z: 1, a: 2 }).unwrap(),
            r#"[{"z":1,"a":2}]"#
        );
        // the escaped text is still the same JSON
        let v: Value = serde_json::from_str(&render(&json!({"m": "<&>"}))).unwrap();
        assert_eq!(v["m"], "<&>");
    }
}
