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

/// How a server or agent logs, from [`Section::logging`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Logging {
    /// JSON lines (`log_format = "json"`) rather than text.
    pub json: bool,
    /// Appended to this file instead of stderr (`log_file`).
    pub file: Option<std::path::PathBuf>,
    /// Each line names its source file and line (`log_source_location`).
    pub source_location: bool,
}

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

/// Line numbers of spans in the parsed text; `map` gives, for text [`relax`] rewrote, each
/// of its lines' line in the original file.
struct Lines<'a> {
    text: &'a str,
    map: Option<Vec<usize>>,
}

impl Lines<'_> {
    fn line(&self, span: Option<std::ops::Range<usize>>) -> usize {
        match span {
            Some(r) => {
                let n = self.text[..r.start.min(self.text.len())]
                    .matches('\n')
                    .count()
                    + 1;
                match &self.map {
                    Some(m) => m.get(n - 1).copied().unwrap_or(n),
                    None => n,
                }
            }
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

/// Parses HCL text into a [`Node`]. Text HCL 2 refuses only because a block on one line holds
/// more than one attribute or a nested block (`plugins { NodeAttestor "x" { plugin_data {} } }`,
/// which SPIRE's HCL 1 reads) is read as if each brace were on a line of its own: the meaning
/// is the same, and errors still name the original lines.
pub fn parse(file: &str, text: &str) -> Result<Node, ConfigError> {
    let mut root = parse_text(file, text)?;
    inline_plugin_data_files(file, &mut root)?;
    Ok(root)
}

/// SPIRE's `plugin_data_file = "path"` in a plugin block: the file's HCL becomes the block's
/// `plugin_data` (errors inside it point at the line of `plugin_data_file`, naming the file).
fn inline_plugin_data_files(file: &str, root: &mut Node) -> Result<(), ConfigError> {
    fn relines(n: &mut Node, line: usize) {
        n.line = line;
        for a in &mut n.attrs {
            a.2 = line;
            if let Value::Node(inner) = &mut a.1 {
                relines(inner, line);
            }
        }
        for b in &mut n.blocks {
            b.line = line;
            relines(&mut b.body, line);
        }
    }
    for plugins in root.blocks.iter_mut().filter(|b| b.ident == "plugins") {
        for plugin in &mut plugins.body.blocks {
            let Some(i) = plugin
                .body
                .attrs
                .iter()
                .position(|(k, _, _)| k == "plugin_data_file")
            else {
                continue;
            };
            let (_, v, line) = plugin.body.attrs.remove(i);
            let err = |message: String| ConfigError {
                file: file.to_string(),
                line,
                message,
            };
            let Value::Str(path) = v else {
                return Err(err("plugin_data_file must be a path (a string)".into()));
            };
            if plugin.body.blocks.iter().any(|b| b.ident == "plugin_data")
                || plugin.body.attrs.iter().any(|(k, _, _)| k == "plugin_data")
            {
                return Err(err(format!(
                    "{} \"{}\": plugin_data and plugin_data_file exclude each other: keep one",
                    plugin.ident,
                    plugin.labels.join("\" \"")
                )));
            }
            let text = std::fs::read_to_string(&path)
                .map_err(|e| err(format!("plugin_data_file {path}: {e}")))?;
            let mut body = parse_text(&path, &text).map_err(|e| {
                err(format!(
                    "plugin_data_file {path}: line {}: {}",
                    e.line, e.message
                ))
            })?;
            relines(&mut body, line);
            plugin.body.blocks.push(Block {
                ident: "plugin_data".into(),
                labels: Vec::new(),
                body,
                line,
            });
        }
    }
    Ok(())
}

fn parse_text(file: &str, text: &str) -> Result<Node, ConfigError> {
    match hcl_edit::parser::parse_body(text) {
        Ok(body) => convert_body(file, &Lines { text, map: None }, &body, 1),
        Err(e) => {
            let line = e.location().line();
            if let Some((relaxed, map)) = relax(text)
                && let Ok(body) = hcl_edit::parser::parse_body(&relaxed)
            {
                let lines = Lines {
                    text: &relaxed,
                    map: Some(map),
                };
                return convert_body(file, &lines, &body, 1);
            }
            Err(ConfigError {
                file: file.to_string(),
                line,
                message: syntax_message(text, line, &e.to_string()),
            })
        }
    }
}

/// hcl-edit's words for a syntax error, with the line's text and, for the mistakes SPIRE users
/// make, what to write instead.
fn syntax_message(text: &str, line: usize, err: &str) -> String {
    let src = text
        .lines()
        .nth(line.saturating_sub(1))
        .unwrap_or("")
        .trim();
    let what = first_line(err);
    let what = what.trim_start_matches("= ").trim();
    let mut m = format!("HCL syntax error: {what}, in `{src}`");
    let code = !(src.starts_with('#') || src.starts_with("//") || src.starts_with("/*"));
    let after_brace = src.split_once('{').map(|(_, r)| r).unwrap_or("");
    let crowded = after_brace.matches('=').count() >= 2 || after_brace.contains('{');
    if code && crowded && after_brace.contains('}') {
        m.push_str(
            "; a block written on one line holds one attribute at most: put each attribute on a line of its own",
        );
    } else if what.contains("expected `=`") {
        m.push_str("; an attribute is `key = value`, a block `name \"label\" { … }`");
    }
    m
}

/// The text with a line break after every `{` and before every `}` outside strings and
/// comments, and for each of its lines the original line; `None` when the text holds a
/// heredoc (whose body must not change).
fn relax(text: &str) -> Option<(String, Vec<usize>)> {
    if text.contains("<<") {
        return None;
    }
    #[derive(PartialEq)]
    enum St {
        Code,
        Str,
        LineComment,
        BlockComment,
    }
    let mut out = String::with_capacity(text.len() + 64);
    let mut map = vec![1usize];
    let mut orig = 1usize;
    let mut st = St::Code;
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match (&st, c) {
            (_, '\n') => {
                if st == St::LineComment {
                    st = St::Code;
                }
                orig += 1;
                out.push('\n');
                map.push(orig);
            }
            (St::Code, '"') => {
                st = St::Str;
                out.push(c);
            }
            (St::Code, '#') => {
                st = St::LineComment;
                out.push(c);
            }
            (St::Code, '/') if matches!(chars.peek(), Some('/')) => {
                st = St::LineComment;
                out.push(c);
            }
            (St::Code, '/') if matches!(chars.peek(), Some('*')) => {
                st = St::BlockComment;
                out.push(c);
                // the opening `*` is not also the start of a closing `*/` (`/*/`)
                if let Some(n) = chars.next() {
                    out.push(n);
                }
            }
            (St::Code, '{') => {
                out.push_str("{\n");
                map.push(orig);
            }
            (St::Code, '}') => {
                out.push_str("\n}");
                map.push(orig);
            }
            (St::Str, '\\') => {
                out.push(c);
                if let Some(n) = chars.next() {
                    if n == '\n' {
                        orig += 1;
                        map.push(orig);
                    }
                    out.push(n);
                }
            }
            (St::Str, '"') => {
                st = St::Code;
                out.push(c);
            }
            (St::BlockComment, '*') if matches!(chars.peek(), Some('/')) => {
                out.push(c);
                if let Some(n) = chars.next() {
                    out.push(n);
                }
                st = St::Code;
            }
            _ => out.push(c),
        }
    }
    Some((out, map))
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

    /// The logging keys a server or agent block shares with SPIRE's (`log_format`, `log_file`,
    /// `log_source_location`); `format` and `file` are the command line's `-logFormat` and
    /// `-logFile`, which win over the file.
    pub fn logging(
        &self,
        format: Option<&str>,
        file: Option<&str>,
    ) -> Result<Logging, ConfigError> {
        let json = match format
            .map(|f| (f.to_string(), self.line()))
            .or(self.string("log_format")?)
        {
            None => false,
            Some((f, l)) => match f.to_ascii_lowercase().as_str() {
                "text" | "" => false,
                "json" => true,
                _ => {
                    return Err(self.err(
                        l,
                        format!(
                            "{} {f:?}: use \"text\" or \"json\"",
                            self.child_path("log_format")
                        ),
                    ));
                }
            },
        };
        let file = file
            .map(str::to_string)
            .or(self.string("log_file")?.map(|v| v.0))
            .filter(|f| !f.is_empty())
            .map(std::path::PathBuf::from);
        Ok(Logging {
            json,
            file,
            source_location: self.bool("log_source_location")?.unwrap_or(false),
        })
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
    // SPIRE's `enabled`: `false` turns a NodeAttestor off (its caller skips it); elsewhere it
    // would leave a required plugin out, so it is refused rather than silently ignored
    if sec.bool("enabled")? == Some(false) && kind != "NodeAttestor" {
        return Err(sec.err(
            line,
            format!(
                "{kind} \"{}\": enabled = false is honoured for NodeAttestor blocks only; remove the block or the key",
                labels[0]
            ),
        ));
    }
    sec.section("plugin_data")
}

/// SPIRE's `health_checks { listener_enabled bind_address bind_port live_path ready_path }`
/// (a top-level block of the server's and the agent's files): where the HTTP health
/// endpoints answer, or None when `listener_enabled` is not true.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthChecks {
    pub addr: std::net::SocketAddr,
    pub live_path: String,
    pub ready_path: String,
}

pub fn health_checks(top: &Section<'_>) -> Result<Option<HealthChecks>, ConfigError> {
    let Some(h) = top.section("health_checks")? else {
        return Ok(None);
    };
    let line = h.line();
    let enabled = h.bool("listener_enabled")?.unwrap_or(false);
    let address = h.string("bind_address")?;
    let port = h.u16("bind_port")?.map(|p| p.0).unwrap_or(80);
    let path = |k: &str, default: &str| -> Result<String, ConfigError> {
        match h.string(k)? {
            None => Ok(default.to_string()),
            Some((p, l)) if p.starts_with('/') => {
                let _ = l;
                Ok(p)
            }
            Some((p, l)) => Err(h.err(l, format!("health_checks.{k} {p:?} must start with /"))),
        }
    };
    let live_path = path("live_path", "/live")?;
    let ready_path = path("ready_path", "/ready")?;
    h.finish()?;
    if !enabled {
        return Ok(None);
    }
    let ip: std::net::IpAddr = match address {
        None => std::net::IpAddr::from([127, 0, 0, 1]),
        Some((a, _)) if a == "localhost" => std::net::IpAddr::from([127, 0, 0, 1]),
        Some((a, l)) => a.parse().map_err(|_| {
            h_err(
                top,
                l,
                format!("health_checks.bind_address {a:?} is not an IP address (or localhost)"),
            )
        })?,
    };
    if live_path == ready_path {
        return Err(h_err(
            top,
            line,
            "health_checks: live_path and ready_path must differ".into(),
        ));
    }
    Ok(Some(HealthChecks {
        addr: std::net::SocketAddr::new(ip, port),
        live_path,
        ready_path,
    }))
}

/// SPIRE's `telemetry { Prometheus { host port } }` (a top-level block of the server's and the
/// agent's files): where the Prometheus endpoint (`/metrics`) answers, or None without a
/// `Prometheus` block. SPIRE's other sinks and label filters are refused with the reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Telemetry {
    pub addr: std::net::SocketAddr,
}

