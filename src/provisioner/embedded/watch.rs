//! Watch, which kube-fake-client lacks: every mutation the store makes is published here
//! with its resourceVersion; a bounded history lets a watch resume from a resourceVersion
//! (what `kube::runtime::watcher` does after its list and after every reconnect), and a
//! broadcast carries live events to open watch streams.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix_web::web::Bytes;
use kube::core::{Selector, SelectorExt};
use serde_json::{Value, json};
use tokio::sync::broadcast;
use tokio::time::Instant;

use super::apipath::{ApiPath, query_get};

/// Events kept for resuming watches; older resourceVersions get 410 Gone (the watcher relists).
/// Each holds its object (a few kB): this bounds the history's memory to tens of MB.
const HISTORY: usize = 5_000;
/// Live events buffered per watch before it is cut off as too slow (410, the watcher relists).
const LIVE_BUFFER: usize = 8_192;
/// A BOOKMARK this often on a quiet watch that asked for bookmarks.
const BOOKMARK_EVERY: Duration = Duration::from_secs(15);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventType {
    Added,
    Modified,
    Deleted,
}

impl EventType {
    fn as_str(self) -> &'static str {
        match self {
            EventType::Added => "ADDED",
            EventType::Modified => "MODIFIED",
            EventType::Deleted => "DELETED",
        }
    }
}

#[derive(Debug)]
pub struct Event {
    pub rv: u64,
    pub kind: EventType,
    /// The all-namespaces collection path, e.g. "/api/v1/pods".
    pub collection: String,
    pub namespace: Option<String>,
    pub object: Value,
    /// What selectors see of the object before a MODIFIED change.
    pub previous: Option<Value>,
}

pub struct EventLog {
    history: Mutex<History>,
    live: broadcast::Sender<Arc<Event>>,
}

#[derive(Default)]
struct History {
    events: VecDeque<Arc<Event>>,
    /// The resourceVersion of the newest event dropped from the history (0: none yet).
    evicted: u64,
}

/// A watch's receiver of live events.
pub type Live = broadcast::Receiver<Arc<Event>>;

/// The requested resourceVersion is older than the history kept.
pub struct TooOld;

impl Default for EventLog {
    fn default() -> Self {
        EventLog {
            history: Mutex::new(History::default()),
            live: broadcast::channel(LIVE_BUFFER).0,
        }
    }
}

impl EventLog {
    /// Called with the store's write lock held, so events arrive in resourceVersion order.
    pub fn publish(&self, event: Event) {
        let event = Arc::new(event);
        let mut history = self.history.lock().expect("watch history");
        history.events.push_back(event.clone());
        if history.events.len() > HISTORY
            && let Some(old) = history.events.pop_front()
        {
            history.evicted = old.rv;
        }
        // Under the history lock: a subscriber sees each event either replayed or live.
        let _ = self.live.send(event);
    }

    /// Live events from now on (the caller lists the current objects meanwhile, holding
    /// the store's read lock so no event slips between the list and the subscription).
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Event>> {
        let _history = self.history.lock().expect("watch history");
        self.live.subscribe()
    }

    /// The events after `rv` still in the history, and live events after them.
    pub fn subscribe_after(&self, rv: u64) -> Result<(Vec<Arc<Event>>, Live), TooOld> {
        let history = self.history.lock().expect("watch history");
        if rv < history.evicted {
            return Err(TooOld);
        }
        let replay = history
            .events
            .iter()
            .filter(|e| e.rv > rv)
            .cloned()
            .collect();
        Ok((replay, self.live.subscribe()))
    }
}

/// What a watch (or a list) selects: a collection, maybe one namespace, label and field selectors.
pub struct Filter {
    collection: String,
    namespace: Option<String>,
    labels: Option<Selector>,
    fields: Vec<(String, bool, String)>,
}

