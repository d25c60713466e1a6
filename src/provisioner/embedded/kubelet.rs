//! The simulated kubelet (with the bits of controller manager a cluster needs): runs the
//! Nodes, keeps each Deployment's pods (rolling or recreating them when the template
//! changes), binds pods to nodes, moves them through their life (see `pods`), marks
//! Namespaces Active and PVCs Bound, and writes container logs.
//!
//! Level-triggered: each pass reads everything from the store and writes only what
//! differs, through the same path as API requests (so watchers see every change). A pass
//! runs on every store change and when the next timed transition is due.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use chrono::{SecondsFormat, Utc};
use serde_json::{Value, json};
use tokio::time::Instant;

use super::SimNode;
use super::apipath::ApiPath;
use super::pods::{self, PodSim, Timing};
use super::sched::{self, Usage};
use super::store::{MERGE_PATCH, Store, merge_diff, random_suffix};

pub const KUBELET_VERSION: &str = "v1.33.0-podium-sim";
const NODES: &str = "/api/v1/nodes";
const PODS: &str = "/api/v1/pods";
const DEPLOYMENTS: &str = "/apis/apps/v1/deployments";
const NAMESPACES: &str = "/api/v1/namespaces";
const PVCS: &str = "/api/v1/persistentvolumeclaims";
/// A quiet cluster is still looked at this often.
const IDLE_PASS: Duration = Duration::from_secs(5);

fn now_ts() -> String {
    Utc::now().to_rfc3339_opts(SecondsFormat::Secs, true)
}

fn path(p: &str) -> ApiPath {
    ApiPath::parse(p).expect("a static API path")
}

/// The Node object for a configured node, status included (the kubelet's registration).
pub fn node_object(n: &SimNode) -> Value {
    let arch = if n.architecture.is_empty() {
        "amd64"
    } else {
        n.architecture.as_str()
    };
    let mut labels: BTreeMap<String, String> = n.labels.clone();
    labels.insert("kubernetes.io/hostname".into(), n.name.clone());
    labels.insert("kubernetes.io/arch".into(), arch.into());
    labels.insert("kubernetes.io/os".into(), "linux".into());
    labels.insert("beta.kubernetes.io/arch".into(), arch.into());
    labels.insert("beta.kubernetes.io/os".into(), "linux".into());
    let capacity = json!({
        "cpu": n.cpu_cores.to_string(),
        "memory": format!("{}Mi", n.memory_mb),
        "ephemeral-storage": format!("{}Mi", n.storage_mb),
        "pods": n.max_pods.to_string(),
    });
    json!({
        "apiVersion": "v1", "kind": "Node",
        "metadata": { "name": n.name, "labels": labels },
        "spec": {},
        "status": node_status(&n.name, arch, capacity),
    })
}

/// Ready, with capacity, nodeInfo and addresses of a simulated machine.
fn node_status(name: &str, arch: &str, capacity: Value) -> Value {
    use sha2::{Digest, Sha256};
    let id: String = Sha256::digest(name.as_bytes())[..16]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let octet = Sha256::digest(name.as_bytes())[16] % 200 + 10;
    let now = now_ts();
    let condition = |t: &str, status: &str, reason: &str, message: &str| {
        json!({ "type": t, "status": status, "reason": reason, "message": message,
                "lastHeartbeatTime": now, "lastTransitionTime": now })
    };
    json!({
        "capacity": capacity,
        "allocatable": capacity,
        "conditions": [
            condition("MemoryPressure", "False", "KubeletHasSufficientMemory", "kubelet has sufficient memory available"),
            condition("DiskPressure", "False", "KubeletHasNoDiskPressure", "kubelet has no disk pressure"),
            condition("PIDPressure", "False", "KubeletHasSufficientPID", "kubelet has sufficient PID available"),
            condition("Ready", "True", "KubeletReady", "kubelet is posting ready status (simulated by Podium)"),
        ],
        "addresses": [{ "type": "InternalIP", "address": format!("10.0.0.{octet}") },
                      { "type": "Hostname", "address": name }],
        "daemonEndpoints": { "kubeletEndpoint": { "Port": 10250 } },
        "nodeInfo": {
            "machineID": id, "systemUUID": id, "bootID": id,
            "kernelVersion": "6.1.0-podium-sim",
            "osImage": "Podium simulated node",
            "containerRuntimeVersion": "containerd://1.7.24-podium-sim",
            "kubeletVersion": KUBELET_VERSION,
            "kubeProxyVersion": KUBELET_VERSION,
            "operatingSystem": "linux",
            "architecture": arch,
        },
    })
}

