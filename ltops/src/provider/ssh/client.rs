//! The system OpenSSH client, multiplexed: one master connection per host and cluster, every
//! command and port forward through it.
//!
//! Using `ssh` itself (not a library) means the operator's `~/.ssh/config`, agent, jump hosts and
//! `known_hosts` apply as they expect. Host keys are checked: a new host's key is accepted on
//! first contact (`StrictHostKeyChecking=accept-new`) and must match afterwards. `BatchMode` makes
//! a missing key an error instead of a password prompt. The master runs in its own process group
//! (a ctrl-c in the terminal must not cut the forwards `ltops` needs to stop a run cleanly) with
//! its output in a log file (a background process holding our stderr would make callers that
//! read it wait for its exit); it lives `ControlPersist` after its last use.
//!
//! Secrets never appear in an `ssh` argument: they travel on a command's standard input.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::process::Command;

use super::inventory::Host;
use crate::error::{Error, IoContext, Result};

/// How long a master connection outlives its last client.
const CONTROL_PERSIST: &str = "120";
/// TCP connect timeout of a new connection, seconds.
const CONNECT_TIMEOUT: &str = "10";

/// The output of a remote command.
#[derive(Debug)]
pub struct Output {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Output {
    pub fn ok(&self) -> bool {
        self.code == 0
    }
}

/// SSH access to the hosts of one cluster.
#[derive(Clone, Debug)]
pub struct Ssh {
    /// Private directory of the control sockets (short: a socket path has ~100 bytes).
    control_dir: PathBuf,
}

/// Quotes `s` for a POSIX shell.
pub fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

impl Ssh {
    /// `cluster_id` keeps the sockets of different clusters apart.
    pub fn new(cluster_id: &str) -> Result<Self> {
        let uid = nix::unistd::geteuid().as_raw();
        let base = std::env::temp_dir().join(format!("ltops-ssh-{uid}"));
        crate::state::create_private_dir(&base)?;
        let control_dir = base.join(cluster_id);
        crate::state::create_private_dir(&control_dir)?;
        Ok(Ssh { control_dir })
    }

    /// The control socket of the master to `h` (named by us, so a stale one can be removed).
    fn socket(&self, h: &Host) -> PathBuf {
        let key = format!("{}:{}", h.label(), h.port);
        self.control_dir
            .join(crate::state::stable_hash(key.as_bytes()))
    }

    fn destination(h: &Host) -> String {
        h.address.clone()
    }

    /// The options every invocation shares.
    fn base_args(&self, h: &Host) -> Vec<OsString> {
        let mut a: Vec<OsString> = Vec::new();
        if let Some(cfg) = &h.ssh_config {
            a.push("-F".into());
            a.push(cfg.into());
        }
        if let Some(id) = &h.identity_file {
            a.push("-i".into());
            a.push(id.into());
            a.push("-o".into());
            a.push("IdentitiesOnly=yes".into());
        }
        if let Some(kh) = &h.known_hosts {
            let mut o = OsString::from("UserKnownHostsFile=");
            o.push(kh);
            a.push("-o".into());
            a.push(o);
        }
        if let Some(u) = &h.user {
            a.push("-l".into());
            a.push(u.into());
        }
        a.push("-p".into());
        a.push(h.port.to_string().into());
        for o in [
            "BatchMode=yes".to_string(),
            "StrictHostKeyChecking=accept-new".into(),
            format!("ConnectTimeout={CONNECT_TIMEOUT}"),
            "ServerAliveInterval=15".into(),
            "ServerAliveCountMax=4".into(),
            "LogLevel=ERROR".into(),
        ] {
            a.push("-o".into());
            a.push(o.into());
        }
        let mut cp = OsString::from("ControlPath=");
        cp.push(self.socket(h));
        a.push("-o".into());
        a.push(cp);
        a
    }

    /// A client command that uses the master (never becomes one).
    fn client(&self, h: &Host) -> Command {
        let mut c = Command::new("ssh");
        c.args(self.base_args(h))
            .args(["-o", "ControlMaster=no"])
            .kill_on_drop(true)
            .process_group(0);
        c
    }

    /// Removes this cluster's socket directory (after `delete` closed its masters).
    pub fn remove_control_dir(&self) {
        let _ = std::fs::remove_dir_all(&self.control_dir);
    }

