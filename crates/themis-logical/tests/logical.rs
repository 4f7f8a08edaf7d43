//! Slots over a real WAL and change stream: filters and predicates, DDL, transforms,
//! initial sync under concurrent writes, persistence across a reopen, retention, idle
//! advance, the output plugins decoded by their reference libraries, and the bad paths.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use serde_json::{Value, json};
use themis_cdc::{CdcConfig, CdcStream, ChangeOp};
use themis_clock::{Hlc, NodeId};
use themis_logical::{
    ChangeBatch, ChangeMessage, LogicalChange, LogicalConfig, LogicalError, LogicalReplicationManager,
    OutputPlugin, SlotConfig, SnapshotDoc, SnapshotSource, Transform, WalStatus, avro_schema, json_change,
};
use themis_wal::op::{Op, OpKind, encode_batch};
use themis_wal::{FsyncPolicy, Lsn, NewEntry, Wal, WalConfig};

const WAIT: Duration = Duration::from_millis(200);

struct Fixture {
    dir: tempfile::TempDir,
    wal: Wal,
    hlc: Hlc,
    cdc: CdcStream,
    slots: LogicalReplicationManager,
}

fn wal_config() -> WalConfig {
    WalConfig {
        fsync: FsyncPolicy::Never,
        segment_bytes: 64 << 10,
        max_record_bytes: 32 << 10,
        preallocate: false,
        ..WalConfig::default()
    }
}

fn fixture(config: LogicalConfig) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let (wal, _) = Wal::open(dir.path().join("wal"), wal_config()).unwrap();
    let hlc = Hlc::new(NodeId(3));
    let cdc = CdcStream::new(CdcConfig::default(), Arc::new(wal.clone()), 0, hlc.now()).unwrap();
    let slots = LogicalReplicationManager::open(
        dir.path().join("wal/logical_slots"),
        cdc.clone(),
        Some(wal.clone()),
        config,
    )
    .unwrap();
    Fixture { dir, wal, hlc, cdc, slots }
}

impl Fixture {
    fn commit(&self, ops: &[OpKind]) -> Lsn {
        let ops: Vec<Op> =
            ops.iter().map(|k| Op { origin: NodeId(3), txn: 0, kind: k.clone(), stamp: None }).collect();
        let range = self.wal.append(&[NewEntry::data(self.hlc.now(), encode_batch(&ops).unwrap())]).unwrap();
        self.cdc.publish(&[self.wal.read(range.first).unwrap()]);
        range.first
    }

    /// The same log and slot files, opened again as after a restart.
    fn reopen(&self) -> LogicalReplicationManager {
        let (last, hlc) = self.cdc.resolved();
        let cdc = CdcStream::new(CdcConfig::default(), Arc::new(self.wal.clone()), last, hlc).unwrap();
        LogicalReplicationManager::open(
            self.dir.path().join("wal/logical_slots"),
            cdc,
            Some(self.wal.clone()),
            LogicalConfig::default(),
        )
        .unwrap()
    }
}

fn insert(collection: &str, key: &str, doc: &Value) -> OpKind {
    OpKind::Insert {
        collection: collection.into(),
        key: Bytes::copy_from_slice(key.as_bytes()),
        value: doc.to_string().into(),
    }
}

fn update(collection: &str, key: &str, doc: &Value, before: Option<&Value>) -> OpKind {
    OpKind::Update {
        collection: collection.into(),
        key: Bytes::copy_from_slice(key.as_bytes()),
        value: doc.to_string().into(),
        before: before.map(|b| b.to_string().into()),
    }
}

fn delete(collection: &str, key: &str, before: Option<&Value>) -> OpKind {
    OpKind::Delete {
        collection: collection.into(),
        key: Bytes::copy_from_slice(key.as_bytes()),
        before: before.map(|b| b.to_string().into()),
    }
}

fn ddl(statement: &str, schema_version: u64) -> OpKind {
    OpKind::Ddl { statement: statement.into(), schema_version }
}

async fn read(slots: &LogicalReplicationManager, slot: &str) -> ChangeBatch {
    slots.read_changes(slot, 1000, WAIT).await.unwrap()
}

