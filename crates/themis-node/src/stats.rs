//! Latency percentiles and sample documents for the demo, benches and load tools.

/// The `p` quantile (0.0 to 1.0, nearest rank) of `sorted` (ascending); the default (zero)
/// when empty.
#[must_use]
pub fn percentile<T: Copy + Default>(sorted: &[T], p: f64) -> T {
    if sorted.is_empty() {
        return T::default();
    }
    let p = p.clamp(0.0, 1.0);
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss, reason = "p is clamped to 0..=1")]
    let rank = (sorted.len() as f64 * p).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// User plus system clock ticks process `pid` has used (`None` for this process: read
/// `/proc/self/stat`), from Linux's `/proc`; `None` where that is not readable. Ticks are
/// `USER_HZ`, 100 a second on Linux.
#[must_use]
pub fn cpu_ticks(pid: Option<u32>) -> Option<u64> {
    let path = pid.map_or_else(|| "/proc/self/stat".to_string(), |pid| format!("/proc/{pid}/stat"));
    let stat = std::fs::read_to_string(path).ok()?;
    // The command name may hold spaces; fields count from after its closing paren.
    let rest = stat.get(stat.rfind(')')? + 2..)?;
    let fields: Vec<&str> = rest.split(' ').collect();
    Some(fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?)
}

/// A JSON document of exactly `bytes` bytes (at least its fields' size), naming the
/// writer and its sequence number: what load generators write.
#[must_use]
pub fn document(writer: usize, n: u64, bytes: usize) -> Vec<u8> {
    let head = format!(r#"{{"writer":{writer},"n":{n},"pad":""#);
    let pad = bytes.saturating_sub(head.len() + 2);
    let mut doc = head.into_bytes();
    doc.resize(doc.len() + pad, b'x');
    doc.extend_from_slice(b"\"}");
    doc
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn documents_are_json_of_the_asked_size() {
        for bytes in [32, 256, 4096] {
            let doc = document(7, 123, bytes);
            assert_eq!(doc.len(), bytes);
            let v: serde_json::Value = serde_json::from_slice(&doc).unwrap();
            assert_eq!((v["writer"].as_u64(), v["n"].as_u64()), (Some(7), Some(123)));
        }
    }

    #[test]
    fn this_process_has_cpu_ticks_and_a_missing_one_none() {
        let burn: u64 = (0..20_000_000u64).fold(0, |a, b| a.wrapping_add(b * b));
        assert!(burn > 0);
        if cfg!(target_os = "linux") {
            assert!(cpu_ticks(None).is_some());
            assert!(cpu_ticks(Some(std::process::id())).is_some());
        }
        assert_eq!(cpu_ticks(Some(u32::MAX)), None);
    }

    #[test]
    fn nearest_rank_percentiles() {
        let v: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        assert_eq!(percentile(&v, 0.5), Duration::from_millis(50));
        assert_eq!(percentile(&v, 0.99), Duration::from_millis(99));
        assert_eq!(percentile(&v, 1.0), Duration::from_millis(100));
        assert_eq!(percentile(&v, 0.0), Duration::from_millis(1));
        assert_eq!(percentile::<Duration>(&[], 0.5), Duration::ZERO);
        assert_eq!(percentile(&[3u32, 9, 20], 0.5), 9);
    }
}
