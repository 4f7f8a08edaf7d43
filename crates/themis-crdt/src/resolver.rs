//! Conflict resolution between two versions of one key, chosen per collection, with every
//! conflict recorded in the [`AuditLog`].

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use themis_clock::{NodeId, Timestamp};

use crate::audit::{AuditLog, AuditSink, ConflictRecord, LostValue, Outcome};
use crate::error::CrdtError;
use crate::{Crdt, GCounter, LwwRegister, MvRegister, OrSet, PnCounter};

/// One version of a key's value: its bytes, HLC timestamp and origin node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Version {
    /// The value's bytes (for CRDT collections, the postcard encoding of the CRDT state).
    pub value: Vec<u8>,
    /// When it was written.
    pub timestamp: Timestamp,
    /// The node where it was written.
    pub origin: NodeId,
}

/// What to store after a conflict.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resolution {
    /// Store this version (one of the two, or a merge of both).
    Keep(Version),
    /// Store both, ordered by timestamp, and let the reader choose (Riak's siblings).
    Siblings(Vec<Version>),
}

/// The CRDT types a collection's values can be declared as, with their value encodings
/// (postcard of the named type).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CrdtKind {
    /// [`GCounter`].
    GCounter,
    /// [`PnCounter`].
    PnCounter,
    /// [`OrSet<String>`].
    OrSet,
    /// [`MvRegister<Vec<u8>>`].
    MvRegister,
    /// [`LwwRegister<Vec<u8>>`].
    LwwRegister,
}

impl CrdtKind {
    const ALL: [(&'static str, CrdtKind); 5] = [
        ("g_counter", CrdtKind::GCounter),
        ("pn_counter", CrdtKind::PnCounter),
        ("or_set", CrdtKind::OrSet),
        ("mv_register", CrdtKind::MvRegister),
        ("lww_register", CrdtKind::LwwRegister),
    ];

    /// The configuration name.
    #[must_use]
    pub fn name(self) -> &'static str {
        Self::ALL.iter().find(|(_, k)| *k == self).map_or("?", |(n, _)| n)
    }

    fn parse(name: &str) -> Option<Self> {
        Self::ALL.iter().find(|(n, _)| *n == name).map(|(_, k)| *k)
    }

    /// Decodes both values as this type, merges them, and encodes the result.
    fn merge(self, local: &[u8], remote: &[u8]) -> Result<Vec<u8>, (&'static str, String)> {
        fn go<C: Crdt + Serialize + for<'de> Deserialize<'de>>(
            local: &[u8],
            remote: &[u8],
        ) -> Result<Vec<u8>, (&'static str, String)> {
            let mut merged: C = postcard::from_bytes(local).map_err(|e| ("local", e.to_string()))?;
            let other: C = postcard::from_bytes(remote).map_err(|e| ("remote", e.to_string()))?;
            merged.merge(&other).map_err(|e| ("merged", e.to_string()))?;
            postcard::to_stdvec(&merged).map_err(|e| ("merged", e.to_string()))
        }
        match self {
            CrdtKind::GCounter => go::<GCounter>(local, remote),
            CrdtKind::PnCounter => go::<PnCounter>(local, remote),
            CrdtKind::OrSet => go::<OrSet<String>>(local, remote),
            CrdtKind::MvRegister => go::<MvRegister<Vec<u8>>>(local, remote),
            CrdtKind::LwwRegister => go::<LwwRegister<Vec<u8>>>(local, remote),
        }
    }
}

/// How a collection resolves conflicts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Strategy {
    /// The greater HLC timestamp wins (node id breaks ties).
    LastWriterWins,
    /// The smaller HLC timestamp wins.
    FirstWriterWins,
    /// Both values are CRDT states of this type and are merged.
    Crdt(CrdtKind),
    /// Both versions are kept as siblings.
    KeepBoth,
    /// A registered [`CustomResolver`], by name.
    Custom(String),
}

impl Strategy {
    fn name(&self) -> String {
        match self {
            Strategy::LastWriterWins => "last_writer_wins".into(),
            Strategy::FirstWriterWins => "first_writer_wins".into(),
            Strategy::Crdt(kind) => format!("crdt:{}", kind.name()),
            Strategy::KeepBoth => "keep_both".into(),
            Strategy::Custom(name) => format!("custom:{name}"),
        }
    }
}

/// Application-defined resolution.
pub trait CustomResolver: Send + Sync + fmt::Debug {
    /// Resolves a conflict on `collection`/`key`, or says why it cannot.
    fn resolve(
        &self,
        collection: &str,
        key: &[u8],
        local: &Version,
        remote: &Version,
    ) -> Result<Resolution, String>;
}

