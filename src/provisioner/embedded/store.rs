//! The object store: kube-fake-client's in-memory API (server-side apply with managed
//! fields, merge/strategic/JSON patches, label and field selectors, resourceVersions)
//! behind a thin layer that adds what it lacks: watch events for every mutation, list
//! resourceVersions a watcher can resume from, cascading deletes that are seen by
//! watchers, Namespace paths, the namespace-exists and name checks of a real API server,
//! and no-op applies that change nothing (no new resourceVersion, no event).
//!
//! Every write (HTTP front and simulated kubelet alike) goes through `mutate`/`delete`,
//! which hold the write lock across the store call and the publication, so events leave
//! in resourceVersion order and a list (read lock) matches the resourceVersion it reports.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use chrono::{SecondsFormat, Utc};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::GetParams;
use rand::RngExt;
use serde_json::{Value, json};
use tokio::sync::{Notify, RwLock};

use super::apipath::{ApiPath, NAMESPACE_ALIAS, query_get, query_pairs};
use super::logs::LogStore;
use super::ssa;
use super::watch::{Event, EventLog, EventType, Filter};

pub const MERGE_PATCH: &str = "application/merge-patch+json";
pub const APPLY_PATCH: &str = "application/apply-patch+yaml";

/// A response: an HTTP status and a JSON body (an object, a list or a `Status`).
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub body: Value,
}

impl Reply {
    pub fn ok(body: Value) -> Reply {
        Reply { status: 200, body }
    }

    /// A Kubernetes `Status` error, as a real API server sends it.
    pub fn error(code: u16, reason: &str, message: impl Into<String>) -> Reply {
        Reply {
            status: code,
            body: json!({ "kind": "Status", "apiVersion": "v1", "metadata": {},
                          "status": "Failure", "message": message.into(),
                          "reason": reason, "code": code }),
        }
    }

    pub fn is_success(&self) -> bool {
        (200..300).contains(&self.status)
    }
}

/// The stand-in for Namespaces (see `apipath::NAMESPACE_ALIAS`): registered with the fake
/// under an alias plural so `/api/v1/podium-sim-namespaces/{name}` reaches Namespace objects.
struct NamespaceAlias(ObjectMeta);

impl kube::Resource for NamespaceAlias {
    type DynamicType = ();
    type Scope = k8s_openapi::ClusterResourceScope;
    fn kind(_: &()) -> std::borrow::Cow<'_, str> {
        "Namespace".into()
    }
    fn group(_: &()) -> std::borrow::Cow<'_, str> {
        "".into()
    }
    fn version(_: &()) -> std::borrow::Cow<'_, str> {
        "v1".into()
    }
    fn plural(_: &()) -> std::borrow::Cow<'_, str> {
        NAMESPACE_ALIAS.into()
    }
    fn meta(&self) -> &ObjectMeta {
        &self.0
    }
    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.0
    }
}

pub struct Store {
    fake: kube::Client,
    lock: RwLock<()>,
    /// The newest resourceVersion handed out (the fake's counter is global).
    rv: AtomicU64,
    pub events: EventLog,
    pub logs: Arc<LogStore>,
    /// Collections objects were created in, with whether they are namespaced: where
    /// cascading deletes look for dependents and namespace contents.
    collections: Mutex<BTreeSet<(String, bool)>>,
    /// Woken on every change (the kubelet's reconcile loop).
    pub changed: Notify,
}

impl Store {
    pub async fn new() -> anyhow::Result<Store> {
        use k8s_openapi::api::{apps::v1::Deployment, core::v1};
        let fake = kube_fake_client::ClientBuilder::new()
            .with_resource::<NamespaceAlias>()
            // Spec writes keep status and status writes keep spec, as in a real cluster.
            .with_status_subresource::<v1::Pod>()
            .with_status_subresource::<v1::Node>()
            .with_status_subresource::<v1::Namespace>()
            .with_status_subresource::<v1::PersistentVolumeClaim>()
            .with_status_subresource::<v1::Service>()
            .with_status_subresource::<Deployment>()
            .with_status_subresource::<k8s_openapi::api::networking::v1::Ingress>()
            .build()
            .await?;
        Ok(Store {
            fake,
            lock: RwLock::new(()),
            rv: AtomicU64::new(0),
            events: EventLog::default(),
            logs: Arc::new(LogStore::default()),
            collections: Mutex::new(BTreeSet::new()),
            changed: Notify::new(),
        })
    }

