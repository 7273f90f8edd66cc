//! Typed configuration for the suites: server and agent configs built as values and rendered
//! to HCL in one place, instead of HCL text assembled with `format!` in every suite. Strings
//! are escaped here (quotes, backslashes, `${` and `%{` template openers), so a path or a PEM
//! with any of them is written as the value it is.
//!
//! ```
//! use ironpact_testkit::conf::{Plugin, ServerConf};
//! let c = ServerConf::new("example.org")
//!     .server("data_dir", "/var/lib/ironpact")
//!     .plugin(Plugin::new("NodeAttestor", "join_token"))
//!     .plugin(Plugin::new("KeyManager", "memory"));
//! assert!(c.render().contains("NodeAttestor \"join_token\" {"));
//! ```

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// An HCL value: string, number, bool or list.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Str(String),
    Int(i64),
    Bool(bool),
    List(Vec<Value>),
}

impl From<&str> for Value {
    fn from(s: &str) -> Self {
        Value::Str(s.to_string())
    }
}
impl From<String> for Value {
    fn from(s: String) -> Self {
        Value::Str(s)
    }
}
impl From<&String> for Value {
    fn from(s: &String) -> Self {
        Value::Str(s.clone())
    }
}
impl From<&Path> for Value {
    fn from(p: &Path) -> Self {
        Value::Str(p.display().to_string())
    }
}
impl From<PathBuf> for Value {
    fn from(p: PathBuf) -> Self {
        Value::Str(p.display().to_string())
    }
}
impl From<&PathBuf> for Value {
    fn from(p: &PathBuf) -> Self {
        Value::Str(p.display().to_string())
    }
}
impl From<i64> for Value {
    fn from(n: i64) -> Self {
        Value::Int(n)
    }
}
impl From<u16> for Value {
    fn from(n: u16) -> Self {
        Value::Int(n.into())
    }
}
impl From<bool> for Value {
    fn from(b: bool) -> Self {
        Value::Bool(b)
    }
}
impl<T: Into<Value>> From<Vec<T>> for Value {
    fn from(v: Vec<T>) -> Self {
        Value::List(v.into_iter().map(Into::into).collect())
    }
}

/// A quoted HCL string: `"`, `\` and control characters escaped, and the template openers
/// `${` and `%{` doubled so they are literal.
pub fn quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '$' | '%' if chars.peek() == Some(&'{') => {
                out.push(c);
                out.push(c);
            }
            c if c.is_control() => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

impl Value {
    fn render(&self) -> String {
        match self {
            Value::Str(s) => quote(s),
            Value::Int(n) => n.to_string(),
            Value::Bool(b) => b.to_string(),
            Value::List(v) => format!(
                "[{}]",
                v.iter().map(Value::render).collect::<Vec<_>>().join(", ")
            ),
        }
    }
}

/// One block: `kind "label"… { attributes, blocks }`.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Block {
    pub kind: String,
    pub labels: Vec<String>,
    pub attrs: Vec<(String, Value)>,
    pub blocks: Vec<Block>,
}

impl Block {
    pub fn new(kind: &str) -> Self {
        Self {
            kind: kind.to_string(),
            ..Self::default()
        }
    }

    pub fn labeled(kind: &str, label: &str) -> Self {
        Self {
            kind: kind.to_string(),
            labels: vec![label.to_string()],
            ..Self::default()
        }
    }

    /// Sets `key` (replacing an earlier value of it).
    pub fn set(mut self, key: &str, value: impl Into<Value>) -> Self {
        self.put(key, value);
        self
    }

    pub fn put(&mut self, key: &str, value: impl Into<Value>) {
        let value = value.into();
        match self.attrs.iter_mut().find(|(k, _)| k == key) {
            Some(slot) => slot.1 = value,
            None => self.attrs.push((key.to_string(), value)),
        }
    }

    /// Removes `key`.
    pub fn unset(mut self, key: &str) -> Self {
        self.attrs.retain(|(k, _)| k != key);
        self
    }

    pub fn block(mut self, b: Block) -> Self {
        self.blocks.push(b);
        self
    }

    fn render_into(&self, out: &mut String, depth: usize) {
        let pad = "    ".repeat(depth);
        out.push_str(&pad);
        out.push_str(&self.kind);
        for l in &self.labels {
            out.push(' ');
            out.push_str(&quote(l));
        }
        out.push_str(" {\n");
        for (k, v) in &self.attrs {
            let _ = writeln!(out, "{pad}    {k} = {}", v.render());
        }
        for b in &self.blocks {
            b.render_into(out, depth + 1);
        }
        out.push_str(&pad);
        out.push_str("}\n");
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        self.render_into(&mut out, 0);
        out
    }
}

/// A plugin as SPIRE writes it: `Kind "name" { plugin_data { … } }`.
#[derive(Debug, Clone, PartialEq)]
pub struct Plugin {
    pub kind: String,
    pub name: String,
    pub data: Block,
    /// Keys of the plugin block itself, beside plugin_data (SPIRE's `enabled`).
    pub attrs: Vec<(String, Value)>,
}

impl Plugin {
    pub fn new(kind: &str, name: &str) -> Self {
        Self {
            kind: kind.to_string(),
            name: name.to_string(),
            data: Block::new("plugin_data"),
            attrs: Vec::new(),
        }
    }

    /// Sets a key of the plugin block itself (`enabled = false`).
    pub fn outer(mut self, key: &str, value: impl Into<Value>) -> Self {
        self.attrs.push((key.to_string(), value.into()));
        self
    }

