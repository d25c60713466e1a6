//! From what the cluster shows (the instance's pods) to the status and message its owner
//! reads. Pure, so every case is a unit test.

use k8s_openapi::api::core::v1::{ContainerStatus, Pod};

use crate::instances::model::{DesiredState, InstanceStatus};

/// What the cluster holds of one instance.
pub struct Observed<'a> {
    pub desired: DesiredState,
    /// Whether its Deployment exists.
    pub deployed: bool,
    /// Whether any of its objects still exists (for deletion).
    pub any_object: bool,
    pub pods: &'a [Pod],
    /// The restart the pod template asks for (a pod without it is the old one).
    pub restarted_at: Option<&'a str>,
    pub url: Option<&'a str>,
}

pub fn status_of(o: &Observed<'_>) -> (InstanceStatus, String) {
    use InstanceStatus::*;
    match o.desired {
        DesiredState::Deleted => {
            if o.any_object {
                (Terminating, "removing the app and its data".into())
            } else {
                (Terminated, "removed".into())
            }
        }
        DesiredState::Stopped => {
            if o.pods.is_empty() {
                (Stopped, "stopped; its data is kept".into())
            } else {
                (Stopping, "stopping".into())
            }
        }
        DesiredState::Running => running(o),
    }
}

fn running(o: &Observed<'_>) -> (InstanceStatus, String) {
    use InstanceStatus::*;
    if !o.deployed {
        return (Provisioning, "creating the app's resources".into());
    }
    // Pods being deleted or finished for good (an evicted one lingers) say nothing about
    // the app now; the newest of the others does.
    let mut current: Vec<&Pod> = o
        .pods
        .iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .filter(|p| {
            !matches!(
                p.status.as_ref().and_then(|s| s.phase.as_deref()),
                Some("Failed" | "Succeeded")
            )
        })
        .collect();
    current.sort_by(|a, b| {
        b.metadata
            .creation_timestamp
            .cmp(&a.metadata.creation_timestamp)
    });
    // A restart is under way until a pod of the restarted template runs alone.
    if o.restarted_at.is_some()
        && (current.iter().any(|p| restarted_at(p) != o.restarted_at)
            || !o.pods.iter().any(|p| restarted_at(p) == o.restarted_at))
    {
        return (Restarting, "restarting".into());
    }
    let Some(pod) = current.first() else {
        return (Provisioning, "starting the app's container".into());
    };
    // The scheduler's own words name other nodes and taints: for the operators (the pod's
    // events), not for customers.
    let unscheduled = pod
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| {
            c.iter()
                .any(|c| c.type_ == "PodScheduled" && c.status == "False")
        });
    if unscheduled {
        return (
            Provisioning,
            "waiting for its worker node to take the app".into(),
        );
    }
    let containers = pod
        .status
        .as_ref()
        .and_then(|s| s.container_statuses.as_deref())
        .unwrap_or_default();
    if let Some(failed) = containers.iter().find_map(failure) {
        return (Failed, failed);
    }
    if !containers.is_empty() && containers.iter().all(|c| c.ready) {
        let at = o.url.map(|u| format!(" at {u}")).unwrap_or_default();
        return (Running, format!("running{at}"));
    }
    let waiting = containers
        .iter()
        .filter_map(|c| c.state.as_ref()?.waiting.as_ref()?.reason.clone())
        .next();
    match waiting.as_deref() {
        Some("ContainerCreating" | "PodInitializing") => {}
        None if containers.is_empty() => {}
        _ => {
            return (
                Provisioning,
                "started; waiting for the app to answer".into(),
            );
        }
    }
    (
        Provisioning,
        "pulling the image and creating the container".into(),
    )
}

/// A container that will not come up without someone changing something.
fn failure(c: &ContainerStatus) -> Option<String> {
    let waiting = c.state.as_ref()?.waiting.as_ref()?;
    let reason = waiting.reason.as_deref()?;
    let image = &c.image;
    match reason {
        "ImagePullBackOff" | "ErrImagePull" | "InvalidImageName" | "ErrImageNeverPull" => Some(
            format!("the image {image} could not be pulled ({reason}); retrying"),
        ),
        "CrashLoopBackOff" => {
            let exit = c
                .last_state
                .as_ref()
                .and_then(|s| s.terminated.as_ref())
                .map(|t| format!(" with exit code {}", t.exit_code))
                .unwrap_or_default();
            Some(format!(
                "the app keeps crashing: it stopped{exit} and was restarted {} times",
                c.restart_count
            ))
        }
        "CreateContainerConfigError" | "CreateContainerError" | "RunContainerError" => {
            Some(format!("the container could not be started ({reason})"))
        }
        _ => None,
    }
}

