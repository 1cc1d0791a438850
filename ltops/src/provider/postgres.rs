//! A private PostgreSQL for a `local` cluster: `initdb` once at `create`, `pg_ctl start` at
//! create and deploy, `pg_ctl stop` at delete.
//!
//! Binaries come from `/usr/lib/postgresql/<newest>/bin` (or `$LTOPS_PG_BIN`). PostgreSQL refuses
//! to run as root, so as root every server-side command runs as the `postgres` user
//! (`su postgres -s /bin/sh -c …`) in a directory that user owns. Its directory is
//! `<cluster>/postgres/` when the `postgres` user can reach it; otherwise (the state directory
//! lives under a private home such as `/root`) it is a directory under the system temporary
//! directory, recorded in `cluster.toml` and removed by `delete`. It listens on 127.0.0.1 only,
//! on a free port, with password authentication; the password is in `cluster.toml` (mode 0600).

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::local::Process;
use crate::error::{Error, IoContext, Result};
use crate::process;
use crate::state::{Component, Role};

/// The private PostgreSQL of a local cluster (in the provider's section of `cluster.toml`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PostgresState {
    pub bin_dir: PathBuf,
    pub data_dir: PathBuf,
    pub port: u16,
    pub user: String,
    pub password: String,
    pub database: String,
}

impl PostgresState {
    pub fn url(&self) -> String {
        format!(
            "postgres://{}:{}@127.0.0.1:{}/{}",
            self.user, self.password, self.port, self.database
        )
    }
}

fn bin_dir() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("LTOPS_PG_BIN") {
        return Ok(PathBuf::from(p));
    }
    let mut dirs: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|rd| {
            rd.flatten()
                .map(|e| e.path().join("bin"))
                .filter(|p| p.join("initdb").is_file())
                .collect()
        })
        .unwrap_or_default();
    dirs.sort_by_key(|p| {
        p.parent()
            .and_then(|v| v.file_name())
            .and_then(|v| v.to_str())
            .and_then(|v| v.parse::<u32>().ok())
            .unwrap_or(0)
    });
    dirs.pop().ok_or_else(|| {
        Error::Usage(
            "PostgreSQL server binaries (initdb, pg_ctl) not found in /usr/lib/postgresql/*/bin; \
             install PostgreSQL (e.g. `apt-get install postgresql`), set LTOPS_PG_BIN, or use --database sqlite"
                .into(),
        )
    })
}

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

/// Runs a PostgreSQL server-side tool, as the `postgres` user when we are root.
fn run_pg(program: &Path, args: &[String]) -> Result<()> {
    let mut cmd = if is_root() {
        let line = std::iter::once(program.display().to_string())
            .chain(args.iter().cloned())
            .map(|a| quote(&a))
            .collect::<Vec<_>>()
            .join(" ");
        let mut c = Command::new("su");
        c.args(["postgres", "-s", "/bin/sh", "-c", &line]);
        c
    } else {
        let mut c = Command::new(program);
        c.args(args);
        c
    };
    let out = cmd
        .stdin(std::process::Stdio::null())
        .output()
        .context(|| format!("running {}", program.display()))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(Error::Runtime(format!(
            "{} failed: {}{}\nCheck the PostgreSQL installation, or use --database sqlite.",
            program.display(),
            String::from_utf8_lossy(&out.stderr).trim(),
            String::from_utf8_lossy(&out.stdout).trim()
        )))
    }
}

/// Can the `postgres` user traverse every ancestor of `dir`?
fn reachable_by_others(dir: &Path) -> bool {
    dir.ancestors().skip(1).all(|a| {
        std::fs::metadata(a)
            .map(|m| m.permissions().mode() & 0o001 != 0)
            .unwrap_or(false)
    })
}

fn chown_postgres(path: &Path) -> Result<()> {
    if !is_root() {
        return Ok(());
    }
    let user = nix::unistd::User::from_name("postgres")
        .ok()
        .flatten()
        .ok_or_else(|| {
            Error::Usage(
                "running as root but there is no `postgres` user to run PostgreSQL as; \
                 install PostgreSQL from your distribution or use --database sqlite"
                    .into(),
            )
        })?;
    nix::unistd::chown(path, Some(user.uid), Some(user.gid))
        .map_err(|e| Error::Runtime(format!("chown {}: {e}", path.display())))
}