/// SPIRE's telemetry settings other than the Prometheus sink.
const OTHER_TELEMETRY: &[&str] = &[
    "DogStatsd",
    "Statsd",
    "M3",
    "AllowedPrefixes",
    "BlockedPrefixes",
    "AllowedLabels",
    "BlockedLabels",
    "MetricPrefix",
    "EnableTrustDomainLabel",
    "EnableHostnameLabel",
];

pub fn telemetry(top: &Section<'_>) -> Result<Option<Telemetry>, ConfigError> {
    let Some(t) = top.section("telemetry")? else {
        return Ok(None);
    };
    for key in OTHER_TELEMETRY {
        let line = t
            .node
            .attrs
            .iter()
            .find(|(k, _, _)| k == key)
            .map(|(_, _, l)| *l)
            .or_else(|| {
                t.node
                    .blocks
                    .iter()
                    .find(|b| b.ident == *key)
                    .map(|b| b.line)
            });
        if let Some(l) = line {
            return Err(t.err(
                l,
                format!(
                    "telemetry.{key}: only the Prometheus sink is served (Prometheus {{ host port }}): scrape its /metrics, or remove {key}"
                ),
            ));
        }
    }
    // SPIRE's in-memory sink (a debugging aid, off in its examples): nothing to serve
    if let Some(m) = t.section("InMem")? {
        let _ = m.bool("enabled")?;
        m.finish()?;
    }
    let prom = t.section("Prometheus")?;
    t.finish()?;
    let Some(p) = prom else {
        return Ok(None);
    };
    let line = p.line();
    let host = p.string("host")?;
    let port = p.u16("port")?.map(|v| v.0);
    p.finish()?;
    let Some(port) = port else {
        return Err(top.err(
            line,
            "telemetry.Prometheus.port is required (e.g. port = 9988)",
        ));
    };
    let ip: std::net::IpAddr = match host {
        None => std::net::IpAddr::from([127, 0, 0, 1]),
        Some((h, _)) if h == "localhost" => std::net::IpAddr::from([127, 0, 0, 1]),
        Some((h, l)) => h.parse().map_err(|_| {
            top.err(
                l,
                format!("telemetry.Prometheus.host {h:?} is not an IP address (or localhost)"),
            )
        })?,
    };
    Ok(Some(Telemetry {
        addr: std::net::SocketAddr::new(ip, port),
    }))
}

