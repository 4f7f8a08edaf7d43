//! The document store's DDL statements and the schema catalog slots stamp changes with.
//!
//! ```text
//! CREATE COLLECTION <name>
//! DROP COLLECTION <name>
//! ALTER COLLECTION <name> SET SCHEMA VERSION <n>
//! ```
//!
//! Keywords are case-insensitive; `<name>` is a bare word without whitespace or quotes,
//! or a JSON string (`"order lines"`). [`DdlStatement::to_string`] writes the canonical
//! form, which parses back to the same statement.

use std::collections::{BTreeMap, VecDeque};
use std::fmt;

use serde::{Deserialize, Serialize};
use themis_wal::Lsn;

use crate::error::LogicalError;

/// A parsed DDL statement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DdlStatement {
    /// Creates a collection (schema version 1).
    CreateCollection(String),
    /// Drops a collection and every document in it.
    DropCollection(String),
    /// Records a new schema version for a collection.
    SetSchemaVersion(String, u64),
}

impl DdlStatement {
    /// Parses a statement; the error names the statement and what is wrong.
    pub fn parse(statement: &str) -> Result<DdlStatement, LogicalError> {
        let bad = |message: &str| LogicalError::Ddl {
            statement: statement.to_string(),
            message: message.to_string(),
        };
        let text = statement.trim();
        let (verb, rest) = split_word(text);
        let (noun, rest) = split_word(rest);
        if !noun.eq_ignore_ascii_case("collection") {
            return Err(bad("expected CREATE, DROP or ALTER COLLECTION"));
        }
        let (name, rest) = take_name(rest).map_err(bad)?;
        let words: Vec<&str> = rest.split_whitespace().collect();
        let upper = |w: &str| w.to_ascii_uppercase();
        match (upper(verb).as_str(), words.as_slice()) {
            ("CREATE", []) => Ok(DdlStatement::CreateCollection(name)),
            ("DROP", []) => Ok(DdlStatement::DropCollection(name)),
            ("ALTER", [set, schema, version, n])
                if upper(set) == "SET" && upper(schema) == "SCHEMA" && upper(version) == "VERSION" =>
            {
                let n: u64 = n.parse().map_err(|_| bad("the schema version must be a whole number"))?;
                if n == 0 {
                    return Err(bad("schema versions start at 1"));
                }
                Ok(DdlStatement::SetSchemaVersion(name, n))
            }
            ("CREATE" | "DROP", _) => Err(bad("unexpected text after the collection name")),
            ("ALTER", _) => Err(bad("expected SET SCHEMA VERSION <n> after the collection name")),
            _ => Err(bad("expected CREATE, DROP or ALTER COLLECTION")),
        }
    }

    /// The collection the statement names.
    #[must_use]
    pub fn collection(&self) -> &str {
        match self {
            DdlStatement::CreateCollection(c)
            | DdlStatement::DropCollection(c)
            | DdlStatement::SetSchemaVersion(c, _) => c,
        }
    }

    /// The schema version the collection has after the statement (0 once dropped).
    #[must_use]
    pub fn schema_version(&self) -> u64 {
        match self {
            DdlStatement::CreateCollection(_) => 1,
            DdlStatement::DropCollection(_) => 0,
            DdlStatement::SetSchemaVersion(_, v) => *v,
        }
    }
}

fn split_word(text: &str) -> (&str, &str) {
    let text = text.trim_start();
    let end = text.find(char::is_whitespace).unwrap_or(text.len());
    (&text[..end], &text[end..])
}

fn take_name(text: &str) -> Result<(String, &str), &'static str> {
    let text = text.trim_start();
    if text.starts_with('"') {
        let mut stream = serde_json::Deserializer::from_str(text).into_iter::<String>();
        let Some(Ok(name)) = stream.next() else {
            return Err("the quoted collection name does not parse as a JSON string");
        };
        let used = stream.byte_offset();
        return if name.is_empty() { Err("the collection name is empty") } else { Ok((name, &text[used..])) };
    }
    let (word, rest) = split_word(text);
    if word.is_empty() {
        return Err("the collection name is missing");
    }
    if word.contains(['"', '\'']) {
        return Err("quote a collection name as a JSON string");
    }
    Ok((word.to_string(), rest))
}

fn write_name(f: &mut fmt::Formatter<'_>, name: &str) -> fmt::Result {
    if name.is_empty() || name.contains(|c: char| c.is_whitespace() || c == '"' || c == '\'') {
        write!(f, "{}", serde_json::Value::String(name.to_string()))
    } else {
        f.write_str(name)
    }
}

impl fmt::Display for DdlStatement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DdlStatement::CreateCollection(c) => {
                f.write_str("CREATE COLLECTION ")?;
                write_name(f, c)
            }
            DdlStatement::DropCollection(c) => {
                f.write_str("DROP COLLECTION ")?;
                write_name(f, c)
            }
            DdlStatement::SetSchemaVersion(c, v) => {
                f.write_str("ALTER COLLECTION ")?;
                write_name(f, c)?;
                write!(f, " SET SCHEMA VERSION {v}")
            }
        }
    }
}

