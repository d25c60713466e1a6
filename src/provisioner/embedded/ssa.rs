//! The part of server-side apply kube-fake-client leaves out: a field that a manager
//! applied before and no longer applies is removed from the object (unless another
//! manager also owns it). The fake merges each apply into the object, so dropped fields
//! would stay forever; the store removes them right after the apply.
//!
//! The field sets are the fake's own `fieldsV1` tries (`f:key` per map key, anything
//! else a leaf), so ownership is read from `metadata.managedFields` as the fake wrote it.

use serde_json::{Map, Value, json};

/// Top-level and metadata keys the fake leaves out of a field set.
const SKIP_TOP_LEVEL: &[&str] = &["apiVersion", "kind"];
const SKIP_METADATA: &[&str] = &[
    "managedFields",
    "resourceVersion",
    "uid",
    "creationTimestamp",
    "generation",
    "name",
    "namespace",
];

/// The field set an apply of `patch` claims, built as the fake builds it.
fn fields_of(patch: &Value) -> Value {
    fn trie(obj: &Map<String, Value>, top: bool, metadata: bool) -> Map<String, Value> {
        let mut out = Map::new();
        for (k, v) in obj {
            if (top && SKIP_TOP_LEVEL.contains(&k.as_str()))
                || (metadata && SKIP_METADATA.contains(&k.as_str()))
            {
                continue;
            }
            match v.as_object() {
                Some(child) => {
                    let sub = trie(child, false, top && k == "metadata");
                    if !sub.is_empty() {
                        out.insert(format!("f:{k}"), Value::Object(sub));
                    }
                }
                None => {
                    out.insert(format!("f:{k}"), json!({}));
                }
            }
        }
        out
    }
    Value::Object(
        patch
            .as_object()
            .map(|o| trie(o, true, false))
            .unwrap_or_default(),
    )
}

/// The paths (map keys, `f:` stripped) to the leaves of a field set.
fn leaves(trie: &Value, prefix: &mut Vec<String>, out: &mut Vec<Vec<String>>) {
    let Some(map) = trie.as_object() else { return };
    for (k, v) in map {
        let Some(key) = k.strip_prefix("f:") else {
            continue;
        };
        prefix.push(key.to_string());
        if v.as_object().is_some_and(Map::is_empty) {
            out.push(prefix.clone());
        } else {
            leaves(v, prefix, out);
        }
        prefix.pop();
    }
}

/// Whether a field set covers `path` (the path itself, a leaf above it, or fields below it).
fn covers(trie: &Value, path: &[String]) -> bool {
    let mut node = trie;
    for key in path {
        match node.get(format!("f:{key}")) {
            Some(next) if next.as_object().is_some_and(Map::is_empty) => return true,
            Some(next) => node = next,
            None => return false,
        }
    }
    true
}

/// The fields `manager` applied last time, does not apply now, and nobody else owns.
pub fn dropped_fields(existing: &Value, patch: &Value, manager: &str) -> Vec<Vec<String>> {
    let entries: Vec<&Value> = existing["metadata"]["managedFields"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|e| e["subresource"].as_str().unwrap_or("").is_empty())
        .collect();
    let Some(mine) = entries
        .iter()
        .find(|e| e["manager"] == manager && e["operation"] == "Apply")
    else {
        return Vec::new();
    };
    let now = fields_of(patch);
    let mut before = Vec::new();
    leaves(&mine["fieldsV1"], &mut Vec::new(), &mut before);
    before
        .into_iter()
        .filter(|path| !covers(&now, path))
        .filter(|path| {
            !entries
                .iter()
                .filter(|e| e["manager"] != manager)
                .any(|e| covers(&e["fieldsV1"], path))
        })
        .collect()
}

/// A merge patch removing those fields.
pub fn removal_patch(paths: &[Vec<String>]) -> Value {
    let mut patch = json!({});
    for path in paths {
        let mut node = &mut patch;
        for (i, key) in path.iter().enumerate() {
            if i + 1 == path.len() {
                node[key.as_str()] = Value::Null;
            } else {
                if !node[key.as_str()].is_object() {
                    node[key.as_str()] = json!({});
                }
                node = &mut node[key.as_str()];
            }
        }
    }
    patch
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_a_manager_stops_applying_are_dropped_unless_someone_else_owns_them() {
        let first = json!({ "metadata": { "name": "d", "labels": { "a": "1", "b": "2" } },
                            "spec": { "replicas": 1, "template": { "metadata": { "annotations": { "r": "t" } } } } });
        let existing = json!({ "metadata": { "managedFields": [
            { "manager": "podium", "operation": "Apply", "fieldsV1": fields_of(&first) },
            { "manager": "other", "operation": "Apply", "fieldsV1": { "f:metadata": { "f:labels": { "f:b": {} } } } },
        ] } });
        let second = json!({ "metadata": { "name": "d", "labels": { "a": "1" } }, "spec": { "replicas": 0 } });
        let mut dropped = dropped_fields(&existing, &second, "podium");
        dropped.sort();
        assert_eq!(
            dropped,
            vec![vec!["spec", "template", "metadata", "annotations", "r"]]
        );
        assert_eq!(
            removal_patch(&dropped),
            json!({ "spec": { "template": { "metadata": { "annotations": { "r": null } } } } })
        );
        assert!(dropped_fields(&existing, &first, "podium").is_empty());
        assert!(dropped_fields(&existing, &second, "newcomer").is_empty());
    }
}
