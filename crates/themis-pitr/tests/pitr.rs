//! Archive and restore over real stores: a model of the data at every point, restores to
//! many of them (by LSN, HLC and time) equal to it key by key; corrupted records never
//! restored; wrong keys, missing and truncated objects, foreign manifests and gaps
//! refused by name; create-only writes racing; a real S3 server (moto).

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::Bytes;
use object_store::memory::InMemory;
use object_store::path::Path as StorePath;
use object_store::{ObjectStore, PutPayload};
use themis_clock::{NodeId, Timestamp};
use themis_pitr::{
    Archive, Archiver, ArchiverConfig, Keyring, PitrError, Put, RestoreTarget, RetentionPolicy, restore,
};
use themis_ship::{MemoryStateMachine, StateMachine};
use themis_wal::op::{Op, OpKind, encode_batch};
use themis_wal::{FsyncPolicy, Lsn, NewEntry, Wal, WalConfig};

const KEYS: u32 = 40;
/// Entry `i` commits at this physical time (ms), so times map to LSNs exactly.
const T0: u64 = 1_800_000_000_000;

type Model = BTreeMap<u32, Option<String>>;

fn ts(lsn: Lsn) -> Timestamp {
    Timestamp::from_parts(T0 + lsn * 10, 0, NodeId(1)).unwrap()
}

/// The op entry `lsn` carries: an upsert of one key, or every tenth a delete.
fn op(lsn: Lsn) -> (u32, Option<String>) {
    let key = (lsn * 7 % u64::from(KEYS)) as u32;
    if lsn.is_multiple_of(10) { (key, None) } else { (key, Some(format!("v{lsn}"))) }
}

struct Fixture {
    _dir: tempfile::TempDir,
    wal: Wal,
    /// The model after each LSN (index = LSN).
    models: Vec<Model>,
}

fn fixture(entries: u64) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let config = WalConfig {
        fsync: FsyncPolicy::Never,
        segment_bytes: 256 << 10,
        max_record_bytes: 32 << 10,
        preallocate: false,
        ..WalConfig::default()
    };
    let (wal, _) = Wal::open(dir.path(), config).unwrap();
    let mut models = vec![Model::new()];
    for lsn in 1..=entries {
        let (key, value) = op(lsn);
        let kind = match &value {
            Some(v) => OpKind::Upsert {
                collection: "c".into(),
                key: Bytes::from(key.to_string()),
                value: Bytes::from(v.clone()),
            },
            None => {
                OpKind::Delete { collection: "c".into(), key: Bytes::from(key.to_string()), before: None }
            }
        };
        let payload = encode_batch(&[Op { origin: NodeId(1), txn: 0, kind, stamp: None }]).unwrap();
        wal.append(&[NewEntry::data(ts(lsn), payload)]).unwrap();
        let mut model = models.last().unwrap().clone();
        model.insert(key, value);
        models.push(model);
    }
    Fixture { _dir: dir, wal, models }
}