fn summary(changes: &[LogicalChange]) -> Vec<(ChangeOp, String, String)> {
    changes.iter().map(|c| (c.op, c.collection.clone(), c.key.clone())).collect()
}

fn s(op: ChangeOp, collection: &str, key: &str) -> (ChangeOp, String, String) {
    (op, collection.into(), key.into())
}

#[tokio::test]
async fn collections_and_row_predicates_select_changes_and_updates_cross_the_predicate() {
    let f = fixture(LogicalConfig::default());
    let mut acme = SlotConfig::new("tenant_acme", OutputPlugin::Json);
    acme.include = vec!["orders*".into(), "users".into()];
    acme.exclude = vec!["orders_archive".into()];
    acme.predicate = Some("tenant == 'acme' && region != 'eu'".into());
    f.slots.create_slot(acme, None).unwrap();
    f.slots.create_slot(SlotConfig::new("everything", OutputPlugin::Json), None).unwrap();

    let us = json!({"tenant": "acme", "region": "us"});
    let eu = json!({"tenant": "acme", "region": "eu"});
    let globex = json!({"tenant": "globex"});
    f.commit(&[
        insert("orders", "1", &us),
        insert("orders", "2", &globex),
        insert("orders_archive", "3", &us),
    ]);
    f.commit(&[insert("invoices", "4", &us), insert("users", "5", &us), insert("_themis_slots", "x", &us)]);
    // With before-images, an update that moves a document out of the predicate is a
    // delete for the slot, one that moves it in is an insert.
    f.commit(&[update("orders", "1", &eu, Some(&us))]);
    f.commit(&[update("orders", "2", &us, Some(&globex))]);
    f.commit(&[update("orders", "2", &globex, None)]); // no before-image: filtered
    f.commit(&[delete("orders", "9", Some(&globex)), delete("orders", "1", None)]);
    let batch = read(&f.slots, "tenant_acme").await;
    assert_eq!(
        summary(&batch.changes),
        [
            s(ChangeOp::Insert, "orders", "1"),
            s(ChangeOp::Insert, "users", "5"),
            s(ChangeOp::Delete, "orders", "1"),
            s(ChangeOp::Insert, "orders", "2"),
            s(ChangeOp::Delete, "orders", "1"),
        ]
    );
    assert_eq!(batch.changes[2].after, None);
    assert_eq!(batch.changes[3].before, None);
    assert_eq!(batch.confirm_lsn, Some(f.cdc.resolved().0));
    let info = f.slots.slot_info("tenant_acme").unwrap();
    assert_eq!((info.stats.changes_sent, info.stats.unfiltered_deletes), (5, 1));
    assert_eq!(info.stats.changes_filtered, 4, "excluded, the predicate, an update without a before-image");
    // Internal collections stay out of a slot that does not name them.
    let all = read(&f.slots, "everything").await;
    assert_eq!(all.changes.len(), 10);
    assert!(all.changes.iter().all(|c| c.collection != "_themis_slots"));
}

