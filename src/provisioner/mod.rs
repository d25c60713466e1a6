//! The Kubernetes side of instances: the adapter that writes each instance's objects with
//! kube-rs, placement on worker nodes, the reconciler that makes the cluster follow each
//! instance's desired state, and the embedded cluster the default mode runs against.

pub mod embedded;
