//! A small typed reader over HCL files that remembers where every key came from, so an
//! unknown key or a wrong type is reported with its file and line. hcl-edit parses (it keeps
//! source spans, which hcl-rs's serde path drops); this module only walks the tree.

use hcl_edit::Span;
use hcl_edit::expr::{Expression, ObjectKey};
use hcl_edit::structure::{BlockLabel, Body, Structure};
use std::cell::RefCell;
use std::collections::BTreeSet;
use std::fmt;
use std::time::Duration;

/// A configuration error with the file and line it concerns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub file: String,
    pub line: usize,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line > 0 {
            write!(f, "{}:{}: {}", self.file, self.line, self.message)
        } else {
            write!(f, "{}: {}", self.file, self.message)
        }
    }
}

impl std::error::Error for ConfigError {}

/// A value with the line it starts on.
#[derive(Debug, Clone)]
pub enum Value {
    Null,
    Bool(bool),
    Number(f64),
    Str(String),
    List(Vec<(Value, usize)>),
    Node(Node),
}

impl Value {
    fn type_name(&self) -> &'static str {
        match self {
            Value::Null => "null",
            Value::Bool(_) => "a boolean",
            Value::Number(_) => "a number",
            Value::Str(_) => "a string",
            Value::List(_) => "a list",
            Value::Node(_) => "a block",
        }
    }
}

/// A block body: attributes and nested blocks in file order.
#[derive(Debug, Clone, Default)]
pub struct Node {
    pub attrs: Vec<(String, Value, usize)>,
    pub blocks: Vec<Block>,
    pub line: usize,
}

#[derive(Debug, Clone)]
pub struct Block {
    pub ident: String,
    pub labels: Vec<String>,
    pub body: Node,
    pub line: usize,
}

struct Lines<'a>(&'a str);

impl Lines<'_> {
    fn line(&self, span: Option<std::ops::Range<usize>>) -> usize {
        match span {
            Some(r) => self.0[..r.start.min(self.0.len())].matches('\n').count() + 1,
            None => 0,
        }
    }
}

/// Replaces `$VAR` and `${VAR}` with environment values (empty when unset), as Go's
/// os.ExpandEnv does for SPIRE's `-expandEnv`.
pub fn expand_env(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        if let Some(inner) = after.strip_prefix('{')
            && let Some(end) = inner.find('}')
        {
            out.push_str(&std::env::var(&inner[..end]).unwrap_or_default());
            rest = &inner[end + 1..];
            continue;
        }
        let n = after
            .bytes()
            .take_while(|b| b.is_ascii_alphanumeric() || *b == b'_')
            .count();
        if n == 0 {
            out.push('$');
            rest = after;
        } else {
            out.push_str(&std::env::var(&after[..n]).unwrap_or_default());
            rest = &after[n..];
        }
    }
    out.push_str(rest);
    out
}

/// Parses HCL text into a [`Node`].
pub fn parse(file: &str, text: &str) -> Result<Node, ConfigError> {
    let body = hcl_edit::parser::parse_body(text).map_err(|e| ConfigError {
        file: file.to_string(),
        line: e.location().line(),
        message: format!("HCL syntax error: {}", first_line(&e.to_string())),
    })?;
    let lines = Lines(text);
    convert_body(file, &lines, &body, 1)
}

fn first_line(s: &str) -> String {
    s.lines()
        .rfind(|l| !l.trim().is_empty())
        .unwrap_or(s)
        .trim()
        .to_string()
}

fn convert_body(
    file: &str,
    lines: &Lines<'_>,
    body: &Body,
    line: usize,
) -> Result<Node, ConfigError> {
    let mut node = Node {
        line,
        ..Default::default()
    };
    for s in body.iter() {
        match s {
            Structure::Attribute(a) => {
                let l = lines.line(a.span());
                node.attrs.push((
                    a.key.value().to_string(),
                    convert_expr(file, lines, &a.value, l)?,
                    l,
                ));
            }
            Structure::Block(b) => {
                let l = lines.line(b.span());
                node.blocks.push(Block {
                    ident: b.ident.value().to_string(),
                    labels: b
                        .labels
                        .iter()
                        .map(|lb| match lb {
                            BlockLabel::Ident(i) => i.value().to_string(),
                            BlockLabel::String(s) => s.value().to_string(),
                        })
                        .collect(),
                    body: convert_body(file, lines, &b.body, l)?,
                    line: l,
                });
            }
        }
    }
    Ok(node)
}