    /// Sets a key of `plugin_data`.
    pub fn set(mut self, key: &str, value: impl Into<Value>) -> Self {
        self.data.put(key, value);
        self
    }

    /// Adds a nested block to `plugin_data`.
    pub fn block(mut self, b: Block) -> Self {
        self.data.blocks.push(b);
        self
    }

    fn to_block(&self) -> Block {
        let mut b = Block::labeled(&self.kind, &self.name);
        for (k, v) in &self.attrs {
            b.put(k, v.clone());
        }
        b.block(self.data.clone())
    }

    pub fn is(&self, kind: &str, name: &str) -> bool {
        self.kind == kind && self.name == name
    }
}

/// The plugins of a config, with the lookups the suites need.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Plugins(pub Vec<Plugin>);

impl Plugins {
    /// Adds `p`, replacing a plugin of the same kind and name.
    pub fn add(&mut self, p: Plugin) {
        match self.0.iter_mut().find(|q| q.is(&p.kind, &p.name)) {
            Some(q) => *q = p,
            None => self.0.push(p),
        }
    }

    pub fn get_mut(&mut self, kind: &str, name: &str) -> Option<&mut Plugin> {
        self.0.iter_mut().find(|p| p.is(kind, name))
    }

    pub fn has(&self, kind: &str, name: &str) -> bool {
        self.0.iter().any(|p| p.is(kind, name))
    }

    fn block(&self) -> Block {
        let mut b = Block::new("plugins");
        b.blocks = self.0.iter().map(Plugin::to_block).collect();
        b
    }
}

/// `server { … } plugins { … }`.
#[derive(Debug, Clone, PartialEq)]
pub struct ServerConf {
    pub server: Block,
    pub plugins: Plugins,
    /// Other top-level blocks (`health_checks`, `telemetry`).
    pub top: Vec<Block>,
}

impl ServerConf {
    pub fn new(trust_domain: &str) -> Self {
        Self {
            server: Block::new("server").set("trust_domain", trust_domain),
            plugins: Plugins::default(),
            top: Vec::new(),
        }
    }

    /// Sets a key of the `server` block.
    pub fn server(mut self, key: &str, value: impl Into<Value>) -> Self {
        self.server.put(key, value);
        self
    }

    /// Adds a plugin (replacing one of the same kind and name).
    pub fn plugin(mut self, p: Plugin) -> Self {
        self.plugins.add(p);
        self
    }

    /// Adds a top-level block.
    pub fn top(mut self, b: Block) -> Self {
        self.top.push(b);
        self
    }

    pub fn render(&self) -> String {
        let mut out = self.server.render() + &self.plugins.block().render();
        for b in &self.top {
            out.push_str(&b.render());
        }
        out
    }

    pub fn write(&self, path: &Path) -> std::io::Result<()> {
        std::fs::write(path, self.render())
    }
}

/// `agent { … } plugins { … }`.
#[derive(Debug, Clone, PartialEq)]
pub struct AgentConf {
    pub agent: Block,
    pub plugins: Plugins,
    /// Other top-level blocks (`health_checks`, `telemetry`).
    pub top: Vec<Block>,
}

impl AgentConf {
    pub fn new(trust_domain: &str) -> Self {
        Self {
            agent: Block::new("agent").set("trust_domain", trust_domain),
            plugins: Plugins::default(),
            top: Vec::new(),
        }
    }

    /// Sets a key of the `agent` block.
    pub fn agent(mut self, key: &str, value: impl Into<Value>) -> Self {
        self.agent.put(key, value);
        self
    }

    pub fn plugin(mut self, p: Plugin) -> Self {
        self.plugins.add(p);
        self
    }

    /// Adds a top-level block.
    pub fn top(mut self, b: Block) -> Self {
        self.top.push(b);
        self
    }

    pub fn render(&self) -> String {
        let mut out = self.agent.render() + &self.plugins.block().render();
        for b in &self.top {
            out.push_str(&b.render());
        }
        out
    }

    pub fn write(&self, path: &Path) -> std::io::Result<()> {
        std::fs::write(path, self.render())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strings_are_escaped_and_templates_stay_literal() {
        assert_eq!(quote(r#"a"b\c"#), r#""a\"b\\c""#);
        assert_eq!(quote("${x} %{y} $z"), r#""$${x} %%{y} $z""#);
        assert_eq!(quote("l1\nl2"), r#""l1\nl2""#);
    }

    #[test]
    fn a_server_config_renders_as_spire_writes_it() {
        let c = ServerConf::new("example.org")
            .server("bind_port", 0u16)
            .plugin(
                Plugin::new("NodeAttestor", "sev_snp")
                    .set("measurements", vec!["ab", "cd"])
                    .set("fetch_vcek", false)
                    .block(Block::new("test_roots").set("product", "milan")),
            )
            .plugin(Plugin::new("NodeAttestor", "join_token"));
        let text = c.render();
        assert_eq!(
            text,
            "server {\n    trust_domain = \"example.org\"\n    bind_port = 0\n}\nplugins {\n    \
             NodeAttestor \"sev_snp\" {\n        plugin_data {\n            measurements = [\"ab\", \"cd\"]\n            \
             fetch_vcek = false\n            test_roots {\n                product = \"milan\"\n            }\n        \
             }\n    }\n    NodeAttestor \"join_token\" {\n        plugin_data {\n        }\n    }\n}\n"
        );
        // replacing a plugin keeps one of it
        let c = c.plugin(Plugin::new("NodeAttestor", "join_token").set("x", 1i64));
        assert_eq!(c.plugins.0.len(), 2);
    }
}