/// Resolver configuration, as it appears in a node's TOML.
///
/// ```toml
/// audit_capacity = 10000
/// [default]
/// strategy = "last_writer_wins"
/// [collections.likes]
/// strategy = "crdt"
/// crdt_type = "pn_counter"
/// [collections.carts]
/// strategy = "custom"
/// resolver = "cart_union"
/// ```
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ResolverConfig {
    /// The strategy for collections without their own entry.
    pub default: StrategyConfig,
    /// Per-collection strategies.
    #[serde(default)]
    pub collections: BTreeMap<String, StrategyConfig>,
    /// Conflict records kept in memory.
    #[serde(default = "default_audit_capacity")]
    pub audit_capacity: usize,
}

fn default_audit_capacity() -> usize {
    10_000
}

/// One strategy entry of [`ResolverConfig`].
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct StrategyConfig {
    /// `last_writer_wins`, `first_writer_wins`, `crdt`, `keep_both` or `custom`.
    pub strategy: String,
    /// With `crdt`: `g_counter`, `pn_counter`, `or_set`, `mv_register` or `lww_register`.
    pub crdt_type: Option<String>,
    /// With `custom`: the registered resolver's name.
    pub resolver: Option<String>,
}

impl StrategyConfig {
    fn validate(
        &self,
        place: &str,
        customs: &HashMap<String, Arc<dyn CustomResolver>>,
    ) -> Result<Strategy, CrdtError> {
        let fail = |msg: String| Err(CrdtError::Config(format!("{place}: {msg}")));
        if self.crdt_type.is_some() && self.strategy != "crdt" {
            return fail(format!("crdt_type is set but strategy is {:?}, not \"crdt\"", self.strategy));
        }
        if self.resolver.is_some() && self.strategy != "custom" {
            return fail(format!("resolver is set but strategy is {:?}, not \"custom\"", self.strategy));
        }
        match self.strategy.as_str() {
            "last_writer_wins" => Ok(Strategy::LastWriterWins),
            "first_writer_wins" => Ok(Strategy::FirstWriterWins),
            "keep_both" => Ok(Strategy::KeepBoth),
            "crdt" => match self.crdt_type.as_deref() {
                None => fail("strategy \"crdt\" needs crdt_type (g_counter, pn_counter, or_set, mv_register, lww_register)".into()),
                Some(name) => match CrdtKind::parse(name) {
                    Some(kind) => Ok(Strategy::Crdt(kind)),
                    None => fail(format!(
                        "unknown crdt_type {name:?} (expected g_counter, pn_counter, or_set, mv_register, lww_register)"
                    )),
                },
            },
            "custom" => match self.resolver.as_deref() {
                None => fail("strategy \"custom\" needs resolver".into()),
                Some(name) if customs.contains_key(name) => Ok(Strategy::Custom(name.into())),
                Some(name) => fail(format!("custom resolver {name:?} is not registered")),
            },
            other => fail(format!(
                "unknown strategy {other:?} (expected last_writer_wins, first_writer_wins, crdt, keep_both, custom)"
            )),
        }
    }
}

/// Resolves conflicting versions per collection and records each conflict.
///
/// ```
/// use themis_clock::{NodeId, Timestamp};
/// use themis_crdt::{AuditLog, ConflictResolver, Outcome, Resolution, Strategy, Version};
///
/// let resolver = ConflictResolver::new(Strategy::LastWriterWins, AuditLog::new(100, None));
/// let at = |ms, node| Timestamp::from_parts(ms, 0, NodeId(node)).unwrap();
/// let local = Version { value: b"old".to_vec(), timestamp: at(10, 1), origin: NodeId(1) };
/// let remote = Version { value: b"new".to_vec(), timestamp: at(20, 2), origin: NodeId(2) };
///
/// assert_eq!(resolver.resolve("docs", b"k", &local, &remote)?, Resolution::Keep(remote));
/// let record = &resolver.audit().recent()[0];
/// assert_eq!(record.outcome, Outcome::RemoteWon);
/// assert_eq!(record.lost, Some(themis_crdt::LostValue::Value(b"old".to_vec())));
/// # Ok::<(), themis_crdt::CrdtError>(())
/// ```
#[derive(Debug)]
pub struct ConflictResolver {
    default: Strategy,
    collections: HashMap<String, Strategy>,
    customs: HashMap<String, Arc<dyn CustomResolver>>,
    audit: AuditLog,
}

impl ConflictResolver {
    /// A resolver using `default` for every collection.
    #[must_use]
    pub fn new(default: Strategy, audit: AuditLog) -> Self {
        ConflictResolver { default, collections: HashMap::new(), customs: HashMap::new(), audit }
    }