fn convert_expr(
    file: &str,
    lines: &Lines<'_>,
    e: &Expression,
    line: usize,
) -> Result<Value, ConfigError> {
    let l = lines.line(e.span()).max(line);
    Ok(match e {
        Expression::Null(_) => Value::Null,
        Expression::Bool(b) => Value::Bool(*b.value()),
        Expression::Number(n) => Value::Number(n.value().as_f64().unwrap_or(f64::NAN)),
        Expression::String(s) => Value::Str(s.value().to_string()),
        Expression::Array(a) => Value::List(
            a.iter()
                .map(|x| {
                    let xl = lines.line(x.span()).max(l);
                    convert_expr(file, lines, x, xl).map(|v| (v, xl))
                })
                .collect::<Result<_, _>>()?,
        ),
        Expression::Object(o) => {
            let mut node = Node {
                line: l,
                ..Default::default()
            };
            for (k, v) in o.iter() {
                let key = match k {
                    ObjectKey::Ident(i) => i.value().to_string(),
                    ObjectKey::Expression(Expression::String(s)) => s.value().to_string(),
                    _ => {
                        return Err(ConfigError {
                            file: file.to_string(),
                            line: l,
                            message: "object keys must be names or plain strings".into(),
                        });
                    }
                };
                let vl = lines.line(v.expr().span()).max(l);
                node.attrs
                    .push((key, convert_expr(file, lines, v.expr(), vl)?, vl));
            }
            Value::Node(node)
        }
        Expression::HeredocTemplate(h) => Value::Str(h.template.to_string()),
        _ => {
            return Err(ConfigError {
                file: file.to_string(),
                line: l,
                message: "only literal values are supported (no interpolation, variables or \
                          functions); use -expandEnv for environment variables"
                    .into(),
            });
        }
    })
}

/// A view of one block that records which keys were read; [`Section::finish`] rejects the
/// rest as unknown.
pub struct Section<'a> {
    file: &'a str,
    path: String,
    node: &'a Node,
    used: RefCell<BTreeSet<String>>,
}

impl<'a> Section<'a> {
    pub fn new(file: &'a str, path: &str, node: &'a Node) -> Self {
        Self {
            file,
            path: path.to_string(),
            node,
            used: RefCell::new(BTreeSet::new()),
        }
    }

    pub fn err(&self, line: usize, message: impl Into<String>) -> ConfigError {
        ConfigError {
            file: self.file.to_string(),
            line,
            message: message.into(),
        }
    }

    pub fn line(&self) -> usize {
        self.node.line
    }

    fn child_path(&self, key: &str) -> String {
        if self.path.is_empty() {
            key.to_string()
        } else {
            format!("{}.{key}", self.path)
        }
    }

    fn where_(&self) -> &str {
        if self.path.is_empty() {
            "the top level"
        } else {
            &self.path
        }
    }

    fn attr(&self, key: &str) -> Result<Option<(&'a Value, usize)>, ConfigError> {
        self.used.borrow_mut().insert(key.to_string());
        let mut found = self.node.attrs.iter().filter(|(k, _, _)| k == key);
        let first = found.next();
        if let Some((_, _, l)) = found.next() {
            return Err(self.err(*l, format!("{key:?} is set twice in {}", self.where_())));
        }
        Ok(first.map(|(_, v, l)| (v, *l)))
    }

    fn type_err(&self, key: &str, line: usize, want: &str, got: &Value) -> ConfigError {
        self.err(
            line,
            format!(
                "{} must be {want}, found {}",
                self.child_path(key),
                got.type_name()
            ),
        )
    }

    pub fn string(&self, key: &str) -> Result<Option<(String, usize)>, ConfigError> {
        match self.attr(key)? {
            None | Some((Value::Null, _)) => Ok(None),
            Some((Value::Str(s), l)) => Ok(Some((s.clone(), l))),
            Some((v, l)) => Err(self.type_err(key, l, "a string", v)),
        }
    }