impl Filter {
    pub fn new(
        path: &ApiPath,
        label_selector: Option<&str>,
        field_selector: Option<&str>,
    ) -> Result<Filter, String> {
        let labels = match label_selector.filter(|s| !s.trim().is_empty()) {
            Some(s) => Some(
                kube_fake_client::label_selector::parse_label_selector(s)
                    .map_err(|e| format!("unable to parse requirement: {e}"))?,
            ),
            None => None,
        };
        Ok(Filter {
            collection: path.collection(),
            namespace: path.namespace.clone(),
            labels,
            fields: parse_field_selector(field_selector.unwrap_or(""))?,
        })
    }

    pub fn from_query(path: &ApiPath, query: &[(String, String)]) -> Result<Filter, String> {
        Filter::new(
            path,
            query_get(query, "labelSelector"),
            query_get(query, "fieldSelector"),
        )
    }

    /// The event as this watch sees it, if at all: with selectors, a change that moves an
    /// object into the selection is ADDED and one that moves it out is DELETED, as the
    /// API server sends them.
    pub fn view(&self, event: &Event) -> Option<EventType> {
        if event.collection != self.collection
            || (self.namespace.is_some() && self.namespace != event.namespace)
        {
            return None;
        }
        let now = self.matches(&event.object);
        match (event.kind, event.previous.as_ref().map(|p| self.matches(p))) {
            (EventType::Modified, Some(false)) => now.then_some(EventType::Added),
            (EventType::Modified, Some(true)) if !now => Some(EventType::Deleted),
            (kind, _) => now.then_some(kind),
        }
    }

    pub fn matches(&self, object: &Value) -> bool {
        if let Some(selector) = &self.labels {
            let labels = crate::provisioner::string_map(&object["metadata"]["labels"]);
            if !selector.matches(&labels) {
                return false;
            }
        }
        self.fields
            .iter()
            .all(|(field, equal, want)| (field_value(object, field) == *want) == *equal)
    }
}

/// `a=b,c==d,e!=f` into (field, equal?, value).
fn parse_field_selector(s: &str) -> Result<Vec<(String, bool, String)>, String> {
    s.split(',')
        .map(str::trim)
        .filter(|r| !r.is_empty())
        .map(|r| {
            let (field, equal, value) = if let Some((f, v)) = r.split_once("!=") {
                (f, false, v)
            } else if let Some((f, v)) = r.split_once("==") {
                (f, true, v)
            } else if let Some((f, v)) = r.split_once('=') {
                (f, true, v)
            } else {
                return Err(format!("invalid field selector: '{r}'"));
            };
            Ok((field.trim().to_string(), equal, value.trim().to_string()))
        })
        .collect()
}