/// A DDL change the catalog recorded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DdlRecord {
    /// The statement.
    pub statement: String,
    /// The collection it names (empty when it names none).
    pub collection: String,
    /// The schema version it set.
    pub schema_version: u64,
    /// Its LSN.
    pub lsn: Lsn,
}

/// How many recorded DDL changes the catalog keeps for its history.
pub const DDL_HISTORY: usize = 1000;

/// Schema versions by collection over LSNs, so a change read from old log is stamped with
/// the version its collection had then.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Catalog {
    /// Per collection: `(lsn, schema_version)` in LSN order.
    versions: BTreeMap<String, Vec<(Lsn, u64)>>,
    /// The latest changes, oldest first, at most [`DDL_HISTORY`].
    history: VecDeque<DdlRecord>,
}

impl Catalog {
    /// Records a change; the same change recorded twice (a replay) is kept once.
    pub(crate) fn record(&mut self, record: DdlRecord) -> bool {
        if self.history.iter().any(|r| r.lsn == record.lsn && r.statement == record.statement) {
            return false;
        }
        if !record.collection.is_empty() {
            let versions = self.versions.entry(record.collection.clone()).or_default();
            let at = versions.partition_point(|(lsn, _)| *lsn <= record.lsn);
            versions.insert(at, (record.lsn, record.schema_version));
        }
        self.history.push_back(record);
        if self.history.len() > DDL_HISTORY {
            self.history.pop_front();
        }
        true
    }

    /// The schema version `collection` had at `lsn` (0: none recorded).
    #[must_use]
    pub fn version_at(&self, collection: &str, lsn: Lsn) -> u64 {
        self.versions.get(collection).map_or(0, |versions| {
            let at = versions.partition_point(|(l, _)| *l <= lsn);
            if at == 0 { 0 } else { versions[at - 1].1 }
        })
    }

    /// The recorded changes, oldest first.
    pub fn history(&self) -> impl Iterator<Item = &DdlRecord> {
        self.history.iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statements_parse_print_and_round_trip() {
        for (text, statement) in [
            ("CREATE COLLECTION orders", DdlStatement::CreateCollection("orders".into())),
            ("  drop collection  orders ", DdlStatement::DropCollection("orders".into())),
            (
                "ALTER COLLECTION orders SET SCHEMA VERSION 3",
                DdlStatement::SetSchemaVersion("orders".into(), 3),
            ),
            ("create collection \"order lines\"", DdlStatement::CreateCollection("order lines".into())),
        ] {
            let parsed = DdlStatement::parse(text).unwrap();
            assert_eq!(parsed, statement, "{text}");
            assert_eq!(DdlStatement::parse(&parsed.to_string()).unwrap(), statement);
        }
        assert_eq!(
            DdlStatement::CreateCollection("order lines".into()).to_string(),
            "CREATE COLLECTION \"order lines\""
        );
        for (text, fragment) in [
            ("CREATE TABLE t", "expected CREATE"),
            ("CREATE COLLECTION", "missing"),
            ("CREATE COLLECTION a b", "unexpected text"),
            ("ALTER COLLECTION a SET SCHEMA VERSION x", "whole number"),
            ("ALTER COLLECTION a SET SCHEMA VERSION 0", "start at 1"),
            ("ALTER COLLECTION a RENAME TO b", "SET SCHEMA VERSION"),
            ("TRUNCATE COLLECTION a", "expected CREATE"),
            ("CREATE COLLECTION \"a", "JSON string"),
            ("CREATE COLLECTION o'neil", "quote"),
        ] {
            let err = DdlStatement::parse(text).unwrap_err().to_string();
            assert!(err.contains(fragment), "{text}: {err}");
        }
    }

    #[test]
    fn the_catalog_answers_the_version_a_collection_had_at_an_lsn() {
        let mut catalog = Catalog::default();
        let rec = |statement: &str, lsn| {
            let s = DdlStatement::parse(statement).unwrap();
            DdlRecord {
                statement: statement.into(),
                collection: s.collection().into(),
                schema_version: s.schema_version(),
                lsn,
            }
        };
        assert!(catalog.record(rec("CREATE COLLECTION a", 5)));
        assert!(catalog.record(rec("ALTER COLLECTION a SET SCHEMA VERSION 2", 9)));
        assert!(!catalog.record(rec("ALTER COLLECTION a SET SCHEMA VERSION 2", 9)), "a replay is kept once");
        assert_eq!([4, 5, 8, 9, 100].map(|lsn| catalog.version_at("a", lsn)), [0, 1, 1, 2, 2]);
        assert_eq!(catalog.version_at("b", 100), 0);
        assert_eq!(catalog.history().count(), 2);
    }
}