    /// A blocking client command (for interactive sessions and streams).
    pub fn std_client(&self, h: &Host, tty: bool) -> std::process::Command {
        let mut c = std::process::Command::new("ssh");
        c.args(self.base_args(h)).args(["-o", "ControlMaster=no"]);
        if tty {
            c.arg("-t");
        }
        c
    }

    /// Makes sure a master connection to `h` is up; errors name the host and what to do.
    pub async fn connect(&self, h: &Host) -> Result<()> {
        if self.check(h).await {
            return Ok(());
        }
        let log = self.control_dir.join(format!(
            "connect-{}.log",
            crate::state::stable_hash(format!("{}:{}", h.label(), h.port).as_bytes())
        ));
        let _ = std::fs::remove_file(&log);
        // A socket left by a master that died would make the new one run without multiplexing.
        let _ = std::fs::remove_file(self.socket(h));
        let mut c = Command::new("ssh");
        c.args(self.base_args(h))
            .args(["-o", "ControlMaster=yes"])
            .args(["-o", &format!("ControlPersist={CONTROL_PERSIST}")])
            .arg("-E")
            .arg(&log)
            .args(["-N", "-f"])
            .arg(Self::destination(h))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .process_group(0);
        let status = tokio::time::timeout(Duration::from_secs(45), c.status())
            .await
            .map_err(|_| {
                Error::Runtime(format!(
                    "host {}: no SSH connection within 45 s; check that the host is up and reachable, then try again",
                    h.label()
                ))
            })?
            .map_err(|e| {
                Error::Usage(format!(
                    "cannot run `ssh` ({e}); install the OpenSSH client (e.g. `apt-get install openssh-client`)"
                ))
            })?;
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if status.success() && self.check(h).await {
            return Ok(());
        }
        Err(connection_error(h, &text))
    }

    /// Whether the master to `h` is up.
    async fn check(&self, h: &Host) -> bool {
        let mut c = Command::new("ssh");
        c.args(self.base_args(h))
            .args(["-O", "check"])
            .arg(Self::destination(h))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true);
        matches!(c.status().await, Ok(s) if s.success())
    }

