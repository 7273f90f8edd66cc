//! The ironpact command lines. Only this crate uses anyhow-style errors: every error ends as
//! one line on stderr, exit code 1, saying what to do about it.

pub mod agent;
pub mod common;
pub mod loadgen;
pub mod server;

/// SPIRE spells long flags with one dash (`-spiffeID`); clap wants two. Rewrites
/// `-name` and `-name=value` to `--name…`, leaving `-h`, `--x`, `-` and negative numbers.
pub fn spire_argv(args: impl IntoIterator<Item = String>) -> Vec<String> {
    args.into_iter()
        .enumerate()
        .map(|(i, a)| {
            let b = a.as_bytes();
            if i > 0 && b.len() > 2 && b[0] == b'-' && b[1] != b'-' && b[1].is_ascii_alphabetic() {
                format!("-{a}")
            } else {
                a
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn argv_rewrite() {
        let v = |s: &[&str]| s.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        assert_eq!(
            spire_argv(v(&[
                "prog",
                "entry",
                "create",
                "-spiffeID",
                "x",
                "-ttl=5",
                "--dns",
                "d",
                "-h",
                "-5",
                "-"
            ])),
            v(&[
                "prog",
                "entry",
                "create",
                "--spiffeID",
                "x",
                "--ttl=5",
                "--dns",
                "d",
                "-h",
                "-5",
                "-"
            ])
        );
        // the program name is never touched
        assert_eq!(spire_argv(v(&["-weird"])), v(&["-weird"]));
    }
}