/// Creates the database cluster (not started).
pub fn init(cluster_dir: &Path, cluster: &str) -> Result<PostgresState> {
    let bin = bin_dir()?;
    let base = {
        let inside = cluster_dir.join("postgres");
        if !is_root() || reachable_by_others(&inside) {
            inside
        } else {
            std::env::temp_dir().join(format!(
                "{}{}",
                temp_prefix(cluster),
                &crate::state::random_token()[..8]
            ))
        }
    };
    std::fs::create_dir_all(&base).context(|| format!("creating {}", base.display()))?;
    let marker = base.join(MARKER);
    std::fs::write(&marker, marker_text(cluster))
        .context(|| format!("writing {}", marker.display()))?;
    std::fs::set_permissions(&base, std::fs::Permissions::from_mode(0o700))
        .context(|| format!("chmod {}", base.display()))?;
    chown_postgres(&base)?;
    let password = crate::state::random_token()[..24].to_string();
    let pwfile = base.join("pwfile");
    std::fs::write(&pwfile, &password).context(|| format!("writing {}", pwfile.display()))?;
    chown_postgres(&pwfile)?;
    let data = base.join("data");
    let res = run_pg(
        &bin.join("initdb"),
        &[
            "-D".into(),
            data.display().to_string(),
            "-U".into(),
            "ltops".into(),
            format!("--pwfile={}", pwfile.display()),
            "--auth=scram-sha-256".into(),
            "-E".into(),
            "UTF8".into(),
        ],
    );
    let _ = std::fs::remove_file(&pwfile);
    res?;
    Ok(PostgresState {
        bin_dir: bin,
        data_dir: data,
        port: 0,
        user: "ltops".into(),
        password,
        database: "chat".into(),
    })
}

/// Starts it on a free port and makes sure the `chat` database exists.
pub fn start(pg: &mut PostgresState) -> Result<(Component, Process)> {
    let port = process::free_port()?;
    let log = pg
        .data_dir
        .parent()
        .unwrap_or(&pg.data_dir)
        .join("postgres.log");
    run_pg(
        &pg.bin_dir.join("pg_ctl"),
        &[
            "-D".into(),
            pg.data_dir.display().to_string(),
            "-l".into(),
            log.display().to_string(),
            "-w".into(),
            "-t".into(),
            "60".into(),
            "-o".into(),
            format!("-p {port} -c listen_addresses=127.0.0.1 -c unix_socket_directories='' -c max_connections=200"),
            "start".into(),
        ],
    )?;
    pg.port = port;
    let pid_file = std::fs::read_to_string(pg.data_dir.join("postmaster.pid")).unwrap_or_default();
    let pid: Option<u32> = pid_file.lines().next().and_then(|l| l.trim().parse().ok());
    // A PID is kept only with its start time: without one, a later stop could not tell a
    // reused PID from ours (and `pg_ctl stop` does the stopping anyway).
    let (pid, start_ticks) = match pid.and_then(|p| process::start_ticks(p).map(|t| (p, t))) {
        Some((p, t)) => (Some(p), Some(t)),
        None => (None, None),
    };
    // Create the database if it is missing (ignore "already exists").
    let createdb = pg.bin_dir.join("createdb");
    let out = Command::new(&createdb)
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "-U",
            &pg.user,
            &pg.database,
        ])
        .env("PGPASSWORD", &pg.password)
        .output()
        .context(|| format!("running {}", createdb.display()))?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() && !stderr.contains("already exists") {
        return Err(Error::Runtime(format!(
            "creating the database failed: {}\nSee {}.",
            stderr.trim(),
            log.display()
        )));
    }
    Ok((
        Component {
            role: Role::Postgres,
            index: 0,
            address: format!("127.0.0.1:{port}"),
            metrics_address: None,
            started: true,
        },
        Process {
            role: Role::Postgres,
            index: 0,
            pid,
            start_ticks,
            dir: pg.data_dir.clone(),
            log,
        },
    ))
}

/// Stops it (fast mode); errors are ignored, the caller kills what is left by PID.
pub fn stop(pg: &PostgresState) {
    let _ = run_pg(
        &pg.bin_dir.join("pg_ctl"),
        &[
            "-D".into(),
            pg.data_dir.display().to_string(),
            "-m".into(),
            "fast".into(),
            "-w".into(),
            "stop".into(),
        ],
    );
    std::thread::sleep(Duration::from_millis(100));
}

