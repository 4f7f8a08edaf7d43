//! Row predicates over JSON documents: `tenant == 'acme' && region != 'eu'`.
//!
//! Grammar (whitespace between tokens is free):
//!
//! ```text
//! expr    := or
//! or      := and (("||" | "or") and)*
//! and     := unary (("&&" | "and") unary)*
//! unary   := ("!" | "not") unary | "(" expr ")" | test
//! test    := path (("==" | "!=" | "<" | "<=" | ">" | ">=") literal
//!                 | "in" list | "not" "in" list)?
//! path    := segment ("." segment)*          segment := [A-Za-z_][A-Za-z0-9_]* | [0-9]+
//! list    := "[" (literal ("," literal)*)? "]"
//! literal := 'text' | "text" | number | true | false | null
//! ```
//!
//! A bare path is true when the field holds `true`. A field the document lacks is `null`:
//! `region != 'eu'` holds for a document without `region`. Numbers compare as numbers
//! (`1 == 1.0`), strings by bytes; `<` and friends between different types are false.
//! Parsing happens once, at slot creation; evaluation walks the parsed document by
//! borrowed keys and allocates nothing.

use serde_json::Value;

use crate::error::LogicalError;

/// The longest predicate accepted, in bytes.
pub const MAX_PREDICATE_LEN: usize = 4096;
/// The deepest nesting of parentheses and `!` accepted.
pub const MAX_DEPTH: usize = 64;

/// A compiled row predicate.
#[derive(Debug, Clone, PartialEq)]
pub struct Predicate {
    source: String,
    root: Node,
}

#[derive(Debug, Clone, PartialEq)]
enum Node {
    Or(Vec<Node>),
    And(Vec<Node>),
    Not(Box<Node>),
    Compare { path: Vec<Segment>, op: CmpOp, literal: Literal },
    In { path: Vec<Segment>, list: Vec<Literal> },
    Truthy(Vec<Segment>),
}

#[derive(Debug, Clone, PartialEq)]
enum Segment {
    Field(String),
    /// A numeric segment: an array index, or a field named by digits in an object.
    Index(usize, String),
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum CmpOp {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
}

#[derive(Debug, Clone, PartialEq)]
enum Literal {
    Str(String),
    Num(f64),
    Bool(bool),
    Null,
}

impl Predicate {
    /// Parses `source`; a predicate that does not parse is refused with the column of the
    /// problem.
    pub fn parse(source: &str) -> Result<Predicate, LogicalError> {
        let mut parser = Parser { src: source, pos: 0, depth: 0 };
        if source.len() > MAX_PREDICATE_LEN {
            return Err(parser.error(0, format!("longer than {MAX_PREDICATE_LEN} bytes")));
        }
        parser.skip_ws();
        if parser.pos == source.len() {
            return Err(parser.error(0, "empty predicate".into()));
        }
        let root = parser.or()?;
        parser.skip_ws();
        if parser.pos < source.len() {
            return Err(parser.error(parser.pos, "unexpected text after the predicate".into()));
        }
        Ok(Predicate { source: source.to_string(), root })
    }

    /// The predicate as written.
    #[must_use]
    pub fn source(&self) -> &str {
        &self.source
    }

    /// Whether `doc` satisfies the predicate.
    #[must_use]
    pub fn eval(&self, doc: &Value) -> bool {
        eval(&self.root, doc)
    }
}

impl std::fmt::Display for Predicate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.source)
    }
}

fn lookup<'a>(doc: &'a Value, path: &[Segment]) -> Option<&'a Value> {
    let mut at = doc;
    for segment in path {
        at = match (segment, at) {
            (Segment::Field(name) | Segment::Index(_, name), Value::Object(map)) => map.get(name.as_str())?,
            (Segment::Index(i, _), Value::Array(items)) => items.get(*i)?,
            _ => return None,
        };
    }
    Some(at)
}

fn equal(value: Option<&Value>, literal: &Literal) -> bool {
    match (value, literal) {
        (None | Some(Value::Null), Literal::Null) => true,
        (Some(Value::String(s)), Literal::Str(l)) => s == l,
        (Some(Value::Bool(b)), Literal::Bool(l)) => b == l,
        (Some(Value::Number(n)), Literal::Num(l)) => n.as_f64().is_some_and(|n| n.total_cmp(l).is_eq()),
        _ => false,
    }
}

