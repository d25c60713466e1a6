//! A simulated pod's life, as a function of time since it was bound to a node: the status
//! a kubelet would report (phase, conditions, container states) and the log lines its
//! containers would write. The image tag decides: `pullfail` never pulls, `crashloop`
//! exits 1 over and over, anything else starts, listens and answers health checks.

use std::time::Duration;

use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::{Value, json};
use tokio::time::Instant;

use super::logs::LogStore;

/// What the kubelet remembers about a pod it runs.
pub struct PodSim {
    pub namespace: String,
    pub name: String,
    pub uid: String,
    pub created_wall: DateTime<Utc>,
    /// Where and when it was bound (None while Unschedulable).
    pub node: Option<String>,
    pub bound: Instant,
    pub bound_wall: DateTime<Utc>,
    pub ip: String,
    pub host_ip: String,
    /// Per container: the start (or crash cycle) already logged, and the next health line.
    pub logged: Vec<i64>,
    pub next_health: Vec<Instant>,
    pub unschedulable: Option<String>,
}

pub struct Timing {
    pub start_delay: Duration,
    /// A crash-looping container's restart period (its back-off in the simulation).
    pub crash_period: Duration,
    pub health_every: Duration,
}

impl Timing {
    pub fn new(start_delay: Duration) -> Timing {
        Timing {
            start_delay,
            crash_period: (start_delay * 5).max(Duration::from_millis(200)),
            health_every: (start_delay * 10)
                .clamp(Duration::from_millis(500), Duration::from_secs(5)),
        }
    }
}

fn ts(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Secs, true)
}

fn after(base: DateTime<Utc>, d: Duration) -> DateTime<Utc> {
    base + chrono::Duration::from_std(d).unwrap_or_default()
}

enum State {
    Creating,
    PullBackOff,
    /// Crash cycle k: just exited (restartCount k) or backing off (restartCount k + 1).
    Crashed {
        cycle: i64,
        backing_off: bool,
        since: Duration,
    },
    Running,
}

fn state(image: &str, elapsed: Duration, t: &Timing) -> (State, Option<Duration>) {
    if elapsed < t.start_delay {
        return (State::Creating, Some(t.start_delay));
    }
    let tag = image.rsplit_once(':').map_or("", |(_, tag)| tag);
    if tag.contains("pullfail") {
        return (State::PullBackOff, None);
    }
    if tag.contains("crashloop") {
        let since_start = elapsed - t.start_delay;
        let period = t.crash_period.as_millis().max(1);
        let cycle = (since_start.as_millis() / period) as i64;
        let cycle_start = t.start_delay + Duration::from_millis((cycle as u64) * period as u64);
        let exit_shown = t.start_delay / 2;
        let backing_off = elapsed >= cycle_start + exit_shown;
        let next = if backing_off {
            cycle_start + t.crash_period
        } else {
            cycle_start + exit_shown
        };
        return (
            State::Crashed {
                cycle,
                backing_off,
                since: cycle_start,
            },
            Some(next),
        );
    }
    (State::Running, None)
}

fn terminated(base: DateTime<Utc>, at: Duration, sim: &PodSim, cycle: i64) -> Value {
    let id: String = sim.uid.chars().filter(|c| *c != '-').take(20).collect();
    json!({ "terminated": {
        "exitCode": 1, "reason": "Error",
        "startedAt": ts(after(base, at)),
        "finishedAt": ts(after(base, at)),
        "containerID": format!("containerd://{id}{cycle:04}"),
    }})
}

