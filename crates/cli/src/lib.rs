//! The ironpact command lines. Only this crate uses anyhow-style errors: every error ends as
//! one line on stderr, exit code 1, saying what to do about it.

pub mod agent;
pub mod common;
pub mod debug;
pub mod loadgen;
pub mod logger;
pub mod protojson;
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

    /// Every command and every flag of both binaries says what it is for.
    #[test]
    fn help_is_complete() {
        fn walk(cmd: &clap::Command, path: &str, missing: &mut Vec<String>) {
            let path = format!("{path} {}", cmd.get_name());
            if cmd.get_about().is_none() && !path.contains(" help") {
                missing.push(format!("{path}: no description"));
            }
            // every command that prints takes -output json (run only logs)
            let leaf = !cmd.has_subcommands();
            if leaf
                && cmd.get_name() != "run"
                && !cmd.get_arguments().any(|a| a.get_id() == "output")
            {
                missing.push(format!("{path}: no -output"));
            }
            for a in cmd.get_arguments() {
                let id = a.get_id().as_str();
                if id != "help" && id != "version" && a.get_help().is_none() {
                    missing.push(format!(
                        "{path} --{}: no description",
                        a.get_long().unwrap_or(id)
                    ));
                }
            }
            for s in cmd.get_subcommands().filter(|s| s.get_name() != "help") {
                walk(s, &path, missing);
            }
        }
        let mut missing = Vec::new();
        for mut cmd in [server::command(), agent::command()] {
            cmd.build();
            walk(&cmd, "", &mut missing);
        }
        assert!(missing.is_empty(), "{}", missing.join("\n"));
    }

    /// Help spells flags as the docs do: one dash, kebab-case aliases with two.
    #[test]
    fn help_spells_flags_as_the_docs() {
        let raw = "  --spiffeID <ID>  The ID [alias: --spiffe-id]\n  -h, --help  Print help\nerror: unexpected argument '--bogus'\nOptions:\n";
        let h = common::spire_help(raw);
        assert!(
            h.contains("  -spiffeID <ID>  The ID [alias: --spiffe-id]"),
            "{h}"
        );
        assert!(h.contains("-h, -help"), "{h}");
        assert!(h.contains("'-bogus'"), "{h}");
        assert!(h.trim_end().ends_with("(--spiffe-id)."), "{h}");
    }

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
