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
                "ltops-postgres-{cluster}-{}",
                &crate::state::random_token()[..8]
            ))
        }
    };
    std::fs::create_dir_all(&base).context(|| format!("creating {}", base.display()))?;
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
            start_ticks: pid.and_then(process::start_ticks),
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

/// Removes its directory when it lives outside the cluster directory.
pub fn remove(pg: &PostgresState, cluster_dir: &Path) {
    if let Some(base) = pg.data_dir.parent() {
        if !base.starts_with(cluster_dir) {
            let _ = std::fs::remove_dir_all(base);
        }
    }
}