/// Removes its directory when it lives outside the cluster directory (inside, it goes with the
/// cluster directory) — only if it carries the marker `init` wrote, never by path alone.
pub fn remove(pg: &PostgresState, cluster_dir: &Path, cluster: &str) {
    let Some(base) = pg.data_dir.parent() else {
        return;
    };
    if base.starts_with(cluster_dir) {
        return;
    }
    if owned_by(base, cluster) {
        if let Err(e) = std::fs::remove_dir_all(base) {
            eprintln!("warning: could not remove {}: {e}", base.display());
        }
    } else {
        eprintln!(
            "warning: left {} in place: it has no {MARKER} naming cluster {cluster:?}, so ltops did not create it",
            base.display()
        );
    }
}

/// The file `init` writes into the directory it creates, naming the cluster.
const MARKER: &str = "ltops-cluster";

fn marker_text(cluster: &str) -> String {
    format!("created by ltops for cluster {cluster}\n")
}

fn owned_by(base: &Path, cluster: &str) -> bool {
    std::fs::read_to_string(base.join(MARKER)).is_ok_and(|t| t == marker_text(cluster))
}

/// The prefix of the directory `init` makes in the temporary directory (when running as root
/// and the cluster directory is not reachable by the `postgres` user).
fn temp_prefix(cluster: &str) -> String {
    format!("ltops-postgres-{cluster}-")
}

/// Checks a (possibly hand-edited) data directory is where `init` puts one:
/// `CLUSTER_DIR/postgres/data`, or `TMP/ltops-postgres-NAME-XXXXXXXX/data`.
pub fn check_location(
    pg: &PostgresState,
    cluster_dir: &Path,
    cluster: &str,
) -> std::result::Result<(), String> {
    let d = &pg.data_dir;
    let expected = cluster_dir.join("postgres").join("data");
    if d == &expected {
        return Ok(());
    }
    let in_temp = d.file_name().is_some_and(|n| n == "data")
        && d.parent().is_some_and(|base| {
            base.parent() == Some(std::env::temp_dir().as_path())
                && base
                    .file_name()
                    .and_then(|n| n.to_str())
                    .and_then(|n| n.strip_prefix(&temp_prefix(cluster)))
                    .is_some_and(|rest| {
                        rest.len() == 8 && rest.bytes().all(|b| b.is_ascii_alphanumeric())
                    })
        });
    if in_temp {
        return Ok(());
    }
    Err(format!(
        "{} is not where ltops keeps this cluster's database ({}); ltops only stops and removes a \
         database it created. Restore the path, or stop that PostgreSQL yourself and remove the \
         [provider.postgres] section",
        d.display(),
        expected.display()
    ))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn pg(data_dir: PathBuf) -> PostgresState {
        PostgresState {
            bin_dir: PathBuf::from("/usr/lib/postgresql/17/bin"),
            data_dir,
            port: 0,
            user: "ltops".into(),
            password: "x".into(),
            database: "chat".into(),
        }
    }

    #[test]
    fn only_the_places_init_uses_are_accepted() {
        let cluster = Path::new("/home/u/.ltops/clusters/c1");
        let ok = [
            cluster.join("postgres/data"),
            std::env::temp_dir().join("ltops-postgres-c1-0a1b2c3d/data"),
        ];
        for d in ok {
            assert_eq!(
                check_location(&pg(d.clone()), cluster, "c1"),
                Ok(()),
                "{d:?}"
            );
        }
        let bad = [
            PathBuf::from("/home/u/data"),
            PathBuf::from("/home/u"),
            cluster.join("postgres/../../data"),
            std::env::temp_dir().join("ltops-postgres-other-0a1b2c3d/data"),
            std::env::temp_dir().join("ltops-postgres-c1-0a1b2c3d/../x/data"),
            std::env::temp_dir().join("data"),
        ];
        for d in bad {
            let e = check_location(&pg(d.clone()), cluster, "c1").unwrap_err();
            assert!(e.contains("is not where ltops keeps"), "{d:?}: {e}");
        }
    }

    #[test]
    fn remove_needs_the_marker_naming_the_cluster() {
        let cluster = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        let base = outside.path().join("base");
        std::fs::create_dir_all(base.join("data")).unwrap();
        std::fs::write(base.join("precious"), "x").unwrap();
        let state = pg(base.join("data"));
        remove(&state, cluster.path(), "c1");
        assert!(base.join("precious").exists(), "removed without a marker");
        std::fs::write(base.join(MARKER), marker_text("c2")).unwrap();
        remove(&state, cluster.path(), "c1");
        assert!(base.exists(), "removed with another cluster's marker");
        std::fs::write(base.join(MARKER), marker_text("c1")).unwrap();
        remove(&state, cluster.path(), "c1");
        assert!(!base.exists(), "its own directory stays");
    }
}