    /// Closes the master to `h` (if any).
    pub async fn disconnect(&self, h: &Host) {
        let mut c = Command::new("ssh");
        c.args(self.base_args(h))
            .args(["-O", "exit"])
            .arg(Self::destination(h))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true);
        let _ = c.status().await;
    }

    /// Runs `script` with `sh` on `h`, with `input` on its standard input.
    pub async fn run(&self, h: &Host, script: &str, input: Option<&[u8]>) -> Result<Output> {
        let mut c = self.client(h);
        c.arg(Self::destination(h))
            .arg("--")
            .arg(format!("sh -c {}", sh_quote(script)))
            .stdin(if input.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = c.spawn().map_err(|e| {
            Error::Usage(format!(
                "cannot run `ssh` ({e}); install the OpenSSH client (e.g. `apt-get install openssh-client`)"
            ))
        })?;
        let mut sent = Ok(());
        if let (Some(bytes), Some(mut stdin)) = (input, child.stdin.take()) {
            sent = stdin.write_all(bytes).await;
            drop(stdin);
        }
        finish_sent(h, child, sent, "sending data").await
    }

    /// Like [`Ssh::run`], failing with the command's error output unless it exits 0.
    pub async fn run_ok(
        &self,
        h: &Host,
        what: &str,
        script: &str,
        input: Option<&[u8]>,
    ) -> Result<String> {
        let o = self.run(h, script, input).await?;
        if o.ok() {
            Ok(o.stdout)
        } else {
            Err(Error::Runtime(format!(
                "host {}: {what} failed (exit {}): {}",
                h.label(),
                o.code,
                o.stderr.trim()
            )))
        }
    }

    /// Streams a local file to `remote_tmp` on `h` and runs `then` (moving it into place).
    pub async fn upload(&self, h: &Host, local: &Path, script: &str) -> Result<Output> {
        let file = tokio::fs::File::open(local)
            .await
            .context(|| format!("opening {}", local.display()))?;
        let mut c = self.client(h);
        c.arg(Self::destination(h))
            .arg("--")
            .arg(format!("sh -c {}", sh_quote(script)))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = c
            .spawn()
            .map_err(|e| Error::Usage(format!("cannot run `ssh` ({e})")))?;
        let mut sent = Ok(());
        if let Some(mut stdin) = child.stdin.take() {
            let mut file = file;
            sent = tokio::io::copy(&mut file, &mut stdin).await.map(drop);
            drop(stdin);
        }
        finish_sent(h, child, sent, &format!("uploading {}", local.display())).await
    }

    /// Checks that `h`'s sshd lets this user forward TCP connections (the control APIs are
    /// reached that way). Asks for a channel to a closed port: "refused" is fine, "prohibited"
    /// is not. On a connection of its own (through the master, the refusal's reason is logged
    /// by the master only) and at log level INFO (the reason is not an ERROR line); the first
    /// value of an option wins, so these precede the shared ones.
    pub async fn check_forwarding(&self, h: &Host) -> Result<()> {
        let mut c = Command::new("ssh");
        c.args(["-o", "LogLevel=INFO", "-o", "ControlPath=none"])
            .args(self.base_args(h))
            .kill_on_drop(true)
            .process_group(0);
        c.args(["-W", "127.0.0.1:1"])
            .arg(Self::destination(h))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let out = tokio::time::timeout(Duration::from_secs(20), c.output())
            .await
            .map_err(|_| {
                Error::Runtime(format!(
                    "host {}: no answer to a port-forwarding test within 20 s",
                    h.label()
                ))
            })?
            .context(|| format!("testing port forwarding on {}", h.label()))?;
        forwarding_verdict(h, &String::from_utf8_lossy(&out.stderr))
    }

    /// Forwards a local loopback port to `target_host:target_port` as seen from `h`, for as long
    /// as the returned guard lives.
    pub async fn forward(&self, h: &Host, target_host: &str, target_port: u16) -> Result<Forward> {
        let mut last = String::new();
        for _ in 0..5 {
            let local_port = crate::process::free_port()?;
            let spec = format!("127.0.0.1:{local_port}:{target_host}:{target_port}");
            let mut c = Command::new("ssh");
            c.args(self.base_args(h))
                .args(["-O", "forward", "-L", &spec])
                .arg(Self::destination(h))
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .kill_on_drop(true);
            let out = c
                .output()
                .await
                .context(|| format!("forwarding a port to {}", h.label()))?;
            if out.status.success() {
                return Ok(Forward {
                    local_port,
                    spec,
                    args: self.base_args(h),
                    destination: Self::destination(h),
                });
            }
            last = String::from_utf8_lossy(&out.stderr).trim().to_string();
        }
        Err(Error::Runtime(format!(
            "host {}: cannot forward a local port to {target_host}:{target_port} there ({last}); \
             the host's sshd must allow TCP forwarding (AllowTcpForwarding yes)",
            h.label()
        )))
    }
}

/// A local port forwarded through a host's master connection; cancelled on drop.
#[derive(Debug)]
pub struct Forward {
    pub local_port: u16,
    spec: String,
    args: Vec<OsString>,
    destination: String,
}

impl Forward {
    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.local_port)
    }
}

