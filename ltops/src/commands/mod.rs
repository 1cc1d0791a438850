//! One module per `ltops` command. Each takes plain option structs (the binary fills them from
//! clap) and a [`Home`], prints its result on stdout (progress on stderr) and returns an exit code
//! or an [`crate::Error`].

pub mod create;
pub mod delete;
pub mod deploy;
pub mod loadtest;
pub mod logs;
pub mod ssh;
pub mod status;
pub mod stop;

use crate::error::Result;
use crate::lock::ClusterLock;
use crate::provider::{self, Provider};
use crate::state::{ClusterState, Home};

/// Loads a cluster and its provider (refusing types this version cannot drive).
pub fn open(home: &Home, name: &str) -> Result<(ClusterState, Box<dyn Provider>)> {
    let state = home.load(name)?;
    let p = provider::for_type(state.kind(), home)?;
    Ok((state, p))
}

/// Takes a cluster's lock for this command.
pub fn lock(home: &Home, name: &str) -> Result<ClusterLock> {
    ClusterLock::acquire(&home.cluster_dir(name), name, &crate::lock::this_command())
}