#[tokio::test]
async fn ddl_reaches_slots_whatever_their_filter_and_changes_carry_the_schema_version() {
    let f = fixture(LogicalConfig::default());
    let mut orders = SlotConfig::new("orders_only", OutputPlugin::Json);
    orders.include = vec!["orders".into()];
    f.slots.create_slot(orders, None).unwrap();
    let mut quiet = SlotConfig::new("no_ddl", OutputPlugin::Json);
    quiet.replicate_ddl = false;
    f.slots.create_slot(quiet, None).unwrap();

    let create = f.commit(&[ddl("CREATE COLLECTION users", 1)]);
    f.slots.record_ddl("CREATE COLLECTION users", 1, create).unwrap();
    f.commit(&[insert("users", "u1", &json!({}))]);
    let alter = f.commit(&[ddl("ALTER COLLECTION orders SET SCHEMA VERSION 2", 2)]);
    assert!(f.slots.record_ddl("ALTER COLLECTION orders SET SCHEMA VERSION 2", 2, alter).unwrap());
    assert!(!f.slots.record_ddl("ALTER COLLECTION orders SET SCHEMA VERSION 2", 2, alter).unwrap());
    f.commit(&[insert("orders", "o1", &json!({}))]);

    let batch = read(&f.slots, "orders_only").await;
    assert_eq!(
        summary(&batch.changes),
        [s(ChangeOp::Ddl, "users", ""), s(ChangeOp::Ddl, "orders", ""), s(ChangeOp::Insert, "orders", "o1")]
    );
    assert_eq!(batch.changes[1].ddl.as_ref().unwrap().schema_version, 2);
    assert_eq!(batch.changes[2].schema_version, 2, "stamped with the version at its LSN");
    let quiet = read(&f.slots, "no_ddl").await;
    assert_eq!(
        summary(&quiet.changes),
        [s(ChangeOp::Insert, "users", "u1"), s(ChangeOp::Insert, "orders", "o1")]
    );
    assert_eq!(quiet.changes[0].schema_version, 1);
    assert_eq!(f.slots.catalog().version_at("orders", alter - 1), 0);
    // The catalog survives a restart.
    assert_eq!(f.reopen().catalog().version_at("users", u64::MAX), 1);
}

#[tokio::test]
async fn a_transform_lets_a_v1_source_feed_a_v2_target() {
    let f = fixture(LogicalConfig::default());
    let transform: Transform = serde_json::from_value(json!({
        "steps": [
            {"op": "rename", "from": "name", "to": "full_name"},
            {"op": "drop", "field": "legacy_id"},
            {"op": "set", "field": "schema", "value": "v2"},
        ],
        "hook": "split_name",
        "source_version": "v1",
        "target_version": "v2",
    }))
    .unwrap();
    let mut config = SlotConfig::new("v1_to_v2", OutputPlugin::Json);
    config.transform = Some(transform);
    let refused = f.slots.create_slot(config.clone(), None).unwrap_err();
    assert!(refused.to_string().contains("\"split_name\" is not registered"), "{refused}");
    f.slots.register_transform(
        "split_name",
        Arc::new(|change: &mut LogicalChange| {
            let Some(doc) = change.after.as_mut() else { return Ok(true) };
            if doc["full_name"] == "poison" {
                return Err("cannot split a poisoned name".into());
            }
            if doc["full_name"] == "secret" {
                return Ok(false);
            }
            let full = doc["full_name"].as_str().unwrap_or_default().to_string();
            let (first, last) = full.split_once(' ').unwrap_or((&full, ""));
            doc["first"] = json!(first);
            doc["last"] = json!(last);
            Ok(true)
        }),
    );
    f.slots.create_slot(config, None).unwrap();
    f.commit(&[insert("users", "u1", &json!({"name": "Ada Lovelace", "legacy_id": 7}))]);
    f.commit(&[insert("users", "u2", &json!({"name": "secret"}))]);
    let batch = read(&f.slots, "v1_to_v2").await;
    assert_eq!(batch.changes.len(), 1, "the hook kept the secret out");
    assert_eq!(
        batch.changes[0].after,
        Some(json!({"full_name": "Ada Lovelace", "schema": "v2", "first": "Ada", "last": "Lovelace"}))
    );
    f.commit(&[insert("users", "u3", &json!({"name": "poison"}))]);
    let err = f.slots.read_changes("v1_to_v2", 10, WAIT).await.unwrap_err();
    assert!(matches!(err, LogicalError::Transform { ref key, .. } if key == "u3"), "{err}");
}

/// A store the test writes to while a slot snapshots it: documents with the LSN that
/// wrote them, read by the snapshot in key order, live.
type Docs = BTreeMap<(String, String), (Value, Lsn)>;

#[derive(Default, Clone)]
struct Store(Arc<Mutex<Docs>>);

struct LiveSnapshot {
    store: Store,
    after: Option<(String, String)>,
}

