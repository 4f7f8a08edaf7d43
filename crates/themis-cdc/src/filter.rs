//! Subscription filters: a set of ops and a set of collection patterns, compiled once.
//!
//! A pattern is an exact collection name or a glob: `*` (any run of characters), `?`
//! (one character), `[abc]`, `[a-z]`, `[!abc]` (a character class), `{acme,globex}`
//! (alternatives, not nested) and `\` (the next character literally). Exact names go into
//! a hash set and every glob into one [`regex::RegexSet`], so matching an event costs one
//! hash lookup and one automaton run however many names a filter lists.

use std::collections::HashSet;
use std::fmt::Write as _;

use regex::RegexSet;

use crate::error::CdcError;
use crate::event::{ChangeEvent, ChangeOp};

/// What a subscription receives.
#[derive(Debug, Clone)]
pub struct Filter {
    /// A bit per [`ChangeOp`] (see [`ChangeOp::bit`]).
    ops: u8,
    /// `None`: every collection.
    collections: Option<Collections>,
    /// The patterns as given, for display.
    patterns: Vec<String>,
}

#[derive(Debug, Clone)]
struct Collections {
    exact: HashSet<String>,
    globs: RegexSet,
}

impl Default for Filter {
    fn default() -> Filter {
        Filter::all()
    }
}

impl Filter {
    /// Every change of every collection.
    #[must_use]
    pub fn all() -> Filter {
        Filter { ops: u8::MAX, collections: None, patterns: Vec::new() }
    }

    /// Changes whose op is one of `ops` (all when empty) in a collection matching one of
    /// `patterns` (all when empty). A pattern that does not parse is refused, naming it
    /// and the position of the problem.
    pub fn new<S: AsRef<str>>(ops: &[ChangeOp], patterns: &[S]) -> Result<Filter, CdcError> {
        let ops = if ops.is_empty() { u8::MAX } else { ops.iter().fold(0, |bits, op| bits | op.bit()) };
        if patterns.is_empty() {
            return Ok(Filter { ops, collections: None, patterns: Vec::new() });
        }
        let mut exact = HashSet::new();
        let mut globs = Vec::new();
        for pattern in patterns {
            let pattern = pattern.as_ref();
            match compile(pattern)? {
                Compiled::Exact(name) => {
                    exact.insert(name);
                }
                Compiled::Glob(regex) => globs.push(regex),
            }
        }
        let globs =
            RegexSet::new(&globs).map_err(|e| CdcError::Config(format!("collection patterns: {e}")))?;
        Ok(Filter {
            ops,
            collections: Some(Collections { exact, globs }),
            patterns: patterns.iter().map(|p| p.as_ref().to_string()).collect(),
        })
    }

    /// Parses the textual form used by URLs, the CLI and configs: `ops` is a
    /// comma-separated list of op names, `collections` a comma-separated list of
    /// patterns (commas inside `{...}` belong to the pattern). Empty means all.
    pub fn parse(ops: &str, collections: &str) -> Result<Filter, CdcError> {
        let ops: Vec<ChangeOp> = split_list(ops).into_iter().map(str::parse).collect::<Result<_, _>>()?;
        Filter::new(&ops, &split_list(collections))
    }

    /// Whether `event` passes. Heartbeats always pass; DDL events, which belong to no
    /// collection, pass when the ops include `ddl`.
    #[must_use]
    pub fn matches(&self, event: &ChangeEvent) -> bool {
        match event.op {
            ChangeOp::Heartbeat => true,
            ChangeOp::Ddl => self.wants(ChangeOp::Ddl),
            op => self.wants(op) && self.matches_collection(&event.collection),
        }
    }

    /// Whether the op set includes `op`.
    #[must_use]
    pub fn wants(&self, op: ChangeOp) -> bool {
        self.ops & op.bit() != 0
    }

    /// Whether `collection` matches the patterns.
    #[must_use]
    pub fn matches_collection(&self, collection: &str) -> bool {
        match &self.collections {
            None => true,
            Some(c) => c.exact.contains(collection) || c.globs.is_match(collection),
        }
    }

