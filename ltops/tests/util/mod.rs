//! What the end-to-end tests share: the `ltops` binary next to the server and agent it starts,
//! and an isolated state directory (`LTOPS_HOME`) to run it in.
#![allow(clippy::unwrap_used, dead_code)]

pub mod fake_kube;
pub mod moto;

use std::path::PathBuf;
use std::process::{Command, Output, Stdio};

use ltops::state::{ClusterState, Home};

pub fn ltops_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_ltops"))
}

/// Fails with instructions when the other binaries were not built.
pub fn require_binaries() {
    let dir = ltops_bin().parent().unwrap().to_path_buf();
    for name in ["chat-server", "loadtest-agent"] {
        assert!(
            dir.join(name).is_file(),
            "{} is missing: run `cargo build --workspace --bins` before `cargo test -p ltops`",
            dir.join(name).display()
        );
    }
}

/// A run's results directory through `ltparse`, all agents merged (and the server samples).
pub fn summarize(results_dir: &std::path::Path) -> ltparse::RunOutcome {
    ltparse::run(&ltparse::Options {
        files: ltparse::results_files_in(results_dir).unwrap(),
        aggregate: true,
        ..Default::default()
    })
    .unwrap()
}

/// An `ltops` with its own state directory.
pub struct Env {
    pub home: tempfile::TempDir,
}

impl Env {
    pub fn new() -> Self {
        Env {
            home: tempfile::tempdir().unwrap(),
        }
    }

    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(ltops_bin());
        c.args(args)
            .env("LTOPS_HOME", self.home.path())
            .stdin(Stdio::null());
        c
    }

    /// Runs `ltops args…` to the end, echoing what it printed (shown when a test fails).
    pub fn run(&self, args: &[&str]) -> Output {
        let out = self.cmd(args).output().unwrap();
        eprintln!(
            "$ ltops {}\n[exit {:?}]\n{}{}",
            args.join(" "),
            out.status.code(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    pub fn state(&self, name: &str) -> ClusterState {
        Home::at(self.home.path()).load(name).unwrap()
    }
}

/// A small closed-model workload of `duration` (20 users, 40 in the data set), written in `dir`.
pub fn tiny_workload(dir: &std::path::Path, duration: &str) -> PathBuf {
    let p = dir.join(format!("tiny-{duration}.toml"));
    std::fs::write(
        &p,
        format!(
            "preset = \"quick\"\n[dataset]\nteams = 1\nusers = 40\nposts_per_channel = 2\n\
             [[dataset.channels]]\ncount = 4\nmembers = 10\n[users]\ncount = 20\nramp_up = \"1s\"\n\
             duration = \"{duration}\"\n[behaviour]\nmode = \"closed\"\nmean_interval = \"500ms\"\n\
             interval_jitter = \"200ms\"\n[run]\ninterval = \"1s\"\n"
        ),
    )
    .unwrap();
    p
}

/// Standard output and error of a finished command, as one text.
pub fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}