/// A dotted field (`spec.nodeName`) as a string; absent fields read as "" like in Kubernetes.
fn field_value(object: &Value, field: &str) -> String {
    let v = field.split('.').fold(object, |v, k| &v[k]);
    match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

/// One watch stream's state, driven by `futures_util::stream::unfold`.
pub struct WatchStream {
    /// Lines to send first (initial ADDED events or the replayed history), in order.
    pub pending: VecDeque<Bytes>,
    pub rx: broadcast::Receiver<Arc<Event>>,
    pub filter: Filter,
    /// The last resourceVersion this watch has accounted for (sent or skipped).
    pub last_rv: u64,
    pub deadline: Instant,
    /// Sends BOOKMARKs (the client asked with allowWatchBookmarks) of this kind and apiVersion.
    pub bookmarks: Option<(String, String)>,
    pub done: bool,
}

pub fn line(kind: &str, object: &Value) -> Bytes {
    let mut s = json!({ "type": kind, "object": object }).to_string();
    s.push('\n');
    Bytes::from(s)
}

pub fn event_line(kind: EventType, event: &Event) -> Bytes {
    line(kind.as_str(), &event.object)
}

/// The ERROR event a watch ends with when its resourceVersion is gone (the client relists).
pub fn gone_line(message: &str) -> Bytes {
    line(
        "ERROR",
        &json!({ "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                 "message": message, "reason": "Expired", "code": 410 }),
    )
}

impl WatchStream {
    pub async fn next_chunk(mut self) -> Option<(Result<Bytes, std::convert::Infallible>, Self)> {
        if let Some(b) = self.pending.pop_front() {
            return Some((Ok(b), self));
        }
        if self.done {
            return None;
        }
        loop {
            let bookmark_at = Instant::now() + BOOKMARK_EVERY;
            let wake = if self.bookmarks.is_some() {
                bookmark_at.min(self.deadline)
            } else {
                self.deadline
            };
            match tokio::time::timeout_at(wake, self.rx.recv()).await {
                Ok(Ok(event)) => {
                    if event.rv <= self.last_rv {
                        continue;
                    }
                    self.last_rv = event.rv;
                    if let Some(kind) = self.filter.view(&event) {
                        return Some((Ok(event_line(kind, &event)), self));
                    }
                }
                Ok(Err(broadcast::error::RecvError::Lagged(_))) => {
                    self.done = true;
                    let b = gone_line("the watch fell too far behind; relist");
                    return Some((Ok(b), self));
                }
                Ok(Err(broadcast::error::RecvError::Closed)) => return None,
                Err(_) if Instant::now() >= self.deadline => return None,
                Err(_) => {
                    if let Some((kind, api_version)) = &self.bookmarks {
                        let b = line(
                            "BOOKMARK",
                            &json!({ "kind": kind, "apiVersion": api_version,
                                     "metadata": { "resourceVersion": self.last_rv.to_string() } }),
                        );
                        return Some((Ok(b), self));
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selectors_select() {
        let path = ApiPath::parse("/api/v1/namespaces/a/pods").unwrap();
        let f = Filter::new(
            &path,
            Some("app=web,tier,env!=prod"),
            Some("spec.nodeName=n1,metadata.name!=x"),
        )
        .unwrap();
        let pod = |labels: Value, node: &str, name: &str| json!({ "metadata": { "name": name, "labels": labels }, "spec": { "nodeName": node } });
        assert!(f.matches(&pod(json!({"app": "web", "tier": "1"}), "n1", "p")));
        assert!(!f.matches(&pod(json!({"app": "web"}), "n1", "p")));
        assert!(!f.matches(&pod(
            json!({"app": "web", "tier": "1", "env": "prod"}),
            "n1",
            "p"
        )));
        assert!(!f.matches(&pod(json!({"app": "web", "tier": "1"}), "n2", "p")));
        assert!(!f.matches(&pod(json!({"app": "web", "tier": "1"}), "n1", "x")));
        let unscheduled = Filter::new(&path, None, Some("spec.nodeName=")).unwrap();
        assert!(unscheduled.matches(&json!({ "metadata": {}, "spec": {} })));

        // Moving out of (and into) a watch's selection is DELETED (ADDED) for that watch.
        let event = |previous: Value, object: Value| Event {
            rv: 2,
            kind: EventType::Modified,
            collection: "/api/v1/pods".into(),
            namespace: Some("a".into()),
            object,
            previous: Some(previous),
        };
        let (none, bound) = (
            json!({ "metadata": { "namespace": "a" }, "spec": {} }),
            json!({ "metadata": { "namespace": "a" }, "spec": { "nodeName": "n1" } }),
        );
        let moved_out = event(none.clone(), bound.clone());
        assert_eq!(unscheduled.view(&moved_out), Some(EventType::Deleted));
        let moved_in = event(bound.clone(), none.clone());
        assert_eq!(unscheduled.view(&moved_in), Some(EventType::Added));
        assert_eq!(unscheduled.view(&event(bound.clone(), bound)), None);
        assert_eq!(
            unscheduled.view(&event(none.clone(), none)),
            Some(EventType::Modified)
        );
    }
}