fn h_err(s: &Section<'_>, line: usize, message: String) -> ConfigError {
    s.err(line, message)
}

/// Whether a plugin block is switched off with SPIRE's `enabled = false`.
pub fn disabled(sec: &Section<'_>) -> Result<bool, ConfigError> {
    Ok(sec.bool("enabled")? == Some(false))
}

/// Which program a configuration file is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Server,
    Agent,
}

/// SPIRE's plugin kinds, as its config files spell them.
const PLUGIN_KINDS: &[&str] = &[
    "NodeAttestor",
    "WorkloadAttestor",
    "KeyManager",
    "DataStore",
    "UpstreamAuthority",
    "Notifier",
    "SVIDStore",
    "BundlePublisher",
    "CredentialComposer",
];

fn canonical_kind(ident: &str) -> Option<&'static str> {
    let norm: String = ident
        .chars()
        .filter(|c| *c != '_' && *c != '-')
        .flat_map(char::to_lowercase)
        .collect();
    PLUGIN_KINDS
        .iter()
        .copied()
        .find(|k| k.to_ascii_lowercase() == norm)
}

/// Every change a configuration written as SPIRE's docs and articles often write it needs, found
/// in one pass so that one run names them all: (line, change). `node_attestors` are the node
/// attestors ironpact has. Empty for a configuration in ironpact's form.
pub fn spire_style_changes(
    root: &Node,
    side: Side,
    node_attestors: &[&str],
) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    let (mine, other) = match side {
        Side::Server => ("server", "agent"),
        Side::Agent => ("agent", "server"),
    };
    let has = |n: &str| root.blocks.iter().find(|b| b.ident == n);
    if has(mine).is_none()
        && let Some(b) = has(other)
    {
        out.push((
            b.line,
            format!("this is an {other} configuration (it has an `{other}` block): run it with ironpact-{other}"),
        ));
        return out;
    }
    let nodes = node_attestors.join(", ");
    let plugin = |b: &Block, out: &mut Vec<(usize, String)>| {
        let Some(kind) = canonical_kind(&b.ident) else {
            return;
        };
        if b.ident != kind {
            out.push((b.line, format!("`{}` → `{kind}`", b.ident)));
        }
        let label = b.labels.first().map(String::as_str).unwrap_or("");
        match kind {
            "NodeAttestor" if label == "unix" => out.push((
                b.line,
                format!(
                    "`{kind} \"unix\"`: unix is a workload attestor (`WorkloadAttestor \"unix\"`, agent side); nodes attest with {nodes}"
                ),
            )),
            "NodeAttestor" if !node_attestors.contains(&label) => out.push((
                b.line,
                format!("`{kind} \"{label}\"`: not a node attestor of ironpact; use {nodes}"),
            )),
            // `sgx` has both halves: the server verifies enclaves' quotes, agents relay them
            "WorkloadAttestor" if side == Side::Server && label != "sgx" => out.push((
                b.line,
                format!("`{kind} \"{label}\"` belongs in the agent's configuration, not the server's (the server's only workload attestor is `sgx`)"),
            )),
            "WorkloadAttestor" if side == Side::Agent && label != "unix" && label != "sgx" => {
                out.push((
                    b.line,
                    format!("`{kind} \"{label}\"`: the agent's workload attestors are `unix` and `sgx`"),
                ))
            }
            "KeyManager" if label == "disk" => {
                let data = b.body.blocks.iter().find(|d| d.ident == "plugin_data");
                let (wrong, right) = match side {
                    Side::Agent => ("keys_path", "directory"),
                    Side::Server => ("directory", "keys_path"),
                };
                if let Some((_, _, l)) = data
                    .and_then(|d| d.body.attrs.iter().find(|(k, _, _)| k == wrong))
                {
                    out.push((
                        *l,
                        format!("`KeyManager \"disk\"`: `{wrong}` → `{right}` (the {mine}'s disk key manager takes `{right}`)"),
                    ));
                }
            }
            _ => {}
        }
    };
    for b in &root.blocks {
        if canonical_kind(&b.ident).is_some() {
            out.push((
                b.line,
                format!("`{} \"…\"` belongs inside `plugins {{ … }}`", b.ident),
            ));
            continue;
        }
        if b.ident == "plugins" {
            for p in &b.body.blocks {
                plugin(p, &mut out);
            }
        }
    }
    out
}