impl SnapshotSource for LiveSnapshot {
    fn next_batch(&mut self, max: usize) -> Result<Vec<SnapshotDoc>, String> {
        let store = self.store.0.lock().unwrap();
        let rows: Vec<SnapshotDoc> = store
            .iter()
            .filter(|(k, _)| self.after.as_ref().is_none_or(|a| *k > a))
            .take(max)
            .map(|((c, k), (v, lsn))| SnapshotDoc {
                collection: c.clone(),
                key: Bytes::copy_from_slice(k.as_bytes()),
                value: v.to_string().into(),
                lsn: *lsn,
            })
            .collect();
        if let Some(last) = rows.last() {
            self.after = Some((last.collection.clone(), String::from_utf8_lossy(&last.key).into_owned()));
        }
        Ok(rows)
    }
}

#[tokio::test]
async fn initial_sync_under_concurrent_writes_builds_a_replica_equal_to_the_source() {
    let f = fixture(LogicalConfig::default());
    let store = Store::default();
    let write = |op: OpKind| {
        let lsn = f.commit(std::slice::from_ref(&op));
        let mut docs = store.0.lock().unwrap();
        match op {
            OpKind::Insert { collection, key, value } | OpKind::Update { collection, key, value, .. } => {
                let key = String::from_utf8(key.to_vec()).unwrap();
                docs.insert((collection, key), (serde_json::from_slice(&value).unwrap(), lsn));
            }
            OpKind::Delete { collection, key, .. } => {
                docs.remove(&(collection, String::from_utf8(key.to_vec()).unwrap()));
            }
            _ => unreachable!(),
        }
    };
    let mut rng = fastrand::Rng::with_seed(23);
    for i in 0..300 {
        write(insert("items", &format!("k{i:03}"), &json!({"v": 0})));
    }
    let mut config = SlotConfig::new("replica", OutputPlugin::Json);
    config.initial_sync = true;
    let created = f
        .slots
        .create_slot(config, Some(Box::new(LiveSnapshot { store: store.clone(), after: None })))
        .unwrap();
    assert_eq!(created.record.snapshot_lsn, Some(300));

    let mut replica: BTreeMap<(String, String), Value> = BTreeMap::new();
    let mut apply = |changes: &[LogicalChange]| {
        for c in changes {
            let key = (c.collection.clone(), c.key.clone());
            match c.op {
                ChangeOp::Delete => {
                    replica.remove(&key);
                }
                _ => {
                    replica.insert(key, c.after.clone().unwrap());
                }
            }
        }
    };
    let mut snapshot_rows = 0;
    let mut step = 0;
    loop {
        let batch = f.slots.read_changes("replica", 25, WAIT).await.unwrap();
        snapshot_rows += batch.changes.iter().filter(|c| c.op == ChangeOp::Snapshot).count();
        apply(&batch.changes);
        // Writers keep going: updates of rows already read and not yet read, deletes,
        // inserts, and documents written twice.
        for _ in 0..10 {
            step += 1;
            let key = format!("k{:03}", rng.u32(0..330));
            match rng.u8(0..4) {
                0 => write(delete("items", &key, None)),
                _ => write(update("items", &key, &json!({"v": step}), None)),
            }
        }
        if !batch.snapshot {
            f.slots.advance_slot("replica", batch.confirm_lsn.unwrap()).unwrap();
            break;
        }
    }
    assert!(
        f.slots.record("replica").unwrap().snapshot_lsn.is_none(),
        "confirming the snapshot ends the sync"
    );
    loop {
        let batch = f.slots.read_changes("replica", 100, WAIT).await.unwrap();
        if batch.changes.is_empty() {
            break;
        }
        apply(&batch.changes);
    }
    let source: BTreeMap<(String, String), Value> =
        store.0.lock().unwrap().iter().map(|(k, (v, _))| (k.clone(), v.clone())).collect();
    assert!(snapshot_rows > 250, "{snapshot_rows}");
    assert_eq!(replica, source, "the replica ends equal to the source, document by document");
    let stats = f.slots.slot_info("replica").unwrap().stats;
    assert!(stats.snapshot_deduplicated > 0, "writes during the snapshot were de-duplicated: {stats:?}");
}

