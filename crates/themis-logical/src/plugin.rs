//! Output plugins: how a slot's changes are encoded for its consumer.
//!
//! - `json`: one JSON object per change, shaped like wal2json's format 2.
//! - `json-txn`: one JSON object per transaction (log entry) with its changes in
//!   `change`, like wal2json's format 1. Entries are bounded by the log's record size, so a
//!   large write never becomes one unbounded document.
//! - `protobuf`: one [`ChangeMessage`] per change (prost; the schema is [`PROTO_SCHEMA`]).
//! - `avro`: one datum of [`AVRO_SCHEMA`] per change, in the schema registry's framing:
//!   byte 0, the schema id as 4 bytes big-endian ([`AVRO_SCHEMA_ID`]), then the datum.
//!
//! Documents travel as JSON text in the binary formats (documents have no fixed schema).

use std::fmt;
use std::str::FromStr;
use std::sync::LazyLock;

use apache_avro::types::Value as AvroValue;
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use themis_cdc::ChangeOp;

use crate::change::LogicalChange;
use crate::error::LogicalError;

/// An output plugin.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum OutputPlugin {
    /// A JSON object per change.
    Json,
    /// A JSON object per transaction.
    JsonTxn,
    /// A Protobuf [`ChangeMessage`] per change.
    Protobuf,
    /// An Avro datum per change, schema-registry framed.
    Avro,
}

impl OutputPlugin {
    /// Every plugin.
    pub const ALL: [OutputPlugin; 4] =
        [OutputPlugin::Json, OutputPlugin::JsonTxn, OutputPlugin::Protobuf, OutputPlugin::Avro];

    /// Its name.
    #[must_use]
    pub const fn name(self) -> &'static str {
        match self {
            OutputPlugin::Json => "json",
            OutputPlugin::JsonTxn => "json-txn",
            OutputPlugin::Protobuf => "protobuf",
            OutputPlugin::Avro => "avro",
        }
    }

    /// Whether its records are JSON text.
    #[must_use]
    pub const fn is_json(self) -> bool {
        matches!(self, OutputPlugin::Json | OutputPlugin::JsonTxn)
    }

    /// Encodes changes as records: one per change, or for `json-txn` one per run of
    /// changes with the same LSN.
    pub fn encode(self, changes: &[LogicalChange]) -> Result<Vec<Bytes>, LogicalError> {
        match self {
            OutputPlugin::Json => Ok(changes.iter().map(|c| to_bytes(&JsonChange::of(c, true))).collect()),
            OutputPlugin::JsonTxn => Ok(changes
                .chunk_by(|a, b| a.lsn == b.lsn && a.op != ChangeOp::Snapshot)
                .map(json_txn)
                .collect()),
            OutputPlugin::Protobuf => Ok(changes
                .iter()
                .map(|c| Bytes::from(prost::Message::encode_to_vec(&ChangeMessage::of(c))))
                .collect()),
            OutputPlugin::Avro => changes.iter().map(avro_record).collect(),
        }
    }
}

impl fmt::Display for OutputPlugin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for OutputPlugin {
    type Err = LogicalError;

    fn from_str(s: &str) -> Result<OutputPlugin, LogicalError> {
        OutputPlugin::ALL
            .into_iter()
            .find(|p| p.name() == s)
            .ok_or_else(|| LogicalError::UnknownPlugin(s.to_string()))
    }
}

/// The action letter: `I`, `U`, `D`, `R` (a snapshot row, Debezium's read), `T` (DDL).
fn action(op: ChangeOp) -> &'static str {
    match op {
        ChangeOp::Insert => "I",
        ChangeOp::Update => "U",
        ChangeOp::Delete => "D",
        ChangeOp::Snapshot => "R",
        ChangeOp::Ddl | ChangeOp::Heartbeat => "T",
    }
}

/// The `json` plugin's object for one change, fields in this order.
#[derive(Serialize)]
struct JsonChange<'a> {
    action: &'static str,
    collection: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<&'a str>,
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    position: Option<Position>,
    schema_version: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    data: Option<&'a Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    before: Option<&'a Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    ddl: Option<Ddl<'a>>,
}

#[derive(Serialize)]
struct Position {
    lsn: u64,
    index: u32,
    hlc: String,
    ts_ms: u64,
    origin: u64,
    txn: u64,
}