/// Settings of SPIRE's full configuration files that ironpact does not implement, each with
/// the reason and what to do instead: (where, key, reason). `where` is `server`, `agent`,
/// `top` (the file's top level), `plugins` (a plugin kind) or `DataStore` (its plugin_data).
const UNSUPPORTED: &[(Side, &str, &str, &str)] = &[
    (
        Side::Server,
        "server",
        "admin_ids",
        "the admin API is the server's local socket (owner and group); there are no admin SVIDs: remove it",
    ),
    (
        Side::Server,
        "server",
        "audit_log_enabled",
        "no separate audit log: admin API changes are logged at INFO; remove it",
    ),
    (
        Side::Server,
        "server",
        "jwt_issuer",
        "JWT-SVIDs carry no iss claim in ironpact yet: remove it",
    ),
    (
        Side::Server,
        "server",
        "ratelimit",
        "attestations are limited by a fixed concurrency per server; nothing to tune: remove it",
    ),
    (
        Side::Server,
        "server",
        "experimental",
        "ironpact has no experimental settings: remove the block",
    ),
    (
        Side::Server,
        "server",
        "profiling_enabled",
        "no profiling endpoint: remove the profiling_* keys",
    ),
    (
        Side::Server,
        "server",
        "profiling_port",
        "no profiling endpoint: remove the profiling_* keys",
    ),
    (
        Side::Server,
        "server",
        "profiling_freq",
        "no profiling endpoint: remove the profiling_* keys",
    ),
    (
        Side::Server,
        "server",
        "profiling_names",
        "no profiling endpoint: remove the profiling_* keys",
    ),
    (
        Side::Server,
        "server",
        "use_legacy_downstream_x509_ca_ttl",
        "ironpact signs no downstream CAs: remove it",
    ),
    (
        Side::Server,
        "server",
        "exclude_sn_from_ca_subject",
        "ironpact's CA subject is ca_subject as written: remove it",
    ),
    (
        Side::Server,
        "server",
        "default_svid_ttl",
        "SPIRE's old name: use default_x509_svid_ttl",
    ),
    (
        Side::Server,
        "server",
        "registration_uds_path",
        "SPIRE's old name: use socket_path",
    ),
    (
        Side::Server,
        "server",
        "bind_http_port",
        "there is no HTTP registration API: remove it",
    ),
    (
        Side::Server,
        "server",
        "plugin_dir",
        "plugins are built in: remove it",
    ),
    (
        Side::Server,
        "server",
        "umask",
        "the server makes its files private itself: remove it",
    ),
    (
        Side::Server,
        "server",
        "upstream_bundle",
        "ironpact's CA is its own root: remove it",
    ),
    (
        Side::Server,
        "plugins",
        "UpstreamAuthority",
        "only UpstreamAuthority \"disk\" is built in (an operator CA from files): use it, or remove the block",
    ),
    (
        Side::Server,
        "plugins",
        "Notifier",
        "no notifier plugins: remove the block",
    ),
    (
        Side::Server,
        "plugins",
        "BundlePublisher",
        "no bundle publishers: remove the block (the bundle is `bundle show`)",
    ),
    (
        Side::Server,
        "plugins",
        "CredentialComposer",
        "SVID contents are fixed by the SPIFFE profiles: remove the block",
    ),
    (
        Side::Server,
        "DataStore",
        "max_open_conns",
        "the connection pool is sized by ironpact: remove it",
    ),
    (
        Side::Server,
        "DataStore",
        "max_idle_conns",
        "the connection pool is sized by ironpact: remove it",
    ),
    (
        Side::Server,
        "DataStore",
        "conn_max_lifetime",
        "the connection pool is sized by ironpact: remove it",
    ),
    (
        Side::Server,
        "DataStore",
        "disable_migration",
        "each server migrates the schema at start-up in a transaction (PostgreSQL: under an advisory lock): remove it",
    ),
    (
        Side::Server,
        "DataStore",
        "log_sql",
        "SQL is not logged: remove it",
    ),
    (
        Side::Server,
        "DataStore",
        "root_ca_path",
        "TLS to MySQL comes from connection_string's parameters: remove it",
    ),
    (
        Side::Server,
        "DataStore",
        "client_cert_path",
        "TLS to MySQL comes from connection_string's parameters: remove it",
    ),
    (
        Side::Server,
        "DataStore",
        "client_key_path",
        "TLS to MySQL comes from connection_string's parameters: remove it",
    ),
    (
        Side::Agent,
        "agent",
        "allow_unauthenticated_verifiers",
        "JWT validation needs a registered workload: remove it",
    ),
    (
        Side::Agent,
        "agent",
        "allowed_foreign_jwt_claims",
        "JWT-SVIDs carry the standard claims only: remove it",
    ),
    (
        Side::Agent,
        "agent",
        "authorized_delegates",
        "no Delegated Identity API: remove it",
    ),
    (
        Side::Agent,
        "agent",
        "experimental",
        "ironpact has no experimental settings: remove the block",
    ),
    (
        Side::Agent,
        "agent",
        "workload_x509_svid_key_type",
        "workload keys are EC P-256: remove it",
    ),
    (
        Side::Agent,
        "agent",
        "availability_target",
        "SVIDs are renewed at half their life: remove it",
    ),
    (
        Side::Agent,
        "agent",
        "x509_svid_cache_max_size",
        "the agent keeps one SVID per entry it serves: remove it",
    ),
    (
        Side::Agent,
        "agent",
        "jwt_svid_cache_max_size",
        "the JWT-SVID cache has a fixed bound: remove it",
    ),
    (
        Side::Agent,
        "agent",
        "sync_interval",
        "entries are pushed by the server as they change; there is no interval: remove it",
    ),
    (
        Side::Agent,
        "agent",
        "retry_bootstrap",
        "the agent always retries attestation with a backoff: remove it",
    ),
    (
        Side::Agent,
        "agent",
        "profiling_enabled",
        "no profiling endpoint: remove the profiling_* keys",
    ),
    (
        Side::Agent,
        "agent",
        "profiling_port",
        "no profiling endpoint: remove the profiling_* keys",
    ),
    (
        Side::Agent,
        "agent",
        "profiling_freq",
        "no profiling endpoint: remove the profiling_* keys",
    ),
    (
        Side::Agent,
        "agent",
        "profiling_names",
        "no profiling endpoint: remove the profiling_* keys",
    ),
    (
        Side::Agent,
        "agent",
        "plugin_dir",
        "plugins are built in: remove it",
    ),
    (
        Side::Agent,
        "agent",
        "umask",
        "the agent makes its files private itself: remove it",
    ),
    (
        Side::Agent,
        "agent",
        "bind_address",
        "the Workload API is a Unix socket (socket_path): remove it",
    ),
    (
        Side::Agent,
        "agent",
        "bind_port",
        "the Workload API is a Unix socket (socket_path): remove it",
    ),
    (
        Side::Agent,
        "plugins",
        "SVIDStore",
        "no SVID stores: remove the block",
    ),
];