#[tokio::test]
async fn slots_survive_a_reopen_and_resume_after_the_confirmed_lsn() {
    let f = fixture(LogicalConfig::default());
    f.slots.create_slot(SlotConfig::new("durable", OutputPlugin::Protobuf), None).unwrap();
    for i in 0..10 {
        f.commit(&[insert("c", &format!("{i}"), &json!({"i": i}))]);
    }
    let first = f.slots.read_changes("durable", 4, WAIT).await.unwrap();
    assert_eq!(first.confirm_lsn, Some(4));
    f.slots.advance_slot("durable", 4).unwrap();
    let more = f.slots.read_changes("durable", 3, WAIT).await.unwrap();
    assert_eq!(
        summary(&more.changes)[0],
        s(ChangeOp::Insert, "c", "4"),
        "a read goes on where the last ended"
    );
    f.slots.pause("durable").unwrap();

    // A restart: the state file gives back the slot, confirmed at 4 and paused; what was
    // read but not confirmed is delivered again, nothing at or before 4 is.
    let again = f.reopen();
    let info = again.slot_info("durable").unwrap();
    assert_eq!((info.record.confirmed_flush_lsn, info.restart_lsn, info.record.paused), (4, 5, true));
    assert_eq!(info.record.config.plugin, OutputPlugin::Protobuf);
    assert!(matches!(again.read_changes("durable", 10, WAIT).await, Err(LogicalError::Paused(_))));
    again.resume("durable").unwrap();
    let resumed = again.read_changes("durable", 100, WAIT).await.unwrap();
    let keys: Vec<String> = resumed.changes.iter().map(|c| c.key.clone()).collect();
    assert_eq!(keys, ["4", "5", "6", "7", "8", "9"]);
    assert_eq!(f.wal.holds().get("slot-durable"), Some(&5));

    // A damaged state file is an error naming it, not a forgotten slot.
    let path = f.dir.path().join("wal/logical_slots/durable.slot");
    let mut bytes = std::fs::read(&path).unwrap();
    let at = bytes.len() - 10;
    bytes[at] ^= 1;
    std::fs::write(&path, bytes).unwrap();
    let cdc = CdcStream::new(CdcConfig::default(), Arc::new(f.wal.clone()), 0, f.hlc.now()).unwrap();
    let err = LogicalReplicationManager::open(path.parent().unwrap(), cdc, None, LogicalConfig::default())
        .unwrap_err();
    assert!(err.to_string().contains("durable.slot") && err.to_string().contains("checksum"), "{err}");
}

#[tokio::test]
async fn bad_requests_are_refused_with_typed_errors() {
    let f = fixture(LogicalConfig { max_slots: 2, ..LogicalConfig::default() });
    for (name, fragment) in
        [("", "1 to 63"), ("Upper", "a-z"), ("a-b", "a-z"), (&"x".repeat(64)[..], "1 to 63")]
    {
        let err = f.slots.create_slot(SlotConfig::new(name, OutputPlugin::Json), None).unwrap_err();
        assert!(matches!(err, LogicalError::BadName { .. }) && err.to_string().contains(fragment), "{err}");
    }
    let mut bad = SlotConfig::new("bad", OutputPlugin::Json);
    bad.predicate = Some("tenant = 'acme'".into());
    assert!(matches!(f.slots.create_slot(bad.clone(), None), Err(LogicalError::Predicate { column: 8, .. })));
    bad.predicate = None;
    bad.include = vec!["orders_{".into()];
    assert!(f.slots.create_slot(bad, None).unwrap_err().to_string().contains("orders_{"));
    assert!("yaml".parse::<OutputPlugin>().is_err());

    f.slots.create_slot(SlotConfig::new("one", OutputPlugin::Json), None).unwrap();
    assert!(matches!(
        f.slots.create_slot(SlotConfig::new("one", OutputPlugin::Avro), None),
        Err(LogicalError::SlotExists(_))
    ));
    f.slots.create_slot(SlotConfig::new("two", OutputPlugin::Json), None).unwrap();
    assert!(
        f.slots
            .create_slot(SlotConfig::new("three", OutputPlugin::Json), None)
            .unwrap_err()
            .to_string()
            .contains("max_slots")
    );
    assert!(matches!(f.slots.advance_slot("nope", 1), Err(LogicalError::NoSlot(_))));
    f.commit(&[insert("c", "1", &json!({}))]);
    assert!(matches!(f.slots.advance_slot("one", 99), Err(LogicalError::AdvanceBeyond { last: 1, .. })));
    f.slots.advance_slot("one", 1).unwrap();
    assert_eq!(
        f.slots.advance_slot("one", 0).unwrap().record.confirmed_flush_lsn,
        1,
        "going back changes nothing"
    );

    // One reader at a time.
    assert_eq!(read(&f.slots, "two").await.changes.len(), 1);
    let slots = f.slots.clone();
    let waiting = tokio::spawn(async move { slots.read_changes("two", 10, Duration::from_secs(5)).await });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let busy = f.slots.read_changes("two", 10, WAIT).await;
    assert!(matches!(busy, Err(LogicalError::Busy(_))), "{busy:?}");
    assert!(f.slots.slot_info("two").unwrap().active);
    f.commit(&[insert("c", "2", &json!({}))]);
    assert_eq!(waiting.await.unwrap().unwrap().changes.len(), 1);

    f.slots.drop_slot("two").unwrap();
    assert!(matches!(f.slots.drop_slot("two"), Err(LogicalError::NoSlot(_))));
    assert!(!f.wal.holds().contains_key("slot-two"));
    assert!(!f.dir.path().join("wal/logical_slots/two.slot").exists());
}

