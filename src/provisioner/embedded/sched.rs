//! The simulated scheduler: which node a pod may run on (node name, nodeSelector,
//! required node affinity, cordons, taints, pod count, CPU and memory requests), with
//! kube-scheduler's style of message when none fits.

use std::collections::{BTreeMap, HashMap};

use serde_json::Value;

/// What is already placed on a node.
#[derive(Debug, Default, Clone, Copy)]
pub struct Usage {
    pub pods: i64,
    pub cpu_milli: i64,
    pub memory: i64,
}

/// The pod's summed container requests (limits stand in for missing requests, as the API
/// server defaults them).
pub fn requests(pod: &Value) -> Usage {
    let mut u = Usage {
        pods: 1,
        ..Usage::default()
    };
    for c in pod["spec"]["containers"].as_array().into_iter().flatten() {
        let r = &c["resources"];
        let pick = |k: &str| {
            r["requests"][k]
                .as_str()
                .or_else(|| r["limits"][k].as_str())
                .map(str::to_string)
        };
        u.cpu_milli += pick("cpu").map_or(0, |q| (quantity(&q) * 1000.0).round() as i64);
        u.memory += pick("memory").map_or(0, |q| quantity(&q).round() as i64);
    }
    u
}

/// A Kubernetes quantity ("500m", "2", "256Mi", "1G", "1e3") as a number of units.
pub fn quantity(q: &str) -> f64 {
    let q = q.trim();
    let split = q
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '-' || c == '+'))
        .unwrap_or(q.len());
    let (num, suffix) = q.split_at(split);
    let n: f64 = num.parse().unwrap_or(0.0);
    let mult = match suffix {
        "" => 1.0,
        "m" => 1e-3,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "P" => 1e15,
        "E" => 1e18,
        "Ki" => 1024.0,
        "Mi" => 1024.0_f64.powi(2),
        "Gi" => 1024.0_f64.powi(3),
        "Ti" => 1024.0_f64.powi(4),
        "Pi" => 1024.0_f64.powi(5),
        "Ei" => 1024.0_f64.powi(6),
        s if s.starts_with(['e', 'E']) => 10f64.powi(s[1..].parse().unwrap_or(0)),
        _ => 1.0,
    };
    n * mult
}

fn labels(node: &Value) -> BTreeMap<String, String> {
    node["metadata"]["labels"]
        .as_object()
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string())))
                .collect()
        })
        .unwrap_or_default()
}

