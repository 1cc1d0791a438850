//! The inventory of an `ssh` cluster: the hosts, how to reach them and what each is for.
//!
//! ```toml
//! database_url_env = "CHAT_DB_URL"   # or database_url = "postgres://…": an existing PostgreSQL
//! [defaults]
//! user = "loadtest"                  # login user (default: what ssh would pick)
//! port = 22
//! identity_file = "~/.ssh/id_ed25519"
//! ssh_config = "ssh_config"          # an OpenSSH client config for `ssh -F` (default: ~/.ssh/config)
//! known_hosts = "known_hosts"        # UserKnownHostsFile (default: ssh's own)
//! remote_dir = ".ltops"              # per-cluster directories go below it (relative: to the home)
//! nginx = "nginx"                    # the nginx program on proxy hosts
//! prometheus = "prometheus"          # the metrics host's Prometheus (missing: this machine's is uploaded)
//! grafana = "grafana-server"         # the metrics host's Grafana (missing: Prometheus runs without it)
//! grafana_home = "/usr/share/grafana"   # its --homepath (Grafana's packages install it there)
//! postgres_bin_dir = "/usr/lib/postgresql/15/bin"   # default: the newest /usr/lib/postgresql/*/bin
//! [ports]                            # first port of each kind on a host; the k-th instance adds k
//! server = 8065
//! server_metrics = 9065            # each instance's /metrics, on the host's private address
//! agent = 9165                       # the agents' control API (loopback only)
//! agent_metrics = 9265               # the agents' /metrics, on the host's private address
//! postgres = 15432
//! proxy = 8080
//! prometheus = 9090                  # the cluster's Prometheus, on the metrics host
//! grafana = 3000                     # Grafana, beside it
//! [[host]]
//! address = "10.20.0.2"              # what ssh connects to (an IP, a name, a ~/.ssh/config alias)
//! private_address = "10.20.0.2"      # what the other hosts use to reach it (default: address)
//! roles = ["app", "db"]              # app, db, agent, proxy, metrics
//! ```
//!
//! Relative paths are relative to the inventory file; `~/` is the operator's home. Every
//! mistake is reported as `file:line: key: what to write instead`.
//!
//! The same keys as JSON are accepted too, as `terraform output -json` writes them (the
//! `ltops_inventory` output of `terraform/aws/`, alone or inside the whole output map);
//! [`Inventory::from_terraform`] runs that command in a Terraform directory.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, IoContext, Result};

/// What a host is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HostRole {
    App,
    Db,
    Agent,
    Proxy,
    /// Runs the cluster's Prometheus.
    Metrics,
}

/// First port of each kind on a host.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Ports {
    pub server: u16,
    pub server_metrics: u16,
    pub agent: u16,
    pub agent_metrics: u16,
    pub postgres: u16,
    pub proxy: u16,
    pub prometheus: u16,
    pub grafana: u16,
}