#[tokio::test]
async fn slots_hold_the_wal_and_one_past_max_slot_wal_keep_size_is_lost() {
    let f = fixture(LogicalConfig { max_slot_wal_keep_size: Some(200 << 10), ..LogicalConfig::default() });
    f.slots.create_slot(SlotConfig::new("slow", OutputPlugin::Json), None).unwrap();
    f.slots.create_slot(SlotConfig::new("fast", OutputPlugin::Json), None).unwrap();
    let doc = json!({"pad": "x".repeat(1000)});
    let mut last = 0;
    for i in 0..100 {
        last = f.commit(&[insert("c", &format!("{i}"), &doc)]);
    }
    f.slots.advance_slot("fast", last).unwrap();
    // The log is compacted up to its end (a snapshot covers it): slots keep what they need.
    f.wal.truncate_prefix(last + 1).unwrap();
    assert_eq!(f.wal.first_lsn(), 1, "the slow slot holds the whole log");
    assert!(f.slots.enforce_retention(last + 1).unwrap().is_empty());
    let slow = f.slots.slot_info("slow").unwrap();
    assert_eq!(slow.wal_status, WalStatus::Extended);
    assert!(slow.held_bytes > 64 << 10, "{}", slow.held_bytes);
    assert_eq!(f.slots.slot_info("fast").unwrap().wal_status, WalStatus::Reserved);

    for i in 100..250 {
        last = f.commit(&[insert("c", &format!("{i}"), &doc)]);
    }
    f.slots.advance_slot("fast", last).unwrap();
    assert_eq!(f.slots.enforce_retention(last + 1).unwrap(), ["slow"]);
    let err = f.slots.read_changes("slow", 10, WAIT).await.unwrap_err();
    assert!(matches!(err, LogicalError::Lost { needed: 1, .. }), "{err}");
    assert!(err.to_string().contains("max_slot_wal_keep_size"));
    assert!(!f.wal.holds().contains_key("slot-slow"), "a lost slot's hold is released");
    f.wal.truncate_prefix(last + 1).unwrap();
    assert!(f.wal.first_lsn() > 1, "and the WAL it held is removed");
    assert_eq!(f.reopen().slot_info("slow").unwrap().wal_status, WalStatus::Lost, "lost stays lost");
}

