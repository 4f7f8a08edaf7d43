//! Session tokens: what a session has seen, carried by the client from one request to the
//! next (Cosmos DB's session tokens, with a MAC and a lifetime).
//!
//! ```text
//! token := "s1." term "." lsn "." region "." issued_ms "." tag
//! tag   := 16 lowercase hex digits: the first 8 bytes of HMAC-SHA256(key, "s1.term.lsn.region.issued_ms")
//! ```
//!
//! `term` and `lsn` name the newest log entry the session has seen (its own write, or what
//! the replica it read from had applied); `region` is where that happened; `issued_ms` is
//! the issuer's clock (Unix ms). The key is the cluster's session secret, or, without one,
//! derived from the cluster's name: then the tag catches corruption and tokens from
//! another cluster, not a deliberate forgery, and the log checks
//! ([`SessionToken::check_against_log`]) still refuse a token the log contradicts, so no
//! token makes a replica wait for an LSN that will never exist.

use std::fmt::Write as _;

use ring::hmac;

use crate::error::{GeoError, shown};

/// The longest token accepted, in bytes.
pub const MAX_TOKEN_LEN: usize = 160;
/// How far in the future a token's issue time may be (clock skew between nodes), in ms.
pub const MAX_ISSUE_SKEW_MS: u64 = 60_000;
const PREFIX: &str = "s1";

/// What a session has seen.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SessionToken {
    /// The issuer's Raft term when it issued the token.
    pub term: u64,
    /// The newest LSN the session has seen.
    pub lsn: u64,
    /// The region it was seen in.
    pub region: String,
    /// When the token was issued (Unix ms, issuer's clock).
    pub issued_ms: u64,
}

impl SessionToken {
    /// The newer of two tokens of one session (the higher LSN, then term), so a session
    /// that merges every token it is given reads monotonically.
    #[must_use]
    pub fn merge(self, other: SessionToken) -> SessionToken {
        if (other.lsn, other.term, other.issued_ms) > (self.lsn, self.term, self.issued_ms) {
            other
        } else {
            self
        }
    }

    /// Refuses a token past its lifetime, or issued implausibly far in the future.
    pub fn check_age(&self, now_ms: u64, ttl_ms: u64) -> Result<(), GeoError> {
        if self.issued_ms > now_ms.saturating_add(MAX_ISSUE_SKEW_MS) {
            return Err(GeoError::BadToken {
                token: format!("{self:?}"),
                reason: format!("issued {} ms in the future", self.issued_ms - now_ms),
            });
        }
        let age_ms = now_ms.saturating_sub(self.issued_ms);
        if age_ms > ttl_ms {
            return Err(GeoError::TokenExpired { age_ms, ttl_ms });
        }
        Ok(())
    }

    /// Refuses a token the log contradicts: a term beyond the cluster's, an LSN beyond the
    /// log's end (`last_lsn`, the leader's last entry), or, for a token issued for a write
    /// (whose term is its entry's), an entry at its LSN from a later term (`term_at`
    /// answers `None` for an LSN compacted away or not held here, or when unknown).
    pub fn check_against_log(
        &self,
        current_term: u64,
        last_lsn: u64,
        term_at: impl FnOnce(u64) -> Option<u64>,
    ) -> Result<(), GeoError> {
        let bad = |reason: String| GeoError::BadToken { token: format!("{self:?}"), reason };
        if self.term > current_term {
            return Err(bad(format!("term {} is beyond the cluster's term {current_term}", self.term)));
        }
        if self.lsn > last_lsn {
            return Err(bad(format!("LSN {} is beyond the end of the log ({last_lsn})", self.lsn)));
        }
        if self.lsn > 0
            && let Some(term) = term_at(self.lsn)
            && term > self.term
        {
            return Err(bad(format!(
                "the entry at LSN {} is from term {term}, after the token's term {}: the token is from another history",
                self.lsn, self.term
            )));
        }
        Ok(())
    }
}

/// Issues and checks a cluster's session tokens.
#[derive(Clone)]
pub struct TokenCodec {
    key: hmac::Key,
    keyed: bool,
}

impl std::fmt::Debug for TokenCodec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenCodec").field("keyed", &self.keyed).finish_non_exhaustive()
    }
}

