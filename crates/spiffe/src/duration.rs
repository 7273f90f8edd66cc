//! Durations in Go's syntax (`1h30m`, `90s`, `24h`), the spelling SPIRE operators use in
//! config files and flags. Written here because humantime's grammar differs (it rejects
//! fractional values such as `1.5h` and accepts units Go does not).

use crate::error::Error;
use std::time::Duration;

/// Parses a Go duration string; a bare `0` is zero. Negative durations are rejected.
pub fn parse(s: &str) -> Result<Duration, Error> {
    let err = |reason| Error::InvalidDuration {
        value: s.to_string(),
        reason,
    };
    let t = s.trim();
    if t == "0" {
        return Ok(Duration::ZERO);
    }
    if t.is_empty() {
        return Err(err("empty duration"));
    }
    if t.starts_with('-') {
        return Err(err("negative durations are not allowed"));
    }
    let t = t.strip_prefix('+').unwrap_or(t);
    let bytes = t.as_bytes();
    let mut i = 0;
    let mut total: f64 = 0.0;
    while i < bytes.len() {
        let start = i;
        while i < bytes.len() && (bytes[i].is_ascii_digit() || bytes[i] == b'.') {
            i += 1;
        }
        if start == i {
            return Err(err("expected a number, e.g. 1h30m or 90s"));
        }
        let num: f64 = t[start..i]
            .parse()
            .map_err(|_| err("expected a number, e.g. 1h30m or 90s"))?;
        let ustart = i;
        while i < bytes.len() && !(bytes[i].is_ascii_digit() || bytes[i] == b'.') {
            i += 1;
        }
        let scale = match &t[ustart..i] {
            "ns" => 1e-9,
            "us" | "µs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            "" => return Err(err("missing unit (use ns, us, ms, s, m or h)")),
            _ => return Err(err("unknown unit (use ns, us, ms, s, m or h)")),
        };
        total += num * scale;
    }
    if !total.is_finite() || total > 1e12 {
        return Err(err("duration is too large"));
    }
    Ok(Duration::from_secs_f64(total))
}

/// Formats whole seconds the way Go prints them (`1h0m0s`, `90s` → `1m30s`).
pub fn format(d: Duration) -> String {
    let secs = d.as_secs();
    let (h, m, s) = (secs / 3600, (secs % 3600) / 60, secs % 60);
    if h > 0 {
        format!("{h}h{m}m{s}s")
    } else if m > 0 {
        format!("{m}m{s}s")
    } else {
        format!("{s}s")
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn go_syntax() {
        assert_eq!(parse("24h").unwrap(), Duration::from_secs(86400));
        assert_eq!(parse("1h30m").unwrap(), Duration::from_secs(5400));
        assert_eq!(parse("1.5h").unwrap(), Duration::from_secs(5400));
        assert_eq!(parse("90s").unwrap(), Duration::from_secs(90));
        assert_eq!(parse("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse("0").unwrap(), Duration::ZERO);
        for bad in ["", "10", "-1h", "1d", "h", "1h x"] {
            assert!(parse(bad).is_err(), "{bad:?}");
        }
        assert_eq!(format(Duration::from_secs(3600)), "1h0m0s");
        assert_eq!(format(Duration::from_secs(90)), "1m30s");
    }
}
