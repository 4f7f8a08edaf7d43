//! Point-in-time restore: the newest base backup at or before the target, then the
//! archived WAL after it, replayed into a state machine up to the target.

use std::fmt;
use std::str::FromStr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::{StreamExt, TryStreamExt};
use themis_clock::Timestamp;
use themis_ship::{KeyedOp, StateMachine};
use themis_wal::{EntryKind, Lsn, record};

use crate::archive::Archive;
use crate::error::PitrError;
use crate::manifest::{Manifest, ManifestEntry};

/// Where a restore stops.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RestoreTarget {
    /// Everything archived.
    Latest,
    /// Everything up to and including this LSN.
    Lsn(Lsn),
    /// Everything committed at or before this HLC timestamp.
    Hlc(Timestamp),
    /// Everything committed at or before this wall-clock time, ms since the Unix epoch
    /// (compared with each entry's HLC physical time).
    TimeMs(u64),
}

impl fmt::Display for RestoreTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RestoreTarget::Latest => f.write_str("latest"),
            RestoreTarget::Lsn(l) => write!(f, "lsn:{l}"),
            RestoreTarget::Hlc(t) => write!(f, "hlc:{t}"),
            RestoreTarget::TimeMs(ms) => write!(f, "time:{ms}ms"),
        }
    }
}

impl FromStr for RestoreTarget {
    type Err = PitrError;

    /// `latest`, `lsn:N`, `hlc:<ms>.<logical>@<node>`, or an RFC 3339 time
    /// (`2026-12-06T10:00:00Z`, fractional seconds allowed).
    fn from_str(text: &str) -> Result<RestoreTarget, PitrError> {
        let bad = || PitrError::BadTarget(text.to_string());
        let text = text.trim();
        if text == "latest" {
            return Ok(RestoreTarget::Latest);
        }
        if let Some(n) = text.strip_prefix("lsn:") {
            return n.parse().map(RestoreTarget::Lsn).map_err(|_| bad());
        }
        if let Some(h) = text.strip_prefix("hlc:") {
            return h.parse().map(RestoreTarget::Hlc).map_err(|_| bad());
        }
        rfc3339_ms(text).map(RestoreTarget::TimeMs).ok_or_else(bad)
    }
}

/// Milliseconds since the Unix epoch of an RFC 3339 time (`Z` or `±hh:mm` offset).
#[must_use]
pub fn rfc3339_ms(text: &str) -> Option<u64> {
    let b = text.as_bytes();
    if b.len() < 20
        || b[4] != b'-'
        || b[7] != b'-'
        || !matches!(b[10], b'T' | b't' | b' ')
        || b[13] != b':'
        || b[16] != b':'
    {
        return None;
    }
    let num = |r: std::ops::Range<usize>| -> Option<i64> { text.get(r)?.parse().ok() };
    let (year, month, day) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (hour, minute, second) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) || hour > 23 || minute > 59 || second > 60 {
        return None;
    }
    let mut rest = &text[19..];
    let mut millis = 0i64;
    if let Some(frac) = rest.strip_prefix('.') {
        let digits = frac.find(|c: char| !c.is_ascii_digit()).unwrap_or(frac.len());
        if digits == 0 {
            return None;
        }
        let padded = format!("{:0<3}", &frac[..digits.min(3)]);
        millis = padded.parse().ok()?;
        rest = &frac[digits..];
    }
    let offset_minutes = match rest {
        "Z" | "z" => 0,
        _ if rest.len() == 6 && (rest.starts_with('+') || rest.starts_with('-')) && &rest[3..4] == ":" => {
            let sign = if rest.starts_with('-') { -1 } else { 1 };
            sign * (rest[1..3].parse::<i64>().ok()? * 60 + rest[4..6].parse::<i64>().ok()?)
        }
        _ => return None,
    };
    // Days from the civil date (Howard Hinnant's algorithm).
    let (y, m) = if month <= 2 { (year - 1, month + 9) } else { (year, month - 3) };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * m + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let secs = days * 86_400 + hour * 3600 + minute * 60 + second - offset_minutes * 60;
    u64::try_from(secs * 1000 + millis).ok()
}

/// How a restore went.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct RestoreReport {
    /// The target as asked.
    pub target: String,
    /// The base backup it started from.
    pub base_lsn: Lsn,
    /// The last LSN applied.
    pub restored_lsn: Lsn,
    /// Its commit HLC.
    pub restored_hlc: Timestamp,
    /// Log entries replayed after the base backup.
    pub entries: u64,
    /// Objects fetched (the base backup included).
    pub objects: u64,
    /// Decompressed bytes of WAL replayed.
    pub wal_bytes: u64,
    /// How long it took.
    pub elapsed: Duration,
}

/// The objects a restore needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RestorePlan {
    /// The base backup.
    pub base: ManifestEntry,
    /// The WAL objects after it, in order.
    pub wal: Vec<ManifestEntry>,
}

fn before_or_at(target: RestoreTarget, lsn: Lsn, hlc: Timestamp) -> bool {
    match target {
        RestoreTarget::Latest => true,
        RestoreTarget::Lsn(l) => lsn <= l,
        RestoreTarget::Hlc(t) => hlc <= t,
        RestoreTarget::TimeMs(ms) => hlc.physical_ms() <= ms,
    }
}

