//! `agent_path_template` as SPIRE writes it (Go text/template syntax), for the fields an
//! x509pop node certificate gives: `{{ .PluginName }}`, `{{ .Fingerprint }}`,
//! `{{ .TrustDomain }}`, `{{ .Subject.CommonName }}`, `{{ .SerialNumberHex }}`. Only field
//! substitution: no pipelines, functions or conditions (the config is refused with the list
//! of fields). Written by hand: a general Go-template engine would accept far more than an
//! agent ID needs, and every extra feature is input an operator could get wrong.

/// SPIRE's default: `x509pop/<fingerprint>`.
pub const DEFAULT: &str = "{{ .PluginName}}/{{ .Fingerprint }}";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Field {
    PluginName,
    Fingerprint,
    TrustDomain,
    CommonName,
    SerialNumberHex,
}

const FIELDS: &[(&str, Field)] = &[
    (".PluginName", Field::PluginName),
    (".Fingerprint", Field::Fingerprint),
    (".TrustDomain", Field::TrustDomain),
    (".Subject.CommonName", Field::CommonName),
    (".SerialNumberHex", Field::SerialNumberHex),
];

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Text(String),
    Field(Field),
}

/// A parsed template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentPathTemplate {
    parts: Vec<Part>,
}

/// The values a certificate gives.
pub struct Values<'a> {
    pub plugin_name: &'a str,
    pub fingerprint: &'a str,
    pub trust_domain: &'a str,
    pub common_name: &'a str,
    pub serial_number_hex: &'a str,
}

impl AgentPathTemplate {
    pub fn parse(t: &str) -> Result<Self, String> {
        let names = || {
            FIELDS
                .iter()
                .map(|(n, _)| format!("{{{{ {n} }}}}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let mut parts = Vec::new();
        let mut rest = t;
        while let Some(open) = rest.find("{{") {
            if rest[..open].contains("}}") {
                return Err(format!("agent_path_template {t:?}: a }}}} without {{{{"));
            }
            if open > 0 {
                parts.push(Part::Text(rest[..open].to_string()));
            }
            let after = &rest[open + 2..];
            let close = after
                .find("}}")
                .ok_or_else(|| format!("agent_path_template {t:?}: a {{{{ without }}}}"))?;
            let name = after[..close].trim();
            let field = FIELDS
                .iter()
                .find(|(n, _)| *n == name)
                .map(|(_, f)| *f)
                .ok_or_else(|| {
                    format!(
                        "agent_path_template {t:?}: {{{{ {name} }}}} is not supported; use {}",
                        names()
                    )
                })?;
            parts.push(Part::Field(field));
            rest = &after[close + 2..];
        }
        if rest.contains("}}") {
            return Err(format!("agent_path_template {t:?}: a }}}} without {{{{"));
        }
        if !rest.is_empty() {
            parts.push(Part::Text(rest.to_string()));
        }
        if !parts.iter().any(|p| matches!(p, Part::Field(_))) {
            return Err(format!(
                "agent_path_template {t:?} names no field: every node would get the same agent ID; use {}",
                names()
            ));
        }
        let t = Self { parts };
        // a template whose literal text cannot make an agent ID (`//`, a trailing `/`, a
        // character SPIFFE IDs forbid) is refused here, not at every node's attestation
        let sample = t.render(&Values {
            plugin_name: "x509pop",
            fingerprint: "0123456789abcdef0123456789abcdef01234567",
            trust_domain: "example.org",
            common_name: "node",
            serial_number_hex: "1f",
        })?;
        ironpact_spiffe::TrustDomain::new("example.org")
            .and_then(|td| {
                td.id_with_path(&format!("/spire/agent/{}", sample.trim_start_matches('/')))
            })
            .map_err(|e| {
                format!(
                    "agent_path_template {:?} cannot make an agent ID: {e}",
                    sample
                )
            })?;
        Ok(t)
    }

    /// The path for `v`. Each field must fill exactly one path segment: a value that is empty
    /// or holds `/` is refused, so a certificate cannot steer its agent ID elsewhere.
    pub fn render(&self, v: &Values<'_>) -> Result<String, String> {
        let mut out = String::new();
        for p in &self.parts {
            match p {
                Part::Text(t) => out.push_str(t),
                Part::Field(f) => {
                    let (name, value) = match f {
                        Field::PluginName => ("PluginName", v.plugin_name),
                        Field::Fingerprint => ("Fingerprint", v.fingerprint),
                        Field::TrustDomain => ("TrustDomain", v.trust_domain),
                        Field::CommonName => ("Subject.CommonName", v.common_name),
                        Field::SerialNumberHex => ("SerialNumberHex", v.serial_number_hex),
                    };
                    if value.is_empty() || value.contains('/') || value == "." || value == ".." {
                        return Err(format!(
                            "agent_path_template: the certificate's {name} {value:?} cannot be one path segment of the agent ID"
                        ));
                    }
                    out.push_str(value);
                }
            }
        }
        Ok(out)
    }
}

impl Default for AgentPathTemplate {
    fn default() -> Self {
        Self {
            parts: vec![
                Part::Field(Field::PluginName),
                Part::Text("/".into()),
                Part::Field(Field::Fingerprint),
            ],
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn v<'a>(cn: &'a str) -> Values<'a> {
        Values {
            plugin_name: "x509pop",
            fingerprint: "ab12",
            trust_domain: "example.org",
            common_name: cn,
            serial_number_hex: "1f",
        }
    }

    #[test]
    fn renders_spire_templates_and_refuses_the_rest() {
        assert_eq!(
            AgentPathTemplate::parse(DEFAULT).unwrap(),
            AgentPathTemplate::default()
        );
        assert_eq!(
            AgentPathTemplate::default().render(&v("n")).unwrap(),
            "x509pop/ab12"
        );
        let t = AgentPathTemplate::parse("/cn/{{ .Subject.CommonName }}").unwrap();
        assert_eq!(t.render(&v("node-1")).unwrap(), "/cn/node-1");
        assert!(
            t.render(&v("a/../b"))
                .unwrap_err()
                .contains("one path segment")
        );
        assert!(t.render(&v("")).is_err());
        assert!(t.render(&v("..")).is_err());
        for bad in [
            "{{ .Subject.Organization }}",
            "x/{{ .Fingerprint",
            "plain",
            "a}}",
        ] {
            assert!(AgentPathTemplate::parse(bad).is_err(), "{bad}");
        }
    }
}