/// Why ironpact does not implement SPIRE's `key` of the `server`/`agent` block, and what to
/// do instead (for the command-line flags that set the same thing).
pub fn unsupported_reason(side: Side, key: &str) -> Option<&'static str> {
    UNSUPPORTED
        .iter()
        .find(|r| r.0 == side && (r.1 == "server" || r.1 == "agent") && r.2 == key)
        .map(|r| r.3)
}

/// Every setting of SPIRE's that ironpact does not implement, in one pass: (line, "key:
/// reason"). A file that sets none gives nothing.
pub fn spire_unsupported(root: &Node, side: Side) -> Vec<(usize, String)> {
    let rows = UNSUPPORTED.iter().filter(|r| r.0 == side);
    let mut out = Vec::new();
    let attr_line = |n: &Node, key: &str| {
        n.attrs
            .iter()
            .find(|(k, _, _)| k == key)
            .map(|(_, _, l)| *l)
            .or_else(|| n.blocks.iter().find(|b| b.ident == key).map(|b| b.line))
    };
    let mine = match side {
        Side::Server => "server",
        Side::Agent => "agent",
    };
    for (_, place, key, why) in rows {
        let found: Vec<(usize, String)> = match *place {
            "top" => attr_line(root, key)
                .map(|l| (l, (*key).to_string()))
                .into_iter()
                .collect(),
            "plugins" => root
                .blocks
                .iter()
                .filter(|b| b.ident == "plugins")
                .flat_map(|p| p.body.blocks.iter())
                .filter(|b| b.ident == *key)
                .filter(|b| {
                    !(b.ident == "UpstreamAuthority"
                        && b.labels.first().is_some_and(|l| l == "disk"))
                })
                .map(|b| (b.line, format!("{key} \"{}\"", b.labels.join("\" \""))))
                .collect(),
            "DataStore" => root
                .blocks
                .iter()
                .filter(|b| b.ident == "plugins")
                .flat_map(|p| p.body.blocks.iter())
                .filter(|b| b.ident == "DataStore")
                .flat_map(|d| d.body.blocks.iter().filter(|b| b.ident == "plugin_data"))
                .filter_map(|d| attr_line(&d.body, key))
                .map(|l| (l, format!("DataStore {key}")))
                .collect(),
            _ => root
                .blocks
                .iter()
                .filter(|b| b.ident == mine)
                .filter_map(|b| attr_line(&b.body, key))
                .map(|l| (l, format!("{mine}.{key}")))
                .collect(),
        };
        for (l, what) in found {
            out.push((l, format!("{what}: {why}")));
        }
    }
    out.sort_by_key(|(l, _)| *l);
    out
}