#[tokio::test]
async fn an_idle_slot_advances_past_changes_it_does_not_deliver_without_a_consumer() {
    let f = fixture(LogicalConfig::default());
    let mut config = SlotConfig::new("acme", OutputPlugin::Json);
    config.include = vec!["acme".into()];
    f.slots.create_slot(config, None).unwrap();
    for i in 0..50 {
        f.commit(&[insert("globex", &format!("{i}"), &json!({}))]);
    }
    f.slots.tick().await.unwrap();
    assert_eq!(f.slots.record("acme").unwrap().confirmed_flush_lsn, 50, "nothing it delivers changed");
    assert_eq!(f.wal.holds().get("slot-acme"), Some(&51));
    let wanted = f.commit(&[insert("acme", "a", &json!({}))]);
    f.commit(&[insert("globex", "x", &json!({}))]);
    f.slots.tick().await.unwrap();
    assert_eq!(f.slots.record("acme").unwrap().confirmed_flush_lsn, 50, "a change waits for its consumer");
    let batch = read(&f.slots, "acme").await;
    assert_eq!(summary(&batch.changes), [s(ChangeOp::Insert, "acme", "a")]);
    assert_eq!(batch.confirm_lsn, Some(wanted + 1));
    // Delivered and not yet confirmed: the slot does not move on its own.
    f.commit(&[insert("globex", "y", &json!({}))]);
    f.slots.tick().await.unwrap();
    assert_eq!(f.slots.record("acme").unwrap().confirmed_flush_lsn, 50);
}

#[tokio::test]
async fn each_plugin_decodes_with_its_reference_library_to_the_json_form() {
    let f = fixture(LogicalConfig::default());
    for plugin in OutputPlugin::ALL {
        f.slots.create_slot(SlotConfig::new(plugin.name().replace('-', "_"), plugin), None).unwrap();
    }
    let create = f.commit(&[ddl("CREATE COLLECTION users", 1)]);
    f.commit(&[
        insert("users", "u1", &json!({"name": "Ada", "n": [1, 2]})),
        insert("users", "u2", &json!({})),
    ]);
    f.commit(&[update("users", "u1", &json!({"name": "Ada L"}), Some(&json!({"name": "Ada", "n": [1, 2]})))]);
    f.commit(&[delete("users", "u2", None)]);
    let changes = read(&f.slots, "json").await.changes;
    assert_eq!(changes.len(), 5);
    let json_records = f.slots.encode("json", &changes).unwrap();
    let expected: Vec<Value> = changes.iter().map(|c| json_change(c, true)).collect();
    let parsed: Vec<Value> = json_records.iter().map(|r| serde_json::from_slice(r).unwrap()).collect();
    assert_eq!(parsed, expected);
    assert_eq!(parsed[0]["action"], "T");
    assert_eq!(parsed[0]["lsn"], create);

    // json-txn: one document per entry, the changes inside.
    let txn = f.slots.encode("json_txn", &read(&f.slots, "json_txn").await.changes).unwrap();
    let txns: Vec<Value> = txn.iter().map(|r| serde_json::from_slice(r).unwrap()).collect();
    assert_eq!(txns.len(), 4);
    assert_eq!(txns[1]["change"].as_array().unwrap().len(), 2);
    assert_eq!(txns[1]["change"][0]["data"], json!({"name": "Ada", "n": [1, 2]}));

    // Protobuf, decoded by prost, holds the JSON form's fields.
    let proto = f.slots.encode("protobuf", &read(&f.slots, "protobuf").await.changes).unwrap();
    for (record, json) in proto.iter().zip(&expected) {
        let m: ChangeMessage = prost::Message::decode(&record[..]).unwrap();
        assert_eq!(m.action, json["action"]);
        assert_eq!(m.collection, json["collection"]);
        assert_eq!(m.lsn, json["lsn"]);
        assert_eq!(m.hlc, json["hlc"]);
        assert_eq!(
            m.data_json.map(|d| serde_json::from_str::<Value>(&d).unwrap()),
            json.get("data").cloned()
        );
        assert_eq!(
            m.before_json.map(|d| serde_json::from_str::<Value>(&d).unwrap()),
            json.get("before").cloned()
        );
    }

    // Avro: the registry framing, then a datum apache-avro reads with the served schema.
    let avro = f.slots.encode("avro", &read(&f.slots, "avro").await.changes).unwrap();
    let reader = apache_avro::reader::datum::GenericDatumReader::builder(avro_schema()).build().unwrap();
    for (record, json) in avro.iter().zip(&expected) {
        assert_eq!(&record[..5], &[0, 0, 0, 0, 1]);
        let value = reader.read_value(&mut &record[5..]).unwrap();
        let apache_avro::types::Value::Record(fields) = value else { panic!("{value:?}") };
        let field = |name: &str| fields.iter().find(|(n, _)| n == name).map(|(_, v)| v.clone()).unwrap();
        assert_eq!(
            field("action"),
            apache_avro::types::Value::String(json["action"].as_str().unwrap().into())
        );
        assert_eq!(field("lsn"), apache_avro::types::Value::Long(json["lsn"].as_i64().unwrap()));
        let data = match field("data_json") {
            apache_avro::types::Value::Union(1, text) => match *text {
                apache_avro::types::Value::String(s) => Some(serde_json::from_str::<Value>(&s).unwrap()),
                other => panic!("{other:?}"),
            },
            _ => None,
        };
        assert_eq!(data, json.get("data").cloned());
    }
    assert_eq!(
        f.slots.slot_info("avro").unwrap().stats.bytes_sent,
        avro.iter().map(Bytes::len).sum::<usize>() as u64
    );
}

