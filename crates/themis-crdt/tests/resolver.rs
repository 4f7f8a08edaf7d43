//! Every resolution strategy, the audit trail, and configuration rejection.

use std::sync::Arc;

use themis_clock::{NodeId, Timestamp};
use themis_crdt::{
    AuditLog, AuditSink, ConflictRecord, ConflictResolver, Crdt, CrdtError, CustomResolver, GCounter,
    LostValue, Outcome, Resolution, ResolverConfig, Strategy, Version,
};

fn version(value: &[u8], ms: u64, node: u64) -> Version {
    Version {
        value: value.to_vec(),
        timestamp: Timestamp::from_parts(ms, 0, NodeId(node)).unwrap(),
        origin: NodeId(node),
    }
}

fn config(text: &str) -> Result<ConflictResolver, CrdtError> {
    let config: ResolverConfig = toml::from_str(text).unwrap();
    ConflictResolver::from_config(&config, [], None)
}

#[test]
fn first_writer_wins_and_keep_both_record_what_happened() {
    let (old, new) = (version(b"a", 1, 1), version(b"b", 2, 2));
    let fww = ConflictResolver::new(Strategy::FirstWriterWins, AuditLog::new(1, None));
    assert_eq!(fww.resolve("c", b"k", &new, &old).unwrap(), Resolution::Keep(old.clone()));
    assert_eq!(fww.audit().recent()[0].outcome, Outcome::RemoteWon);
    assert_eq!(fww.audit().recent()[0].lost, Some(LostValue::Value(b"b".to_vec())));

    let both = ConflictResolver::new(Strategy::KeepBoth, AuditLog::new(10, None));
    assert_eq!(
        both.resolve("c", b"k", &new, &old).unwrap(),
        Resolution::Siblings(vec![old.clone(), new.clone()])
    );
    assert_eq!(both.audit().recent()[0].lost, None);
    // Identical versions are no conflict and leave no record.
    both.resolve("c", b"k", &old, &old).unwrap();
    assert_eq!(both.audit().total(), 1);
}

#[test]
fn crdt_merge_merges_and_bad_bytes_are_a_named_error() {
    let resolver = config("[default]\nstrategy = \"crdt\"\ncrdt_type = \"g_counter\"\n").unwrap();
    let (mut a, mut b) = (GCounter::new(), GCounter::new());
    a.increment(NodeId(1), 2).unwrap();
    b.increment(NodeId(2), 3).unwrap();
    let local = version(&postcard::to_stdvec(&a).unwrap(), 1, 1);
    let remote = version(&postcard::to_stdvec(&b).unwrap(), 2, 2);
    let Resolution::Keep(merged) = resolver.resolve("likes", b"post", &local, &remote).unwrap() else {
        panic!()
    };
    let mut expected = a.clone();
    expected.merge(&b).unwrap();
    assert_eq!(postcard::from_bytes::<GCounter>(&merged.value).unwrap(), expected);
    assert_eq!(resolver.audit().recent()[0].outcome, Outcome::Merged);

    let err =
        resolver.resolve("likes", b"post", &version(&[0xff; 3], 1, 1), &remote).unwrap_err().to_string();
    assert!(err.contains("\"likes\"") && err.contains("local value is not a valid g_counter"), "{err}");
}

#[test]
fn large_losers_are_recorded_by_digest_and_the_memory_log_is_bounded() {
    let resolver = ConflictResolver::new(Strategy::LastWriterWins, AuditLog::new(2, None));
    for i in 0..5 {
        resolver.resolve("c", b"k", &version(&vec![7; 1000], i, 1), &version(b"x", i + 10, 2)).unwrap();
    }
    assert_eq!((resolver.audit().recent().len(), resolver.audit().total()), (2, 5));
    assert!(matches!(resolver.audit().recent()[0].lost, Some(LostValue::Digest { len: 1000, .. })));
}

#[derive(Debug)]
struct FailingSink;
impl AuditSink for FailingSink {
    fn persist(&self, _: &ConflictRecord) -> Result<(), String> {
        Err("disk full".into())
    }
}

#[test]
fn a_failing_sink_withholds_the_resolution() {
    let resolver =
        ConflictResolver::new(Strategy::LastWriterWins, AuditLog::new(10, Some(Box::new(FailingSink))));
    let err = resolver.resolve("c", b"k", &version(b"a", 1, 1), &version(b"b", 2, 2)).unwrap_err();
    assert!(matches!(err, CrdtError::Audit { ref reason, .. } if reason == "disk full"), "{err}");
}

#[derive(Debug)]
struct Concat;
impl CustomResolver for Concat {
    fn resolve(&self, _: &str, _: &[u8], local: &Version, remote: &Version) -> Result<Resolution, String> {
        Ok(Resolution::Keep(Version {
            value: [&local.value[..], &remote.value[..]].concat(),
            ..remote.clone()
        }))
    }
}

#[test]
fn custom_resolvers_are_registered_by_name() {
    let resolver = ConflictResolver::new(Strategy::LastWriterWins, AuditLog::new(10, None))
        .with_custom("concat", Arc::new(Concat))
        .with_collection("logs", Strategy::Custom("concat".into()))
        .unwrap();
    let Resolution::Keep(v) =
        resolver.resolve("logs", b"k", &version(b"a", 1, 1), &version(b"b", 2, 2)).unwrap()
    else {
        panic!()
    };
    assert_eq!(v.value, b"ab");
    assert!(
        ConflictResolver::new(Strategy::KeepBoth, AuditLog::new(1, None))
            .with_collection("x", Strategy::Custom("missing".into()))
            .is_err()
    );
}

#[test]
fn invalid_configuration_is_rejected_naming_the_entry() {
    let cases = [
        ("[default]\nstrategy = \"newest\"\n", "default: unknown strategy \"newest\""),
        ("[default]\nstrategy = \"crdt\"\n", "default: strategy \"crdt\" needs crdt_type"),
        ("[default]\nstrategy = \"crdt\"\ncrdt_type = \"bag\"\n", "unknown crdt_type \"bag\""),
        (
            "[default]\nstrategy = \"keep_both\"\n[collections.likes]\nstrategy = \"last_writer_wins\"\ncrdt_type = \"g_counter\"\n",
            "collections.likes: crdt_type is set but strategy is \"last_writer_wins\"",
        ),
        (
            "[default]\nstrategy = \"custom\"\nresolver = \"nope\"\n",
            "custom resolver \"nope\" is not registered",
        ),
    ];
    for (text, expected) in cases {
        let err = config(text).unwrap_err().to_string();
        assert!(err.contains(expected), "{text:?}: {err}");
    }
    assert!(
        toml::from_str::<ResolverConfig>("[default]\nstrategy = \"keep_both\"\nstratgy = \"x\"\n").is_err()
    );
}