impl Default for Ports {
    fn default() -> Self {
        Ports {
            server: 8065,
            server_metrics: 9065,
            agent: 9165,
            agent_metrics: 9265,
            postgres: 15432,
            proxy: 8080,
            prometheus: 9090,
            grafana: 3000,
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Defaults {
    user: Option<String>,
    port: Option<u16>,
    identity_file: Option<String>,
    ssh_config: Option<String>,
    known_hosts: Option<String>,
    remote_dir: Option<String>,
    nginx: Option<String>,
    prometheus: Option<String>,
    grafana: Option<String>,
    grafana_home: Option<String>,
    postgres_bin_dir: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct HostEntry {
    address: String,
    private_address: Option<String>,
    user: Option<String>,
    port: Option<u16>,
    identity_file: Option<String>,
    roles: Vec<HostRole>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct InventoryFile {
    #[serde(default)]
    defaults: Defaults,
    #[serde(default)]
    ports: Ports,
    #[serde(default, rename = "host")]
    hosts: Vec<HostEntry>,
    database_url: Option<String>,
    database_url_env: Option<String>,
}

/// One host, resolved (kept in the cluster's state as it was at `create`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Host {
    pub address: String,
    pub private_address: String,
    #[serde(default)]
    pub user: Option<String>,
    pub port: u16,
    #[serde(default)]
    pub identity_file: Option<PathBuf>,
    #[serde(default)]
    pub ssh_config: Option<PathBuf>,
    #[serde(default)]
    pub known_hosts: Option<PathBuf>,
    pub roles: Vec<HostRole>,
}

impl Host {
    /// `user@address` (or the address), as messages name the host.
    pub fn label(&self) -> String {
        match &self.user {
            Some(u) => format!("{u}@{}", self.address),
            None => self.address.clone(),
        }
    }

    pub fn has(&self, role: HostRole) -> bool {
        self.roles.contains(&role)
    }
}

/// Where the database URL of an existing PostgreSQL comes from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DatabaseUrl {
    /// Written in the inventory (and so in the cluster's 0600 state).
    Literal(String),
    /// Read from this environment variable of `ltops` at every deploy; never stored.
    Env(String),
}

/// Grafana's program and home as its Debian and RPM packages install them.
pub const DEFAULT_GRAFANA: &str = "grafana-server";
pub const DEFAULT_GRAFANA_HOME: &str = "/usr/share/grafana";

/// A parsed, checked inventory.
#[derive(Clone, Debug)]
pub struct Inventory {
    pub path: PathBuf,
    pub hosts: Vec<Host>,
    pub ports: Ports,
    pub remote_dir: String,
    pub nginx: String,
    pub prometheus: String,
    /// Grafana's program and home directory on the metrics host.
    pub grafana: String,
    pub grafana_home: String,
    pub postgres_bin_dir: Option<String>,
    pub database_url: Option<DatabaseUrl>,
}

/// Characters allowed in addresses and user names: they end up in ssh arguments and remote
/// scripts.
pub(crate) fn plain(s: &str) -> bool {
    !s.is_empty()
        && !s.starts_with('-')
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | ':' | '[' | ']'))
}

/// A remote path: no quotes, `$`, backquotes or newlines (it is placed in remote scripts).
pub(crate) fn plain_path(s: &str) -> bool {
    !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | '/' | '+' | '@'))
}

/// The line of a JSON document where the last part of a dotted key (`host[1].roles`) appears.
fn line_of_key(text: &str, key: &str) -> Option<usize> {
    let leaf = key.rsplit('.').next()?.split('[').next()?;
    let needle = format!("\"{leaf}\"");
    text.lines()
        .position(|l| l.contains(&needle))
        .map(|i| i + 1)
}