/// The pod's status now, and when it next changes on its own.
pub fn status(pod: &Value, sim: &PodSim, now: Instant, t: &Timing) -> (Value, Option<Instant>) {
    let containers: Vec<&Value> = pod["spec"]["containers"]
        .as_array()
        .into_iter()
        .flatten()
        .collect();
    let Some(node) = &sim.node else {
        let message = sim.unschedulable.clone().unwrap_or_default();
        let status = json!({
            "phase": "Pending",
            "qosClass": qos(pod),
            "conditions": [{ "type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                             "message": message, "lastTransitionTime": ts(sim.created_wall),
                             "lastProbeTime": null }],
        });
        return (status, None);
    };
    let _ = node;
    let elapsed = now.saturating_duration_since(sim.bound);
    let base = sim.bound_wall;
    let mut next: Option<Duration> = None;
    let mut all_ready = !containers.is_empty();
    let mut any_unstarted = false;
    let mut ready_since = base;
    let mut statuses = Vec::new();
    for c in &containers {
        let name = c["name"].as_str().unwrap_or_default();
        let image = c["image"].as_str().unwrap_or_default();
        let (st, change) = state(image, elapsed, t);
        if let Some(ch) = change {
            next = Some(next.map_or(ch, |n| n.min(ch)));
        }
        let container_id = format!("containerd://{}", sim.uid.replace('-', ""));
        let status = match st {
            State::Creating => {
                all_ready = false;
                any_unstarted = true;
                json!({ "name": name, "image": image, "imageID": "", "ready": false, "started": false,
                        "restartCount": 0, "lastState": {},
                        "state": { "waiting": { "reason": "ContainerCreating" } } })
            }
            State::PullBackOff => {
                all_ready = false;
                any_unstarted = true;
                json!({ "name": name, "image": image, "imageID": "", "ready": false, "started": false,
                        "restartCount": 0, "lastState": {},
                        "state": { "waiting": { "reason": "ImagePullBackOff",
                                                "message": format!("Back-off pulling image \"{image}\"") } } })
            }
            State::Crashed {
                cycle,
                backing_off,
                since,
            } => {
                all_ready = false;
                ready_since = after(base, since);
                let exited = terminated(base, since, sim, cycle);
                let previous = if cycle > 0 {
                    terminated(base, since.saturating_sub(t.crash_period), sim, cycle - 1)
                } else {
                    json!({})
                };
                if backing_off {
                    let backoff = (10i64 << cycle.min(5)).min(300);
                    json!({ "name": name, "image": image, "imageID": image_id(image), "ready": false,
                            "started": false, "restartCount": cycle + 1, "containerID": container_id,
                            "lastState": exited,
                            "state": { "waiting": { "reason": "CrashLoopBackOff", "message": format!(
                                "back-off {backoff}s restarting failed container={name} pod={}_{}({})",
                                sim.name, sim.namespace, sim.uid) } } })
                } else {
                    json!({ "name": name, "image": image, "imageID": image_id(image), "ready": false,
                            "started": false, "restartCount": cycle, "containerID": container_id,
                            "lastState": previous, "state": exited })
                }
            }
            State::Running => {
                ready_since = ready_since.max(after(base, t.start_delay));
                json!({ "name": name, "image": image, "imageID": image_id(image), "ready": true,
                        "started": true, "restartCount": 0, "containerID": container_id, "lastState": {},
                        "state": { "running": { "startedAt": ts(after(base, t.start_delay)) } } })
            }
        };
        statuses.push(status);
    }
    let ready = if all_ready { "True" } else { "False" };
    let ready_changed = if all_ready { ready_since } else { base };
    let mut ready_condition = json!({ "type": "Ready", "status": ready, "lastProbeTime": null,
                                      "lastTransitionTime": ts(ready_changed) });
    let mut containers_ready = json!({ "type": "ContainersReady", "status": ready, "lastProbeTime": null,
                                       "lastTransitionTime": ts(ready_changed) });
    if !all_ready {
        let unready: Vec<&str> = statuses
            .iter()
            .filter(|s| s["ready"] != json!(true))
            .filter_map(|s| s["name"].as_str())
            .collect();
        let message = format!("containers with unready status: [{}]", unready.join(" "));
        for c in [&mut ready_condition, &mut containers_ready] {
            c["reason"] = json!("ContainersNotReady");
            c["message"] = json!(message);
        }
    }
    let started = elapsed >= t.start_delay;
    let mut status = json!({
        "phase": if any_unstarted { "Pending" } else { "Running" },
        "qosClass": qos(pod),
        "hostIP": sim.host_ip,
        "hostIPs": [{ "ip": sim.host_ip }],
        "startTime": ts(base),
        "conditions": [
            { "type": "PodReadyToStartContainers", "status": if started { "True" } else { "False" },
              "lastProbeTime": null, "lastTransitionTime": ts(if started { after(base, t.start_delay) } else { base }) },
            { "type": "Initialized", "status": "True", "lastProbeTime": null, "lastTransitionTime": ts(base) },
            ready_condition,
            containers_ready,
            { "type": "PodScheduled", "status": "True", "lastProbeTime": null, "lastTransitionTime": ts(base) },
        ],
        "containerStatuses": statuses,
    });
    if started {
        status["podIP"] = json!(sim.ip);
        status["podIPs"] = json!([{ "ip": sim.ip }]);
    }
    (status, next.map(|n| sim.bound + n))
}

