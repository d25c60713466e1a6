//! Container logs: the simulated kubelet writes lines here, the log endpoint reads them
//! (tail) and follows them (a broadcast per pod, closed when the pod is deleted).

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use actix_web::web::Bytes;
use chrono::{DateTime, SecondsFormat, Utc};
use tokio::sync::broadcast;

/// Lines kept per container (a real kubelet rotates logs too).
const KEEP: usize = 1_000;

#[derive(Debug, Clone)]
pub struct LogLine {
    pub container: String,
    pub at: DateTime<Utc>,
    pub text: String,
}

impl LogLine {
    pub fn render(&self, timestamps: bool) -> Bytes {
        let s = if timestamps {
            format!(
                "{} {}\n",
                self.at.to_rfc3339_opts(SecondsFormat::Nanos, true),
                self.text
            )
        } else {
            format!("{}\n", self.text)
        };
        Bytes::from(s)
    }
}

struct PodLogs {
    lines: HashMap<String, VecDeque<LogLine>>,
    live: broadcast::Sender<Arc<LogLine>>,
}

#[derive(Default)]
pub struct LogStore {
    pods: Mutex<HashMap<(String, String), PodLogs>>,
}

impl LogStore {
    pub fn append(&self, namespace: &str, pod: &str, container: &str, text: impl Into<String>) {
        let line = LogLine {
            container: container.to_string(),
            at: Utc::now(),
            text: text.into(),
        };
        let mut pods = self.pods.lock().expect("log store");
        let logs = pods
            .entry((namespace.to_string(), pod.to_string()))
            .or_insert_with(|| PodLogs {
                lines: HashMap::new(),
                live: broadcast::channel(256).0,
            });
        let lines = logs.lines.entry(container.to_string()).or_default();
        lines.push_back(line.clone());
        if lines.len() > KEEP {
            lines.pop_front();
        }
        let _ = logs.live.send(Arc::new(line));
    }

    /// Whether the container has written anything (a container that never started has not).
    pub fn has_lines(&self, namespace: &str, pod: &str, container: &str) -> bool {
        let pods = self.pods.lock().expect("log store");
        pods.get(&(namespace.to_string(), pod.to_string()))
            .and_then(|p| p.lines.get(container))
            .is_some_and(|l| !l.is_empty())
    }

    /// The last `tail` lines (all without a tail) and, when following, the lines after them.
    pub fn read(
        &self,
        namespace: &str,
        pod: &str,
        container: &str,
        tail: Option<usize>,
        follow: bool,
    ) -> (Vec<LogLine>, Option<broadcast::Receiver<Arc<LogLine>>>) {
        let pods = self.pods.lock().expect("log store");
        // No entry: the pod never logged or is gone; a follower gets a closed channel (ends).
        let Some(logs) = pods.get(&(namespace.to_string(), pod.to_string())) else {
            return (Vec::new(), follow.then(|| broadcast::channel(1).1));
        };
        let all = logs.lines.get(container);
        let n = all.map_or(0, VecDeque::len);
        let skip = tail.map_or(0, |t| n.saturating_sub(t));
        let lines = all
            .map(|l| l.iter().skip(skip).cloned().collect())
            .unwrap_or_default();
        (lines, follow.then(|| logs.live.subscribe()))
    }

    /// The pod is gone: its lines go and its followers' streams end.
    pub fn remove(&self, namespace: &str, pod: &str) {
        self.pods
            .lock()
            .expect("log store")
            .remove(&(namespace.to_string(), pod.to_string()));
    }
}