/// The pod-template-hash: ten characters from a digest of the template (keys sorted).
pub fn template_hash(template: &Value) -> String {
    use sha2::{Digest, Sha256};
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let digest = Sha256::digest(canonical(template).as_bytes());
    digest[..10]
        .iter()
        .map(|b| ALPHABET[*b as usize % ALPHABET.len()] as char)
        .collect()
}

fn canonical(v: &Value) -> String {
    match v {
        Value::Object(m) => {
            let sorted: BTreeMap<&String, String> =
                m.iter().map(|(k, v)| (k, canonical(v))).collect();
            let parts: Vec<String> = sorted
                .iter()
                .map(|(k, v)| format!("{}:{v}", Value::String((*k).clone())))
                .collect();
            format!("{{{}}}", parts.join(","))
        }
        Value::Array(a) => format!(
            "[{}]",
            a.iter().map(canonical).collect::<Vec<_>>().join(",")
        ),
        other => other.to_string(),
    }
}

fn meta<'a>(o: &'a Value, k: &str) -> &'a str {
    o["metadata"][k].as_str().unwrap_or_default()
}

fn is_ready(pod: &Value) -> bool {
    pod["status"]["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|c| c["type"] == "Ready" && c["status"] == "True")
}

/// maxSurge/maxUnavailable: an int or a percentage of the replicas.
fn int_or_percent(v: &Value, replicas: i64, default: &str, round_up: bool) -> i64 {
    let s = match v {
        Value::Number(n) => return n.as_i64().unwrap_or(0),
        Value::String(s) => s.as_str(),
        _ => default,
    };
    match s.strip_suffix('%').and_then(|p| p.parse::<i64>().ok()) {
        Some(p) if round_up => (p * replicas + 99) / 100,
        Some(p) => p * replicas / 100,
        None => s.parse().unwrap_or(0),
    }
}

/// Keeps a condition's times when its status and reason did not change.
fn keep_times(old: &Value, mut new: Vec<Value>) -> Vec<Value> {
    for c in &mut new {
        if let Some(prev) = old
            .as_array()
            .into_iter()
            .flatten()
            .find(|p| p["type"] == c["type"])
        {
            if prev["status"] == c["status"] && prev["reason"] == c["reason"] {
                for k in ["lastTransitionTime", "lastUpdateTime"] {
                    if !prev[k].is_null() {
                        c[k] = prev[k].clone();
                    }
                }
            } else if prev["status"] == c["status"] && !prev["lastTransitionTime"].is_null() {
                c["lastTransitionTime"] = prev["lastTransitionTime"].clone();
            }
        }
    }
    new
}

pub struct Kubelet {
    store: Arc<Store>,
    timing: Timing,
    sims: HashMap<String, PodSim>,
    ips: u32,
}

impl Kubelet {
    pub fn new(store: Arc<Store>, start_delay: Duration) -> Kubelet {
        Kubelet {
            store,
            timing: Timing::new(start_delay),
            sims: HashMap::new(),
            ips: 0,
        }
    }

    /// Passes forever (the task is aborted when the cluster stops).
    pub async fn run(mut self) {
        loop {
            let next = self.pass().await;
            let wake = next
                .unwrap_or_else(|| Instant::now() + IDLE_PASS)
                .max(Instant::now() + Duration::from_millis(2));
            tokio::select! {
                _ = self.store.changed.notified() => {}
                _ = tokio::time::sleep_until(wake) => {}
            }
        }
    }

    async fn patch_status(&self, object_path: ApiPath, patch: Value) {
        let p = ApiPath {
            subresource: Some("status".into()),
            ..object_path
        };
        let body = json!({ "status": patch }).to_string();
        let r = self
            .store
            .mutate("PATCH", &p, "", Some(MERGE_PATCH), body.as_bytes())
            .await;
        if !r.is_success() && r.status != 404 {
            tracing::debug!(path = %p.public_path(), status = r.status, "simulated kubelet: status write failed");
        }
    }

    fn object_path(collection: &str, o: &Value) -> ApiPath {
        let ns = o["metadata"]["namespace"].as_str();
        ApiPath::object(collection, ns, meta(o, "name")).expect("a known collection")
    }

    /// One reconcile pass; returns when the next timed change is due.
    async fn pass(&mut self) -> Option<Instant> {
        let nodes = self.run_nodes().await;
        self.activate_namespaces_and_claims().await;
        let pods = self.store.list(&path(PODS)).await;
        let mut usage = self.usage(&pods);
        let deployments = self.store.list(&path(DEPLOYMENTS)).await;
        let mut by_owner: HashMap<String, Vec<&Value>> = HashMap::new();
        for p in &pods {
            for r in p["metadata"]["ownerReferences"]
                .as_array()
                .into_iter()
                .flatten()
            {
                if r["kind"] == "Deployment" {
                    by_owner
                        .entry(r["uid"].as_str().unwrap_or_default().to_string())
                        .or_default()
                        .push(p);
                }
            }
        }
        for d in &deployments {
            let owned = by_owner.remove(meta(d, "uid")).unwrap_or_default();
            self.deployment(d, &owned, &nodes, &mut usage).await;
        }
        // Pods whose Deployment is gone (made in a pass that raced its deletion): the
        // garbage collector's work.
        for orphan in by_owner.values().flatten() {
            self.store
                .delete(&Self::object_path(PODS, orphan), "", b"")
                .await;
        }
        self.run_pods(&nodes).await
    }

    /// Registers nodes created through the API (status, labels); returns the nodes.
    async fn run_nodes(&mut self) -> Vec<Value> {
        let mut nodes = self.store.list(&path(NODES)).await;
        for node in &mut nodes {
            self.cordon_taint(node).await;
            let ours = node["status"]["nodeInfo"]["kubeletVersion"] == KUBELET_VERSION;
            if ours {
                continue;
            }
            let name = meta(node, "name").to_string();
            let labels = &node["metadata"]["labels"];
            let arch = labels["kubernetes.io/arch"]
                .as_str()
                .unwrap_or("amd64")
                .to_string();
            let capacity = match node["status"]["capacity"].as_object() {
                Some(c) if !c.is_empty() => Value::Object(c.clone()),
                _ => {
                    json!({ "cpu": "4", "memory": "8192Mi", "ephemeral-storage": "102400Mi", "pods": "110" })
                }
            };
            let mut status = node_status(&name, &arch, capacity);
            if let Some(a) = node["status"]["allocatable"]
                .as_object()
                .filter(|a| !a.is_empty())
            {
                status["allocatable"] = Value::Object(a.clone());
            }
            let mut missing = serde_json::Map::new();
            for (k, v) in [
                ("kubernetes.io/hostname", name.as_str()),
                ("kubernetes.io/arch", &arch),
                ("kubernetes.io/os", "linux"),
            ] {
                if labels[k].is_null() {
                    missing.insert(k.to_string(), json!(v));
                }
            }
            let p = Self::object_path(NODES, node);
            if !missing.is_empty() {
                let body = json!({ "metadata": { "labels": missing } }).to_string();
                self.store
                    .mutate("PATCH", &p, "", Some(MERGE_PATCH), body.as_bytes())
                    .await;
            }
            if let Some(diff) = merge_diff(&node["status"], &status) {
                self.patch_status(p, diff).await;
            }
            node["status"] = status;
        }
        nodes
    }

    /// A cordoned node carries the unschedulable taint, as the node controller puts it.
    async fn cordon_taint(&self, node: &mut Value) {
        const KEY: &str = "node.kubernetes.io/unschedulable";
        let cordoned = node["spec"]["unschedulable"] == true;
        let taints: Vec<Value> = node["spec"]["taints"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let has = taints.iter().any(|t| t["key"] == KEY);
        if cordoned == has {
            return;
        }
        let mut taints: Vec<Value> = taints.into_iter().filter(|t| t["key"] != KEY).collect();
        if cordoned {
            taints.push(json!({ "key": KEY, "effect": "NoSchedule", "timeAdded": now_ts() }));
        }
        let body = json!({ "spec": { "taints": if taints.is_empty() { Value::Null } else { json!(taints) } } });
        let r = self
            .store
            .mutate(
                "PATCH",
                &Self::object_path(NODES, node),
                "",
                Some(MERGE_PATCH),
                body.to_string().as_bytes(),
            )
            .await;
        if r.is_success() {
            *node = r.body;
        }
    }

    async fn activate_namespaces_and_claims(&self) {
        for ns in self.store.list(&path(NAMESPACES)).await {
            if ns["status"]["phase"] != "Active" {
                self.patch_status(
                    Self::object_path(NAMESPACES, &ns),
                    json!({ "phase": "Active" }),
                )
                .await;
            }
        }
        for pvc in self.store.list(&path(PVCS)).await {
            if pvc["status"]["phase"] != "Bound" {
                let storage = pvc["spec"]["resources"]["requests"]["storage"].clone();
                let modes = pvc["spec"]["accessModes"].clone();
                self.patch_status(
                    Self::object_path(PVCS, &pvc),
                    json!({ "phase": "Bound", "capacity": { "storage": storage }, "accessModes": modes }),
                )
                .await;
            }
        }
    }

    /// What the bound pods already take on each node.
    fn usage(&self, pods: &[Value]) -> HashMap<String, Usage> {
        let mut usage: HashMap<String, Usage> = HashMap::new();
        for p in pods {
            let node = self
                .sims
                .get(meta(p, "uid"))
                .and_then(|s| s.node.clone())
                .or_else(|| p["spec"]["nodeName"].as_str().map(str::to_string));
            if let Some(node) = node {
                let r = sched::requests(p);
                let u = usage.entry(node).or_default();
                u.pods += 1;
                u.cpu_milli += r.cpu_milli;
                u.memory += r.memory;
            }
        }
        usage
    }

    fn new_sim(&mut self, pod: &Value, node: Result<(String, String), String>) -> PodSim {
        let now = Utc::now();
        let (node, host_ip, unschedulable) = match node {
            Ok((n, ip)) => (Some(n), ip, None),
            Err(m) => (None, String::new(), Some(m)),
        };
        self.ips += 1;
        PodSim {
            namespace: meta(pod, "namespace").to_string(),
            name: meta(pod, "name").to_string(),
            uid: meta(pod, "uid").to_string(),
            created_wall: now,
            node,
            bound: Instant::now(),
            bound_wall: now,
            ip: format!("10.244.{}.{}", self.ips / 250, self.ips % 250 + 2),
            host_ip,
            logged: Vec::new(),
            next_health: Vec::new(),
            unschedulable,
        }
    }

    fn bind(
        pod: &Value,
        nodes: &[Value],
        usage: &mut HashMap<String, Usage>,
    ) -> Result<(String, String), String> {
        let node = sched::place(pod, nodes, usage)?;
        let r = sched::requests(pod);
        let u = usage.entry(node.clone()).or_default();
        u.pods += 1;
        u.cpu_milli += r.cpu_milli;
        u.memory += r.memory;
        let ip = nodes
            .iter()
            .find(|n| n["metadata"]["name"] == node.as_str())
            .and_then(|n| n["status"]["addresses"][0]["address"].as_str())
            .unwrap_or("10.0.0.1")
            .to_string();
        Ok((node, ip))
    }

    /// Keeps `spec.replicas` pods of the current template and the status up to date.
    async fn deployment(
        &mut self,
        d: &Value,
        owned: &[&Value],
        nodes: &[Value],
        usage: &mut HashMap<String, Usage>,
    ) {
        let (ns, name) = (
            meta(d, "namespace").to_string(),
            meta(d, "name").to_string(),
        );
        let replicas = d["spec"]["replicas"].as_i64().unwrap_or(1).max(0);
        let template = &d["spec"]["template"];
        let hash = template_hash(template);
        let (current, old): (Vec<&Value>, Vec<&Value>) = owned
            .iter()
            .copied()
            .partition(|p| p["metadata"]["labels"]["pod-template-hash"] == hash.as_str());
        let strategy = &d["spec"]["strategy"];
        let recreate = strategy["type"] == "Recreate";
        let mut surge = int_or_percent(
            &strategy["rollingUpdate"]["maxSurge"],
            replicas,
            "25%",
            true,
        );
        let unavailable = int_or_percent(
            &strategy["rollingUpdate"]["maxUnavailable"],
            replicas,
            "25%",
            false,
        );
        if surge == 0 && unavailable == 0 {
            surge = 1;
        }
        let pods_path = |n: &str| ApiPath::object(PODS, Some(&ns), n).expect("pods path");
        let mut doomed: Vec<&Value> = Vec::new();
        let mut keep_current = current.clone();
        // Too many of the current template: the unready and newest go first.
        keep_current.sort_by_key(|p| {
            (
                !is_ready(p),
                std::cmp::Reverse(meta(p, "creationTimestamp").to_string()),
            )
        });
        while keep_current.len() as i64 > replicas {
            doomed.push(keep_current.pop().expect("non-empty"));
        }
        let mut old_left: Vec<&Value> = old.clone();
        if replicas == 0 || recreate {
            doomed.append(&mut old_left);
        } else {
            // Rolling: old pods go while enough pods stay available (unready ones always).
            let min_available = replicas - unavailable;
            let mut available = keep_current.iter().filter(|p| is_ready(p)).count() as i64
                + old_left.iter().filter(|p| is_ready(p)).count() as i64;
            old_left.sort_by_key(|p| is_ready(p));
            let mut stay = Vec::new();
            for p in old_left.drain(..) {
                if !is_ready(p) {
                    doomed.push(p);
                } else if available > min_available {
                    available -= 1;
                    doomed.push(p);
                } else {
                    stay.push(p);
                }
            }
            old_left = stay;
        }
        for p in &doomed {
            self.store
                .delete(&pods_path(meta(p, "name")), "", b"")
                .await;
        }
        let total = keep_current.len() as i64 + old_left.len() as i64;
        let room = if recreate { replicas } else { replicas + surge } - total;
        let create = (replicas - keep_current.len() as i64).min(room).max(0);
        for _ in 0..create {
            self.create_pod(d, &hash, nodes, usage).await;
        }
        // Status from what is there now (the next pass sees the pods just created).
        let ready = keep_current.iter().filter(|p| is_ready(p)).count() as i64
            + old_left.iter().filter(|p| is_ready(p)).count() as i64;
        let total = keep_current.len() as i64 + old_left.len() as i64 + create;
        let updated = keep_current.len() as i64 + create;
        let rs = format!("{name}-{hash}");
        let minimum = ready >= replicas - unavailable;
        let complete = updated == replicas && old_left.is_empty() && ready >= replicas;
        let conditions = keep_times(
            &d["status"]["conditions"],
            vec![
                json!({ "type": "Available", "status": if minimum { "True" } else { "False" },
                        "reason": if minimum { "MinimumReplicasAvailable" } else { "MinimumReplicasUnavailable" },
                        "message": if minimum { "Deployment has minimum availability." } else { "Deployment does not have minimum availability." },
                        "lastUpdateTime": now_ts(), "lastTransitionTime": now_ts() }),
                json!({ "type": "Progressing", "status": "True",
                        "reason": if complete { "NewReplicaSetAvailable" } else { "ReplicaSetUpdated" },
                        "message": if complete { format!("ReplicaSet \"{rs}\" has successfully progressed.") } else { format!("ReplicaSet \"{rs}\" is progressing.") },
                        "lastUpdateTime": now_ts(), "lastTransitionTime": now_ts() }),
            ],
        );
        let mut status = serde_json::Map::new();
        status.insert(
            "observedGeneration".into(),
            d["metadata"]["generation"].clone(),
        );
        // Zero counts are left out, as the API server's omitempty does.
        for (k, v) in [
            ("replicas", total),
            ("updatedReplicas", updated),
            ("readyReplicas", ready),
            ("availableReplicas", ready),
            ("unavailableReplicas", (replicas - ready).max(0)),
        ] {
            if v > 0 {
                status.insert(k.into(), json!(v));
            }
        }
        status.insert("conditions".into(), json!(conditions));
        if let Some(diff) = merge_diff(&d["status"], &Value::Object(status)) {
            self.patch_status(Self::object_path(DEPLOYMENTS, d), diff)
                .await;
        }
    }

    async fn create_pod(
        &mut self,
        d: &Value,
        hash: &str,
        nodes: &[Value],
        usage: &mut HashMap<String, Usage>,
    ) {
        let (ns, name) = (meta(d, "namespace"), meta(d, "name"));
        let template = &d["spec"]["template"];
        let mut labels = template["metadata"]["labels"]
            .as_object()
            .cloned()
            .unwrap_or_default();
        labels.insert("pod-template-hash".into(), json!(hash));
        // Only an object can take defaults (a malformed template must not stop the kubelet).
        let mut spec = match &template["spec"] {
            Value::Object(m) => Value::Object(m.clone()),
            _ => json!({}),
        };
        for (k, v) in [
            ("restartPolicy", json!("Always")),
            ("schedulerName", json!("default-scheduler")),
            ("dnsPolicy", json!("ClusterFirst")),
            ("terminationGracePeriodSeconds", json!(30)),
        ] {
            if spec[k].is_null() {
                spec[k] = v;
            }
        }
        let pod_name = format!("{name}-{hash}-{}", random_suffix());
        let mut pod = json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {
                "name": pod_name, "namespace": ns, "generateName": format!("{name}-{hash}-"),
                "labels": labels,
                "ownerReferences": [{ "apiVersion": "apps/v1", "kind": "Deployment", "name": name,
                                      "uid": meta(d, "uid"), "controller": true, "blockOwnerDeletion": true }],
            },
            "spec": spec,
        });
        if let Some(a) = template["metadata"]["annotations"].as_object() {
            pod["metadata"]["annotations"] = Value::Object(a.clone());
        }
        let placed = Self::bind(&pod, nodes, usage);
        if let Ok((node, _)) = &placed {
            pod["spec"]["nodeName"] = json!(node);
        }
        let mut sim = self.new_sim(&pod, placed);
        pod["status"] = pods::status(&pod, &sim, Instant::now(), &self.timing).0;
        let body = pod.to_string();
        let list = ApiPath::parse(&format!("/api/v1/namespaces/{ns}/pods")).expect("pods path");
        let r = self
            .store
            .mutate("POST", &list, "", Some("application/json"), body.as_bytes())
            .await;
        if r.is_success() {
            sim.uid = meta(&r.body, "uid").to_string();
            self.sims.insert(sim.uid.clone(), sim);
        }
    }

    /// Binds pending pods, moves every pod along its life, writes status and logs.
    async fn run_pods(&mut self, nodes: &[Value]) -> Option<Instant> {
        let pods = self.store.list(&path(PODS)).await;
        let mut usage = self.usage(&pods);
        let node_names: HashSet<&str> = nodes.iter().map(|n| meta(n, "name")).collect();
        let now = Instant::now();
        let mut next: Option<Instant> = None;
        let mut seen = HashSet::new();
        for pod in &pods {
            let uid = meta(pod, "uid").to_string();
            seen.insert(uid.clone());
            let p = Self::object_path(PODS, pod);
            if !self.sims.contains_key(&uid) {
                // A pod made through the API (not by a Deployment here): bind it if it can go.
                let mut free = usage.clone();
                if let Some(n) = pod["spec"]["nodeName"].as_str()
                    && let Some(u) = free.get_mut(n)
                {
                    let r = sched::requests(pod);
                    u.pods -= 1;
                    u.cpu_milli -= r.cpu_milli;
                    u.memory -= r.memory;
                }
                let placed = Self::bind(pod, nodes, &mut free);
                let sim = self.new_sim(pod, placed);
                self.sims.insert(uid.clone(), sim);
            }
            let sim = self.sims.get_mut(&uid).expect("just inserted");
            match &sim.node {
                Some(node) if !node_names.contains(node.as_str()) => {
                    // Its node is gone: the pod goes (a Deployment makes a new one).
                    self.store.delete(&p, "", b"").await;
                    continue;
                }
                Some(_) => {}
                None => {
                    let placed = Self::bind(pod, nodes, &mut usage);
                    match placed {
                        Ok((node, ip)) => {
                            sim.node = Some(node.clone());
                            sim.host_ip = ip;
                            sim.bound = now;
                            sim.bound_wall = Utc::now();
                            sim.unschedulable = None;
                            if pod["spec"]["nodeName"] != node.as_str() {
                                let body = json!({ "spec": { "nodeName": node } }).to_string();
                                self.store
                                    .mutate("PATCH", &p, "", Some(MERGE_PATCH), body.as_bytes())
                                    .await;
                            }
                        }
                        Err(message) => sim.unschedulable = Some(message),
                    }
                }
            }
            let sim = self.sims.get_mut(&uid).expect("present");
            let (status, change) = pods::status(pod, sim, now, &self.timing);
            let log_due = pods::write_logs(pod, sim, now, &self.timing, &self.store.logs);
            for t in [change, log_due].into_iter().flatten() {
                next = Some(next.map_or(t, |n: Instant| n.min(t)));
            }
            if let Some(diff) = merge_diff(&pod["status"], &status) {
                self.patch_status(p, diff).await;
            }
        }
        self.sims.retain(|uid, _| seen.contains(uid));
        next
    }
}
