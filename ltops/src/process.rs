//! Local processes: starting them detached, checking that they live, stopping them, picking
//! free ports, and a tiny blocking HTTP probe for health checks.
//!
//! Components run in their own process group (`process_group(0)`), so a ctrl-c in the
//! terminal that started them does not reach them and `ltops delete` can stop a component and
//! everything it spawned with one signal to the group. A PID is only trusted together with the
//! process start time recorded at spawn (`/proc/PID/stat` field 22): a recycled PID is never
//! mistaken for our component, and a zombie counts as dead.

use std::io::{Read, Seek, SeekFrom, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;

use crate::error::{Error, IoContext, Result};

/// A started process: its PID and start time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Spawned {
    pub pid: u32,
    pub start_ticks: Option<u64>,
}

/// Starts `cmd` detached in its own process group, stdin closed, stdout and stderr appended to
/// `log`. The child is not waited for: it outlives `ltops`.
pub fn spawn_detached(cmd: &mut Command, log: &Path) -> Result<Spawned> {
    if let Some(dir) = log.parent() {
        std::fs::create_dir_all(dir).context(|| format!("creating {}", dir.display()))?;
    }
    let out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .context(|| format!("opening {}", log.display()))?;
    let err = out
        .try_clone()
        .context(|| format!("opening {}", log.display()))?;
    let program = cmd.get_program().to_string_lossy().into_owned();
    let child = cmd
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .process_group(0)
        .spawn()
        .context(|| format!("starting {program}"))?;
    let pid = child.id();
    // Dropping `Child` does not kill or wait; the process is on its own.
    drop(child);
    Ok(Spawned {
        pid,
        start_ticks: start_ticks(pid),
    })
}

/// Start time of `pid` in clock ticks since boot, `None` when it does not exist.
pub fn start_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may contain spaces: split after its closing parenthesis.
    let rest = stat.rsplit_once(')')?.1;
    // rest starts at field 3 (state); start time is field 22.
    rest.split_whitespace().nth(19)?.parse().ok()
}

fn proc_state(pid: u32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(')')?
        .1
        .split_whitespace()
        .next()?
        .chars()
        .next()
}

/// True when `pid` runs and (if known) started at `ticks`; zombies are dead.
pub fn is_alive(pid: u32, ticks: Option<u64>) -> bool {
    match proc_state(pid) {
        None | Some('Z') | Some('X') => false,
        Some(_) => match ticks {
            Some(t) => start_ticks(pid) == Some(t),
            None => true,
        },
    }
}

/// Stops the process group led by `pid`: SIGTERM, up to `grace` to exit, then SIGKILL.
/// Returns true when it had to kill.
pub fn stop_group(pid: u32, ticks: Option<u64>, grace: Duration) -> bool {
    // 0 would signal our own group and 1 is init (a PID from a hand-edited state file): never.
    if pid <= 1 || !is_alive(pid, ticks) {
        return false;
    }
    signal(pid, Signal::SIGTERM);
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline {
        if !is_alive(pid, ticks) {
            // The leader is gone; make sure nothing of its group lingers.
            let _ = killpg(Pid::from_raw(pid as i32), Signal::SIGKILL);
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    signal(pid, Signal::SIGKILL);
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline && is_alive(pid, ticks) {
        std::thread::sleep(Duration::from_millis(50));
    }
    true
}

/// Signals the process group led by `pid`, or just `pid` when it leads no group (a daemon that
/// made its own session, such as PostgreSQL's postmaster).
fn signal(pid: u32, sig: Signal) {
    let p = Pid::from_raw(pid as i32);
    if killpg(p, sig).is_err() {
        let _ = nix::sys::signal::kill(p, sig);
    }
}

/// A free TCP port on 127.0.0.1: bind port 0, read the port, release it.
///
/// There is a small race: another process may take the port between this call and the
/// component binding it. Callers detect "address in use" at start-up and retry with new ports.
pub fn free_port() -> Result<u16> {
    let l = TcpListener::bind("127.0.0.1:0").context(|| "binding 127.0.0.1:0".into())?;
    let port = l
        .local_addr()
        .context(|| "reading a local address".into())?
        .port();
    Ok(port)
}

/// The last `n` lines of a file (empty when it cannot be read); reads at most the last 64 KiB.
pub fn tail(path: &Path, n: usize) -> String {
    let Ok(mut f) = std::fs::File::open(path) else {
        return String::new();
    };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let start = len.saturating_sub(64 * 1024);
    if f.seek(SeekFrom::Start(start)).is_err() {
        return String::new();
    }
    let mut buf = Vec::new();
    let _ = f.read_to_end(&mut buf);
    let text = String::from_utf8_lossy(&buf);
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Indents a log excerpt for inclusion in an error message.
pub fn indent(text: &str) -> String {
    if text.trim().is_empty() {
        return "    (the log is empty)".into();
    }
    text.lines()
        .map(|l| format!("    {l}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// A minimal blocking `GET` over HTTP/1.1 for health checks; returns the status code.
pub fn http_get_status(
    addr: &str,
    path: &str,
    bearer: Option<&str>,
    timeout: Duration,
) -> Result<u16> {
    let sock: SocketAddr = addr
        .parse()
        .map_err(|_| Error::Runtime(format!("{addr} is not an address")))?;
    let mut s =
        TcpStream::connect_timeout(&sock, timeout).context(|| format!("connecting to {addr}"))?;
    s.set_read_timeout(Some(timeout))
        .context(|| format!("talking to {addr}"))?;
    s.set_write_timeout(Some(timeout))
        .context(|| format!("talking to {addr}"))?;
    let auth = bearer
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\n{auth}Connection: close\r\n\r\n");
    s.write_all(req.as_bytes())
        .context(|| format!("talking to {addr}"))?;
    let mut head = [0u8; 64];
    let mut got = 0;
    while got < 12 {
        let n = s
            .read(&mut head[got..])
            .context(|| format!("reading from {addr}"))?;
        if n == 0 {
            break;
        }
        got += n;
    }
    let line = String::from_utf8_lossy(&head[..got]);
    line.split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| Error::Runtime(format!("{addr}{path} answered something that is not HTTP")))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn spawn_and_stop_a_process_group() {
        let tmp = tempfile::tempdir().unwrap();
        let log = tmp.path().join("logs/x.log");
        let s = spawn_detached(Command::new("sh").args(["-c", "echo hi; sleep 30"]), &log).unwrap();
        assert!(is_alive(s.pid, s.start_ticks));
        assert!(!is_alive(s.pid, s.start_ticks.map(|t| t + 1)));
        for _ in 0..100 {
            if tail(&log, 5) == "hi" {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        assert_eq!(tail(&log, 5), "hi");
        stop_group(s.pid, s.start_ticks, Duration::from_secs(5));
        // Our own child stays a zombie until reaped; `is_alive` treats zombies as dead.
        assert!(!is_alive(s.pid, s.start_ticks));
    }

    #[test]
    fn tail_keeps_the_last_lines() {
        let tmp = tempfile::tempdir().unwrap();
        let p = tmp.path().join("f");
        std::fs::write(&p, "a\nb\nc\nd\n").unwrap();
        assert_eq!(tail(&p, 2), "c\nd");
        assert_eq!(tail(&tmp.path().join("none"), 2), "");
    }
}