    pub fn bool(&self, key: &str) -> Result<Option<bool>, ConfigError> {
        match self.attr(key)? {
            None | Some((Value::Null, _)) => Ok(None),
            Some((Value::Bool(b), _)) => Ok(Some(*b)),
            Some((v, l)) => Err(self.type_err(key, l, "true or false", v)),
        }
    }

    /// A port or other small integer; a numeric string is accepted too.
    pub fn u16(&self, key: &str) -> Result<Option<(u16, usize)>, ConfigError> {
        let (n, l) = match self.attr(key)? {
            None | Some((Value::Null, _)) => return Ok(None),
            Some((Value::Number(n), l)) => (*n, l),
            Some((Value::Str(s), l)) => (
                s.trim().parse::<f64>().map_err(|_| {
                    self.err(
                        l,
                        format!("{} must be a number, found {s:?}", self.child_path(key)),
                    )
                })?,
                l,
            ),
            Some((v, l)) => return Err(self.type_err(key, l, "a number", v)),
        };
        if n.fract() != 0.0 || !(0.0..=65535.0).contains(&n) {
            return Err(self.err(
                l,
                format!(
                    "{} must be an integer from 0 to 65535",
                    self.child_path(key)
                ),
            ));
        }
        Ok(Some((n as u16, l)))
    }

    /// A whole number (a byte count, say), written as SPIRE's configs do: `0` or `"0"`.
    pub fn i64(&self, key: &str) -> Result<Option<(i64, usize)>, ConfigError> {
        let bad = |l| {
            self.err(
                l,
                format!("{} must be a whole number", self.child_path(key)),
            )
        };
        match self.attr(key)? {
            None | Some((Value::Null, _)) => Ok(None),
            Some((Value::Number(n), l)) => {
                if n.fract() != 0.0 || n.abs() > 9.0e15 {
                    return Err(bad(l));
                }
                Ok(Some((*n as i64, l)))
            }
            Some((Value::Str(s), l)) => s.trim().parse().map(|n| Some((n, l))).map_err(|_| bad(l)),
            Some((v, l)) => Err(self.type_err(key, l, "a number", v)),
        }
    }

    /// A Go-syntax duration string (`1h`, `90s`); a bare number means seconds.
    pub fn duration(&self, key: &str) -> Result<Option<Duration>, ConfigError> {
        match self.attr(key)? {
            None | Some((Value::Null, _)) => Ok(None),
            Some((Value::Str(s), l)) => ironpact_spiffe::duration::parse(s)
                .map(Some)
                .map_err(|e| self.err(l, format!("{}: {e}", self.child_path(key)))),
            Some((Value::Number(n), l)) if *n >= 0.0 && n.is_finite() => {
                let _ = l;
                Ok(Some(Duration::from_secs_f64(*n)))
            }
            Some((v, l)) => Err(self.type_err(key, l, "a duration such as \"1h\"", v)),
        }
    }

    pub fn strings(&self, key: &str) -> Result<Option<Vec<String>>, ConfigError> {
        match self.attr(key)? {
            None | Some((Value::Null, _)) => Ok(None),
            Some((Value::List(items), _)) => items
                .iter()
                .map(|(v, l)| match v {
                    Value::Str(s) => Ok(s.clone()),
                    other => Err(self.type_err(key, *l, "a list of strings", other)),
                })
                .collect::<Result<Vec<_>, _>>()
                .map(Some),
            Some((v, l)) => Err(self.type_err(key, l, "a list of strings", v)),
        }
    }

    /// A list of small non-negative integers (`vmpls = [0, 1]`).
    pub fn numbers(&self, key: &str) -> Result<Option<Vec<u16>>, ConfigError> {
        match self.attr(key)? {
            None | Some((Value::Null, _)) => Ok(None),
            Some((Value::List(items), _)) => items
                .iter()
                .map(|(v, l)| match v {
                    Value::Number(n) if n.fract() == 0.0 && (0.0..=65535.0).contains(n) => {
                        Ok(*n as u16)
                    }
                    other => Err(self.type_err(key, *l, "a list of small whole numbers", other)),
                })
                .collect::<Result<Vec<_>, _>>()
                .map(Some),
            Some((v, l)) => Err(self.type_err(key, l, "a list of numbers", v)),
        }
    }

