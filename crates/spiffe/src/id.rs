//! SPIFFE IDs and trust domains, parsed exactly per the SPIFFE ID standard.

use crate::error::{Error, IdProblem};
use std::fmt;
use std::str::FromStr;

const SCHEME: &str = "spiffe://";
const MAX_LEN: usize = 2048;

/// A trust domain name: non-empty, `[a-z0-9._-]` only.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TrustDomain(String);

/// A SPIFFE ID: `spiffe://<trust domain><path>`, path possibly empty.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SpiffeId {
    td_len: usize,
    full: String,
}

fn td_char_ok(b: u8) -> bool {
    b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'-' | b'_')
}

fn path_char_ok(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_')
}

fn check_td(td: &str) -> Result<(), IdProblem> {
    if td.is_empty() {
        return Err(IdProblem::MissingTrustDomain);
    }
    if !td.bytes().all(td_char_ok) {
        return Err(IdProblem::BadTrustDomainChar);
    }
    Ok(())
}

/// Checks a path ("" or "/a/b"): no empty, `.` or `..` segments, no trailing slash.
pub fn check_path(path: &str) -> Result<(), IdProblem> {
    if path.is_empty() {
        return Ok(());
    }
    let Some(rest) = path.strip_prefix('/') else {
        return Err(IdProblem::PathNotAbsolute);
    };
    let segments: Vec<&str> = rest.split('/').collect();
    let last = segments.len() - 1;
    for (i, seg) in segments.iter().enumerate() {
        if seg.is_empty() {
            return Err(if i == last {
                IdProblem::TrailingSlash
            } else {
                IdProblem::EmptySegment
            });
        }
        if *seg == "." || *seg == ".." {
            return Err(IdProblem::DotSegment);
        }
        if !seg.bytes().all(path_char_ok) {
            return Err(IdProblem::BadPathChar);
        }
    }
    Ok(())
}

impl TrustDomain {
    /// Parses a bare trust domain name, or the trust domain of a `spiffe://` ID.
    pub fn new(s: &str) -> Result<Self, Error> {
        if s.starts_with(SCHEME) {
            return SpiffeId::parse(s).map(|id| id.trust_domain());
        }
        let err = |reason| Error::InvalidTrustDomain {
            td: s.to_string(),
            reason,
        };
        if s.is_empty() {
            return Err(err(IdProblem::Empty));
        }
        if s.len() > MAX_LEN {
            return Err(err(IdProblem::TooLong));
        }
        check_td(s).map_err(err)?;
        Ok(Self(s.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// `spiffe://<td>`: the ID carried by this trust domain's CA certificates.
    pub fn id(&self) -> SpiffeId {
        SpiffeId {
            td_len: self.0.len(),
            full: format!("{SCHEME}{}", self.0),
        }
    }

    /// Builds `spiffe://<td><path>` after checking the path.
    pub fn id_with_path(&self, path: &str) -> Result<SpiffeId, Error> {
        SpiffeId::parse(&format!("{SCHEME}{}{path}", self.0))
    }
}

impl SpiffeId {
    pub fn parse(s: &str) -> Result<Self, Error> {
        let err = |reason| Error::InvalidSpiffeId {
            id: s.to_string(),
            reason,
        };
        if s.is_empty() {
            return Err(err(IdProblem::Empty));
        }
        if s.len() > MAX_LEN {
            return Err(err(IdProblem::TooLong));
        }
        let Some(rest) = s.strip_prefix(SCHEME) else {
            return Err(err(IdProblem::WrongScheme));
        };
        let (td, path) = match rest.find('/') {
            Some(i) => rest.split_at(i),
            None => (rest, ""),
        };
        check_td(td).map_err(err)?;
        check_path(path).map_err(err)?;
        Ok(Self {
            td_len: td.len(),
            full: s.to_string(),
        })
    }

    pub fn trust_domain(&self) -> TrustDomain {
        TrustDomain(self.full[SCHEME.len()..SCHEME.len() + self.td_len].to_string())
    }

    pub fn trust_domain_name(&self) -> &str {
        &self.full[SCHEME.len()..SCHEME.len() + self.td_len]
    }

    /// The path, "" for a trust domain ID.
    pub fn path(&self) -> &str {
        &self.full[SCHEME.len() + self.td_len..]
    }

    pub fn as_str(&self) -> &str {
        &self.full
    }

    /// IDs that belong to the infrastructure, never to a workload: the trust domain ID itself
    /// and everything under `/spire/` (the server, agents), as SPIRE reserves them. A workload
    /// holding the server's ID could stand in for the server.
    pub fn is_reserved(&self) -> bool {
        let p = self.path();
        p.is_empty() || p == "/spire" || p.starts_with("/spire/")
    }

    pub fn is_member_of(&self, td: &TrustDomain) -> bool {
        self.trust_domain_name() == td.as_str()
    }
}

impl fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.full)
    }
}

