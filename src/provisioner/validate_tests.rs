//! What a real API server accepts: every object Podium applies for an instance of each
//! seeded service, checked by `kubernetes-validate --strict` (PyPI) against the official
//! Kubernetes 1.33 schemas, unknown fields rejected. Our own stand-in accepting an object
//! proves little about a real cluster; this does. `scripts/test` installs the validator
//! and exports its path as PODIUM_TEST_KUBERNETES_VALIDATE.

use std::path::{Path, PathBuf};
use std::process::Command;

use chrono::TimeZone;
use serde_json::{Value, json};
use uuid::Uuid;

use super::objects::{self, ClusterOptions};
use super::reconcile::spec_of;
use crate::instances::model::{DesiredState, InstanceStatus, Workload};

/// The Kubernetes version the objects must be valid for (k8s-openapi's `v1_33`).
const KUBERNETES_VERSION: &str = "1.33.1";

fn validator() -> String {
    std::env::var("PODIUM_TEST_KUBERNETES_VALIDATE").unwrap_or_else(|_| {
        panic!(
            "PODIUM_TEST_KUBERNETES_VALIDATE is not set: run the tests with scripts/test, which \
             installs kubernetes-validate (PyPI) into its virtualenv and exports its path, or \
             set it to a kubernetes-validate 1.33.1 executable"
        )
    })
}

/// A directory of its own, removed even when the test fails.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> Self {
        let dir = std::env::temp_dir().join(format!("podium-kube-validate-{}", Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

struct Outcome {
    success: bool,
    output: String,
    /// How many resources it says passed.
    passed: usize,
}

fn validate(files: &[PathBuf]) -> Outcome {
    let out = Command::new(validator())
        .args(["--strict", "-k", KUBERNETES_VERSION])
        .args(files)
        .output()
        .expect("running kubernetes-validate");
    let output = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let passed = output
        .lines()
        .filter(|l| l.starts_with("INFO ") && l.contains(" passed for resource "))
        .count();
    Outcome {
        success: out.status.success(),
        output,
        passed,
    }
}

fn write(dir: &Path, name: &str, object: &Value) -> PathBuf {
    let path = dir.join(format!("{name}.json"));
    std::fs::write(&path, serde_json::to_vec_pretty(object).unwrap()).unwrap();
    path
}

/// An instance of a seeded service on its first plan, as the reconciler builds it.
fn workload(service: &Value, desired: DesiredState) -> Workload {
    let plan = &service["plans"][0];
    let int = |v: &Value| i32::try_from(v.as_i64().expect("a number")).unwrap();
    let slug = service["slug"].as_str().unwrap();
    let subdomain = format!("{slug}-k3x9q2");
    let user = Uuid::new_v4();
    Workload {
        id: Uuid::new_v4(),
        subscription_id: Uuid::new_v4(),
        user_id: user,
        namespace: format!("podium-u-{}", user.simple()),
        public_url: Some(format!("https://{subdomain}.apps.example.com")),
        subdomain,
        desired_state: desired,
        status: InstanceStatus::Provisioning,
        restarted_at: None,
        generation: 0,
        credentials: None,
        node_id: Some(Uuid::new_v4()),
        node_name: Some("worker-jkt-1".into()),
        service_slug: slug.into(),
        image: service["dockerImage"].as_str().unwrap().into(),
        container_port: int(&service["containerPort"]),
        volume_mount_path: service["volumeMountPath"].as_str().map(Into::into),
        env_template: service["envTemplate"].clone(),
        cpu_milli: int(&plan["cpuMilli"]),
        memory_mb: int(&plan["memoryMb"]),
        storage_gb: int(&plan["storageGb"]),
    }
}

fn seeded_services() -> Vec<Value> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("seeds/catalog.json");
    let catalog: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    catalog["services"].as_array().unwrap().clone()
}

#[test]
fn kubernetes_validate_accepts_every_object_of_every_seeded_service() {
    let dir = TempDir::new();
    let services = seeded_services();
    assert!(services.len() >= 5, "the catalog seeds its services");
    // Both ways the objects are built: running with every cluster option set, and stopped
    // after a restart with none (no ingress or storage class).
    let full = ClusterOptions {
        ingress_class: Some("nginx".into()),
        cluster_issuer: "letsencrypt".into(),
        storage_class: Some("local-path".into()),
        ingress_namespace: "ingress-nginx".into(),
    };
    let bare = ClusterOptions {
        ingress_class: None,
        storage_class: None,
        ..full.clone()
    };
    let mut files = Vec::new();
    for service in &services {
        let slug = service["slug"].as_str().unwrap();
        let running = spec_of(
            &workload(service, DesiredState::Running),
            "worker-jkt-1".into(),
            None,
        );
        let mut stopped = workload(service, DesiredState::Stopped);
        stopped.restarted_at = Some(
            chrono::Utc
                .with_ymd_and_hms(2026, 11, 22, 19, 30, 0)
                .unwrap(),
        );
        let stopped = spec_of(&stopped, "worker-jkt-2".into(), None);
        for (variant, spec, options) in [("running", running, &full), ("stopped", stopped, &bare)] {
            let objects = objects::all(&spec, options);
            assert_eq!(objects.len(), 7, "{slug}: every object of an instance");
            for object in objects {
                let kind = object["kind"].as_str().unwrap().to_lowercase();
                files.push(write(&dir.0, &format!("{slug}-{variant}-{kind}"), &object));
            }
        }
    }
    let outcome = validate(&files);
    assert!(
        outcome.success
            && outcome.passed == files.len()
            && !outcome.output.contains("WARN")
            && !outcome.output.contains("ERROR"),
        "kubernetes-validate --strict -k {KUBERNETES_VERSION} must pass all {} objects \
         ({} passed):\n{}",
        files.len(),
        outcome.passed,
        outcome.output
    );
}

/// The validator is not a rubber stamp: a Deployment with a misspelled field, or of an
/// apiVersion whose schema it doesn't have, does not count as passed.
#[test]
fn kubernetes_validate_rejects_what_a_cluster_would() {
    let dir = TempDir::new();
    let spec = spec_of(
        &workload(&seeded_services()[0], DesiredState::Running),
        "worker-jkt-1".into(),
        None,
    );
    let good = serde_json::to_value(objects::deployment(&spec)).unwrap();

    let mut misspelled = good.clone();
    misspelled["spec"]["template"]["spec"]["containers"][0]["imagePullPolcy"] = json!("Always");
    let outcome = validate(&[write(&dir.0, "misspelled", &misspelled)]);
    assert!(
        !outcome.success && outcome.passed == 0 && outcome.output.contains("imagePullPolcy"),
        "an unknown field is rejected under --strict:\n{}",
        outcome.output
    );

    let mut wrong_type = good.clone();
    wrong_type["spec"]["replicas"] = json!("one");
    let outcome = validate(&[write(&dir.0, "wrong-type", &wrong_type)]);
    assert!(
        !outcome.success && outcome.passed == 0,
        "a string for an integer is rejected:\n{}",
        outcome.output
    );

    // Exit status 0 but no schema: only the count of passed resources tells.
    let mut unknown = good.clone();
    unknown["apiVersion"] = json!("apps/v1beta9");
    let outcome = validate(&[write(&dir.0, "unknown", &unknown)]);
    assert_eq!(outcome.passed, 0, "{}", outcome.output);
    assert!(outcome.output.contains("WARN"), "{}", outcome.output);

    let outcome = validate(&[write(&dir.0, "good", &good)]);
    assert!(
        outcome.success && outcome.passed == 1,
        "the unchanged Deployment passes:\n{}",
        outcome.output
    );
}