    /// A nested block `key { … }` or an object attribute `key = { … }`.
    pub fn section(&self, key: &str) -> Result<Option<Section<'a>>, ConfigError> {
        self.used.borrow_mut().insert(key.to_string());
        let mut found: Vec<(&'a Node, usize)> = Vec::new();
        for b in &self.node.blocks {
            if b.ident == key {
                if !b.labels.is_empty() {
                    return Err(self.err(b.line, format!("{key} block takes no labels")));
                }
                found.push((&b.body, b.line));
            }
        }
        for (k, v, l) in &self.node.attrs {
            if k == key {
                match v {
                    Value::Node(n) => found.push((n, *l)),
                    other => return Err(self.type_err(key, *l, "a block", other)),
                }
            }
        }
        if found.len() > 1 {
            return Err(self.err(
                found[1].1,
                format!("{key} is set twice in {}", self.where_()),
            ));
        }
        Ok(found
            .first()
            .map(|(n, _)| Section::new(self.file, &self.child_path(key), n)))
    }

    /// Labelled blocks such as `DataStore "sql" { … }`, marking `ident` as known.
    pub fn labelled(&self, ident: &str) -> Vec<(&'a Block, Section<'a>)> {
        self.used.borrow_mut().insert(ident.to_string());
        self.node
            .blocks
            .iter()
            .filter(|b| b.ident == ident)
            .map(|b| {
                let path = format!("{ident} \"{}\"", b.labels.join("\" \""));
                (b, Section::new(self.file, &path, &b.body))
            })
            .collect()
    }

    /// Fails on the first attribute or block that was never asked for.
    pub fn finish(self) -> Result<(), ConfigError> {
        let used = self.used.borrow();
        let known_hint = used.iter().cloned().collect::<Vec<_>>().join(", ");
        let unknown = self
            .node
            .attrs
            .iter()
            .map(|(k, _, l)| (k, *l))
            .chain(self.node.blocks.iter().map(|b| (&b.ident, b.line)))
            .filter(|(k, _)| !used.contains(k.as_str()))
            .min_by_key(|(_, l)| *l);
        match unknown {
            Some((k, l)) => Err(self.err(
                l,
                format!(
                    "unknown key {k:?} in {} (known: {known_hint})",
                    self.where_()
                ),
            )),
            None => Ok(()),
        }
    }
}

/// Reads a file that holds one block's keys, at top level or inside a `block { … }`
/// (policy files for `verify snp|tdx --policy`), with `read` for the keys.
pub fn parse_block_file<T>(
    file: &str,
    text: &str,
    block: &str,
    read: impl Fn(&Section<'_>) -> Result<T, ConfigError>,
) -> Result<T, ConfigError> {
    let root = parse(file, text)?;
    let top = Section::new(file, "", &root);
    if let Some(inner) = top.section(block)? {
        let v = read(&inner)?;
        inner.finish()?;
        top.finish()?;
        return Ok(v);
    }
    let v = read(&top)?;
    top.finish()?;
    Ok(v)
}

/// Checks a SPIRE plugin block (`Kind "name" { plugin_data { … } }`): exactly one label, one
/// of `known`; returns its `plugin_data` section, if any.
pub fn plugin_data<'a>(
    labels: &[String],
    line: usize,
    sec: &Section<'a>,
    kind: &str,
    known: &[&str],
) -> Result<Option<Section<'a>>, ConfigError> {
    let example = known.first().copied().unwrap_or("name");
    if labels.len() != 1 {
        return Err(sec.err(
            line,
            format!("{kind} takes exactly one name, e.g. {kind} \"{example}\""),
        ));
    }
    if !known.contains(&labels[0].as_str()) {
        return Err(sec.err(
            line,
            format!(
                "unknown {kind} plugin {:?} (available: {})",
                labels[0],
                known.join(", ")
            ),
        ));
    }
    let _ = sec.bool("enabled")?;
    sec.section("plugin_data")
}
