//! The per-cluster lock: one `ltops` command at a time may change a cluster.
//!
//! The lock is an advisory exclusive lock (`flock`, via `fs4`) on `<cluster>/lock`, held for the
//! whole command and released when the process exits, however it exits — so a crashed command
//! never leaves a stale lock behind. The holder writes its PID and command line into the file so
//! that a refused command can say who holds it. Read-only commands (`status`, `logs`) do not
//! take the lock: state files are replaced atomically, so readers never see a partial write.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use fs4::fs_std::FileExt;

use crate::error::{Error, IoContext, Result};

/// A held cluster lock; released on drop.
#[derive(Debug)]
pub struct ClusterLock {
    file: File,
    path: PathBuf,
}

impl ClusterLock {
    /// Takes the lock of the cluster in `dir` (creating the directory), or fails with
    /// [`Error::Locked`] naming the holder.
    pub fn acquire(dir: &Path, cluster: &str, command: &str) -> Result<Self> {
        crate::state::create_private_dir(dir)?;
        let path = dir.join("lock");
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .context(|| format!("opening {}", path.display()))?;
        if let Err(e) = file.try_lock_exclusive() {
            if e.kind() != std::io::ErrorKind::WouldBlock
                && e.raw_os_error() != fs4::lock_contended_error().raw_os_error()
            {
                return Err(Error::io(format!("locking {}", path.display()), e));
            }
            let mut holder = String::new();
            let _ = file.read_to_string(&mut holder);
            let holder = holder.trim();
            let holder = if holder.is_empty() {
                "another ltops command holds its lock".to_string()
            } else {
                format!("held by {holder}")
            };
            return Err(Error::Locked {
                cluster: cluster.into(),
                holder,
            });
        }
        let info = format!("pid {} running `{}`\n", std::process::id(), command);
        (|| {
            file.set_len(0)?;
            file.seek(SeekFrom::Start(0))?;
            file.write_all(info.as_bytes())?;
            file.flush()
        })()
        .context(|| format!("writing {}", path.display()))?;
        Ok(ClusterLock { file, path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for ClusterLock {
    fn drop(&mut self) {
        let _ = self.file.set_len(0);
        let _ = FileExt::unlock(&self.file);
    }
}

/// The command line of this process, for lock holder messages.
pub fn this_command() -> String {
    let args: Vec<String> = std::env::args().collect();
    let mut s = String::from("ltops");
    for a in args.iter().skip(1) {
        s.push(' ');
        s.push_str(a);
    }
    s
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn second_lock_is_refused_with_the_holder() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("c");
        let held = ClusterLock::acquire(&dir, "c", "ltops loadtest -c c").unwrap();
        let e = ClusterLock::acquire(&dir, "c", "ltops deploy -c c").unwrap_err();
        let msg = e.to_string();
        assert!(matches!(e, Error::Locked { .. }), "{msg}");
        assert!(
            msg.contains(&format!("pid {}", std::process::id())),
            "{msg}"
        );
        assert!(msg.contains("ltops loadtest -c c"), "{msg}");
        drop(held);
        ClusterLock::acquire(&dir, "c", "ltops deploy -c c").unwrap();
    }
}