#[derive(Serialize)]
struct Ddl<'a> {
    statement: &'a str,
    schema_version: u64,
}

#[derive(Serialize)]
struct JsonTxn<'a> {
    xid: u64,
    lsn: u64,
    hlc: String,
    ts_ms: u64,
    origin: u64,
    change: Vec<JsonChange<'a>>,
}

impl<'a> JsonChange<'a> {
    fn of(change: &'a LogicalChange, position: bool) -> JsonChange<'a> {
        JsonChange {
            action: action(change.op),
            collection: &change.collection,
            id: (change.op != ChangeOp::Ddl).then_some(change.key.as_str()),
            position: position.then(|| Position {
                lsn: change.lsn,
                index: change.index,
                hlc: change.hlc.to_string(),
                ts_ms: change.hlc.physical_ms(),
                origin: change.origin.0,
                txn: change.txn,
            }),
            schema_version: change.schema_version,
            data: change.after.as_ref(),
            before: change.before.as_ref(),
            ddl: change
                .ddl
                .as_ref()
                .map(|d| Ddl { statement: &d.statement, schema_version: d.schema_version }),
        }
    }
}

fn to_bytes<T: Serialize>(value: &T) -> Bytes {
    Bytes::from(serde_json::to_vec(value).expect("a change serializes"))
}

/// The `json` plugin's object for one change as a value; `position` adds LSN and HLC,
/// which `json-txn` gives once per transaction instead.
#[must_use]
pub fn json_change(change: &LogicalChange, position: bool) -> Value {
    serde_json::to_value(JsonChange::of(change, position)).expect("a change serializes")
}

fn json_txn(changes: &[LogicalChange]) -> Bytes {
    let first = &changes[0];
    to_bytes(&JsonTxn {
        xid: if first.txn == 0 { first.lsn } else { first.txn },
        lsn: first.lsn,
        hlc: first.hlc.to_string(),
        ts_ms: first.hlc.physical_ms(),
        origin: first.origin.0,
        change: changes.iter().map(|c| JsonChange::of(c, false)).collect(),
    })
}

/// The Protobuf message of one change ([`PROTO_SCHEMA`]).
#[derive(Clone, PartialEq, prost::Message)]
pub struct ChangeMessage {
    /// `I`, `U`, `D`, `R` or `T`, as the JSON plugin's `action`.
    #[prost(string, tag = "1")]
    pub action: String,
    /// The collection.
    #[prost(string, tag = "2")]
    pub collection: String,
    /// The document id.
    #[prost(string, tag = "3")]
    pub id: String,
    /// The entry's LSN.
    #[prost(uint64, tag = "4")]
    pub lsn: u64,
    /// The change's place in its entry.
    #[prost(uint32, tag = "5")]
    pub index: u32,
    /// The commit HLC as text (`physical.logical@node`).
    #[prost(string, tag = "6")]
    pub hlc: String,
    /// The commit time, ms since the Unix epoch.
    #[prost(uint64, tag = "7")]
    pub ts_ms: u64,
    /// The node where the change was made.
    #[prost(uint64, tag = "8")]
    pub origin: u64,
    /// The transaction (0: none).
    #[prost(uint64, tag = "9")]
    pub txn: u64,
    /// The collection's schema version.
    #[prost(uint64, tag = "10")]
    pub schema_version: u64,
    /// The document after the change, as JSON text.
    #[prost(string, optional, tag = "11")]
    pub data_json: Option<String>,
    /// The document before the change, as JSON text.
    #[prost(string, optional, tag = "12")]
    pub before_json: Option<String>,
    /// The DDL statement.
    #[prost(string, optional, tag = "13")]
    pub ddl_statement: Option<String>,
}

impl ChangeMessage {
    /// The message for a change.
    #[must_use]
    pub fn of(change: &LogicalChange) -> ChangeMessage {
        ChangeMessage {
            action: action(change.op).to_string(),
            collection: change.collection.clone(),
            id: change.key.clone(),
            lsn: change.lsn,
            index: change.index,
            hlc: change.hlc.to_string(),
            ts_ms: change.hlc.physical_ms(),
            origin: change.origin.0,
            txn: change.txn,
            schema_version: change.schema_version,
            data_json: change.after.as_ref().map(Value::to_string),
            before_json: change.before.as_ref().map(Value::to_string),
            ddl_statement: change.ddl.as_ref().map(|d| d.statement.clone()),
        }
    }
}

/// The `.proto` source of [`ChangeMessage`], served to consumers that generate code.
pub const PROTO_SCHEMA: &str = r#"syntax = "proto3";
package themis.logical.v1;

message ChangeMessage {
  string action = 1;          // I, U, D, R (snapshot row), T (DDL)
  string collection = 2;
  string id = 3;
  uint64 lsn = 4;
  uint32 index = 5;
  string hlc = 6;
  uint64 ts_ms = 7;
  uint64 origin = 8;
  uint64 txn = 9;
  uint64 schema_version = 10;
  optional string data_json = 11;
  optional string before_json = 12;
  optional string ddl_statement = 13;
}
"#;

/// The Avro schema of a change record.
pub const AVRO_SCHEMA: &str = r#"{
  "type": "record",
  "name": "ChangeRecord",
  "namespace": "io.themis.logical.v1",
  "fields": [
    {"name": "action", "type": "string"},
    {"name": "collection", "type": "string"},
    {"name": "id", "type": "string"},
    {"name": "lsn", "type": "long"},
    {"name": "index", "type": "int"},
    {"name": "hlc", "type": "string"},
    {"name": "ts_ms", "type": "long"},
    {"name": "origin", "type": "long"},
    {"name": "txn", "type": "long"},
    {"name": "schema_version", "type": "long"},
    {"name": "data_json", "type": ["null", "string"], "default": null},
    {"name": "before_json", "type": ["null", "string"], "default": null},
    {"name": "ddl_statement", "type": ["null", "string"], "default": null}
  ]
}"#;

