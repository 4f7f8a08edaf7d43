//! `themis cdc tail`: follow a cluster's change stream and print each event.

use themis_node::{ChangeFeed, FeedError};

/// What `themis cdc tail` prints and when it stops.
#[derive(Debug, Clone, Default)]
pub struct TailOptions {
    /// Print each event's JSON envelope instead of one summary line.
    pub json: bool,
    /// Print heartbeats too.
    pub heartbeats: bool,
    /// Stop after this many change events.
    pub limit: Option<u64>,
}

/// One summary line for a change envelope: `LSN op collection/id document`.
#[must_use]
pub fn summary(envelope: &serde_json::Value) -> String {
    let source = &envelope["source"];
    let op = match envelope["op"].as_str() {
        Some("c") => "insert",
        Some("u") => "update",
        Some("d") => "delete",
        Some("t") => "ddl",
        Some("r") => "snapshot",
        _ => "?",
    };
    let doc = if envelope["after"].is_null() { &envelope["before"] } else { &envelope["after"] };
    let doc = if doc.is_null() { String::new() } else { format!(" {doc}") };
    format!(
        "{} {op} {}/{}{doc}",
        source["lsn"],
        source["collection"].as_str().unwrap_or_default(),
        source["id"].as_str().unwrap_or_default()
    )
}

/// Reads `feed` and prints to `out` until the limit (or an error: a refusal, or no node
/// reachable for the feed's retry budget).
pub async fn tail(
    feed: &mut ChangeFeed,
    options: &TailOptions,
    out: &mut impl std::io::Write,
) -> Result<(), String> {
    let mut printed = 0u64;
    loop {
        if options.limit.is_some_and(|limit| printed >= limit) {
            return Ok(());
        }
        let event = feed.next().await.map_err(|e| match e {
            FeedError::Refused { status, body, .. } => {
                let message = serde_json::from_str::<serde_json::Value>(&body)
                    .ok()
                    .and_then(|v| v["message"].as_str().map(str::to_string))
                    .unwrap_or(body);
                format!("the node refused the stream ({status}): {message}")
            }
            other => other.to_string(),
        })?;
        let line = match event.kind.as_str() {
            "change" => {
                printed += 1;
                if options.json {
                    event.data
                } else {
                    let envelope: serde_json::Value = serde_json::from_str(&event.data)
                        .map_err(|e| format!("an event is not JSON: {e}"))?;
                    summary(&envelope)
                }
            }
            "heartbeat" if options.heartbeats => {
                if options.json {
                    event.data
                } else {
                    format!("heartbeat {}", event.data)
                }
            }
            _ => continue,
        };
        writeln!(out, "{line}").and_then(|()| out.flush()).map_err(|e| format!("stdout: {e}"))?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summaries_name_lsn_op_document_and_value() {
        let e = serde_json::json!({"op": "u", "after": {"n": 1}, "before": null,
            "source": {"lsn": 7, "collection": "orders", "id": "o1"}});
        assert_eq!(summary(&e), r#"7 update orders/o1 {"n":1}"#);
        let d = serde_json::json!({"op": "d", "after": null, "before": null,
            "source": {"lsn": 9, "collection": "orders", "id": "o1"}});
        assert_eq!(summary(&d), "9 delete orders/o1");
    }
}