/// Everything [`spire_style_changes`] and [`spire_unsupported`] find in a file, as one error
/// listing each change with its line (`None` when there is nothing to change).
pub fn spire_problems(
    file: &str,
    root: &Node,
    side: Side,
    node_attestors: &[&str],
) -> Option<ConfigError> {
    let mut all = spire_style_changes(root, side, node_attestors);
    all.extend(spire_unsupported(root, side));
    all.sort_by_key(|(l, _)| *l);
    problems_error(file, &all)
}

/// Every problem of a configuration file, for `validate`: `check` (the whole reading of the
/// file) runs, and each time it fails, the attribute or block its error points at is cut out
/// of the text and it runs again, until it passes or nothing more can be cut. Each problem is
/// reported once with its own line. It stops early, rather than report what the cuts caused,
/// at a syntax error (the file cannot be read past it), at an error with no line, and at a
/// "required"/"missing" error after a cut (it may be the cut's doing): `complete` says whether
/// the list is known to be all.
pub fn all_problems<T>(
    file: &str,
    text: &str,
    mut check: impl FnMut(&str) -> Result<T, ConfigError>,
) -> (Vec<ConfigError>, bool) {
    if let Err(e) = parse(file, text) {
        return (vec![e], false);
    }
    let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
    let mut found: Vec<ConfigError> = Vec::new();
    let mut cut_ranges: Vec<(usize, usize)> = Vec::new();
    let mut complete = true;
    for _ in 0..64 {
        let e = match check(&lines.join("\n")) {
            Ok(_) => return (found, complete),
            Err(e) => e,
        };
        let msg = e.message.to_ascii_lowercase();
        // unreadable after a cut, or an error with no line (a whole block is missing): the
        // cuts may have caused it, and nothing points at what to cut next
        if !cut_ranges.is_empty() && (e.line == 0 || parse(file, &lines.join("\n")).is_err()) {
            return (found, false);
        }
        // an error about a block that encloses something cut, or that says something required
        // is gone, may be the cut's doing: not reported; the block is cut too (what else is
        // wrong inside it shows on the next run)
        let encloses_cut = item_range(&lines, e.line)
            .is_some_and(|(first, last)| cut_ranges.iter().any(|(a, b)| *a > first && *b <= last));
        if !cut_ranges.is_empty()
            && (encloses_cut || msg.contains("required") || msg.contains("missing"))
        {
            complete = false;
            if e.line > 0
                && let Some(r) = cut_item(&mut lines, e.line)
            {
                cut_ranges.push(r);
                continue;
            }
            return (found, false);
        }
        // the lines it names: SPIRE-style lists name several ("line N: …; line M: …")
        let mut at: Vec<usize> = e
            .message
            .match_indices("line ")
            .filter_map(|(i, _)| {
                let rest = &e.message[i + 5..];
                let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
                rest[digits.len()..]
                    .starts_with(':')
                    .then(|| digits.parse().ok())?
            })
            .collect();
        if at.is_empty() && e.line > 0 {
            at.push(e.line);
        }
        found.push(e);
        at.sort_unstable();
        at.dedup();
        let mut cut = false;
        for l in at.into_iter().rev() {
            if let Some(r) = cut_item(&mut lines, l) {
                cut_ranges.push(r);
                cut = true;
            }
        }
        if !cut {
            return (found, false);
        }
    }
    (found, false)
}

/// The lines (0-based, inclusive) of the item that starts on 1-based `line`: the line
/// itself, and on to the line that closes what it opens (`{`, `[`, `(`) when it spans several.
fn item_range(lines: &[String], line: usize) -> Option<(usize, usize)> {
    let first = line.checked_sub(1).filter(|i| *i < lines.len())?;
    if lines[first].trim().is_empty() {
        return None;
    }
    let mut depth = 0i64;
    let mut last = first;
    for (i, l) in lines.iter().enumerate().skip(first) {
        let mut in_str = false;
        let mut esc = false;
        for c in l.chars() {
            match c {
                _ if esc => esc = false,
                '\\' if in_str => esc = true,
                '"' => in_str = !in_str,
                '#' if !in_str => break,
                '{' | '[' | '(' if !in_str => depth += 1,
                '}' | ']' | ')' if !in_str => depth -= 1,
                _ => {}
            }
        }
        last = i;
        if depth <= 0 {
            break;
        }
    }
    Some((first, last))
}

