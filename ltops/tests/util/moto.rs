//! The EC2 emulator for the aws and Terraform tests: `moto_server` (PyPI `moto[server,ec2]`) on
//! a free loopback port, killed on drop, and a python3 with boto3 to check independently of
//! `ltops` what exists there.
#![allow(clippy::unwrap_used, dead_code)]

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A program on `PATH`.
pub fn on_path(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|p| {
        std::env::split_paths(&p)
            .map(|d| d.join(name))
            .find(|f| f.is_file())
    })
}

/// A tool the test needs is missing: `true` (skip, with a note), or a failure under `CI=true`.
pub fn missing(what: &str) -> bool {
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("{what} (CI=true requires it; .ci/run installs it)");
    }
    eprintln!("note: skipping: {what}");
    true
}

/// A python3 that can import `module`: the one next to `beside` (a venv's), else `python3`.
pub fn python_with(module: &str, beside: Option<&str>) -> Option<PathBuf> {
    let mut candidates: Vec<PathBuf> = beside
        .and_then(on_path)
        .map(|b| b.with_file_name("python3"))
        .into_iter()
        .collect();
    candidates.push(PathBuf::from("python3"));
    candidates.into_iter().find(|p| {
        Command::new(p)
            .args(["-c", &format!("import {module}")])
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    })
}

pub struct Moto {
    child: Child,
    pub url: String,
    /// A python3 with boto3.
    pub python: PathBuf,
}

impl Moto {
    /// `None` (skip) without `moto_server`, unless `CI=true`. `validate_types`: reject
    /// instance types EC2 does not have (how the tests make a create fail half-way).
    pub fn start(validate_types: bool) -> Option<Moto> {
        let Some(bin) = on_path("moto_server") else {
            missing("moto_server is not installed (pip install 'moto[server,ec2]')");
            return None;
        };
        let python = python_with("boto3", Some("moto_server"))
            .expect("no python3 with boto3 next to moto_server or on PATH");
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut c = Command::new(&bin);
        c.args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if validate_types {
            c.env("MOTO_EC2_ENABLE_INSTANCE_TYPE_VALIDATION", "true");
        }
        let mut m = Moto {
            child: c.spawn().unwrap(),
            url: format!("http://127.0.0.1:{port}"),
            python,
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                m.child.try_wait().unwrap().is_none(),
                "moto_server exited at start"
            );
            assert!(
                Instant::now() < deadline,
                "moto_server did not listen in 60 s"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        Some(m)
    }

    /// Runs a boto3 script (`sys.argv[1]` is the emulator's URL, then `args`) and parses the
    /// JSON it prints.
    pub fn boto3(&self, script: &str, args: &[&str]) -> serde_json::Value {
        let out = Command::new(&self.python)
            .args(["-c", script, &self.url])
            .args(args)
            .env("AWS_ACCESS_KEY_ID", "test")
            .env("AWS_SECRET_ACCESS_KEY", "test")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "boto3 check failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