impl TokenCodec {
    /// A codec for `cluster`'s tokens, keyed by `secret` when given (at least 16 bytes), or
    /// by a key derived from the cluster's name.
    pub fn new(cluster: &str, secret: Option<&[u8]>) -> Result<TokenCodec, GeoError> {
        let (material, keyed) = match secret {
            Some(s) if s.len() < 16 => {
                return Err(GeoError::OutOfRange {
                    name: "session secret",
                    value: format!("{} bytes", s.len()),
                    reason: "must be at least 16 bytes".into(),
                });
            }
            Some(s) => {
                let mut m = cluster.as_bytes().to_vec();
                m.push(0);
                m.extend_from_slice(s);
                (m, true)
            }
            None => (format!("themis-session-token\0{cluster}").into_bytes(), false),
        };
        Ok(TokenCodec { key: hmac::Key::new(hmac::HMAC_SHA256, &material), keyed })
    }

    /// Whether a secret keys the tokens (so a forged tag is caught).
    #[must_use]
    pub fn keyed(&self) -> bool {
        self.keyed
    }

    /// The token's text. Panics on a region name that [`check_region`] refuses, which
    /// configuration validation rules out.
    #[must_use]
    pub fn encode(&self, token: &SessionToken) -> String {
        debug_assert!(check_region(&token.region).is_ok(), "region {:?}", token.region);
        let mut text = format!("{PREFIX}.{}.{}.{}.{}", token.term, token.lsn, token.region, token.issued_ms);
        let tag = hmac::sign(&self.key, text.as_bytes());
        text.push('.');
        for byte in &tag.as_ref()[..8] {
            let _ = write!(text, "{byte:02x}");
        }
        text
    }

    /// Parses and authenticates a token.
    pub fn decode(&self, text: &str) -> Result<SessionToken, GeoError> {
        let bad = |reason: &str| GeoError::BadToken { token: shown(text), reason: reason.to_owned() };
        if text.len() > MAX_TOKEN_LEN {
            return Err(bad(&format!("longer than {MAX_TOKEN_LEN} bytes")));
        }
        let Some((signed, tag)) = text.rsplit_once('.') else {
            return Err(bad("expected s1.<term>.<lsn>.<region>.<issued_ms>.<tag>"));
        };
        let fields: Vec<&str> = signed.split('.').collect();
        let [prefix, term, lsn, region, issued] = fields[..] else {
            return Err(bad("expected s1.<term>.<lsn>.<region>.<issued_ms>.<tag>"));
        };
        if prefix != PREFIX {
            return Err(bad("unknown token version (expected s1)"));
        }
        let number = |field: &str, name: &str| {
            if field.is_empty() || !field.bytes().all(|b| b.is_ascii_digit()) {
                return Err(bad(&format!("{name} is not a number")));
            }
            field.parse::<u64>().map_err(|_| bad(&format!("{name} is out of range")))
        };
        let token = SessionToken {
            term: number(term, "term")?,
            lsn: number(lsn, "lsn")?,
            region: region.to_owned(),
            issued_ms: number(issued, "issued_ms")?,
        };
        check_region(region).map_err(|e| bad(&e.to_string()))?;
        let Some(tag) = decode_hex8(tag) else {
            return Err(bad("the tag is not 16 hex digits"));
        };
        let expected = hmac::sign(&self.key, signed.as_bytes());
        // Compared in constant time: the tag is a MAC when the codec is keyed.
        let differ = expected.as_ref()[..8].iter().zip(tag).fold(0u8, |acc, (a, b)| acc | (a ^ b));
        if differ != 0 {
            return Err(bad(if self.keyed {
                "the tag does not verify: not issued by this cluster, or altered"
            } else {
                "the checksum does not match: altered, or from another cluster"
            }));
        }
        Ok(token)
    }
}

fn decode_hex8(text: &str) -> Option<[u8; 8]> {
    if text.len() != 16 {
        return None;
    }
    let mut out = [0u8; 8];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(text.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    text.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)).then_some(out)
}