    pub fn current_rv(&self) -> u64 {
        self.rv.load(Ordering::SeqCst)
    }

    /// One request to the fake's `kube::Client`, which routes it to the in-memory store.
    async fn raw(
        &self,
        method: &str,
        uri: &str,
        content_type: Option<&str>,
        body: Vec<u8>,
    ) -> Reply {
        // kube builds `http` (1.x) requests; starting from one of its builders and setting
        // every part lets this module use them without `http` as a direct dependency.
        let Ok(mut req) = kube::core::Request::new("/").get("x", &GetParams::default()) else {
            return Reply::error(500, "InternalError", "request builder failed");
        };
        match (method.parse(), uri.parse()) {
            (Ok(m), Ok(u)) => {
                *req.method_mut() = m;
                *req.uri_mut() = u;
            }
            _ => return Reply::error(400, "BadRequest", format!("invalid request URI {uri}")),
        }
        req.headers_mut().clear();
        if let Some(ct) = content_type {
            match ct.parse() {
                Ok(v) => {
                    req.headers_mut().insert("content-type", v);
                }
                Err(_) => return Reply::error(415, "UnsupportedMediaType", "invalid content type"),
            }
        }
        *req.body_mut() = body;
        match self.fake.send(req.map(kube::client::Body::from)).await {
            Ok(resp) => {
                let status = resp.status().as_u16();
                match resp.into_body().collect_bytes().await {
                    Ok(bytes) => match serde_json::from_slice(&bytes) {
                        Ok(body) => Reply { status, body },
                        Err(_) => Reply::error(500, "InternalError", "unreadable store response"),
                    },
                    Err(e) => Reply::error(500, "InternalError", e.to_string()),
                }
            }
            // The fake's service fails (rather than answering) on paths it cannot parse and
            // bodies that are not JSON.
            Err(e) => {
                let text = e.to_string();
                if text.contains("Invalid path") || text.contains("required for") {
                    Reply::error(
                        404,
                        "NotFound",
                        "the server could not find the requested resource",
                    )
                } else {
                    Reply::error(
                        400,
                        "BadRequest",
                        format!("the request could not be decoded: {text}"),
                    )
                }
            }
        }
    }

    fn with_query(path: &ApiPath, query: &str) -> String {
        if query.is_empty() {
            path.store_path()
        } else {
            format!("{}?{query}", path.store_path())
        }
    }

    /// GET of an object or a list (lists report the store's current resourceVersion; field
    /// selectors are applied here, where `!=` and any dotted field work).
    pub async fn get(&self, path: &ApiPath, query: &str) -> Reply {
        if path.name.is_some() {
            return self.raw("GET", &path.store_path(), None, Vec::new()).await;
        }
        let pairs = query_pairs(query);
        let filter = match Filter::from_query(path, &pairs) {
            Ok(f) => f,
            Err(e) => return Reply::error(400, "BadRequest", e),
        };
        let _read = self.lock.read().await;
        let mut reply = self.raw("GET", &path.store_path(), None, Vec::new()).await;
        if reply.is_success() {
            if let Some(items) = reply.body["items"].as_array_mut() {
                items.retain(|o| filter.matches(o));
            }
            reply.body["metadata"] = json!({ "resourceVersion": self.current_rv().to_string() });
        }
        reply
    }

    /// The objects of a collection path (all namespaces unless the path has one).
    pub async fn list(&self, path: &ApiPath) -> Vec<Value> {
        let reply = self.get(&path.list_path(), "").await;
        match reply.body["items"].as_array() {
            Some(items) if reply.is_success() => items.clone(),
            _ => Vec::new(),
        }
    }

    /// Subscribes a watch: returns the current matching objects (to send as ADDED) with
    /// the live-event receiver, atomically, and the resourceVersion they are at.
    pub async fn list_and_subscribe(
        &self,
        path: &ApiPath,
        filter: &Filter,
    ) -> (
        Vec<Value>,
        tokio::sync::broadcast::Receiver<Arc<Event>>,
        u64,
    ) {
        let _read = self.lock.read().await;
        let rx = self.events.subscribe();
        let reply = self
            .raw("GET", &path.list_path().store_path(), None, Vec::new())
            .await;
        let items = reply.body["items"]
            .as_array()
            .map(|a| a.iter().filter(|o| filter.matches(o)).cloned().collect())
            .unwrap_or_default();
        (items, rx, self.current_rv())
    }