fn restarted_at(pod: &Pod) -> Option<&str> {
    pod.metadata
        .annotations
        .as_ref()?
        .get(super::objects::RESTARTED_AT)
        .map(String::as_str)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_restart_is_under_way_until_a_pod_of_its_template_runs_alone() {
        let at = "2026-11-22T10:00:00.123456+00:00";
        let running = |annotation: Option<&str>| -> Pod {
            let mut v = json!({ "metadata": { "name": "p" }, "status": { "phase": "Running",
                "containerStatuses": [{ "name": "app", "image": "x:1", "imageID": "", "ready": true,
                "restartCount": 0, "state": { "running": {} } }] } });
            if let Some(a) = annotation {
                v["metadata"]["annotations"] =
                    json!({ crate::provisioner::objects::RESTARTED_AT: a });
            }
            serde_json::from_value(v).unwrap()
        };
        let observe = |pods: &[Pod]| {
            status_of(&Observed {
                desired: DesiredState::Running,
                deployed: true,
                any_object: true,
                pods,
                restarted_at: Some(at),
                url: None,
            })
            .0
        };
        assert_eq!(
            observe(&[running(None)]),
            InstanceStatus::Restarting,
            "old pod only"
        );
        assert_eq!(
            observe(&[]),
            InstanceStatus::Restarting,
            "old gone, new not yet made"
        );
        assert_eq!(
            observe(&[running(None), running(Some(at))]),
            InstanceStatus::Restarting,
            "both"
        );
        assert_eq!(observe(&[running(Some(at))]), InstanceStatus::Running);
    }

    fn pod(status: serde_json::Value) -> Pod {
        serde_json::from_value(json!({ "metadata": { "name": "p" }, "status": status })).unwrap()
    }

    fn observe(desired: DesiredState, pods: &[Pod]) -> (InstanceStatus, String) {
        status_of(&Observed {
            desired,
            deployed: true,
            any_object: true,
            pods,
            restarted_at: None,
            url: Some("https://x.example"),
        })
    }

    fn waiting(reason: &str) -> serde_json::Value {
        json!({ "phase": "Pending", "containerStatuses": [{
            "name": "app", "image": "x:1", "imageID": "", "ready": false, "restartCount": 3,
            "state": { "waiting": { "reason": reason } },
            "lastState": { "terminated": { "exitCode": 1, "reason": "Error" } },
        }] })
    }

    #[test]
    fn pod_states_map_to_statuses_with_messages() {
        use InstanceStatus::*;
        let (s, m) = observe(DesiredState::Running, &[pod(waiting("ContainerCreating"))]);
        assert_eq!(s, Provisioning, "{m}");
        let (s, m) = observe(DesiredState::Running, &[pod(waiting("ImagePullBackOff"))]);
        assert_eq!(s, Failed);
        assert!(m.contains("x:1 could not be pulled"), "{m}");
        let (s, m) = observe(DesiredState::Running, &[pod(waiting("CrashLoopBackOff"))]);
        assert_eq!(s, Failed);
        assert!(m.contains("exit code 1") && m.contains("3 times"), "{m}");
        let ready = json!({ "phase": "Running", "containerStatuses": [{
            "name": "app", "image": "x:1", "imageID": "", "ready": true, "restartCount": 0,
            "state": { "running": {} } }] });
        let (s, m) = observe(DesiredState::Running, &[pod(ready.clone())]);
        assert_eq!((s, m.as_str()), (Running, "running at https://x.example"));
        assert_eq!(observe(DesiredState::Stopped, &[pod(ready)]).0, Stopping);
        assert_eq!(observe(DesiredState::Stopped, &[]).0, Stopped);
        let unscheduled = json!({ "phase": "Pending", "conditions": [{
            "type": "PodScheduled", "status": "False", "message": "node x not found" }] });
        let (s, m) = observe(DesiredState::Running, &[pod(unscheduled)]);
        assert_eq!(s, Provisioning);
        assert!(
            !m.contains("node x"),
            "no scheduler internals for customers: {m}"
        );
        let evicted = json!({ "phase": "Failed", "reason": "Evicted" });
        let ready2 = json!({ "phase": "Running", "containerStatuses": [{
            "name": "app", "image": "x:1", "imageID": "", "ready": true, "restartCount": 0,
            "state": { "running": {} } }] });
        assert_eq!(
            observe(DesiredState::Running, &[pod(evicted), pod(ready2)]).0,
            Running,
            "an evicted leftover says nothing"
        );
    }
}