fn order(value: Option<&Value>, literal: &Literal) -> Option<std::cmp::Ordering> {
    match (value?, literal) {
        (Value::String(s), Literal::Str(l)) => Some(s.as_str().cmp(l.as_str())),
        (Value::Number(n), Literal::Num(l)) => n.as_f64()?.partial_cmp(l),
        _ => None,
    }
}

fn eval(node: &Node, doc: &Value) -> bool {
    match node {
        Node::Or(parts) => parts.iter().any(|p| eval(p, doc)),
        Node::And(parts) => parts.iter().all(|p| eval(p, doc)),
        Node::Not(inner) => !eval(inner, doc),
        Node::Truthy(path) => matches!(lookup(doc, path), Some(Value::Bool(true))),
        Node::In { path, list } => {
            let value = lookup(doc, path);
            list.iter().any(|l| equal(value, l))
        }
        Node::Compare { path, op, literal } => {
            let value = lookup(doc, path);
            match op {
                CmpOp::Eq => equal(value, literal),
                CmpOp::Ne => !equal(value, literal),
                CmpOp::Lt => order(value, literal).is_some_and(std::cmp::Ordering::is_lt),
                CmpOp::Le => order(value, literal).is_some_and(std::cmp::Ordering::is_le),
                CmpOp::Gt => order(value, literal).is_some_and(std::cmp::Ordering::is_gt),
                CmpOp::Ge => order(value, literal).is_some_and(std::cmp::Ordering::is_ge),
            }
        }
    }
}

struct Parser<'a> {
    src: &'a str,
    pos: usize,
    depth: usize,
}

impl<'a> Parser<'a> {
    fn error(&self, at: usize, message: String) -> LogicalError {
        let column = self.src.get(..at).map_or(at, |s| s.chars().count()) + 1;
        LogicalError::Predicate { predicate: self.src.to_string(), column, message }
    }