    async fn namespace_exists(&self, ns: &str) -> bool {
        let path = format!("/api/v1/{NAMESPACE_ALIAS}/{ns}");
        self.raw("GET", &path, None, Vec::new()).await.is_success()
    }

    /// POST, PUT and PATCH (the body as sent, `query` with fieldManager, force, ...).
    pub async fn mutate(
        &self,
        method: &str,
        path: &ApiPath,
        query: &str,
        content_type: Option<&str>,
        body: &[u8],
    ) -> Reply {
        let allowed = match method {
            "POST" => path.name.is_none(),
            "PUT" | "PATCH" => path.name.is_some(),
            _ => false,
        };
        if !allowed {
            return Reply::error(
                405,
                "MethodNotAllowed",
                format!("{method} is not allowed on {}", path.public_path()),
            );
        }
        if let Some(sub) = &path.subresource
            && sub != "status"
        {
            return Reply::error(
                404,
                "NotFound",
                format!("the server could not find the requested resource ({sub})"),
            );
        }
        let mut object: Value = match serde_json::from_slice(body) {
            Ok(v) => v,
            Err(e) => return Reply::error(400, "BadRequest", format!("the body is not JSON: {e}")),
        };
        let is_apply = content_type.is_some_and(|c| c.starts_with(APPLY_PATCH));
        // Fields this apply stops owning: removed after it (the fake only merges).
        let mut dropped = Vec::new();
        // The object before the change: a watch with selectors needs it (see `watch`).
        let mut previous = None;
        let _write = self.lock.write().await;
        let kind = match method {
            "POST" if path.name.is_none() => {
                if let Err(reply) = self.prepare_create(path, &mut object).await {
                    return reply;
                }
                EventType::Added
            }
            "PUT" if path.name.is_some() => {
                let existing = self.raw("GET", &path.store_path(), None, Vec::new()).await;
                previous = existing.is_success().then_some(existing.body);
                EventType::Modified
            }
            "PATCH" if path.name.is_some() => {
                let existing = self.raw("GET", &path.store_path(), None, Vec::new()).await;
                if existing.is_success() {
                    previous = Some(existing.body.clone());
                    if is_apply && path.subresource.is_none() {
                        let pairs = query_pairs(query);
                        let manager = query_get(&pairs, "fieldManager").unwrap_or("");
                        dropped = ssa::dropped_fields(&existing.body, &object, manager);
                    }
                    if dropped.is_empty()
                        && let Some(same) = no_op(&existing.body, &object, content_type, query)
                    {
                        return Reply::ok(same);
                    }
                    EventType::Modified
                } else if is_apply && path.subresource.is_none() {
                    // Server-side apply creates: the same checks as a POST.
                    let mut probe = object.clone();
                    if probe.is_object() && !probe["metadata"].is_object() {
                        probe["metadata"] = json!({});
                    }
                    if let Some(meta) = probe["metadata"].as_object_mut() {
                        meta.insert("name".into(), json!(path.name));
                    }
                    if let Err(reply) = self.prepare_create(&path.list_path(), &mut probe).await {
                        return reply;
                    }
                    EventType::Added
                } else {
                    return existing;
                }
            }
            _ => {
                return Reply::error(
                    405,
                    "MethodNotAllowed",
                    format!("{method} is not allowed on {}", path.public_path()),
                );
            }
        };
        let body = serde_json::to_vec(&object).unwrap_or_default();
        let mut reply = self
            .raw(method, &Self::with_query(path, query), content_type, body)
            .await;
        if reply.is_success() && !dropped.is_empty() {
            let removal = ssa::removal_patch(&dropped).to_string().into_bytes();
            let removed = self
                .raw("PATCH", &path.store_path(), Some(MERGE_PATCH), removal)
                .await;
            if removed.is_success() {
                reply = removed;
            }
        }
        if reply.is_success() {
            if kind == EventType::Added {
                reply.status = 201;
                self.collections
                    .lock()
                    .expect("collections")
                    .insert((path.collection(), path.namespace.is_some()));
            }
            self.publish(kind, path, reply.body.clone(), previous);
            return reply;
        }
        reply
    }

