//! `ltops`: the operator CLI of the load-testing toolkit — create clusters, deploy servers and
//! agents, run coordinated load tests, keep and summarize their results.
//!
//! # Codemap
//!
//! - [`commands`]: one module per CLI command; the binary (`main.rs`) only parses flags and
//!   calls them.
//! - [`provider`]: the boundary between "what to do" and "where it runs". [`provider::Provider`]
//!   has create/deploy/stop/status/ssh/logs/delete and hands out agent control endpoints;
//!   [`provider::local`] runs everything as processes on this machine.
//! - [`coordinator`]: a load test over any set of agents, through their control API only
//!   ([`agent_client`]): user split, clock offsets ([`clock`]), common start, live
//!   [`progress`], stop, results download; [`server_sample`] keeps the servers' own figures
//!   beside the agents' results; [`capacity`] steers a run to find how many users it holds.
//! - [`state`]: the state directory and the cluster definition file; [`lock`]: one command per
//!   cluster at a time; [`process`]: local process plumbing; [`interrupt`]: ctrl-c.
//!
//! # Invariants
//!
//! - Coordination code never depends on the provider: adding Kubernetes or AWS means a new
//!   `Provider`, nothing in `coordinator`.
//! - Every process a command starts is recorded in `cluster.toml` before the command waits on it,
//!   and stopped again if the command fails, so nothing is orphaned.
//! - Writes of state are atomic; changes happen under the cluster's lock.

pub mod agent_client;
pub mod capacity;
pub mod clock;
pub mod commands;
pub mod coordinator;
pub mod error;
pub mod interrupt;
pub mod lock;
pub mod process;
pub mod progress;
pub mod provider;
pub mod server_sample;
pub mod state;

pub use error::{exit, Error, Result};