    fn rest(&self) -> &'a str {
        &self.src[self.pos..]
    }

    fn skip_ws(&mut self) {
        let trimmed = self.rest().trim_start();
        self.pos = self.src.len() - trimmed.len();
    }

    /// Consumes `symbol` (after whitespace) if it is next.
    fn eat(&mut self, symbol: &str) -> bool {
        self.skip_ws();
        if self.rest().starts_with(symbol) {
            self.pos += symbol.len();
            true
        } else {
            false
        }
    }

    /// Consumes the keyword `word` if it is next as a whole word.
    fn eat_word(&mut self, word: &str) -> bool {
        self.skip_ws();
        let rest = self.rest();
        // `get`, not indexing: the text after the keyword's length may start mid-character.
        let (Some(head), Some(tail)) = (rest.get(..word.len()), rest.get(word.len()..)) else {
            return false;
        };
        let boundary = tail.chars().next().is_none_or(|c| !(c.is_ascii_alphanumeric() || c == '_'));
        if head.eq_ignore_ascii_case(word) && boundary {
            self.pos += word.len();
            true
        } else {
            false
        }
    }

    fn or(&mut self) -> Result<Node, LogicalError> {
        let mut parts = vec![self.and()?];
        while self.eat("||") || self.eat_word("or") {
            parts.push(self.and()?);
        }
        Ok(if parts.len() == 1 { parts.pop().expect("one part") } else { Node::Or(parts) })
    }

    fn and(&mut self) -> Result<Node, LogicalError> {
        let mut parts = vec![self.unary()?];
        while self.eat("&&") || self.eat_word("and") {
            parts.push(self.unary()?);
        }
        Ok(if parts.len() == 1 { parts.pop().expect("one part") } else { Node::And(parts) })
    }

    fn nest(&mut self) -> Result<(), LogicalError> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err(self.error(self.pos, format!("nested deeper than {MAX_DEPTH}")));
        }
        Ok(())
    }

    fn unary(&mut self) -> Result<Node, LogicalError> {
        self.skip_ws();
        if !self.rest().starts_with("!=") && self.eat("!") || self.eat_word("not") {
            self.nest()?;
            let inner = self.unary()?;
            self.depth -= 1;
            return Ok(Node::Not(Box::new(inner)));
        }
        if self.eat("(") {
            self.nest()?;
            let inner = self.or()?;
            if !self.eat(")") {
                return Err(self.error(self.pos, "expected `)`".into()));
            }
            self.depth -= 1;
            return Ok(inner);
        }
        self.test()
    }

    fn test(&mut self) -> Result<Node, LogicalError> {
        let path = self.path()?;
        self.skip_ws();
        let op = [
            ("==", CmpOp::Eq),
            ("!=", CmpOp::Ne),
            ("<=", CmpOp::Le),
            (">=", CmpOp::Ge),
            ("<", CmpOp::Lt),
            (">", CmpOp::Gt),
        ]
        .into_iter()
        .find(|(symbol, _)| self.rest().starts_with(symbol));
        if let Some((symbol, op)) = op {
            self.pos += symbol.len();
            let literal = self.literal()?;
            return Ok(Node::Compare { path, op, literal });
        }
        if self.eat_word("in") {
            return Ok(Node::In { path, list: self.list()? });
        }
        let before_not = self.pos;
        if self.eat_word("not") {
            if self.eat_word("in") {
                return Ok(Node::Not(Box::new(Node::In { path, list: self.list()? })));
            }
            self.pos = before_not;
        }
        if self.rest().starts_with('=') {
            return Err(self.error(self.pos, "`=` is not an operator; use `==`".into()));
        }
        Ok(Node::Truthy(path))
    }

    fn path(&mut self) -> Result<Vec<Segment>, LogicalError> {
        let mut path = Vec::new();
        loop {
            self.skip_ws();
            let start = self.pos;
            let rest = self.rest();
            let len = rest.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(rest.len());
            let word = &rest[..len];
            if word.is_empty() {
                let what = if path.is_empty() { "a field name" } else { "a field name after `.`" };
                return Err(self.error(start, format!("expected {what}")));
            }
            self.pos += len;
            if word.bytes().all(|b| b.is_ascii_digit()) {
                let index = word.parse().map_err(|_| self.error(start, "index too large".into()))?;
                path.push(Segment::Index(index, word.to_string()));
            } else if word.as_bytes()[0].is_ascii_digit() {
                return Err(self.error(start, format!("field name {word:?} starts with a digit")));
            } else {
                path.push(Segment::Field(word.to_string()));
            }
            if !self.rest().starts_with('.') {
                return Ok(path);
            }
            self.pos += 1;
        }
    }

    fn list(&mut self) -> Result<Vec<Literal>, LogicalError> {
        if !self.eat("[") {
            return Err(self.error(self.pos, "expected `[` to start a list".into()));
        }
        let mut items = Vec::new();
        if self.eat("]") {
            return Ok(items);
        }
        loop {
            items.push(self.literal()?);
            if self.eat("]") {
                return Ok(items);
            }
            if !self.eat(",") {
                return Err(self.error(self.pos, "expected `,` or `]`".into()));
            }
        }
    }

    fn literal(&mut self) -> Result<Literal, LogicalError> {
        self.skip_ws();
        let start = self.pos;
        let rest = self.rest();
        let Some(first) = rest.chars().next() else {
            return Err(self.error(start, "expected a value".into()));
        };
        if first == '\'' || first == '"' {
            let mut text = String::new();
            let mut chars = rest.char_indices().skip(1);
            while let Some((i, c)) = chars.next() {
                match c {
                    '\\' => match chars.next() {
                        Some((_, e @ ('\\' | '\'' | '"'))) => text.push(e),
                        Some((_, 'n')) => text.push('\n'),
                        Some((_, 't')) => text.push('\t'),
                        _ => return Err(self.error(start + i, "unknown escape".into())),
                    },
                    c if c == first => {
                        self.pos += i + 1;
                        return Ok(Literal::Str(text));
                    }
                    c => text.push(c),
                }
            }
            return Err(self.error(start, "unterminated string".into()));
        }
        for (word, literal) in
            [("true", Literal::Bool(true)), ("false", Literal::Bool(false)), ("null", Literal::Null)]
        {
            if self.eat_word(word) {
                return Ok(literal);
            }
        }
        let len = rest
            .find(|c: char| !(c.is_ascii_digit() || matches!(c, '-' | '+' | '.' | 'e' | 'E')))
            .unwrap_or(rest.len());
        match rest[..len].parse::<f64>() {
            Ok(n) if len > 0 && n.is_finite() => {
                self.pos += len;
                Ok(Literal::Num(n))
            }
            _ => Err(self.error(start, "expected a string, number, true, false or null".into())),
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn holds(predicate: &str, doc: &Value) -> bool {
        Predicate::parse(predicate).unwrap().eval(doc)
    }

    #[test]
    fn comparisons_logic_lists_and_nested_fields_mean_what_they_say() {
        let acme_us = json!({"tenant": "acme", "region": "us", "n": 3, "vip": true,
            "addr": {"city": "Oslo", "zip": ["0150", "0151"]}});
        let acme_eu = json!({"tenant": "acme", "region": "eu", "n": 3.0});
        let bare = json!({"tenant": "globex"});
        let p = "tenant == 'acme' && region != 'eu'";
        assert!(holds(p, &acme_us));
        assert!(!holds(p, &acme_eu));
        assert!(!holds(p, &bare));
        assert!(holds("region != 'eu'", &bare), "a missing field is null, not 'eu'");
        assert!(holds("region == null", &bare));
        assert!(holds("n == 3 and n == 3.0", &acme_eu), "numbers compare as numbers");
        assert!(holds("n >= 3 && n < 4 && !(n > 3) && n <= 3", &acme_us));
        assert!(!holds("tenant > 3", &acme_us), "ordering across types is false");
        assert!(holds("tenant in ['globex', \"initech\"]", &bare));
        assert!(holds("region not in ['eu', 'apac']", &acme_us));
        assert!(!holds("region in []", &acme_us));
        assert!(holds("addr.city == 'Oslo' && addr.zip.1 == '0151'", &acme_us));
        assert!(!holds("addr.zip.9 == '0151' || addr.city.x == 1", &acme_us));
        assert!(holds("vip", &acme_us));
        assert!(holds("NOT vip", &acme_eu));
        assert!(holds("tenant == 'acme' && (region == 'eu' || vip) || tenant == 'globex'", &bare));
        assert!(holds("tenant == 'it\\'s'", &json!({"tenant": "it's"})));
        assert!(!holds("tenant == 'acme'", &json!("not an object")));
    }

    #[test]
    fn bad_predicates_are_refused_with_the_column_of_the_problem() {
        for (text, column, fragment) in [
            ("", 1, "empty"),
            ("tenant = 'acme'", 8, "use `==`"),
            ("tenant == ", 11, "expected a value"),
            ("tenant == 'acme", 11, "unterminated"),
            ("tenant == 'acme' &&", 20, "expected a field name"),
            ("(tenant == 'a'", 15, "expected `)`"),
            ("tenant in ('a')", 11, "expected `[`"),
            ("tenant in ['a' 'b']", 16, "expected `,` or `]`"),
            ("a. == 1", 4, "after `.`"),
            ("1abc == 2", 1, "starts with a digit"),
            ("tenant == 'x' garbage", 15, "unexpected text"),
            ("tenant == 'ünï' )", 17, "unexpected text"),
        ] {
            let err = Predicate::parse(text).unwrap_err();
            let LogicalError::Predicate { column: got, ref message, .. } = err else { panic!("{err:?}") };
            assert_eq!(got, column, "{text:?}: {err}");
            assert!(message.contains(fragment), "{text:?}: {err}");
        }
        let deep = format!("{}a{}", "(".repeat(MAX_DEPTH + 1), ")".repeat(MAX_DEPTH + 1));
        assert!(Predicate::parse(&deep).unwrap_err().to_string().contains("nested deeper"));
        // Found by the fuzzer: a keyword test against text with a multi-byte character
        // at the keyword's length.
        assert!(Predicate::parse("((ten\u{fffd}nt = (='").is_err());
        assert!(Predicate::parse("a == 1 an\u{e9}").is_err());
        let bangs = format!("{}a", "!".repeat(100_000));
        assert!(Predicate::parse(&bangs).is_err(), "long input is refused before any recursion");
    }
}