impl Inventory {
    /// The `ltops_inventory` output of a Terraform directory (`terraform output -json`).
    pub fn from_terraform(dir: &Path) -> Result<Self> {
        let out = std::process::Command::new("terraform")
            .arg(format!("-chdir={}", dir.display()))
            .args(["output", "-json", "ltops_inventory"])
            .env("CHECKPOINT_DISABLE", "1")
            .stdin(std::process::Stdio::null())
            .output()
            .map_err(|e| {
                Error::Usage(format!(
                    "--inventory-from-terraform {}: running terraform: {e}; install Terraform, or write the inventory with \
                     `terraform output -json ltops_inventory > hosts.json` where it is installed and pass --inventory hosts.json",
                    dir.display()
                ))
            })?;
        if !out.status.success() {
            return Err(Error::Usage(format!(
                "--inventory-from-terraform {}: `terraform output -json ltops_inventory` failed: {}\n\
                 Apply the module there first (see terraform/README.md).",
                dir.display(),
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        let text = String::from_utf8_lossy(&out.stdout);
        Self::parse(&text, &dir.join("ltops_inventory.json"))
    }

    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).context(|| {
            format!(
                "reading the inventory {} (pass --inventory FILE: the hosts and their roles)",
                path.display()
            )
        })?;
        Self::parse(&text, path)
    }

    pub fn parse(text: &str, path: &Path) -> Result<Self> {
        let at = |line: Option<usize>| match line {
            Some(l) => format!("{}:{l}", path.display()),
            None => path.display().to_string(),
        };
        let bad = |line: Option<usize>, key: &str, msg: String| {
            Error::Usage(format!("{}: {key}: {msg}", at(line)))
        };
        let top = |key: String| {
            if key == "." {
                "(top level)".to_string()
            } else {
                key
            }
        };
        let file: InventoryFile = if text.trim_start().starts_with('{') {
            // JSON, as `terraform output -json` writes it: the whole output map (with an
            // `ltops_inventory` output) or that one output's value.
            let mut v: serde_json::Value = serde_json::from_str(text)
                .map_err(|e| bad(Some(e.line()), "(json)", format!("{e}")))?;
            if let Some(out) = v.get_mut("ltops_inventory") {
                v = out.get_mut("value").map(|x| x.take()).unwrap_or(out.take());
            }
            serde_path_to_error::deserialize(v).map_err(|e| {
                let key = top(e.path().to_string());
                let line = line_of_key(text, &key);
                bad(line, &key, e.inner().to_string())
            })?
        } else {
            let de = toml::Deserializer::new(text);
            serde_path_to_error::deserialize(de).map_err(|e| {
                let key = e.path().to_string();
                let line = e
                    .inner()
                    .span()
                    .map(|s| text[..s.start.min(text.len())].matches('\n').count() + 1);
                bad(line, &top(key), e.inner().message().to_string())
            })?
        };
        let base = path.parent().unwrap_or(Path::new("."));
        let line_of = |needle: &str| text.lines().position(|l| l.contains(needle)).map(|i| i + 1);
        if file.hosts.is_empty() {
            return Err(bad(
                None,
                "host",
                "no hosts: add a [[host]] table per machine with `address` and `roles`".into(),
            ));
        }
        let d = &file.defaults;
        if let Some(u) = &d.user {
            if !plain(u) {
                return Err(bad(
                    line_of("user"),
                    "defaults.user",
                    format!("{u:?} is not a user name"),
                ));
            }
        }
        let remote_dir = d.remote_dir.clone().unwrap_or_else(|| ".ltops".into());
        if !plain_path(&remote_dir) || remote_dir.split('/').any(|p| p == "..") {
            return Err(bad(
                line_of("remote_dir"),
                "defaults.remote_dir",
                format!("{remote_dir:?}: use a plain path such as \".ltops\" or \"/srv/ltops\" (letters, digits, . - _ /)"),
            ));
        }
        let nginx = d.nginx.clone().unwrap_or_else(|| "nginx".into());
        if !plain_path(&nginx) {
            return Err(bad(
                line_of("nginx"),
                "defaults.nginx",
                format!("{nginx:?} is not a plain program path"),
            ));
        }
        let prometheus = d.prometheus.clone().unwrap_or_else(|| "prometheus".into());
        if !plain_path(&prometheus) {
            return Err(bad(
                line_of("prometheus"),
                "defaults.prometheus",
                format!("{prometheus:?} is not a plain program path"),
            ));
        }
        let grafana = d.grafana.clone().unwrap_or_else(|| DEFAULT_GRAFANA.into());
        let grafana_home = d
            .grafana_home
            .clone()
            .unwrap_or_else(|| DEFAULT_GRAFANA_HOME.into());
        for (key, v, what) in [
            ("grafana", &grafana, "program"),
            ("grafana_home", &grafana_home, "directory"),
        ] {
            if !plain_path(v) {
                return Err(bad(
                    line_of(key),
                    &format!("defaults.{key}"),
                    format!("{v:?} is not a plain {what} path"),
                ));
            }
        }
        if let Some(p) = &d.postgres_bin_dir {
            if !plain_path(p) {
                return Err(bad(
                    line_of("postgres_bin_dir"),
                    "defaults.postgres_bin_dir",
                    format!("{p:?} is not a plain directory path"),
                ));
            }
        }
        let mut hosts = Vec::new();
        for (i, h) in file.hosts.iter().enumerate() {
            let key = |k: &str| format!("host[{i}].{k}");
            let line = line_of(&format!("\"{}\"", h.address));
            if !plain(&h.address) {
                return Err(bad(
                    line,
                    &key("address"),
                    format!("{:?} is not a host name or address", h.address),
                ));
            }
            let private = h
                .private_address
                .clone()
                .unwrap_or_else(|| h.address.clone());
            if !plain(&private) {
                return Err(bad(
                    line,
                    &key("private_address"),
                    format!("{private:?} is not a host name or address"),
                ));
            }
            if h.roles.is_empty() {
                return Err(bad(
                    line,
                    &key("roles"),
                    "empty: give the host at least one of \"app\", \"db\", \"agent\", \"proxy\""
                        .into(),
                ));
            }
            let user = h.user.clone().or_else(|| d.user.clone());
            if let Some(u) = &user {
                if !plain(u) {
                    return Err(bad(line, &key("user"), format!("{u:?} is not a user name")));
                }
            }
            let port = h.port.or(d.port).unwrap_or(22);
            if port == 0 {
                return Err(bad(
                    line,
                    &key("port"),
                    "0 is not a port; the SSH port is usually 22".into(),
                ));
            }
            let mut roles = h.roles.clone();
            roles.sort();
            roles.dedup();
            let host = Host {
                address: h.address.clone(),
                private_address: private,
                user,
                port,
                identity_file: h
                    .identity_file
                    .as_deref()
                    .or(d.identity_file.as_deref())
                    .map(|p| resolve_path(base, p)),
                ssh_config: d.ssh_config.as_deref().map(|p| resolve_path(base, p)),
                known_hosts: d.known_hosts.as_deref().map(|p| resolve_path(base, p)),
                roles,
            };
            if hosts.iter().any(|o: &Host| {
                o.address == host.address && o.port == host.port && o.user == host.user
            }) {
                return Err(bad(
                    line,
                    &key("address"),
                    format!(
                        "{} is listed twice; give one [[host]] all its roles instead",
                        host.label()
                    ),
                ));
            }
            hosts.push(host);
        }
        for (file_key, p) in [
            (
                "defaults.identity_file",
                hosts.iter().find_map(|h| h.identity_file.clone()),
            ),
            ("defaults.ssh_config", hosts[0].ssh_config.clone()),
            ("defaults.known_hosts", None),
        ] {
            if let Some(p) = p {
                if !p.is_file() {
                    return Err(bad(
                        line_of(file_key.rsplit('.').next().unwrap_or(file_key)),
                        file_key,
                        format!(
                            "{} does not exist; give the path of an existing file",
                            p.display()
                        ),
                    ));
                }
            }
        }
        let database_url = match (&file.database_url, &file.database_url_env) {
            (Some(_), Some(_)) => {
                return Err(bad(
                    line_of("database_url_env"),
                    "database_url_env",
                    "give database_url or database_url_env, not both".into(),
                ))
            }
            (Some(u), None) => {
                if !(u.starts_with("postgres://") || u.starts_with("postgresql://")) {
                    return Err(bad(
                        line_of("database_url"),
                        "database_url",
                        "must be a postgres://user:password@host:port/database URL".into(),
                    ));
                }
                Some(DatabaseUrl::Literal(u.clone()))
            }
            (None, Some(v)) => {
                if v.is_empty() || !v.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                    return Err(bad(
                        line_of("database_url_env"),
                        "database_url_env",
                        format!("{v:?} is not an environment variable name"),
                    ));
                }
                Some(DatabaseUrl::Env(v.clone()))
            }
            (None, None) => None,
        };
        let ports = file.ports;
        for (k, p) in [
            ("server", ports.server),
            ("server_metrics", ports.server_metrics),
            ("agent", ports.agent),
            ("agent_metrics", ports.agent_metrics),
            ("postgres", ports.postgres),
            ("proxy", ports.proxy),
            ("prometheus", ports.prometheus),
            ("grafana", ports.grafana),
        ] {
            if p < 1024 {
                return Err(bad(
                    line_of(k),
                    &format!("ports.{k}"),
                    format!(
                        "{p} is a privileged port that a login user cannot bind; use 1024 or above"
                    ),
                ));
            }
        }
        Ok(Inventory {
            path: path.to_path_buf(),
            hosts,
            ports,
            remote_dir,
            nginx,
            prometheus,
            grafana,
            grafana_home,
            postgres_bin_dir: d.postgres_bin_dir.clone(),
            database_url,
        })
    }

    /// Indices of the hosts with `role`.
    pub fn with_role(&self, role: HostRole) -> Vec<usize> {
        (0..self.hosts.len())
            .filter(|&i| self.hosts[i].has(role))
            .collect()
    }
}

/// `~/x` → `$HOME/x`; relative → relative to the inventory's directory.
fn resolve_path(base: &Path, p: &str) -> PathBuf {
    if let Some(rest) = p.strip_prefix("~/") {
        if let Some(home) = std::env::var_os("HOME") {
            return PathBuf::from(home).join(rest);
        }
    }
    let p = PathBuf::from(p);
    if p.is_absolute() {
        p
    } else {
        base.join(p)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn parse(text: &str) -> Result<Inventory> {
        Inventory::parse(text, Path::new("/inv/hosts.toml"))
    }

    #[test]
    fn a_good_inventory_resolves_defaults_per_host() {
        let inv = parse(
            r#"
[defaults]
user = "loadtest"
[ports]
agent = 9500
[[host]]
address = "10.20.0.2"
roles = ["app", "db", "app"]
[[host]]
address = "10.20.0.3"
private_address = "192.168.7.3"
user = "root"
port = 2222
roles = ["agent", "proxy"]
"#,
        )
        .unwrap();
        assert_eq!(inv.hosts.len(), 2);
        assert_eq!(inv.hosts[0].label(), "loadtest@10.20.0.2");
        assert_eq!(inv.hosts[0].roles, vec![HostRole::App, HostRole::Db]);
        assert_eq!(inv.hosts[0].private_address, "10.20.0.2");
        assert_eq!(inv.hosts[1].label(), "root@10.20.0.3");
        assert_eq!(inv.hosts[1].port, 2222);
        assert_eq!(inv.hosts[1].private_address, "192.168.7.3");
        assert_eq!(inv.ports.agent, 9500);
        assert_eq!(inv.ports.server, 8065);
        assert_eq!(inv.with_role(HostRole::Agent), vec![1]);
        assert_eq!(inv.remote_dir, ".ltops");
    }

    #[test]
    fn mistakes_name_file_line_and_key() {
        let cases = [
            ("[[host]]\naddress = \"a\"\nroles = [\"web\"]\n", "hosts.toml:3: host[0].roles[0]: unknown variant `web`"),
            ("[[host]]\nroles = [\"app\"]\n", "host[0]: missing field `address`"),
            ("[[host]]\naddress = \"a\"\nroles = []\n", "hosts.toml:2: host[0].roles: empty"),
            ("[[host]]\naddress = \"a\"\nrole = [\"app\"]\n", "unknown field `role`"),
            ("[defaults]\nuser = \"x\"\n", "host: no hosts"),
            ("[[host]]\naddress = \"a; rm -rf /\"\nroles = [\"app\"]\n", "host[0].address"),
            ("[[host]]\naddress = \"a\"\nroles = [\"app\"]\n[[host]]\naddress = \"a\"\nroles = [\"db\"]\n", "listed twice"),
            ("[ports]\nserver = 80\n[[host]]\naddress = \"a\"\nroles = [\"app\"]\n", "hosts.toml:2: ports.server: 80 is a privileged port"),
            ("database_url = \"mysql://x\"\n[[host]]\naddress = \"a\"\nroles = [\"app\"]\n", "hosts.toml:1: database_url: must be a postgres://"),
            ("[defaults]\nidentity_file = \"/no/such/key\"\n[[host]]\naddress = \"a\"\nroles = [\"app\"]\n", "defaults.identity_file: /no/such/key does not exist"),
            ("[[host]\naddress = \"a\"\n", "hosts.toml:1: (top level)"),
            ("[defaults]\nremote_dir = \"../x\"\n[[host]]\naddress = \"a\"\nroles = [\"app\"]\n", "defaults.remote_dir"),
        ];
        for (text, want) in cases {
            let e = parse(text).unwrap_err();
            assert_eq!(e.exit_code(), crate::error::exit::USAGE);
            let msg = e.to_string();
            assert!(msg.contains(want), "{text:?}\n got: {msg}\nwant: {want}");
        }
    }

    #[test]
    fn json_from_terraform_output_is_read_with_the_same_rules() {
        let key = tempfile::NamedTempFile::new().unwrap();
        let k = key.path().display().to_string();
        let value = r#"{"defaults":{"identity_file":"KEY","user":"admin"},
            "host":[{"address":"54.1.2.3","private_address":"10.60.1.4","roles":["app"]},
                    {"address":"54.1.2.4","private_address":"10.60.1.5","roles":["agent"]}]}"#
            .replace("KEY", &k);
        let whole = format!(
            r#"{{"cluster_id":{{"value":"ab12"}},"ltops_inventory":{{"sensitive":false,"value":{value}}}}}"#
        );
        for text in [value.to_string(), whole] {
            let inv = Inventory::parse(&text, Path::new("/x/out.json")).unwrap();
            assert_eq!(inv.hosts.len(), 2);
            assert_eq!(inv.hosts[0].user.as_deref(), Some("admin"));
            assert_eq!(inv.hosts[1].private_address, "10.60.1.5");
            assert_eq!(inv.hosts[0].identity_file.as_deref(), Some(key.path()));
        }
        let bad = r#"{"host":[{"address":"54.1.2.3","roles":["web"]}]}"#;
        let e = Inventory::parse(bad, Path::new("/x/out.json"))
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("/x/out.json:1: host[0].roles"), "{e}");
        let e = Inventory::parse("{ not json", Path::new("/x/out.json"))
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("/x/out.json:1: (json)"), "{e}");
    }
}