impl Drop for Forward {
    fn drop(&mut self) {
        let _ = std::process::Command::new("ssh")
            .args(&self.args)
            .args(["-O", "cancel", "-L", &self.spec])
            .arg(&self.destination)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// What a `-W` test channel said about forwarding.
fn forwarding_verdict(h: &Host, stderr: &str) -> Result<()> {
    if stderr
        .to_lowercase()
        .contains("administratively prohibited")
    {
        Err(Error::Usage(format!(
            "host {}: its sshd does not allow TCP forwarding for this user, which ltops needs to reach              the agents' control API; set `AllowTcpForwarding yes` (or `local`) for the user in the              host's sshd_config and reload sshd",
            h.label()
        )))
    } else {
        Ok(())
    }
}

/// [`finish`] after sending input: when the remote side stopped reading (it failed), its own
/// error is what the user needs, not "broken pipe".
async fn finish_sent(
    h: &Host,
    child: tokio::process::Child,
    sent: std::io::Result<()>,
    what: &str,
) -> Result<Output> {
    let o = finish(h, child).await?;
    match sent {
        Err(e) if o.ok() => Err(Error::io(format!("{what} to {}", h.label()), e)),
        _ => Ok(o),
    }
}

/// Waits for a remote command; ssh's own failure (exit 255 with its message) becomes an error
/// saying what to do, the command's exit code and output are returned as they are.
async fn finish(h: &Host, child: tokio::process::Child) -> Result<Output> {
    let out = child
        .wait_with_output()
        .await
        .context(|| format!("running a command on {}", h.label()))?;
    let o = Output {
        code: out.status.code().unwrap_or(255),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    };
    if o.code == 255 && looks_like_ssh_failure(&o.stderr) {
        return Err(connection_error(h, &o.stderr));
    }
    Ok(o)
}

fn looks_like_ssh_failure(stderr: &str) -> bool {
    let s = stderr.to_lowercase();
    [
        "permission denied",
        "connection refused",
        "connection timed out",
        "timed out",
        "no route to host",
        "network is unreachable",
        "could not resolve hostname",
        "host key verification failed",
        "connection closed",
        "kex_exchange_identification",
        "control socket",
        "mux_client",
    ]
    .iter()
    .any(|n| s.contains(n))
}

/// What a failed connection means, and what to do about it.
pub fn connection_error(h: &Host, text: &str) -> Error {
    let lower = text.to_lowercase();
    let detail = text
        .lines()
        .map(str::trim)
        .rfind(|l| !l.is_empty() && !l.starts_with('@'))
        .unwrap_or("no message from ssh")
        .to_string();
    let msg = if lower.contains("remote host identification has changed")
        || lower.contains("host key verification failed")
    {
        format!(
            "host {}: its SSH host key does not match the one recorded in known_hosts ({detail}). \
             If the host was reinstalled, remove the old key (`ssh-keygen -R {}`) and try again; \
             otherwise do not connect: someone may be intercepting the connection",
            h.label(),
            h.address
        )
    } else if lower.contains("permission denied") {
        format!(
            "host {}: SSH refused the login ({detail}); check `user` and `identity_file` in the \
             inventory and that the public key is in ~/.ssh/authorized_keys of that user there",
            h.label()
        )
    } else if lower.contains("could not resolve") {
        format!(
            "host {}: the name does not resolve ({detail}); fix `address` in the inventory",
            h.label()
        )
    } else if ["refused", "timed out", "no route", "unreachable", "closed"]
        .iter()
        .any(|n| lower.contains(n))
    {
        format!(
            "host {} is unreachable over SSH on port {} ({detail}); check that it is up, that sshd \
             runs there and that `address`/`port` in the inventory are right, then run the command again",
            h.label(),
            h.port
        )
    } else {
        format!(
            "host {}: SSH failed ({detail}); try `ssh -p {} {}` by hand to see why",
            h.label(),
            h.port,
            h.label()
        )
    };
    Error::Runtime(msg)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn host() -> Host {
        Host {
            address: "10.0.0.9".into(),
            private_address: "10.0.0.9".into(),
            user: Some("lt".into()),
            port: 22,
            identity_file: None,
            ssh_config: None,
            known_hosts: None,
            roles: vec![],
        }
    }

    #[test]
    fn connection_errors_say_what_to_do() {
        let cases = [
            ("lt@10.0.0.9: Permission denied (publickey).", "refused the login"),
            ("ssh: connect to host 10.0.0.9 port 22: Connection refused", "is unreachable"),
            ("ssh: connect to host 10.0.0.9 port 22: Connection timed out", "is unreachable"),
            ("@@@@\n@ WARNING: REMOTE HOST IDENTIFICATION HAS CHANGED! @\nHost key verification failed.", "ssh-keygen -R 10.0.0.9"),
            ("ssh: Could not resolve hostname nope: Name or service not known", "does not resolve"),
        ];
        for (text, want) in cases {
            let e = connection_error(&host(), text).to_string();
            assert!(e.contains(want) && e.contains("lt@10.0.0.9"), "{text}: {e}");
        }
    }

    #[test]
    fn a_prohibited_forward_is_an_error_a_refused_port_is_not() {
        let denied = "channel 0: open failed: administratively prohibited: open failed\nstdio forwarding failed";
        let e = forwarding_verdict(&host(), denied).unwrap_err().to_string();
        assert!(
            e.contains("AllowTcpForwarding") && e.contains("lt@10.0.0.9"),
            "{e}"
        );
        let refused =
            "channel 0: open failed: connect failed: Connection refused\nstdio forwarding failed";
        assert!(forwarding_verdict(&host(), refused).is_ok());
    }

    #[test]
    fn quoting_survives_quotes() {
        assert_eq!(sh_quote("a'b"), "'a'\\''b'");
        assert_eq!(sh_quote("plain"), "'plain'");
    }
}