/// Writes the lines the containers would have written by now; returns the next line's time.
pub fn write_logs(
    pod: &Value,
    sim: &mut PodSim,
    now: Instant,
    t: &Timing,
    logs: &LogStore,
) -> Option<Instant> {
    sim.node.as_ref()?;
    let elapsed = now.saturating_duration_since(sim.bound);
    let containers: Vec<&Value> = pod["spec"]["containers"]
        .as_array()
        .into_iter()
        .flatten()
        .collect();
    sim.logged.resize(containers.len(), -1);
    sim.next_health.resize(containers.len(), now);
    let mut next: Option<Instant> = None;
    for (i, c) in containers.iter().enumerate() {
        let name = c["name"].as_str().unwrap_or_default();
        let image = c["image"].as_str().unwrap_or_default();
        let port = c["ports"][0]["containerPort"].as_i64().unwrap_or(8080);
        let log = |text: String| logs.append(&sim.namespace, &sim.name, name, text);
        match state(image, elapsed, t).0 {
            State::Running => {
                if sim.logged[i] < 0 {
                    log(format!("Starting {image}"));
                    log(format!("Listening on 0.0.0.0:{port}"));
                    sim.logged[i] = 0;
                    sim.next_health[i] = now + t.health_every;
                } else if now >= sim.next_health[i] {
                    log("GET /healthz 200".to_string());
                    sim.next_health[i] = now + t.health_every;
                }
                next = Some(next.map_or(sim.next_health[i], |n| n.min(sim.next_health[i])));
            }
            State::Crashed { cycle, .. } => {
                while sim.logged[i] < cycle {
                    sim.logged[i] += 1;
                    log(format!("Starting {image}"));
                    log("Error: simulated crash (the image tag says crashloop); exiting with code 1".to_string());
                }
            }
            State::Creating | State::PullBackOff => {}
        }
    }
    next
}

/// A plausible image digest reference for a pulled image.
fn image_id(image: &str) -> String {
    use sha2::{Digest, Sha256};
    let digest = Sha256::digest(image.as_bytes());
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    let repo = image.rsplit_once(':').map_or(image, |(r, _)| r);
    format!("{repo}@sha256:{hex}")
}

/// The pod's QoS class from its containers' requests and limits.
fn qos(pod: &Value) -> &'static str {
    let containers: Vec<&Value> = pod["spec"]["containers"]
        .as_array()
        .into_iter()
        .flatten()
        .collect();
    let none = containers.iter().all(|c| {
        c["resources"]["requests"]
            .as_object()
            .is_none_or(|m| m.is_empty())
            && c["resources"]["limits"]
                .as_object()
                .is_none_or(|m| m.is_empty())
    });
    if none {
        return "BestEffort";
    }
    let guaranteed = containers.iter().all(|c| {
        let l = &c["resources"]["limits"];
        let r = &c["resources"]["requests"];
        ["cpu", "memory"]
            .iter()
            .all(|k| l[k].is_string() && (r[k].is_null() || r[k] == l[k]))
    });
    if guaranteed {
        "Guaranteed"
    } else {
        "Burstable"
    }
}