/// The id [`AVRO_SCHEMA`] has in the schema-registry framing of each record (and at
/// `GET /v1/logical/schemas/ids/1` on a node).
pub const AVRO_SCHEMA_ID: u32 = 1;

/// The parsed [`AVRO_SCHEMA`].
#[must_use]
pub fn avro_schema() -> &'static apache_avro::Schema {
    static SCHEMA: LazyLock<apache_avro::Schema> =
        LazyLock::new(|| apache_avro::Schema::parse_str(AVRO_SCHEMA).expect("the Avro schema parses"));
    &SCHEMA
}

fn long(n: u64) -> AvroValue {
    // LSNs, transactions and node ids stay below 2^63; larger values are clamped rather
    // than wrapped to negative.
    AvroValue::Long(i64::try_from(n).unwrap_or(i64::MAX))
}

fn optional(text: Option<String>) -> AvroValue {
    match text {
        Some(s) => AvroValue::Union(1, Box::new(AvroValue::String(s))),
        None => AvroValue::Union(0, Box::new(AvroValue::Null)),
    }
}

fn avro_record(change: &LogicalChange) -> Result<Bytes, LogicalError> {
    let m = ChangeMessage::of(change);
    let record = AvroValue::Record(vec![
        ("action".into(), AvroValue::String(m.action)),
        ("collection".into(), AvroValue::String(m.collection)),
        ("id".into(), AvroValue::String(m.id)),
        ("lsn".into(), long(m.lsn)),
        ("index".into(), AvroValue::Int(i32::try_from(m.index).unwrap_or(i32::MAX))),
        ("hlc".into(), AvroValue::String(m.hlc)),
        ("ts_ms".into(), long(m.ts_ms)),
        ("origin".into(), long(m.origin)),
        ("txn".into(), long(m.txn)),
        ("schema_version".into(), long(m.schema_version)),
        ("data_json".into(), optional(m.data_json)),
        ("before_json".into(), optional(m.before_json)),
        ("ddl_statement".into(), optional(m.ddl_statement)),
    ]);
    let datum = apache_avro::writer::datum::GenericDatumWriter::builder(avro_schema())
        .build()
        .and_then(|writer| writer.write_value_to_vec(record))
        .map_err(|e| LogicalError::Encode { plugin: "avro", message: e.to_string() })?;
    let mut out = Vec::with_capacity(5 + datum.len());
    out.push(0);
    out.extend_from_slice(&AVRO_SCHEMA_ID.to_be_bytes());
    out.extend_from_slice(&datum);
    Ok(Bytes::from(out))
}
