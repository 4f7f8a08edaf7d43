//! [`NodeId`] and the hybrid logical [`Timestamp`].

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::error::{ClockError, excerpt};

/// Identifies a node of the cluster. Ties between equal hybrid times break on it, so two
/// nodes never issue equal timestamps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize)]
#[serde(transparent)]
pub struct NodeId(pub u64);

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

impl FromStr for NodeId {
    type Err = ClockError;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        parse_decimal(input)
            .map(NodeId)
            .map_err(|reason| ClockError::ParseNodeId { input: excerpt(input), reason })
    }
}

/// Number of low bits of [`Timestamp::raw_time`] that hold the logical counter.
pub const LOGICAL_BITS: u32 = 16;
/// The largest physical time, in ms since the Unix epoch, a timestamp can hold
/// (2^48 - 1 ms, about the year 10889).
pub const MAX_PHYSICAL_MS: u64 = u64::MAX >> LOGICAL_BITS;
const LOGICAL_MASK: u64 = (1 << LOGICAL_BITS) - 1;

/// A hybrid logical clock timestamp: physical milliseconds, a logical counter and the node
/// that issued it.
///
/// The physical time and the counter share one `u64` (`physical_ms << 16 | logical`), so
/// comparing and advancing a timestamp is integer arithmetic, and a counter that overflows
/// carries into the physical part instead of wrapping. Timestamps are totally ordered by
/// that word, then by node id.
///
/// ```
/// use themis_clock::{NodeId, Timestamp};
///
/// let ts = Timestamp::from_parts(1_700_000_000_000, 3, NodeId(7))?;
/// assert_eq!(ts.to_string(), "1700000000000.3@7");
/// assert_eq!("1700000000000.3@7".parse::<Timestamp>()?, ts);
/// assert_eq!(Timestamp::from_bytes(&ts.to_bytes())?, ts);
/// # Ok::<(), themis_clock::ClockError>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub struct Timestamp {
    time: u64,
    node: NodeId,
}

impl Timestamp {
    /// The smallest timestamp; every issued timestamp is greater.
    pub const ZERO: Timestamp = Timestamp { time: 0, node: NodeId(0) };
    /// Length of [`Timestamp::to_bytes`].
    pub const ENCODED_LEN: usize = 16;

    /// Builds a timestamp from its physical time (ms since the Unix epoch), logical
    /// counter and node.
    pub fn from_parts(physical_ms: u64, logical: u16, node: NodeId) -> Result<Self, ClockError> {
        if physical_ms > MAX_PHYSICAL_MS {
            return Err(ClockError::PhysicalOutOfRange { physical_ms, limit_ms: MAX_PHYSICAL_MS });
        }
        Ok(Timestamp { time: (physical_ms << LOGICAL_BITS) | u64::from(logical), node })
    }

    /// Builds a timestamp from the packed time word (as [`Timestamp::raw_time`] returns it).
    /// Every `u64` is a valid time word.
    #[must_use]
    pub const fn from_raw(time: u64, node: NodeId) -> Self {
        Timestamp { time, node }
    }

    /// Physical time in milliseconds since the Unix epoch.
    #[must_use]
    pub const fn physical_ms(self) -> u64 {
        self.time >> LOGICAL_BITS
    }

    /// Logical counter within the physical millisecond.
    #[must_use]
    pub const fn logical(self) -> u16 {
        (self.time & LOGICAL_MASK) as u16
    }

    /// The packed time word: `physical_ms << 16 | logical`.
    #[must_use]
    pub const fn raw_time(self) -> u64 {
        self.time
    }

    /// The node that issued the timestamp.
    #[must_use]
    pub const fn node(self) -> NodeId {
        self.node
    }

    /// The fixed 16-byte encoding: time word then node id, both little-endian.
    #[must_use]
    pub fn to_bytes(self) -> [u8; Self::ENCODED_LEN] {
        let mut out = [0; Self::ENCODED_LEN];
        out[..8].copy_from_slice(&self.time.to_le_bytes());
        out[8..].copy_from_slice(&self.node.0.to_le_bytes());
        out
    }

    /// Decodes [`Timestamp::to_bytes`]; any other length is an error.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, ClockError> {
        let Ok(array) = <[u8; Self::ENCODED_LEN]>::try_from(bytes) else {
            return Err(ClockError::EncodedLength { expected: Self::ENCODED_LEN, found: bytes.len() });
        };
        let (time, node) = array.split_at(8);
        // Both halves are exactly 8 bytes by construction of the split.
        let word = |half: &[u8]| u64::from_le_bytes(half.try_into().expect("8-byte half"));
        Ok(Timestamp { time: word(time), node: NodeId(word(node)) })
    }
}

impl Timestamp {
    /// The total order as one integer: time word, then node id. Comparing one `u128` is a
    /// branch-free pair of instructions, where a field-by-field comparison branches.
    #[inline]
    const fn order_key(self) -> u128 {
        ((self.time as u128) << 64) | self.node.0 as u128
    }
}

impl Ord for Timestamp {
    #[inline]
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.order_key().cmp(&other.order_key())
    }
}

impl PartialOrd for Timestamp {
    #[inline]
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}@{}", self.physical_ms(), self.logical(), self.node)
    }
}

impl FromStr for Timestamp {
    type Err = ClockError;

