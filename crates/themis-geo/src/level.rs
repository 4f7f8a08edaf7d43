//! The five read consistency levels, and what a read asks for.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::error::GeoError;
use crate::token::SessionToken;

/// The longest staleness bound a read may ask for: a day.
pub const MAX_STALENESS_MS: u64 = 86_400_000;

/// How fresh a read must be, weakest last (Cosmos DB's five levels).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ConsistencyLevel {
    /// Linearizable: sees every write acknowledged before the read began.
    Strong,
    /// Sees every write committed more than `max_staleness_ms` ago (or all but the last K
    /// versions).
    BoundedStaleness,
    /// Sees the session's own writes and never goes back in time within the session.
    Session,
    /// Sees a prefix of the log: never a write without the writes before it.
    ConsistentPrefix,
    /// Whatever the nearest replica has.
    Eventual,
}

impl ConsistencyLevel {
    /// Every level, strongest first.
    pub const ALL: [ConsistencyLevel; 5] = [
        ConsistencyLevel::Strong,
        ConsistencyLevel::BoundedStaleness,
        ConsistencyLevel::Session,
        ConsistencyLevel::ConsistentPrefix,
        ConsistencyLevel::Eventual,
    ];

    /// The level's name as the APIs spell it: `strong`, `bounded`, `session`, `prefix`,
    /// `eventual`.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            ConsistencyLevel::Strong => "strong",
            ConsistencyLevel::BoundedStaleness => "bounded",
            ConsistencyLevel::Session => "session",
            ConsistencyLevel::ConsistentPrefix => "prefix",
            ConsistencyLevel::Eventual => "eventual",
        }
    }

    /// Whether a replica other than the leader may answer without asking it.
    #[must_use]
    pub fn follower_readable(self) -> bool {
        self != ConsistencyLevel::Strong
    }
}

impl fmt::Display for ConsistencyLevel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for ConsistencyLevel {
    type Err = GeoError;

    /// Accepts the short names and the long ones (`bounded_staleness`,
    /// `consistent_prefix`), in any case, with `-` or `_`.
    fn from_str(s: &str) -> Result<Self, GeoError> {
        let level = match s.to_ascii_lowercase().replace('-', "_").as_str() {
            "strong" | "linearizable" => ConsistencyLevel::Strong,
            "bounded" | "bounded_staleness" => ConsistencyLevel::BoundedStaleness,
            "session" => ConsistencyLevel::Session,
            "prefix" | "consistent_prefix" => ConsistencyLevel::ConsistentPrefix,
            "eventual" => ConsistencyLevel::Eventual,
            _ => {
                return Err(GeoError::Unknown {
                    what: "consistency level",
                    given: s.chars().take(64).collect(),
                    expected: "strong, bounded, session, prefix, eventual",
                });
            }
        };
        Ok(level)
    }
}

/// A read's requirement: a level with what it needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReadConsistency {
    /// Linearizable.
    Strong,
    /// At most `max_staleness_ms` behind, and, when given, at most `max_versions` LSNs
    /// behind the leader's commit.
    BoundedStaleness {
        /// The time bound.
        max_staleness_ms: u64,
        /// The version bound (K), if any.
        max_versions: Option<u64>,
    },
    /// At least the session's token; `None` for a session's first read.
    Session(Option<SessionToken>),
    /// A log prefix.
    ConsistentPrefix,
    /// Anything.
    Eventual,
}

impl ReadConsistency {
    /// Its level.
    #[must_use]
    pub fn level(&self) -> ConsistencyLevel {
        match self {
            ReadConsistency::Strong => ConsistencyLevel::Strong,
            ReadConsistency::BoundedStaleness { .. } => ConsistencyLevel::BoundedStaleness,
            ReadConsistency::Session(_) => ConsistencyLevel::Session,
            ReadConsistency::ConsistentPrefix => ConsistencyLevel::ConsistentPrefix,
            ReadConsistency::Eventual => ConsistencyLevel::Eventual,
        }
    }
}

/// Parses a staleness bound in ms as given in a request or a flag: 1 to a day. A negative,
/// zero or non-numeric bound is an error that says so.
pub fn parse_staleness_ms(text: &str) -> Result<u64, GeoError> {
    let bad = |reason: &str| GeoError::OutOfRange {
        name: "max_staleness_ms",
        value: text.chars().take(32).collect(),
        reason: reason.to_owned(),
    };
    if text.trim_start().starts_with('-') {
        return Err(bad("a staleness bound cannot be negative"));
    }
    let ms: u64 = text.trim().parse().map_err(|_| bad("expected a whole number of milliseconds"))?;
    check_staleness_ms(ms).map_err(|_| bad(&format!("must be 1 to {MAX_STALENESS_MS}")))
}

/// Checks a staleness bound: 1 ms to a day.
pub fn check_staleness_ms(ms: u64) -> Result<u64, GeoError> {
    if ms == 0 || ms > MAX_STALENESS_MS {
        return Err(GeoError::OutOfRange {
            name: "max_staleness_ms",
            value: ms.to_string(),
            reason: format!("must be 1 to {MAX_STALENESS_MS}"),
        });
    }
    Ok(ms)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_level_round_trips_through_its_name() {
        for level in ConsistencyLevel::ALL {
            assert_eq!(level.as_str().parse::<ConsistencyLevel>().unwrap(), level);
        }
        assert_eq!(
            "BOUNDED-STALENESS".parse::<ConsistencyLevel>().unwrap(),
            ConsistencyLevel::BoundedStaleness
        );
        assert_eq!(
            "consistent_prefix".parse::<ConsistencyLevel>().unwrap(),
            ConsistencyLevel::ConsistentPrefix
        );
    }

    #[test]
    fn unknown_levels_and_bad_bounds_are_named() {
        let err = "linearisable-ish".parse::<ConsistencyLevel>().unwrap_err().to_string();
        assert!(err.contains("\"linearisable-ish\"") && err.contains("strong, bounded"), "{err}");
        for (text, says) in [
            ("-5", "cannot be negative"),
            ("0", "must be 1 to"),
            ("86400001", "must be 1 to"),
            ("5s", "whole number"),
            ("", "whole number"),
        ] {
            let err = parse_staleness_ms(text).unwrap_err().to_string();
            assert!(err.contains(says) && err.starts_with("max_staleness_ms"), "{text}: {err}");
        }
        assert_eq!(parse_staleness_ms(" 250 ").unwrap(), 250);
    }
}