/// Picks the newest base backup at or before `target` and the WAL objects that follow it
/// up to the target; refuses a gap on the way, naming it.
pub fn plan(manifest: &Manifest, target: RestoreTarget) -> Result<RestorePlan, PitrError> {
    let unreachable = |message: String| PitrError::Unreachable { target: target.to_string(), message };
    let base = manifest
        .base
        .iter()
        .rev()
        .find(|b| before_or_at(target, b.last_lsn, b.last_hlc))
        .ok_or_else(|| match manifest.base.first() {
            Some(first) => unreachable(format!(
                "the oldest base backup is at LSN {} ({}), after it",
                first.last_lsn, first.last_hlc
            )),
            None => unreachable("the archive holds no base backup".into()),
        })?
        .clone();
    let mut wal = Vec::new();
    let mut next = base.last_lsn + 1;
    for entry in &manifest.wal {
        if entry.last_lsn < next {
            continue;
        }
        if !before_or_at(target, entry.first_lsn, entry.first_hlc) {
            break;
        }
        if entry.first_lsn > next {
            return Err(PitrError::Gap {
                missing_from: next,
                missing_to: entry.first_lsn - 1,
                restorable_to: next - 1,
            });
        }
        next = entry.last_lsn + 1;
        wal.push(entry.clone());
    }
    if let RestoreTarget::Lsn(l) = target
        && l >= next
    {
        return Err(unreachable(format!("the archive ends at LSN {}", next - 1)));
    }
    Ok(RestorePlan { base, wal })
}

/// Restores `state` to `target` from `archive`: fetches the base backup and the WAL after
/// it (`parallel` objects at a time, applied in order), verifies each (size, SHA-256,
/// authentication tag, each record's CRC and LSN), and applies every entry up to the
/// target. A damaged or missing object stops the restore with an error naming it and the
/// latest LSN reachable without it; nothing after it is applied. `progress` is called
/// after each object with (objects done, objects in all).
pub async fn restore<S: StateMachine + ?Sized>(
    archive: &Archive,
    target: RestoreTarget,
    state: &S,
    parallel: usize,
    mut progress: impl FnMut(usize, usize),
) -> Result<RestoreReport, PitrError> {
    let started = Instant::now();
    let manifest = archive.manifest().await?;
    let plan = plan(&manifest, target)?;
    let total = plan.wal.len() + 1;
    let base_lsn = plan.base.last_lsn;
    let snapshot = archive.fetch(&plan.base, base_lsn.saturating_sub(1)).await?;
    state.restore(&Bytes::from(snapshot)).map_err(|e| PitrError::Apply {
        lsn: base_lsn,
        message: format!("restoring the base backup: {e}"),
    })?;
    progress(1, total);
    let mut report = RestoreReport {
        target: target.to_string(),
        base_lsn,
        restored_lsn: base_lsn,
        restored_hlc: plan.base.last_hlc,
        entries: 0,
        objects: 1,
        wal_bytes: 0,
        elapsed: Duration::ZERO,
    };
    // `restorable_to` for each fetch is where the replay stands once everything before
    // that object is applied.
    let mut fetches = futures_util::stream::iter(plan.wal.iter().map(|entry| {
        let restorable_to = entry.first_lsn.saturating_sub(1).max(base_lsn);
        async move { archive.fetch(entry, restorable_to).await.map(|payload| (entry, payload)) }
    }))
    .buffered(parallel.max(1));
    let mut done = 1;
    'objects: while let Some((entry, payload)) = fetches.try_next().await? {
        let payload = Bytes::from(payload);
        report.wal_bytes += payload.len() as u64;
        let mut offset = 0;
        let mut expected = entry.first_lsn;
        while offset < payload.len() {
            let damaged = |message: String, applied: Lsn| PitrError::Damaged {
                object: entry.object.clone(),
                first_lsn: entry.first_lsn,
                last_lsn: entry.last_lsn,
                message,
                restorable_to: applied,
            };
            let (e, len) = record::decode(&payload, offset, payload.len())
                .map_err(|err| damaged(format!("the record at byte {offset}: {err}"), report.restored_lsn))?;
            if e.lsn != expected {
                return Err(damaged(
                    format!("the record at byte {offset} holds LSN {}, expected {expected}", e.lsn),
                    report.restored_lsn,
                ));
            }
            offset += len;
            expected += 1;
            if e.lsn <= report.restored_lsn {
                continue;
            }
            if !before_or_at(target, e.lsn, e.timestamp) {
                break 'objects;
            }
            if e.kind == EntryKind::DATA {
                let ops = <S::Op as KeyedOp>::decode(e.lsn, &e.payload)
                    .map_err(|err| damaged(err.to_string(), report.restored_lsn))?;
                state
                    .apply(e.lsn, &ops)
                    .map_err(|err| PitrError::Apply { lsn: e.lsn, message: err.to_string() })?;
            }
            report.restored_lsn = e.lsn;
            report.restored_hlc = e.timestamp;
            report.entries += 1;
        }
        if expected != entry.last_lsn + 1 {
            return Err(PitrError::Damaged {
                object: entry.object.clone(),
                first_lsn: entry.first_lsn,
                last_lsn: entry.last_lsn,
                message: format!("it ends at LSN {}", expected - 1),
                restorable_to: report.restored_lsn,
            });
        }
        report.objects += 1;
        done += 1;
        progress(done, total);
    }
    report.elapsed = started.elapsed();
    Ok(report)
}