    /// Parses the `Display` form, `physical_ms.logical@node`, in plain decimal digits.
    fn from_str(input: &str) -> Result<Self, Self::Err> {
        let fail = |reason| ClockError::ParseTimestamp { input: excerpt(input), reason };
        let (time, node) = input.split_once('@').ok_or_else(|| fail("missing '@' before the node id"))?;
        let (physical, logical) =
            time.split_once('.').ok_or_else(|| fail("missing '.' between physical and logical time"))?;
        let physical_ms = parse_decimal(physical).map_err(fail)?;
        let logical = parse_decimal(logical).map_err(fail)?;
        let node = parse_decimal(node).map_err(fail)?;
        let logical = u16::try_from(logical).map_err(|_| fail("logical counter above 65535"))?;
        if physical_ms > MAX_PHYSICAL_MS {
            return Err(fail("physical time above the 48-bit limit"));
        }
        Timestamp::from_parts(physical_ms, logical, NodeId(node))
    }
}

/// Parses unsigned decimal digits only: no sign, no spaces, no empty string. `u64::from_str`
/// accepts a leading `+`, which would let two spellings denote one timestamp.
fn parse_decimal(digits: &str) -> Result<u64, &'static str> {
    if digits.is_empty() {
        return Err("empty number");
    }
    if !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err("expected decimal digits only");
    }
    digits.parse().map_err(|_| "number does not fit in 64 bits")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn orders_by_time_then_node() {
        let a = Timestamp::from_parts(10, 0, NodeId(9)).unwrap();
        let b = Timestamp::from_parts(10, 1, NodeId(1)).unwrap();
        let c = Timestamp::from_parts(10, 1, NodeId(2)).unwrap();
        let d = Timestamp::from_parts(11, 0, NodeId(0)).unwrap();
        assert!(a < b && b < c && c < d);
    }

    #[test]
    fn logical_overflow_carries_into_physical() {
        let ts = Timestamp::from_parts(5, u16::MAX, NodeId(1)).unwrap();
        let next = Timestamp::from_raw(ts.raw_time() + 1, NodeId(1));
        assert_eq!((next.physical_ms(), next.logical()), (6, 0));
    }

    #[test]
    fn display_round_trips_at_the_limits() {
        for ts in [
            Timestamp::ZERO,
            Timestamp::from_raw(u64::MAX, NodeId(u64::MAX)),
            Timestamp::from_parts(1_731_000_000_123, 42, NodeId(3)).unwrap(),
        ] {
            assert_eq!(ts.to_string().parse::<Timestamp>().unwrap(), ts);
            assert_eq!(Timestamp::from_bytes(&ts.to_bytes()).unwrap(), ts);
        }
    }

    #[test]
    fn malformed_strings_are_rejected_with_a_reason() {
        let cases = [
            ("", "missing '@' before the node id"),
            ("1.2", "missing '@' before the node id"),
            ("12@3", "missing '.' between physical and logical time"),
            (".1@3", "empty number"),
            ("1.@3", "empty number"),
            ("1.1@", "empty number"),
            ("+1.1@3", "expected decimal digits only"),
            ("1.1@-3", "expected decimal digits only"),
            (" 1.1@3", "expected decimal digits only"),
            ("1.1@3@4", "expected decimal digits only"),
            ("1.1.1@3", "expected decimal digits only"),
            ("1.65536@3", "logical counter above 65535"),
            ("281474976710656.0@1", "physical time above the 48-bit limit"),
            ("1.1@18446744073709551616", "number does not fit in 64 bits"),
            ("١.1@3", "expected decimal digits only"),
        ];
        for (input, expected) in cases {
            match input.parse::<Timestamp>() {
                Err(ClockError::ParseTimestamp { input: got, reason }) => {
                    assert_eq!(got, input);
                    assert_eq!(reason, expected, "input {input:?}");
                }
                other => panic!("{input:?} parsed as {other:?}"),
            }
        }
    }

    #[test]
    fn long_bad_input_is_cut_in_the_error() {
        let input = "9".repeat(10_000);
        let err = input.parse::<Timestamp>().unwrap_err();
        assert!(err.to_string().len() < 200, "{err}");
    }

    #[test]
    fn node_id_parse_rejects_non_digits() {
        assert_eq!("17".parse::<NodeId>().unwrap(), NodeId(17));
        for bad in ["", "x", "+1", "1 ", "99999999999999999999"] {
            assert!(matches!(bad.parse::<NodeId>(), Err(ClockError::ParseNodeId { .. })), "{bad:?}");
        }
    }

    #[test]
    fn wrong_encoded_length_is_rejected() {
        for len in [0, 1, 15, 17, 64] {
            assert_eq!(
                Timestamp::from_bytes(&vec![0; len]),
                Err(ClockError::EncodedLength { expected: 16, found: len })
            );
        }
    }

    #[test]
    fn physical_above_48_bits_is_rejected() {
        assert_eq!(
            Timestamp::from_parts(MAX_PHYSICAL_MS + 1, 0, NodeId(1)),
            Err(ClockError::PhysicalOutOfRange {
                physical_ms: MAX_PHYSICAL_MS + 1,
                limit_ms: MAX_PHYSICAL_MS
            })
        );
    }

    #[test]
    fn serde_round_trips_in_postcard_and_json() {
        let ts = Timestamp::from_parts(1_731_000_000_123, 7, NodeId(300)).unwrap();
        let bytes = postcard::to_stdvec(&ts).unwrap();
        assert_eq!(postcard::from_bytes::<Timestamp>(&bytes).unwrap(), ts);
        let json = serde_json::to_string(&ts).unwrap();
        assert_eq!(serde_json::from_str::<Timestamp>(&json).unwrap(), ts);
        assert!(postcard::from_bytes::<Timestamp>(&bytes[..bytes.len() - 1]).is_err());
    }
}