    /// The patterns as given (empty: every collection).
    #[must_use]
    pub fn patterns(&self) -> &[String] {
        &self.patterns
    }

    /// The ops it passes.
    #[must_use]
    pub fn ops(&self) -> Vec<ChangeOp> {
        ChangeOp::ALL.into_iter().filter(|op| self.wants(*op)).collect()
    }
}

/// Splits a comma-separated list, keeping commas inside `{...}` and after `\`; trims
/// spaces and drops empty items.
#[must_use]
pub fn split_list(list: &str) -> Vec<&str> {
    let mut items = Vec::new();
    let (mut depth, mut start, mut escaped) = (0usize, 0usize, false);
    for (i, c) in list.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' => escaped = true,
            '{' => depth += 1,
            '}' => depth = depth.saturating_sub(1),
            ',' if depth == 0 => {
                items.push(&list[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    items.push(&list[start..]);
    items.into_iter().map(str::trim).filter(|s| !s.is_empty()).collect()
}

enum Compiled {
    Exact(String),
    Glob(String),
}

/// Compiles one pattern: an exact name, or a glob as an anchored regex.
fn compile(pattern: &str) -> Result<Compiled, CdcError> {
    let fail = |position: usize, reason: &'static str| CdcError::Pattern {
        pattern: pattern.to_string(),
        position,
        reason,
    };
    if pattern.is_empty() {
        return Err(fail(0, "empty pattern"));
    }
    let mut regex = String::from("^(?s:");
    let mut literal = String::new();
    let mut glob = false;
    let mut brace: Option<usize> = None;
    let mut chars = pattern.chars().enumerate().peekable();
    while let Some((at, c)) = chars.next() {
        match c {
            '\\' => {
                let Some((_, next)) = chars.next() else {
                    return Err(fail(at, "a trailing backslash escapes nothing"));
                };
                literal.push(next);
                regex.push_str(&regex::escape(&next.to_string()));
            }
            '*' => {
                glob = true;
                regex.push_str(".*");
            }
            '?' => {
                glob = true;
                regex.push('.');
            }
            '{' => {
                if brace.is_some() {
                    return Err(fail(at, "nested '{'"));
                }
                glob = true;
                brace = Some(at);
                regex.push_str("(?:");
            }
            ',' if brace.is_some() => regex.push('|'),
            '}' => {
                if brace.take().is_none() {
                    return Err(fail(at, "'}' without a '{'"));
                }
                regex.push(')');
            }
            '[' => {
                glob = true;
                regex.push('[');
                let mut first = true;
                let mut closed = false;
                while let Some((inner_at, inner)) = chars.next() {
                    match inner {
                        '!' | '^' if first => regex.push('^'),
                        ']' if !first => {
                            closed = true;
                            break;
                        }
                        '-' if !first && chars.peek().is_some_and(|(_, n)| *n != ']') => regex.push('-'),
                        '\\' => {
                            let Some((_, next)) = chars.next() else {
                                return Err(fail(inner_at, "a trailing backslash escapes nothing"));
                            };
                            let _ = write!(regex, "\\x{{{:x}}}", next as u32);
                        }
                        other => {
                            let _ = write!(regex, "\\x{{{:x}}}", other as u32);
                        }
                    }
                    first = false;
                }
                if !closed {
                    return Err(fail(at, "'[' without a ']'"));
                }
                regex.push(']');
            }
            ']' => return Err(fail(at, "']' without a '['")),
            other => {
                literal.push(other);
                regex.push_str(&regex::escape(&other.to_string()));
            }
        }
    }
    if let Some(at) = brace {
        return Err(fail(at, "'{' without a '}'"));
    }
    if !glob {
        return Ok(Compiled::Exact(literal));
    }
    regex.push_str(")$");
    // Every class was built from escaped characters, so the regex crate can only refuse a
    // range whose ends are out of order; report it at the pattern.
    regex::Regex::new(&regex).map_err(|_| fail(0, "a character range is out of order"))?;
    Ok(Compiled::Glob(regex))
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use themis_clock::Timestamp;

    fn event(op: ChangeOp, collection: &str) -> ChangeEvent {
        ChangeEvent {
            op,
            collection: collection.into(),
            key: Bytes::from_static(b"k"),
            before: None,
            after: None,
            lsn: 1,
            index: 0,
            hlc: Timestamp::ZERO,
            origin: themis_clock::NodeId(1),
            txn: 0,
            ddl: None,
            stamp: None,
            entry_end: true,
        }
    }

    #[test]
    fn exact_names_globs_classes_and_tenant_patterns_match_what_they_say() {
        let f =
            Filter::parse("", "users, orders_*, tenant_{acme,globex}.*, log_[0-9][!x], a?c, lit\\*").unwrap();
        for yes in [
            "users",
            "orders_",
            "orders_2026",
            "tenant_acme.orders",
            "tenant_globex.x",
            "log_1y",
            "abc",
            "lit*",
        ] {
            assert!(f.matches_collection(yes), "{yes}");
        }
        for no in
            ["user", "usersx", "order", "tenant_initech.x", "tenant_acme", "log_1x", "log_ay", "ac", "litx"]
        {
            assert!(!f.matches_collection(no), "{no}");
        }
        assert_eq!(f.patterns().len(), 6);
    }

    #[test]
    fn ops_select_events_and_heartbeats_and_ddl_ignore_collections() {
        let f = Filter::parse("insert,delete", "orders_*").unwrap();
        assert!(f.matches(&event(ChangeOp::Insert, "orders_1")));
        assert!(!f.matches(&event(ChangeOp::Update, "orders_1")));
        assert!(!f.matches(&event(ChangeOp::Insert, "users")));
        assert!(f.matches(&event(ChangeOp::Heartbeat, "")));
        assert!(!f.matches(&event(ChangeOp::Ddl, "")));
        assert!(Filter::parse("ddl", "orders_*").unwrap().matches(&event(ChangeOp::Ddl, "")));
        assert_eq!(f.ops(), [ChangeOp::Insert, ChangeOp::Delete]);
        assert!(Filter::all().matches(&event(ChangeOp::Update, "anything")));
    }

    #[test]
    fn bad_patterns_and_ops_are_refused_naming_them_and_the_position() {
        let cases = [
            ("tenant_{acme", 7, "'{' without a '}'"),
            ("a}b", 1, "'}' without a '{'"),
            ("x{a,{b}}", 4, "nested '{'"),
            ("log_[0-9", 4, "'[' without a ']'"),
            ("a]", 1, "']' without a '['"),
            ("end\\", 3, "a trailing backslash escapes nothing"),
            ("r[z-a]", 0, "a character range is out of order"),
        ];
        for (pattern, position, reason) in cases {
            let err = Filter::new(&[], &[pattern]).unwrap_err();
            assert_eq!(
                err,
                CdcError::Pattern { pattern: pattern.to_string(), position, reason },
                "{pattern}"
            );
            let text = err.to_string();
            assert!(text.contains(pattern) && text.contains(&format!("position {position}")), "{text}");
        }
        assert_eq!(
            Filter::new(&[], &[""]).unwrap_err(),
            CdcError::Pattern { pattern: String::new(), position: 0, reason: "empty pattern" }
        );
        let err = Filter::parse("insert,upsert", "").unwrap_err();
        assert_eq!(err, CdcError::UnknownOp("upsert".into()));
    }

    #[test]
    fn lists_split_on_commas_outside_braces() {
        assert_eq!(split_list(" a, b_{x,y}.* ,,c\\,d"), ["a", "b_{x,y}.*", "c\\,d"]);
        assert!(split_list("").is_empty());
    }

    #[test]
    fn thousands_of_exact_names_still_match_by_lookup() {
        let names: Vec<String> = (0..5000).map(|i| format!("c{i}")).collect();
        let f = Filter::new(&[], &names).unwrap();
        assert!(f.matches_collection("c4999") && !f.matches_collection("c5000"));
    }
}