/// One matchExpressions/matchFields requirement against a node.
fn requirement(req: &Value, value: Option<&str>) -> bool {
    let values: Vec<&str> = req["values"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    match req["operator"].as_str().unwrap_or("") {
        "In" => value.is_some_and(|v| values.contains(&v)),
        "NotIn" => value.is_none_or(|v| !values.contains(&v)),
        "Exists" => value.is_some(),
        "DoesNotExist" => value.is_none(),
        _ => false,
    }
}

/// nodeName, nodeSelector and required node affinity (terms are ORed, requirements ANDed).
fn selects(pod: &Value, node: &Value) -> bool {
    let name = node["metadata"]["name"].as_str().unwrap_or_default();
    if let Some(want) = pod["spec"]["nodeName"].as_str()
        && want != name
    {
        return false;
    }
    let labels = labels(node);
    let selector_ok = pod["spec"]["nodeSelector"]
        .as_object()
        .into_iter()
        .flatten()
        .all(|(k, v)| labels.get(k).map(String::as_str) == v.as_str());
    if !selector_ok {
        return false;
    }
    let terms = &pod["spec"]["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
        ["nodeSelectorTerms"];
    match terms.as_array() {
        Some(terms) if !terms.is_empty() => terms.iter().any(|t| {
            let exprs = t["matchExpressions"].as_array().into_iter().flatten();
            let fields = t["matchFields"].as_array().into_iter().flatten();
            exprs.clone().all(|r| {
                requirement(
                    r,
                    r["key"]
                        .as_str()
                        .and_then(|k| labels.get(k))
                        .map(String::as_str),
                )
            }) && fields
                .clone()
                .all(|r| requirement(r, (r["key"] == "metadata.name").then_some(name)))
                && (exprs.count() + fields.count() > 0)
        }),
        _ => true,
    }
}

fn ready(node: &Value) -> bool {
    node["status"]["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|c| c["type"] == "Ready" && c["status"] == "True")
}

/// A NoSchedule/NoExecute taint the pod does not tolerate.
fn untolerated_taint(pod: &Value, node: &Value) -> bool {
    let tolerations: Vec<&Value> = pod["spec"]["tolerations"]
        .as_array()
        .into_iter()
        .flatten()
        .collect();
    node["spec"]["taints"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|t| {
            let effect = t["effect"].as_str().unwrap_or("");
            if effect == "PreferNoSchedule" {
                return false;
            }
            !tolerations.iter().any(|tol| {
                let key_ok = tol["key"]
                    .as_str()
                    .is_none_or(|k| k.is_empty() || Some(k) == t["key"].as_str());
                let value_ok = tol["operator"] == "Exists" || tol["value"] == t["value"];
                let effect_ok = tol["effect"]
                    .as_str()
                    .is_none_or(|e| e.is_empty() || e == effect);
                key_ok && value_ok && effect_ok
            })
        })
}

fn allocatable(node: &Value, key: &str) -> Option<f64> {
    let status = &node["status"];
    status["allocatable"][key]
        .as_str()
        .or_else(|| status["capacity"][key].as_str())
        .map(quantity)
}

/// The node the pod goes to (the least loaded by CPU among those that fit), or the
/// scheduler's message saying why none does.
pub fn place(
    pod: &Value,
    nodes: &[Value],
    usage: &HashMap<String, Usage>,
) -> Result<String, String> {
    if nodes.is_empty() {
        return Err("no nodes available to schedule pods".to_string());
    }
    let want = requests(pod);
    let pinned = pod["spec"]["nodeName"].is_string();
    let mut reasons: BTreeMap<&str, usize> = BTreeMap::new();
    let mut best: Option<(f64, String)> = None;
    for node in nodes {
        let name = node["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let used = usage.get(&name).copied().unwrap_or_default();
        let reason = if !selects(pod, node) {
            Some("node(s) didn't match Pod's node affinity/selector")
        } else if !ready(node) {
            Some("node(s) were not ready")
        } else if !pinned && node["spec"]["unschedulable"] == Value::Bool(true) {
            Some("node(s) were unschedulable")
        } else if !pinned && untolerated_taint(pod, node) {
            Some("node(s) had untolerated taint(s)")
        } else if allocatable(node, "pods").is_some_and(|max| (used.pods + 1) as f64 > max) {
            Some("Too many pods")
        } else if allocatable(node, "cpu")
            .is_some_and(|max| (used.cpu_milli + want.cpu_milli) as f64 > (max * 1000.0).round())
        {
            Some("Insufficient cpu")
        } else if allocatable(node, "memory")
            .is_some_and(|max| (used.memory + want.memory) as f64 > max)
        {
            Some("Insufficient memory")
        } else {
            None
        };
        match reason {
            Some(r) => *reasons.entry(r).or_default() += 1,
            None => {
                let load = used.cpu_milli as f64
                    / allocatable(node, "cpu").map_or(1.0, |c| (c * 1000.0).max(1.0));
                if best.as_ref().is_none_or(|(l, _)| load < *l) {
                    best = Some((load, name));
                }
            }
        }
    }
    if let Some((_, name)) = best {
        return Ok(name);
    }
    if let Some(name) = pod["spec"]["nodeName"].as_str()
        && !nodes.iter().any(|n| n["metadata"]["name"] == name)
    {
        return Err(format!(
            "0/{} nodes are available: node \"{name}\" not found.",
            nodes.len()
        ));
    }
    let why: Vec<String> = reasons.iter().map(|(r, n)| format!("{n} {r}")).collect();
    Err(format!(
        "0/{} nodes are available: {}.",
        nodes.len(),
        why.join(", ")
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn quantities_parse() {
        assert_eq!(quantity("500m"), 0.5);
        assert_eq!(quantity("2"), 2.0);
        assert_eq!(quantity("256Mi"), 256.0 * 1024.0 * 1024.0);
        assert_eq!(quantity("1G"), 1e9);
        assert_eq!(quantity("1e3"), 1000.0);
    }

    #[test]
    fn pods_go_where_they_fit_and_say_why_not() {
        let node = |name: &str, cpu: &str| {
            json!({ "metadata": { "name": name, "labels": { "kubernetes.io/hostname": name } },
                    "spec": {},
                    "status": { "allocatable": { "cpu": cpu, "memory": "1Gi", "pods": "10" },
                                "conditions": [{ "type": "Ready", "status": "True" }] } })
        };
        let nodes = vec![node("a", "1"), node("b", "4")];
        let pod = |host: &str, cpu: &str| {
            json!({ "spec": { "nodeSelector": { "kubernetes.io/hostname": host },
                              "containers": [{ "name": "c", "resources": { "requests": { "cpu": cpu } } }] } })
        };
        let usage = HashMap::new();
        assert_eq!(place(&pod("b", "2"), &nodes, &usage), Ok("b".to_string()));
        let err = place(&pod("a", "2"), &nodes, &usage).unwrap_err();
        assert!(err.contains("1 Insufficient cpu"), "{err}");
        assert!(err.contains("1 node(s) didn't match"), "{err}");
        let err = place(&pod("zzz", "1"), &nodes, &usage).unwrap_err();
        assert!(err.starts_with("0/2 nodes are available"), "{err}");
    }
}