#[tokio::test]
async fn replicated_records_create_move_forward_and_never_back() {
    let f = fixture(LogicalConfig::default());
    for i in 0..5 {
        f.commit(&[insert("c", &format!("{i}"), &json!({}))]);
    }
    let follower = f.reopen();
    let created = f.slots.create_slot_at(SlotConfig::new("r", OutputPlugin::Json), 2, None).unwrap();
    follower.apply_record(created.record.clone()).unwrap();
    follower.apply_record(created.record.clone()).unwrap();
    assert_eq!(follower.record("r").unwrap().confirmed_flush_lsn, 2);
    let mut moved = created.record.clone();
    moved.confirmed_flush_lsn = 4;
    moved.paused = true;
    follower.apply_record(moved).unwrap();
    follower.apply_record(created.record).unwrap();
    let record = follower.record("r").unwrap();
    assert_eq!((record.confirmed_flush_lsn, record.paused), (4, false), "confirmed never goes back");
    assert_eq!(f.wal.holds().get("slot-r"), Some(&5));
    // Dropped and created again elsewhere, the tombstone missed here: the new slot
    // replaces the old one, at its own position and with its own configuration.
    let mut again = SlotConfig::new("r", OutputPlugin::Avro);
    again.include = vec!["c".into()];
    let mut recreated = themis_logical::SlotRecord::new(again, 1, record.created_at_ms + 1);
    recreated.confirmed_flush_lsn = 1;
    follower.apply_record(recreated).unwrap();
    let record = follower.record("r").unwrap();
    assert_eq!((record.confirmed_flush_lsn, record.config.plugin), (1, OutputPlugin::Avro));
    assert_eq!(f.wal.holds().get("slot-r"), Some(&2));
}

#[tokio::test]
async fn one_read_returns_a_whole_published_batch() {
    let f = fixture(LogicalConfig::default());
    f.slots.create_slot(SlotConfig::new("all", OutputPlugin::Json), None).unwrap();
    let entries: Vec<NewEntry> = (0..1000)
        .map(|i| {
            let op = Op {
                origin: NodeId(3),
                txn: 0,
                kind: insert("c", &format!("{i}"), &json!({"i": i})),
                stamp: None,
            };
            NewEntry::data(f.hlc.now(), encode_batch(&[op]).unwrap())
        })
        .collect();
    let range = f.wal.append(&entries).unwrap();
    let mut next = range.first;
    while next <= range.last {
        let read = f.wal.read_range(next, 1 << 20).unwrap();
        next += read.len() as u64;
        f.cdc.publish(&read);
    }
    let batch = f.slots.read_changes("all", 1000, WAIT).await.unwrap();
    assert_eq!(batch.changes.len(), 1000);
    assert_eq!(batch.confirm_lsn, Some(1000));
}