/// Blanks the item that starts on 1-based `line` (see [`item_range`]); lines are blanked, not
/// removed, so that every other line keeps its number. The range blanked, if any.
fn cut_item(lines: &mut [String], line: usize) -> Option<(usize, usize)> {
    let (first, last) = item_range(lines, line)?;
    for l in &mut lines[first..=last] {
        l.clear();
    }
    Some((first, last))
}

fn problems_error(file: &str, found: &[(usize, String)]) -> Option<ConfigError> {
    let first = found.first()?.0;
    let list: Vec<String> = found
        .iter()
        .map(|(l, c)| format!("line {l}: {c}"))
        .collect();
    Some(ConfigError {
        file: file.to_string(),
        line: first,
        message: format!(
            "{} change{} needed (written for SPIRE; each with what ironpact reads instead): {}",
            found.len(),
            if found.len() == 1 { "" } else { "s" },
            list.join("; ")
        ),
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn telemetry_as_spire_writes_it() {
        let read = |t: &str| {
            let root = parse("f", t)?;
            let top = Section::new("f", "", &root);
            telemetry(&top)
        };
        assert_eq!(read("").unwrap(), None);
        assert_eq!(
            read("telemetry {\n  Prometheus {\n    port = 9988\n  }\n  InMem {\n    enabled = false\n  }\n}\n")
                .unwrap()
                .unwrap()
                .addr,
            "127.0.0.1:9988".parse().unwrap()
        );
        assert_eq!(
            read(
                "telemetry {\n  Prometheus {\n    host = \"0.0.0.0\"\n    port = \"9100\"\n  }\n}\n"
            )
            .unwrap()
            .unwrap()
            .addr,
            "0.0.0.0:9100".parse().unwrap()
        );
        let e = read(
            "telemetry {\n  Prometheus {\n    host = \"metrics.local\"\n    port = 1\n  }\n}\n",
        )
        .unwrap_err();
        assert!(e.message.contains("not an IP address"), "{e}");
        let e = read("telemetry {\n  Prometheus {}\n}\n").unwrap_err();
        assert!(e.message.contains("port is required"), "{e}");
        let e = read("telemetry {\n  Prometheus {\n    port = 1\n  }\n  DogStatsd = [{ address = \"localhost:8125\" }]\n}\n").unwrap_err();
        assert_eq!(e.line, 5, "{e}");
        assert!(e.message.contains("only the Prometheus sink"), "{e}");
    }

    /// `validate` lists every independent problem once, each at its own line, and stops
    /// before what its own cuts would cause.
    #[test]
    fn all_problems_are_listed_once_each() {
        let text = "server {\n  trust_domain = \"example.org\"\n  bad_one = 1\n  nested {\n    x = 1\n  }\n  port = \"eighty\"\n}\n";
        let check = |t: &str| -> Result<(), ConfigError> {
            let root = parse("f", t)?;
            let top = Section::new("f", "", &root);
            let s = top
                .section("server")?
                .ok_or_else(|| top.err(0, "missing server"))?;
            top.finish()?;
            s.string("trust_domain")?
                .ok_or_else(|| s.err(1, "trust_domain is required"))?;
            let _ = s.u16("port")?;
            s.finish()
        };
        let (found, complete) = all_problems("f", text, check);
        let lines: Vec<usize> = found.iter().map(|e| e.line).collect();
        assert_eq!(lines, vec![7, 3, 4], "{found:?}");
        assert!(complete);
        // a cut that takes away something required ends the list, unreported
        let text = "server {\n  trust_domain = 5\n  bad = 1\n}\n";
        let (found, complete) = all_problems("f", text, check);
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(!complete);
        // a syntax error is the only problem reported
        let (found, _) = all_problems("f", "server {\n a = \n}", check);
        assert_eq!(found.len(), 1);
        // an error about the block that held a cut item ("needs …") is the cut's doing
        let check = |t: &str| -> Result<(), ConfigError> {
            let root = parse("f", t)?;
            let top = Section::new("f", "", &root);
            let b = top.section("b")?.ok_or_else(|| top.err(0, "no b"))?;
            match b.string("x")? {
                Some((v, l)) if v != "ok" => return Err(b.err(l, "x is bad")),
                Some(_) => {}
                None => return Err(b.err(1, "b needs x")),
            }
            top.finish()
        };
        let (found, complete) = all_problems("f", "b {\n  x = \"bad\"\n}\nextra = 1\n", check);
        let msgs: Vec<&str> = found.iter().map(|e| e.message.as_str()).collect();
        assert_eq!(msgs, vec!["x is bad"], "{found:?}");
        assert!(!complete);
    }

    /// SPIRE's plugin_data_file: the file's HCL is the plugin's data; not both; a missing
    /// file or bad HCL in it is named.
    #[test]
    fn plugin_data_file_is_the_plugins_data() {
        let dir = std::env::temp_dir().join(format!("pdf-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let data = dir.join("data.hcl");
        std::fs::write(&data, "directory = \"/var/keys\"\nnested {\n  x = 1\n}\n").unwrap();
        let conf = format!(
            "plugins {{\n  KeyManager \"disk\" {{\n    plugin_data_file = \"{}\"\n  }}\n}}\n",
            data.display()
        );
        let root = parse("f", &conf).unwrap();
        let km = &root.blocks[0].body.blocks[0];
        let pd = km
            .body
            .blocks
            .iter()
            .find(|b| b.ident == "plugin_data")
            .unwrap();
        assert_eq!(pd.line, 3);
        assert!(matches!(&pd.body.attrs[0].1, Value::Str(s) if s == "/var/keys"));
        assert!(km.body.attrs.is_empty());
        let both = conf.replace("plugin_data_file", "plugin_data {}\n    plugin_data_file");
        assert!(
            parse("f", &both)
                .unwrap_err()
                .message
                .contains("exclude each other")
        );
        let missing = conf.replace("data.hcl", "nope.hcl");
        let e = parse("f", &missing).unwrap_err();
        assert!(e.line == 3 && e.message.contains("nope.hcl"), "{e}");
        std::fs::write(&data, "directory = \n").unwrap();
        assert!(
            parse("f", &conf)
                .unwrap_err()
                .message
                .contains("plugin_data_file")
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// SPIRE's one-line nested blocks read as HCL 1 reads them, with the original lines.
    #[test]
    fn one_line_blocks_read_with_their_lines() {
        let text = "# a comment { with braces }\nplugins { NodeAttestor \"unix\" { plugin_data { a = \"x{y}\" } } }\nserver {\n  b = 1\n}\n";
        let n = parse("f", text).unwrap();
        let plugins = &n.blocks[0];
        assert_eq!((plugins.ident.as_str(), plugins.line), ("plugins", 2));
        let na = &plugins.body.blocks[0];
        assert_eq!(na.labels, vec!["unix".to_string()]);
        assert_eq!(na.line, 2);
        let pd = &na.body.blocks[0];
        let (k, v, l) = &pd.body.attrs[0];
        assert_eq!((k.as_str(), *l), ("a", 2));
        assert!(matches!(v, Value::Str(s) if s == "x{y}"));
        assert_eq!(n.blocks[1].body.attrs[0].2, 4);
    }

    /// Two attributes on one line stay an error, in words, with the line's text.
    #[test]
    fn syntax_errors_say_what_to_write() {
        let e = parse("f", "server {\n  a = 1 b = 2\n}\n").unwrap_err();
        assert_eq!(e.line, 2, "{e}");
        assert!(e.message.contains("`a = 1 b = 2`"), "{e}");
        let e = parse("f", "server { a = 1 b = 2 }\n").unwrap_err();
        assert!(e.message.contains("one attribute at most"), "{e}");
        // a heredoc is never rewritten
        assert!(relax("a = <<EOF\n{\nEOF\n").is_none());
        // `/*/` opens a comment and does not close it
        let n = parse(
            "f",
            "server { a = 1 }\n/*/ \" {\nb = \"x\" # }\n*/\nagent { c = 2 }\n",
        )
        .unwrap();
        assert_eq!(n.blocks.len(), 2);
        assert!(n.blocks[0].body.attrs.iter().all(|(k, _, _)| k != "b"));
        assert_eq!(n.blocks[1].line, 5);
    }

    /// The config the SPIRE articles write takes one run to fix: every change in one message.
    #[test]
    fn spire_style_changes_are_listed_at_once() {
        let text = "agent {\n  trust_domain = \"example.org\"\n  join_token = \"t\"\n}\nplugins {\n  node_attestor \"unix\" {\n    plugin_data {}\n  }\n  key_manager \"disk\" {\n    plugin_data {\n      keys_path = \"/k\"\n    }\n  }\n  workload_attestor \"unix\" {\n    plugin_data {}\n  }\n}\n";
        let n = parse("f", text).unwrap();
        let c = spire_style_changes(&n, Side::Agent, &["join_token", "sev_snp"]);
        let all: Vec<&str> = c.iter().map(|(_, m)| m.as_str()).collect();
        assert_eq!(c.len(), 5, "{all:?}");
        assert!(all[0].contains("`node_attestor` → `NodeAttestor`"));
        assert!(all[1].contains("unix is a workload attestor"));
        assert!(all[2].contains("`key_manager` → `KeyManager`"));
        assert!(all[3].contains("`keys_path` → `directory`"));
        assert!(all[4].contains("`workload_attestor` → `WorkloadAttestor`"));
        let e = problems_error("f", &c).unwrap();
        assert_eq!(e.line, 6);
        assert!(e.message.starts_with("5 changes needed"), "{e}");
        // ironpact's own form: nothing to change
        let ok = parse(
            "f",
            "agent {\n}\nplugins {\n  NodeAttestor \"join_token\" {\n    plugin_data {}\n  }\n}\n",
        )
        .unwrap();
        assert!(spire_style_changes(&ok, Side::Agent, &["join_token"]).is_empty());
        // a server config given to the agent
        let srv = parse("f", "server {\n}\n").unwrap();
        assert!(
            spire_style_changes(&srv, Side::Agent, &[])[0]
                .1
                .contains("ironpact-server")
        );
    }
}
