//! `ltops`'s Kubernetes client, the only crate that links `kube` and `k8s-openapi` (so a change
//! in `ltops` does not rebuild them).
//!
//! - [`manifests`]: the objects of one cluster from a plain [`ClusterSpec`], and their sizing.
//! - [`Session`]: one kubeconfig context; checks the nodes' allocatable resources, applies the
//!   manifests with server-side apply (field manager [`FIELD_MANAGER`]), waits for readiness and
//!   says which pod is stuck and why, forwards local ports to pods through the API server, runs
//!   commands in pods, streams logs, and deletes a cluster, waiting until its objects are gone.
//!
//! Nothing here prints; progress goes through callbacks and failures are [`Error`]s whose text
//! names the object and what to do.

pub mod manifests;
pub mod quantity;
mod session;

pub use manifests::{ClusterSpec, DatabaseSpec, Kind, Manifest, Resources, Secrets, Sizing};
pub use session::{Capacity, Error, ExecIo, Forward, Leftover, PodInfo, Session, FIELD_MANAGER};
