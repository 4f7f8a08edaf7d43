//! The crate's one error type.

/// Why a level, token, configuration, quorum or tier request was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum GeoError {
    /// A consistency level, strategy, write concern or tier name that does not exist.
    #[error("{what} {given:?}: expected one of {expected}")]
    Unknown {
        /// What was being named (`consistency level`, `strategy`, ...).
        what: &'static str,
        /// The name given.
        given: String,
        /// The names accepted.
        expected: &'static str,
    },
    /// A numeric setting outside its range.
    #[error("{name} = {value}: {reason}")]
    OutOfRange {
        /// The setting.
        name: &'static str,
        /// The value given, as text (so a negative number is shown as given).
        value: String,
        /// The range, or what is wrong.
        reason: String,
    },
    /// A session token that is not one this cluster issues: bad syntax, a bad MAC, or a
    /// claim the log contradicts. Answered 400, never waited on.
    #[error("session token {token:?}: {reason}")]
    BadToken {
        /// The token as given (cut to 96 characters).
        token: String,
        /// What is wrong.
        reason: String,
    },
    /// A session token older than `session_token_ttl_ms`.
    #[error("session token issued {age_ms} ms ago is past its {ttl_ms} ms lifetime; start a new session")]
    TokenExpired {
        /// Its age.
        age_ms: u64,
        /// The lifetime.
        ttl_ms: u64,
    },
    /// A geo configuration that contradicts itself.
    #[error("geo configuration: {0}")]
    Config(String),
    /// A cascading chain of replicas deeper than allowed, or a cycle.
    #[error("replication chain {chain} is {problem}")]
    Chain {
        /// The chain, `node -> upstream -> ... -> leader`.
        chain: String,
        /// `5 hops deep; at most 4 are allowed`, `a cycle`, ...
        problem: String,
    },
    /// Fewer answers than the read quorum asked for.
    #[error("quorum read needs {needed} of {asked} replicas; {answered} answered")]
    NoQuorum {
        /// R.
        needed: usize,
        /// N.
        asked: usize,
        /// How many answered.
        answered: usize,
    },
}

/// Cuts a token for an error message: a forged token may be long, and messages are bounded.
pub(crate) fn shown(token: &str) -> String {
    token.chars().take(96).collect()
}