    /// Defaults and checks for a create: generateName, a valid name, the namespace exists.
    async fn prepare_create(&self, path: &ApiPath, object: &mut Value) -> Result<(), Reply> {
        if !object.is_object() || !object["metadata"].is_object() && !object["metadata"].is_null() {
            return Err(Reply::error(
                400,
                "BadRequest",
                "the object is not a Kubernetes object",
            ));
        }
        let kind = path.kind().unwrap_or("Object");
        if object["metadata"]["name"]
            .as_str()
            .is_none_or(str::is_empty)
        {
            match object["metadata"]["generateName"].as_str() {
                Some(prefix) => {
                    object["metadata"]["name"] = json!(format!("{prefix}{}", random_suffix()))
                }
                None => {
                    return Err(Reply::error(
                        422,
                        "Invalid",
                        format!(
                            "{kind} \"\" is invalid: metadata.name: Required value: name or generateName is required"
                        ),
                    ));
                }
            }
        }
        let name = object["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let dns_label = matches!(path.resource.as_str(), "namespaces" | "services");
        if let Err(why) = valid_name(&name, dns_label) {
            return Err(Reply::error(
                422,
                "Invalid",
                format!(
                    "{kind} \"{name}\" is invalid: metadata.name: Invalid value: \"{name}\": {why}"
                ),
            ));
        }
        if let Some(ns) = &path.namespace {
            match object["metadata"]["namespace"].as_str() {
                Some(given) if given != ns => {
                    return Err(Reply::error(
                        400,
                        "BadRequest",
                        "the namespace of the provided object does not match the namespace sent on the request",
                    ));
                }
                _ => object["metadata"]["namespace"] = json!(ns),
            }
            if !self.namespace_exists(ns).await {
                return Err(Reply::error(
                    404,
                    "NotFound",
                    format!("namespaces \"{ns}\" not found"),
                ));
            }
        }
        Ok(())
    }

    fn publish(&self, kind: EventType, path: &ApiPath, object: Value, previous: Option<Value>) {
        let rv = rv_of(&object);
        self.rv.fetch_max(rv, Ordering::SeqCst);
        let namespace = object["metadata"]["namespace"].as_str().map(str::to_string);
        self.events.publish(Event {
            rv,
            kind,
            collection: path.collection(),
            namespace,
            object,
            previous: previous.as_ref().map(selectable),
        });
        self.changed.notify_one();
    }

    /// DELETE of an object (with its dependents, or a namespace with its contents) or of
    /// a collection (`labelSelector`/`fieldSelector` choose what).
    pub async fn delete(&self, path: &ApiPath, query: &str, body: &[u8]) -> Reply {
        let pairs = query_pairs(query);
        let from_body: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
        let policy = query_get(&pairs, "propagationPolicy")
            .map(str::to_string)
            .or_else(|| from_body["propagationPolicy"].as_str().map(str::to_string));
        let orphan = policy.as_deref() == Some("Orphan")
            || query_get(&pairs, "orphanDependents") == Some("true")
            || from_body["orphanDependents"] == json!(true);
        if path.subresource.is_some() {
            return Reply::error(
                405,
                "MethodNotAllowed",
                "DELETE is not allowed on a subresource",
            );
        }
        let _write = self.lock.write().await;
        if path.name.is_some() {
            return self.delete_cascading(path, !orphan).await;
        }
        let filter = match Filter::from_query(path, &pairs) {
            Ok(f) => f,
            Err(e) => return Reply::error(400, "BadRequest", e),
        };
        let listed = self.raw("GET", &path.store_path(), None, Vec::new()).await;
        let mut deleted = 0;
        for object in listed.body["items"].as_array().into_iter().flatten() {
            if !filter.matches(object) {
                continue;
            }
            let name = object["metadata"]["name"].as_str().unwrap_or_default();
            let ns = object["metadata"]["namespace"].as_str();
            if let Some(p) = ApiPath::object(&path.collection(), ns, name)
                && self.delete_cascading(&p, !orphan).await.is_success()
            {
                deleted += 1;
            }
        }
        Reply::ok(
            json!({ "kind": "Status", "apiVersion": "v1", "metadata": {},
                          "status": "Success", "details": { "kind": path.resource, "deleted": deleted } }),
        )
    }

    /// Deletes one object, first its dependents (children before parents) unless orphaning.
    /// The caller holds the write lock.
    async fn delete_cascading(&self, path: &ApiPath, cascade: bool) -> Reply {
        let target = self.raw("GET", &path.store_path(), None, Vec::new()).await;
        if !target.is_success() {
            return target;
        }
        let mut doomed: Vec<ApiPath> = Vec::new();
        if cascade {
            let mut queue = vec![(path.clone(), target.body.clone())];
            while let Some((owner, object)) = queue.pop() {
                for (dep, dep_object) in self.dependents(&owner, &object).await {
                    if !doomed.contains(&dep) {
                        doomed.push(dep.clone());
                        queue.push((dep, dep_object));
                    }
                }
            }
        }
        for dep in doomed.iter().rev() {
            self.remove_one(dep).await;
        }
        self.remove_one(path).await
    }

    /// What a delete of `object` takes along: a namespace's contents, or the objects that
    /// name it in their ownerReferences (the garbage collector's work in a real cluster).
    async fn dependents(&self, owner: &ApiPath, object: &Value) -> Vec<(ApiPath, Value)> {
        let collections: Vec<(String, bool)> = self
            .collections
            .lock()
            .expect("collections")
            .iter()
            .cloned()
            .collect();
        let uid = object["metadata"]["uid"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let owner_ns = object["metadata"]["namespace"].as_str().map(str::to_string);
        let mut found = Vec::new();
        for (collection, namespaced) in collections {
            if !namespaced {
                continue;
            }
            let Some(mut list) = ApiPath::parse(&collection) else {
                continue;
            };
            list.namespace = if owner.is_namespace_kind() {
                owner.name.clone()
            } else {
                owner_ns.clone()
            };
            let reply = self.raw("GET", &list.store_path(), None, Vec::new()).await;
            for item in reply.body["items"].as_array().into_iter().flatten() {
                let owned = owner.is_namespace_kind()
                    || item["metadata"]["ownerReferences"]
                        .as_array()
                        .is_some_and(|refs| refs.iter().any(|r| r["uid"] == json!(uid)));
                let name = item["metadata"]["name"].as_str().unwrap_or_default();
                let ns = item["metadata"]["namespace"].as_str();
                if owned && let Some(p) = ApiPath::object(&collection, ns, name) {
                    found.push((p, item.clone()));
                }
            }
        }
        found
    }

    /// Removes one object and publishes DELETED. The object is touched first so the
    /// deletion has a resourceVersion of its own, newer than every earlier event (the
    /// fake's delete hands out none), as a watcher resuming after it requires.
    async fn remove_one(&self, path: &ApiPath) -> Reply {
        let touched = self
            .raw(
                "PATCH",
                &path.store_path(),
                Some(MERGE_PATCH),
                b"{}".to_vec(),
            )
            .await;
        if !touched.is_success() {
            return touched;
        }
        let uri = format!("{}?propagationPolicy=Orphan", path.store_path());
        let mut reply = self.raw("DELETE", &uri, None, Vec::new()).await;
        if reply.is_success() {
            reply.body["metadata"]["deletionTimestamp"] =
                json!(Utc::now().to_rfc3339_opts(SecondsFormat::Secs, true));
            if path.resource == "pods"
                && let (Some(ns), Some(name)) = (&path.namespace, &path.name)
            {
                self.logs.remove(ns, name);
            }
            self.publish(EventType::Deleted, path, reply.body.clone(), None);
        }
        reply
    }
}

/// What selectors look at in an object (labels and the usual selectable fields): all a
/// watch needs of the previous object, kept small since events stay in the history.
fn selectable(o: &Value) -> Value {
    let m = &o["metadata"];
    json!({
        "metadata": { "name": m["name"], "namespace": m["namespace"], "labels": m["labels"] },
        "spec": { "nodeName": o["spec"]["nodeName"] },
        "status": { "phase": o["status"]["phase"] },
    })
}

/// An object's resourceVersion as a number (the fake's are a global counter).
pub fn rv_of(object: &Value) -> u64 {
    object["metadata"]["resourceVersion"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

/// A patch that would change nothing gets the object back unchanged, as from a real API
/// server (no new resourceVersion or generation, no watch event); the fake bumps both on
/// every write. Only merge-style patches, and applies by a manager that already applied.
fn no_op(
    existing: &Value,
    patch: &Value,
    content_type: Option<&str>,
    query: &str,
) -> Option<Value> {
    let ct = content_type.unwrap_or(MERGE_PATCH);
    if ct.starts_with("application/json-patch") {
        return None;
    }
    if ct.starts_with(APPLY_PATCH) {
        let pairs = query_pairs(query);
        let manager = query_get(&pairs, "fieldManager")?;
        let applied_before = existing["metadata"]["managedFields"]
            .as_array()
            .is_some_and(|m| {
                m.iter()
                    .any(|e| e["manager"] == json!(manager) && e["operation"] == json!("Apply"))
            });
        if !applied_before {
            return None;
        }
    }
    let mut merged = existing.clone();
    let mut patch = patch.clone();
    if let Some(meta) = patch["metadata"].as_object_mut() {
        meta.remove("managedFields");
        meta.remove("resourceVersion");
    }
    merge_patch(&mut merged, &patch);
    (merged == *existing).then(|| existing.clone())
}

/// RFC 7386 JSON merge patch, as the fake applies it.
pub fn merge_patch(target: &mut Value, patch: &Value) {
    let Some(patch) = patch.as_object() else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = json!({});
    }
    let map = target.as_object_mut().expect("an object");
    for (k, v) in patch {
        if v.is_null() {
            map.remove(k);
        } else {
            merge_patch(map.entry(k.clone()).or_insert(Value::Null), v);
        }
    }
}

/// The merge patch that turns `old` into `new` (null removes; arrays are replaced).
pub fn merge_diff(old: &Value, new: &Value) -> Option<Value> {
    if old == new {
        return None;
    }
    match (old.as_object(), new.as_object()) {
        (Some(o), Some(n)) => {
            let mut patch = serde_json::Map::new();
            for (k, nv) in n {
                match o.get(k) {
                    Some(ov) => {
                        if let Some(d) = merge_diff(ov, nv) {
                            patch.insert(k.clone(), d);
                        }
                    }
                    None => {
                        patch.insert(k.clone(), nv.clone());
                    }
                }
            }
            for k in o.keys().filter(|k| !n.contains_key(*k)) {
                patch.insert(k.clone(), Value::Null);
            }
            Some(Value::Object(patch))
        }
        _ => Some(new.clone()),
    }
}

/// Five characters of the alphabet Kubernetes uses for generated names.
pub fn random_suffix() -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let mut rng = rand::rng();
    (0..5)
        .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char)
        .collect()
}

/// A DNS-1123 subdomain (or label, for namespaces and services), as the API server checks.
fn valid_name(name: &str, label: bool) -> Result<(), &'static str> {
    let max = if label { 63 } else { 253 };
    let ok_char =
        |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || (!label && c == '.');
    let edges_ok = name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name.ends_with(|c: char| c.is_ascii_alphanumeric());
    if name.len() <= max && name.chars().all(ok_char) && edges_ok {
        Ok(())
    } else if label {
        Err(
            "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character",
        )
    } else {
        Err(
            "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character",
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merge_diff_round_trips() {
        let old = json!({ "phase": "Pending", "message": "x", "c": [1], "o": { "a": 1, "b": 2 } });
        let new = json!({ "phase": "Running", "c": [1, 2], "o": { "a": 1 } });
        let diff = merge_diff(&old, &new).unwrap();
        let mut patched = old.clone();
        merge_patch(&mut patched, &diff);
        assert_eq!(patched, new);
        assert_eq!(merge_diff(&new, &new), None);
    }

    #[tokio::test]
    async fn namespaces_are_stored_under_an_alias_the_fake_can_parse() {
        let store = Store::new().await.unwrap();
        let ns = json!({ "apiVersion": "v1", "kind": "Namespace", "metadata": { "name": "a" } });
        let body = || ns.to_string().into_bytes();
        // The fake's own path parser rejects Namespace paths.
        let direct = store
            .raw(
                "POST",
                "/api/v1/namespaces",
                Some("application/json"),
                body(),
            )
            .await;
        assert_eq!(direct.status, 404, "{direct:?}");
        let alias = format!("/api/v1/{NAMESPACE_ALIAS}");
        let created = store
            .raw("POST", &alias, Some("application/json"), body())
            .await;
        assert!(created.is_success(), "{created:?}");
        let got = store
            .get(&ApiPath::parse("/api/v1/namespaces/a").unwrap(), "")
            .await;
        assert_eq!(got.body["kind"], "Namespace", "{got:?}");
        let list = store
            .get(&ApiPath::parse("/api/v1/namespaces").unwrap(), "")
            .await;
        assert_eq!(list.body["items"][0]["metadata"]["name"], "a", "{list:?}");
    }

    #[test]
    fn names_are_checked() {
        assert!(valid_name("web-1.a", false).is_ok());
        assert!(valid_name("web-1.a", true).is_err());
        assert!(valid_name("Web", false).is_err());
        assert!(valid_name("-a", false).is_err());
    }
}