/// The test's seed: `THEMIS_PITR_SEED`, or a fresh one (printed, to replay).
fn seed() -> u64 {
    std::env::var("THEMIS_PITR_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| fastrand::u64(..))
}

fn state_of(machine: &MemoryStateMachine) -> Model {
    (0..KEYS)
        .map(|k| {
            (k, machine.get("c", k.to_string().as_bytes()).map(|v| String::from_utf8(v.to_vec()).unwrap()))
        })
        .collect()
}

fn normalize(model: &Model) -> Model {
    (0..KEYS).map(|k| (k, model.get(&k).cloned().flatten())).collect()
}

/// A snapshot of the store as it stood after `lsn`.
fn snapshot_at(f: &Fixture, lsn: Lsn) -> Bytes {
    let machine = MemoryStateMachine::new();
    for l in 1..=lsn {
        let entry = f.wal.read(l).unwrap();
        machine.apply(l, &themis_wal::op::decode_batch(&entry.payload).unwrap()).unwrap();
    }
    machine.snapshot().unwrap()
}

/// Archives the fixture's log in small chunks with base backups at 0 and `mid`.
async fn archive_all(f: &Fixture, archive: &Archive, mid: Lsn) {
    let config = ArchiverConfig { chunk_bytes: 4 << 10, ..ArchiverConfig::default() };
    let mut archiver = Archiver::start(archive.clone(), config).await.unwrap();
    archiver.base_backup(&MemoryStateMachine::new().snapshot().unwrap(), 0, Timestamp::ZERO).await.unwrap();
    archiver.step(&f.wal, mid, true).await.unwrap();
    archiver.base_backup(&snapshot_at(f, mid), mid, ts(mid)).await.unwrap();
    archiver.step(&f.wal, f.wal.last_lsn(), true).await.unwrap();
    assert_eq!(archiver.position(), f.wal.last_lsn());
}

fn memory_archive(cluster: &str, key: [u8; 32]) -> (Arc<InMemory>, Archive) {
    let store = Arc::new(InMemory::new());
    let archive =
        Archive::with_store(store.clone(), StorePath::from("prod"), cluster, Arc::new(Keyring::new(key)));
    (store, archive)
}

#[tokio::test]
async fn restores_to_many_points_equal_the_model_key_by_key() {
    let f = fixture(1500);
    let (_, archive) = memory_archive("prod", [1; 32]);
    archive_all(&f, &archive, 700).await;
    let manifest = archive.manifest().await.unwrap();
    assert!(manifest.wal.len() > 10, "small chunks make many objects: {}", manifest.wal.len());
    assert_eq!(manifest.base.len(), 2);
    let seed = seed();
    println!("pitr model seed {seed} (replay with THEMIS_PITR_SEED={seed})");
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut points: Vec<(RestoreTarget, Lsn)> =
        vec![(RestoreTarget::Latest, 1500), (RestoreTarget::Lsn(0), 0), (RestoreTarget::Lsn(700), 700)];
    for _ in 0..40 {
        let lsn = rng.u64(1..=1500);
        let target = match rng.u8(0..3) {
            0 => RestoreTarget::Lsn(lsn),
            1 => RestoreTarget::Hlc(ts(lsn)),
            // A time between two commits restores the earlier one.
            _ => RestoreTarget::TimeMs(T0 + lsn * 10 + 5),
        };
        points.push((target, lsn));
    }
    for (target, lsn) in points {
        let machine = MemoryStateMachine::new();
        let report = restore(&archive, target, &machine, 4, |_, _| {}).await.unwrap();
        assert_eq!(report.restored_lsn, lsn, "{target} (seed {seed})");
        assert_eq!(
            report.base_lsn,
            if lsn >= 700 { 700 } else { 0 },
            "{target}: the newest base at or before it"
        );
        assert_eq!(state_of(&machine), normalize(&f.models[lsn as usize]), "{target} (seed {seed})");
    }
}

#[tokio::test]
async fn corrupted_records_are_never_restored() {
    let f = fixture(1000);
    let (store, archive) = memory_archive("prod", [2; 32]);
    archive_all(&f, &archive, 400).await;
    let manifest = archive.manifest().await.unwrap();
    let seed = seed();
    println!("pitr corruption seed {seed}");
    let mut rng = fastrand::Rng::with_seed(seed);
    // 100 corruptions, each in a random WAL object at a random byte.
    for _ in 0..100 {
        let entry = &manifest.wal[rng.usize(..manifest.wal.len())];
        let path = StorePath::from(format!("prod/{}", entry.object));
        let mut bytes = store.get(&path).await.unwrap().bytes().await.unwrap().to_vec();
        let at = rng.usize(..bytes.len());
        bytes[at] ^= 1 << rng.u8(0..8);
        store.put(&path, PutPayload::from(bytes)).await.unwrap();
    }
    for _ in 0..10 {
        let lsn = rng.u64(1..=1000);
        let machine = MemoryStateMachine::new();
        match restore(&archive, RestoreTarget::TimeMs(T0 + lsn * 10), &machine, 4, |_, _| {}).await {
            Ok(report) => {
                assert_eq!(report.restored_lsn, lsn);
                assert_eq!(state_of(&machine), normalize(&f.models[lsn as usize]), "seed {seed}");
            }
            Err(PitrError::Damaged { object, first_lsn, last_lsn, restorable_to, .. }) => {
                assert!(object.starts_with("wal/"), "{object}");
                assert!(
                    first_lsn <= lsn && restorable_to < lsn && restorable_to + 1 >= first_lsn.min(401),
                    "seed {seed}"
                );
                assert!(last_lsn >= first_lsn);
            }
            Err(e) => panic!("seed {seed}: {e}"),
        }
    }
    let report = archive.verify(4).await.unwrap();
    assert!(!report.is_healthy() && !report.damaged.is_empty(), "{report:?}");
}

#[tokio::test]
async fn wrong_keys_missing_truncated_foreign_and_gapped_archives_are_refused_by_name() {
    let f = fixture(300);
    let (store, archive) = memory_archive("prod", [3; 32]);
    archive_all(&f, &archive, 100).await;
    let manifest = archive.manifest().await.unwrap();
    let m = MemoryStateMachine::new();

    // The wrong key: named, with the keys the keyring holds.
    let wrong =
        Archive::with_store(store.clone(), StorePath::from("prod"), "prod", Arc::new(Keyring::new([4; 32])));
    let err = restore(&wrong, RestoreTarget::Latest, &m, 2, |_, _| {}).await.unwrap_err();
    assert!(matches!(err, PitrError::UnknownKey { .. }), "{err}");
    // Rotation: the old key kept for reading, a new one current; old objects still open.
    let mut ring = Keyring::new([5; 32]);
    ring.add([3; 32]);
    let rotated = Archive::with_store(store.clone(), StorePath::from("prod"), "prod", Arc::new(ring));
    assert_eq!(restore(&rotated, RestoreTarget::Latest, &m, 2, |_, _| {}).await.unwrap().restored_lsn, 300);

    // A truncated object, then a missing one.
    let victim = &manifest.wal[3];
    let path = StorePath::from(format!("prod/{}", victim.object));
    let bytes = store.get(&path).await.unwrap().bytes().await.unwrap();
    store.put(&path, PutPayload::from(bytes.slice(..bytes.len() - 7))).await.unwrap();
    let err = restore(&archive, RestoreTarget::Latest, &m, 2, |_, _| {}).await.unwrap_err();
    let text = err.to_string();
    assert!(text.contains(&victim.object) && text.contains("bytes, the manifest says"), "{text}");
    let PitrError::Damaged { restorable_to, .. } = err else { panic!() };
    assert_eq!(restorable_to, victim.first_lsn - 1);
    store.delete(&path).await.unwrap();
    let err = restore(&archive, RestoreTarget::Latest, &m, 2, |_, _| {}).await.unwrap_err();
    assert!(err.to_string().contains("cannot be read"), "{err}");
    // ... but a restore to before it does not need it.
    let before = RestoreTarget::Lsn(victim.first_lsn - 1);
    assert_eq!(restore(&archive, before, &m, 2, |_, _| {}).await.unwrap().restored_lsn, victim.first_lsn - 1);

    // The manifest entry gone too: a gap, named.
    let entry_path = StorePath::from(format!(
        "prod/{}",
        themis_pitr::entry_name(themis_pitr::Kind::Wal, victim.first_lsn)
    ));
    store.delete(&entry_path).await.unwrap();
    let err = restore(&archive, RestoreTarget::Latest, &m, 2, |_, _| {}).await.unwrap_err();
    assert!(matches!(err, PitrError::Gap { missing_from, .. } if missing_from == victim.first_lsn), "{err}");
    let report = archive.verify(2).await.unwrap();
    assert_eq!(report.gaps, [(victim.first_lsn, victim.last_lsn)]);

    // Another cluster's archive under the same prefix: refused, naming the entry.
    let foreign = Archive::with_store(
        store.clone(),
        StorePath::from("prod"),
        "staging",
        Arc::new(Keyring::new([3; 32])),
    );
    assert!(matches!(foreign.manifest().await.unwrap_err(), PitrError::ForeignCluster { .. }));

    // Targets before the oldest base backup, past the end, and that do not parse.
    let (_, empty) = memory_archive("prod", [3; 32]);
    assert!(
        restore(&empty, RestoreTarget::Latest, &m, 2, |_, _| {})
            .await
            .unwrap_err()
            .to_string()
            .contains("no base backup")
    );
    let err = restore(&rotated, RestoreTarget::Lsn(10_000), &m, 2, |_, _| {}).await.unwrap_err();
    assert!(matches!(err, PitrError::Unreachable { .. } | PitrError::Gap { .. }), "{err}");
    for bad in ["", "lsn:x", "hlc:yesterday", "2026-13-01T00:00:00Z", "tomorrow"] {
        assert!(bad.parse::<RestoreTarget>().is_err(), "{bad}");
    }
    assert_eq!(
        "2026-12-06T10:00:00.5Z".parse::<RestoreTarget>().unwrap(),
        RestoreTarget::TimeMs(1_796_551_200_500)
    );
    assert_eq!(
        "2026-12-06T11:00:00+01:00".parse::<RestoreTarget>().unwrap(),
        RestoreTarget::TimeMs(1_796_551_200_000)
    );
    assert_eq!("lsn:42".parse::<RestoreTarget>().unwrap(), RestoreTarget::Lsn(42));
}

#[tokio::test]
async fn racing_archivers_on_a_local_directory_never_overwrite_or_duplicate() {
    let f = fixture(200);
    let dir = tempfile::tempdir().unwrap();
    let url = format!("file://{}", dir.path().display());
    let keyring = Arc::new(Keyring::new([6; 32]));
    let a = Archive::open(&url, std::iter::empty::<(&str, &str)>(), "prod", keyring.clone()).unwrap();
    let b = Archive::open(&url, std::iter::empty::<(&str, &str)>(), "prod", keyring).unwrap();
    let mut first = Archiver::start(a.clone(), ArchiverConfig::default()).await.unwrap();
    first.base_backup(&MemoryStateMachine::new().snapshot().unwrap(), 0, Timestamp::ZERO).await.unwrap();
    first.step(&f.wal, 120, true).await.unwrap();
    // A second archiver that started before the first wrote (an old leader): its write of
    // the same range finds the entry and goes on after it; nothing is overwritten.
    let mut second = Archiver::start(b.clone(), ArchiverConfig::default()).await.unwrap();
    assert_eq!(second.position(), 120);
    let stale = b
        .put_wal(&f.wal.read_raw_upto(1, 50, usize::MAX).unwrap().bytes, 1, 50, ts(1), ts(50))
        .await
        .unwrap();
    assert!(matches!(stale, Put::Exists(ref e) if e.last_lsn == 120), "{stale:?}");
    second.step(&f.wal, 200, true).await.unwrap();
    let manifest = a.manifest().await.unwrap();
    assert!(manifest.gaps().is_empty() && manifest.overlaps().is_empty(), "{manifest:?}");
    assert_eq!(manifest.archived_through(), 200);
    let report = a.verify(4).await.unwrap();
    assert!(report.is_healthy(), "{report:?}");
    // A cached listing reads only new entries and agrees with a full one.
    let mut cache = std::collections::BTreeMap::new();
    assert_eq!(a.manifest_cached(&mut cache).await.unwrap(), manifest);
    let cached = cache.len();
    assert_eq!(a.manifest_cached(&mut cache).await.unwrap(), manifest);
    assert_eq!(cache.len(), cached);
    let m = MemoryStateMachine::new();
    restore(&a, RestoreTarget::Latest, &m, 4, |_, _| {}).await.unwrap();
    assert_eq!(state_of(&m), normalize(&f.models[200]));
}

/// A moto S3 server on a free port, or `None` (outside CI) when it is not installed.
fn moto() -> Option<(std::process::Child, u16)> {
    let binary = std::env::var("THEMIS_MOTO").unwrap_or_else(|_| "moto_server".into());
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let child = std::process::Command::new(&binary)
        .args(["-H", "127.0.0.1", "-p", &port.to_string()])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn();
    match child {
        Ok(child) => {
            for _ in 0..200 {
                if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                    return Some((child, port));
                }
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
            panic!("moto_server did not listen on {port}");
        }
        Err(e) if std::env::var("CI").as_deref() == Ok("true") => {
            panic!("{binary}: {e}; CI must have moto (`pip install 'moto[server]'`, as .ci/run does)")
        }
        Err(e) => {
            eprintln!("skipped: {binary}: {e}; install it with `pip install 'moto[server]'`");
            None
        }
    }
}

/// One plain HTTP request to moto (it does not check signatures); the answer's head and body.
fn http(port: u16, method: &str, path: &str) -> String {
    use std::io::{Read, Write};
    let mut tcp = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(
        tcp,
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut answer = String::new();
    tcp.read_to_string(&mut answer).unwrap();
    answer
}

fn create_bucket(port: u16, bucket: &str) {
    let answer = http(port, "PUT", &format!("/{bucket}"));
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_s3_server_archives_create_only_and_restores() {
    let Some((mut server, port)) = moto() else { return };
    create_bucket(port, "themis-archive");
    let f = fixture(400);
    let options = [
        ("aws_endpoint", format!("http://127.0.0.1:{port}")),
        ("aws_allow_http", "true".into()),
        ("aws_region", "us-east-1".into()),
        ("aws_access_key_id", "test".into()),
        ("aws_secret_access_key", "test".into()),
    ];
    let keyring = Arc::new(Keyring::new([7; 32]));
    let archive =
        Archive::open("s3://themis-archive/clusters/prod", options.clone(), "prod", keyring.clone()).unwrap();
    archive_all(&f, &archive, 150).await;
    let m = MemoryStateMachine::new();
    let report = restore(&archive, RestoreTarget::Lsn(333), &m, 4, |_, _| {}).await.unwrap();
    assert_eq!(report.restored_lsn, 333);
    assert_eq!(state_of(&m), normalize(&f.models[333]));
    // Old objects move to a colder storage class and still restore.
    let cold = RetentionPolicy {
        transition_to_cold_after_days: Some(7),
        cold_storage_class: Some("STANDARD_IA".into()),
        ..RetentionPolicy::default()
    };
    let report = archive.apply_retention(&cold, now_ms() + 8 * DAY, false).await.unwrap();
    assert!(!report.cold.is_empty() && report.deleted.is_empty(), "{report:?}");
    let manifest = archive.manifest().await.unwrap();
    assert!(manifest.wal.iter().all(|e| e.tier == "cold"));
    // moto's own view of its objects says which class each is stored with.
    let state = http(port, "GET", "/moto-api/data.json");
    assert!(state.contains(r#""storage_class": "STANDARD_IA""#), "the objects were not rewritten cold");
    let m = MemoryStateMachine::new();
    assert_eq!(restore(&archive, RestoreTarget::Latest, &m, 4, |_, _| {}).await.unwrap().restored_lsn, 400);
    // Create-only on S3 too: a second write of an existing entry finds it.
    let again = archive.put_base(b"other bytes", 150, ts(150)).await.unwrap();
    assert!(matches!(again, Put::Exists(_)), "{again:?}");
    assert!(archive.verify(4).await.unwrap().is_healthy());
    server.kill().unwrap();
    server.wait().unwrap();
}

fn now_ms() -> u64 {
    u64::try_from(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis())
        .unwrap()
}

const DAY: u64 = 86_400_000;

#[tokio::test]
async fn retention_keeps_base_backups_by_count_and_age_and_the_wal_they_need() {
    let f = fixture(400);
    let (_, archive) = memory_archive("prod", [8; 32]);
    let config = ArchiverConfig { chunk_bytes: 4 << 10, ..ArchiverConfig::default() };
    let mut archiver = Archiver::start(archive.clone(), config).await.unwrap();
    archiver.base_backup(&MemoryStateMachine::new().snapshot().unwrap(), 0, Timestamp::ZERO).await.unwrap();
    for base in [100, 200, 300] {
        archiver.step(&f.wal, base, true).await.unwrap();
        archiver.base_backup(&snapshot_at(&f, base), base, ts(base)).await.unwrap();
    }
    archiver.step(&f.wal, 400, true).await.unwrap();
    let before = archive.manifest().await.unwrap();
    assert_eq!(before.base.len(), 4);

    // Nothing is old yet, and a dry run changes nothing.
    let young = RetentionPolicy { keep_base_days: Some(1), ..RetentionPolicy::default() };
    assert!(archive.apply_retention(&young, now_ms(), false).await.unwrap().deleted.is_empty());
    let two = RetentionPolicy { keep_base_backups: Some(2), ..RetentionPolicy::default() };
    let dry = archive.apply_retention(&two, now_ms(), true).await.unwrap();
    assert_eq!(dry.oldest_base, Some(200));
    assert_eq!(archive.manifest().await.unwrap(), before, "a dry run changes nothing");

    // The newest two base backups stay, and the WAL after the oldest of them.
    let report = archive.apply_retention(&two, now_ms(), false).await.unwrap();
    assert!(report.deleted.contains(&"base/00000000000000000000.tpa".to_string()), "{report:?}");
    let after = archive.manifest().await.unwrap();
    assert_eq!(after.base.iter().map(|b| b.last_lsn).collect::<Vec<_>>(), [200, 300]);
    assert!(after.wal.iter().all(|w| w.last_lsn > 200) && after.wal.first().unwrap().first_lsn <= 201);
    assert!(archive.verify(4).await.unwrap().is_healthy());
    let m = MemoryStateMachine::new();
    assert_eq!(restore(&archive, RestoreTarget::Latest, &m, 4, |_, _| {}).await.unwrap().restored_lsn, 400);
    assert_eq!(state_of(&m), normalize(&f.models[400]));
    let err = restore(&archive, RestoreTarget::Lsn(150), &m, 4, |_, _| {}).await.unwrap_err();
    assert!(err.to_string().contains("oldest base backup is at LSN 200"), "{err}");

    // Past delete_after_days only the newest base backup and the WAL after it stay.
    let old = RetentionPolicy { delete_after_days: Some(30), ..RetentionPolicy::default() };
    archive.apply_retention(&old, now_ms() + 31 * DAY, false).await.unwrap();
    let last = archive.manifest().await.unwrap();
    assert_eq!(last.base.iter().map(|b| b.last_lsn).collect::<Vec<_>>(), [300]);
    assert_eq!(restore(&archive, RestoreTarget::Latest, &m, 4, |_, _| {}).await.unwrap().restored_lsn, 400);
}

#[tokio::test]
async fn an_archiver_with_bad_settings_is_refused_by_name() {
    for (config, needle) in [
        (ArchiverConfig { chunk_bytes: 0, ..ArchiverConfig::default() }, "chunk_bytes = 0"),
        (ArchiverConfig { chunk_bytes: 2 << 30, ..ArchiverConfig::default() }, "chunk_bytes = 2147483648"),
        (ArchiverConfig { max_age: std::time::Duration::ZERO, ..ArchiverConfig::default() }, "max_age = 0ns"),
    ] {
        let (_, archive) = memory_archive("bad", [7; 32]);
        let err = Archiver::start(archive, config).await.unwrap_err();
        assert!(matches!(&err, PitrError::Config(m) if m.contains(needle)), "{needle}: {err}");
    }
}