/// A region name: 1 to 32 of `a-z`, `0-9` and `-`, starting with a letter (`us-east-1`).
pub fn check_region(name: &str) -> Result<(), GeoError> {
    let ok = !name.is_empty()
        && name.len() <= 32
        && name.as_bytes()[0].is_ascii_lowercase()
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(GeoError::Config(format!(
            "region {:?}: expected 1 to 32 of a-z, 0-9 and '-', starting with a letter",
            name.chars().take(40).collect::<String>()
        )))
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn token() -> SessionToken {
        SessionToken { term: 3, lsn: 1042, region: "us-east".into(), issued_ms: 1_700_000_000_000 }
    }

    #[test]
    fn a_token_round_trips_and_an_altered_one_is_refused() {
        let codec = TokenCodec::new("prod", Some(b"sixteen byte key")).unwrap();
        let text = codec.encode(&token());
        assert!(text.starts_with("s1.3.1042.us-east.1700000000000."), "{text}");
        assert_eq!(codec.decode(&text).unwrap(), token());

        let forged = text.replace(".1042.", ".9999.");
        let err = codec.decode(&forged).unwrap_err().to_string();
        assert!(err.contains("does not verify"), "{err}");
        // Another cluster's tokens, or the same cluster's under another secret, do not verify.
        for other in [
            TokenCodec::new("staging", Some(b"sixteen byte key")).unwrap(),
            TokenCodec::new("prod", None).unwrap(),
        ] {
            assert!(other.decode(&text).is_err());
        }
    }

    #[test]
    fn malformed_tokens_say_what_is_wrong() {
        let codec = TokenCodec::new("prod", None).unwrap();
        let good = codec.encode(&token());
        let tag = good.rsplit_once('.').unwrap().1;
        for (text, says) in [
            ("", "expected s1."),
            ("42", "expected s1."),
            ("s1.3.1042.us-east.0", "expected s1."),
            (&format!("s2.3.1042.us-east.1700000000000.{tag}"), "unknown token version"),
            (&format!("s1.x.1042.us-east.1700000000000.{tag}"), "term is not a number"),
            (&format!("s1.3.-1.us-east.1700000000000.{tag}"), "lsn is not a number"),
            (&format!("s1.3.99999999999999999999.us-east.1.{tag}"), "lsn is out of range"),
            (&format!("s1.3.1042.US.1700000000000.{tag}"), "region \"US\""),
            (&good.replace(tag, "zz"), "16 hex digits"),
            (&good.replace(tag, &tag.to_uppercase()), "16 hex digits"),
            (&"s1.".repeat(100), "longer than"),
        ] {
            let err = codec.decode(text).unwrap_err().to_string();
            assert!(err.contains(says), "{text:?}: {err}");
        }
    }

    #[test]
    fn age_and_log_checks() {
        let t = token();
        assert!(t.check_age(t.issued_ms + 10, 60_000).is_ok());
        assert_eq!(
            t.check_age(t.issued_ms + 60_001, 60_000).unwrap_err(),
            GeoError::TokenExpired { age_ms: 60_001, ttl_ms: 60_000 }
        );
        assert!(
            t.check_age(t.issued_ms - MAX_ISSUE_SKEW_MS - 1, 60_000)
                .unwrap_err()
                .to_string()
                .contains("future")
        );

        assert!(t.check_against_log(3, 1042, |_| Some(3)).is_ok());
        assert!(t.check_against_log(5, 2000, |_| None).is_ok(), "compacted: nothing to contradict");
        let err = t.check_against_log(2, 5000, |_| Some(3)).unwrap_err().to_string();
        assert!(err.contains("term 3 is beyond the cluster's term 2"), "{err}");
        let err = t.check_against_log(3, 1041, |_| Some(3)).unwrap_err().to_string();
        assert!(err.contains("beyond the end of the log (1041)"), "{err}");
        let err = t.check_against_log(4, 5000, |_| Some(4)).unwrap_err().to_string();
        assert!(err.contains("from term 4, after the token's term 3"), "{err}");
        assert!(
            t.check_against_log(4, 5000, |_| Some(2)).is_ok(),
            "a read token's term is the issuer's, not the entry's"
        );
    }

    #[test]
    fn merge_keeps_the_newest() {
        let old = token();
        let new = SessionToken { lsn: 2000, term: 4, ..token() };
        assert_eq!(old.clone().merge(new.clone()), new);
        assert_eq!(new.clone().merge(old), new);
    }

    proptest! {
        #[test]
        fn decode_never_panics(text in ".{0,200}") {
            let codec = TokenCodec::new("prod", None).unwrap();
            let _ = codec.decode(&text);
        }

        #[test]
        fn every_issued_token_decodes(term: u64, lsn: u64, issued_ms: u64, region in "[a-z][a-z0-9-]{0,31}") {
            let codec = TokenCodec::new("c", Some(b"0123456789abcdef")).unwrap();
            let token = SessionToken { term, lsn, region, issued_ms };
            prop_assert_eq!(codec.decode(&codec.encode(&token)).unwrap(), token);
        }
    }
}
