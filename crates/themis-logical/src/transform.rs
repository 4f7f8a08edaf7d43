//! Per-slot transforms: declarative steps (rename, drop, set a field) that travel with the
//! slot's configuration, and named hooks registered in code for anything else.

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::change::LogicalChange;

/// A hook: rewrites a change in place, or returns `Ok(false)` to drop it (it then counts
/// as filtered).
pub type TransformHook = Arc<dyn Fn(&mut LogicalChange) -> Result<bool, String> + Send + Sync>;

/// One declarative step, applied to the document after the change and to its before-image.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum Step {
    /// Moves the value at `from` to `to` (dotted paths; missing parents are created).
    Rename {
        /// The field to move.
        from: String,
        /// Where it goes.
        to: String,
    },
    /// Removes a field.
    Drop {
        /// The field.
        field: String,
    },
    /// Sets a field to a value (a version marker, a default).
    Set {
        /// The field.
        field: String,
        /// The value.
        value: Value,
    },
}

/// A slot's transform: steps, optionally limited to some collections, then a named hook.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Transform {
    /// The steps, in order.
    #[serde(default)]
    pub steps: Vec<Step>,
    /// Collections the steps apply to (exact names); empty means every collection.
    #[serde(default)]
    pub collections: Vec<String>,
    /// The name of a hook registered with
    /// [`LogicalReplicationManager::register_transform`](crate::LogicalReplicationManager::register_transform),
    /// run after the steps.
    #[serde(default)]
    pub hook: Option<String>,
    /// The source schema version the transform reads (for the record).
    #[serde(default)]
    pub source_version: Option<String>,
    /// The target schema version it produces (for the record).
    #[serde(default)]
    pub target_version: Option<String>,
}

impl Transform {
    /// Checks the steps' paths; the error names the step.
    pub fn validate(&self) -> Result<(), String> {
        for (i, step) in self.steps.iter().enumerate() {
            let paths: Vec<&str> = match step {
                Step::Rename { from, to } => vec![from, to],
                Step::Drop { field } | Step::Set { field, .. } => vec![field],
            };
            for path in paths {
                if path.is_empty() || path.split('.').any(str::is_empty) {
                    return Err(format!("transform step {}: field path {path:?} has an empty part", i + 1));
                }
            }
        }
        Ok(())
    }

    /// Applies the steps to the change's documents (DDL and deletes without a
    /// before-image have none to rewrite).
    pub(crate) fn apply_steps(&self, change: &mut LogicalChange) {
        if self.steps.is_empty()
            || (!self.collections.is_empty() && !self.collections.contains(&change.collection))
        {
            return;
        }
        for doc in [change.before.as_mut(), change.after.as_mut()].into_iter().flatten() {
            for step in &self.steps {
                match step {
                    Step::Rename { from, to } => {
                        if let Some(value) = take(doc, from) {
                            put(doc, to, value);
                        }
                    }
                    Step::Drop { field } => {
                        take(doc, field);
                    }
                    Step::Set { field, value } => put(doc, field, value.clone()),
                }
            }
        }
    }
}

fn take(doc: &mut Value, path: &str) -> Option<Value> {
    let (parent, last) = match path.rsplit_once('.') {
        Some((parent, last)) => (parent.split('.').try_fold(&mut *doc, |at, part| at.get_mut(part))?, last),
        None => (doc, path),
    };
    parent.as_object_mut()?.remove(last)
}

fn put(doc: &mut Value, path: &str, value: Value) {
    let mut at = doc;
    let mut parts = path.split('.').peekable();
    while let Some(part) = parts.next() {
        let Value::Object(map) = at else { return };
        if parts.peek().is_none() {
            map.insert(part.to_string(), value);
            return;
        }
        at = map.entry(part.to_string()).or_insert_with(|| Value::Object(Map::new()));
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;
    use themis_cdc::ChangeOp;
    use themis_clock::{NodeId, Timestamp};

    use super::*;

    #[test]
    fn steps_rename_drop_and_set_nested_fields_in_both_images() {
        let transform: Transform = serde_json::from_value(json!({
            "steps": [
                {"op": "rename", "from": "name", "to": "profile.full_name"},
                {"op": "drop", "field": "legacy.flag"},
                {"op": "set", "field": "schema", "value": 2},
            ],
            "collections": ["users"],
        }))
        .unwrap();
        transform.validate().unwrap();
        let mut change = LogicalChange {
            op: ChangeOp::Update,
            collection: "users".into(),
            key: "u1".into(),
            before: Some(json!({"name": "Ada", "legacy": {"flag": true, "keep": 1}})),
            after: Some(json!({"name": "Ada L", "schema": 1})),
            lsn: 1,
            index: 0,
            hlc: Timestamp::from_raw(1 << 16, NodeId(1)),
            origin: NodeId(1),
            txn: 0,
            schema_version: 1,
            ddl: None,
        };
        let mut other = change.clone();
        other.collection = "orders".into();
        transform.apply_steps(&mut change);
        assert_eq!(
            change.before,
            Some(json!({"profile": {"full_name": "Ada"}, "legacy": {"keep": 1}, "schema": 2}))
        );
        assert_eq!(change.after, Some(json!({"profile": {"full_name": "Ada L"}, "schema": 2})));
        let untouched = other.clone();
        transform.apply_steps(&mut other);
        assert_eq!(other, untouched, "only the listed collections are rewritten");

        let bad: Transform =
            serde_json::from_value(json!({"steps": [{"op": "drop", "field": "a..b"}]})).unwrap();
        assert!(bad.validate().unwrap_err().contains("step 1"));
        assert!(serde_json::from_value::<Transform>(json!({"steps": [{"op": "explode"}]})).is_err());
    }
}