    /// Builds a resolver from configuration, checking every entry. `customs` are the
    /// application's resolvers by name.
    pub fn from_config(
        config: &ResolverConfig,
        customs: impl IntoIterator<Item = (String, Arc<dyn CustomResolver>)>,
        sink: Option<Box<dyn AuditSink>>,
    ) -> Result<Self, CrdtError> {
        let customs: HashMap<_, _> = customs.into_iter().collect();
        let default = config.default.validate("default", &customs)?;
        let collections = config
            .collections
            .iter()
            .map(|(name, entry)| {
                Ok((name.clone(), entry.validate(&format!("collections.{name}"), &customs)?))
            })
            .collect::<Result<_, CrdtError>>()?;
        Ok(ConflictResolver {
            default,
            collections,
            customs,
            audit: AuditLog::new(config.audit_capacity, sink),
        })
    }

    /// Registers a custom resolver under `name`.
    #[must_use]
    pub fn with_custom(mut self, name: &str, resolver: Arc<dyn CustomResolver>) -> Self {
        self.customs.insert(name.into(), resolver);
        self
    }

    /// Sets the strategy of one collection. A custom strategy must be registered first.
    pub fn with_collection(mut self, collection: &str, strategy: Strategy) -> Result<Self, CrdtError> {
        if let Strategy::Custom(name) = &strategy
            && !self.customs.contains_key(name)
        {
            return Err(CrdtError::Config(format!(
                "collections.{collection}: custom resolver {name:?} is not registered"
            )));
        }
        self.collections.insert(collection.into(), strategy);
        Ok(self)
    }

    /// The strategy that applies to `collection`.
    #[must_use]
    pub fn strategy_for(&self, collection: &str) -> &Strategy {
        self.collections.get(collection).unwrap_or(&self.default)
    }

    /// The audit trail.
    #[must_use]
    pub fn audit(&self) -> &AuditLog {
        &self.audit
    }

    /// Resolves `local` against `remote` for `collection`/`key`. Two identical versions are
    /// not a conflict and leave no record; every other call records one before returning.
    pub fn resolve(
        &self,
        collection: &str,
        key: &[u8],
        local: &Version,
        remote: &Version,
    ) -> Result<Resolution, CrdtError> {
        if local == remote {
            return Ok(Resolution::Keep(local.clone()));
        }
        let strategy = self.strategy_for(collection);
        // Order by timestamp, then by bytes, so that every replica picks the same winner
        // even for two different values under one timestamp (which only corruption makes).
        let local_first = (local.timestamp, &local.value) < (remote.timestamp, &remote.value);
        let (older, newer) = if local_first { (local, remote) } else { (remote, local) };
        let resolution = match strategy {
            Strategy::LastWriterWins => Resolution::Keep(newer.clone()),
            Strategy::FirstWriterWins => Resolution::Keep(older.clone()),
            Strategy::KeepBoth => Resolution::Siblings(vec![older.clone(), newer.clone()]),
            Strategy::Crdt(kind) => {
                let value =
                    kind.merge(&local.value, &remote.value).map_err(|(side, reason)| CrdtError::Decode {
                        collection: collection.into(),
                        key: String::from_utf8_lossy(key).into_owned(),
                        side,
                        kind: kind.name(),
                        reason,
                    })?;
                Resolution::Keep(Version { value, timestamp: newer.timestamp, origin: newer.origin })
            }
            Strategy::Custom(name) => {
                // Registration is checked when the strategy is set, so the lookup holds.
                let custom = self.customs.get(name).ok_or_else(|| {
                    CrdtError::Config(format!("custom resolver {name:?} is not registered"))
                })?;
                custom.resolve(collection, key, local, remote).map_err(|reason| CrdtError::Custom {
                    collection: collection.into(),
                    resolver: name.clone(),
                    reason,
                })?
            }
        };
        let (outcome, lost) = match &resolution {
            Resolution::Keep(kept) if kept == local => {
                (Outcome::LocalWon, Some(LostValue::of(&remote.value)))
            }
            Resolution::Keep(kept) if kept == remote => {
                (Outcome::RemoteWon, Some(LostValue::of(&local.value)))
            }
            Resolution::Keep(_) => (Outcome::Merged, None),
            Resolution::Siblings(_) => (Outcome::Siblings, None),
        };
        let record = ConflictRecord {
            collection: collection.into(),
            key: key.to_vec(),
            local_timestamp: local.timestamp,
            remote_timestamp: remote.timestamp,
            local_origin: local.origin,
            remote_origin: remote.origin,
            strategy: strategy.name(),
            outcome,
            lost,
        };
        self.audit.append(record).map_err(|reason| CrdtError::Audit {
            collection: collection.into(),
            key: String::from_utf8_lossy(key).into_owned(),
            reason,
        })?;
        Ok(resolution)
    }
}
