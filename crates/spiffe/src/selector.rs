//! Selectors: `type:value` pairs that describe an agent's node or a workload.

use crate::error::Error;
use std::fmt;

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Selector {
    pub kind: String,
    pub value: String,
}

impl Selector {
    /// Parses `type:value`; the type may not contain ':', the value may.
    pub fn parse(s: &str) -> Result<Self, Error> {
        let err = |reason| Error::InvalidSelector {
            selector: s.to_string(),
            reason,
        };
        let Some((kind, value)) = s.split_once(':') else {
            return Err(err("expected the form type:value, e.g. unix:uid:1000"));
        };
        Self::new(kind, value).map_err(|e| match e {
            Error::InvalidSelector { reason, .. } => err(reason),
            other => other,
        })
    }

    pub fn new(kind: &str, value: &str) -> Result<Self, Error> {
        let err = |reason| Error::InvalidSelector {
            selector: format!("{kind}:{value}"),
            reason,
        };
        if kind.is_empty() {
            return Err(err("selector type is empty"));
        }
        if kind.contains(':') {
            return Err(err("selector type cannot contain ':'"));
        }
        if value.is_empty() {
            return Err(err("selector value is empty"));
        }
        if kind.chars().chain(value.chars()).any(char::is_control) {
            return Err(err("selector contains control characters"));
        }
        Ok(Self {
            kind: kind.to_string(),
            value: value.to_string(),
        })
    }
}

impl fmt::Display for Selector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.kind, self.value)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn parse() {
        let s = Selector::parse("unix:uid:1000").unwrap();
        assert_eq!((s.kind.as_str(), s.value.as_str()), ("unix", "uid:1000"));
        assert_eq!(s.to_string(), "unix:uid:1000");
        for bad in ["", "unix", ":x", "unix:", "a\n:b"] {
            assert!(Selector::parse(bad).is_err(), "{bad:?}");
        }
    }
}