impl fmt::Display for TrustDomain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for SpiffeId {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        Self::parse(s)
    }
}

impl FromStr for TrustDomain {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        Self::new(s)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn problem(s: &str) -> IdProblem {
        match SpiffeId::parse(s) {
            Err(Error::InvalidSpiffeId { reason, .. }) => reason,
            other => panic!("{s:?} should be invalid, got {other:?}"),
        }
    }

    #[test]
    fn valid_ids() {
        for s in [
            "spiffe://example.org",
            "spiffe://example.org/workload",
            "spiffe://ex-am_ple.org/a/B/c.d-e_f",
            "spiffe://127.0.0.1/x",
            "spiffe://td/.../a..b",
        ] {
            let id = SpiffeId::parse(s).unwrap();
            assert_eq!(id.as_str(), s);
        }
        let id = SpiffeId::parse("spiffe://example.org/ns/foo").unwrap();
        assert_eq!(id.trust_domain_name(), "example.org");
        assert_eq!(id.path(), "/ns/foo");
    }

    #[test]
    fn invalid_ids_have_precise_reasons() {
        use IdProblem::*;
        let cases = [
            ("", Empty),
            ("http://example.org/a", WrongScheme),
            ("SPIFFE://example.org/a", WrongScheme),
            ("spiffe:/example.org", WrongScheme),
            ("spiffe://", MissingTrustDomain),
            ("spiffe:///path", MissingTrustDomain),
            ("spiffe://Example.org/a", BadTrustDomainChar),
            ("spiffe://example.org:8080/a", BadTrustDomainChar),
            ("spiffe://user@example.org/a", BadTrustDomainChar),
            ("spiffe://example.org?q=1", BadTrustDomainChar),
            ("spiffe://example.org/a?q=1", BadPathChar),
            ("spiffe://example.org/a#frag", BadPathChar),
            ("spiffe://example.org/a%20b", BadPathChar),
            ("spiffe://example.org/a b", BadPathChar),
            ("spiffe://example.org/", TrailingSlash),
            ("spiffe://example.org/a/", TrailingSlash),
            ("spiffe://example.org//a", EmptySegment),
            ("spiffe://example.org/a/./b", DotSegment),
            ("spiffe://example.org/a/..", DotSegment),
        ];
        for (s, want) in cases {
            assert_eq!(problem(s), want, "{s}");
        }
        let long = format!("spiffe://example.org/{}", "a".repeat(2048));
        assert_eq!(problem(&long), TooLong);
        let max = format!("spiffe://example.org/{}", "a".repeat(2048 - 21));
        assert_eq!(max.len(), 2048);
        SpiffeId::parse(&max).unwrap();
    }

    #[test]
    fn trust_domains() {
        assert_eq!(
            TrustDomain::new("example.org").unwrap().as_str(),
            "example.org"
        );
        assert_eq!(
            TrustDomain::new("spiffe://example.org/x").unwrap().as_str(),
            "example.org"
        );
        assert!(TrustDomain::new("Example.org").is_err());
        assert!(TrustDomain::new("").is_err());
        let td = TrustDomain::new("example.org").unwrap();
        assert_eq!(td.id().as_str(), "spiffe://example.org");
        assert_eq!(
            td.id_with_path("/a/b").unwrap().as_str(),
            "spiffe://example.org/a/b"
        );
        assert!(td.id_with_path("/a/").is_err());
    }
}
