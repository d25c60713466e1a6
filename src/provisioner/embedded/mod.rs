//! The embedded Kubernetes API stand-in (default mode and tests).
