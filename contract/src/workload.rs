//! The workload configuration (TOML): what to test against, which data set to create, how many
//! users to simulate and how they behave. `loadtest-agent` runs it, `ltops` splits it across
//! agents, and both report mistakes the same way: the file, the key and what to write instead.
//!
//! A config may name a `preset` (`quick`, `standard-day`, `extreme`); the preset's values are the
//! defaults and every key in the file overrides them. Durations are strings with an explicit unit
//! (`"250ms"`, `"93s"`, `"2m"`): the tool we replace applied its interval variance in nanoseconds
//! when milliseconds were meant, and an explicit unit makes that mistake impossible to write.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::actions::Action;
use crate::results::RunSettings;

/// A configuration mistake, located as precisely as we can.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{file}: cannot read: {source}")]
    Io {
        file: String,
        source: std::io::Error,
    },
    #[error("{file}{}: {key}: {message}", line.map(|l| format!(":{l}")).unwrap_or_default())]
    Invalid {
        file: String,
        /// 1-based line of the key when it could be found in the file.
        line: Option<usize>,
        /// Dotted key path, e.g. `behaviour.mix.create_post`.
        key: String,
        message: String,
    },
}

impl ConfigError {
    pub fn key(&self) -> Option<&str> {
        match self {
            ConfigError::Invalid { key, .. } => Some(key),
            ConfigError::Io { .. } => None,
        }
    }
}

/// Serde helpers for durations written as humantime strings ("10s", "250ms").
pub mod duration_str {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_duration(*d).to_string())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let s = String::deserialize(d)?;
        humantime::parse_duration(&s).map_err(|e| {
            serde::de::Error::custom(format!(
                "{s:?} is not a duration ({e}); write a number with a unit, like \"500ms\", \"10s\" or \"2m\""
            ))
        })
    }
}

/// The complete, validated workload.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkloadConfig {
    /// Name of the preset the defaults came from, if any.
    #[serde(default)]
    pub preset: Option<String>,
    pub target: TargetConfig,
    pub dataset: DatasetConfig,
    pub users: UsersConfig,
    pub behaviour: BehaviourConfig,
    #[serde(default)]
    pub run: RunConfig,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TargetConfig {
    /// Base URL of the server, e.g. `http://127.0.0.1:8065` (without `/api/v4`).
    pub url: String,
    /// WebSocket URL; derived from `url` (`ws[s]://host/api/v4/websocket`) when absent.
    #[serde(default)]
    pub websocket_url: Option<String>,
    /// Account used by `setup` to create teams and channels (the first user on our server
    /// becomes the system admin; on Mattermost use a real admin).
    #[serde(default = "default_admin_username")]
    pub admin_username: String,
    /// Admin password; prefer `admin_password_env` so it stays out of files.
    #[serde(default)]
    pub admin_password: Option<String>,
    /// Environment variable holding the admin password.
    #[serde(default)]
    pub admin_password_env: Option<String>,
    #[serde(default = "default_request_timeout", with = "duration_str")]
    pub request_timeout: Duration,
    /// Local source addresses to spread connections over (each address gives ~28,000 loopback
    /// ports); empty means the OS default.
    #[serde(default)]
    pub local_addresses: Vec<IpAddr>,
}

fn default_admin_username() -> String {
    "lt-admin".into()
}
fn default_request_timeout() -> Duration {
    Duration::from_secs(10)
}

impl TargetConfig {
    /// The WebSocket URL, explicit or derived from the HTTP URL.
    pub fn websocket_url(&self) -> String {
        if let Some(u) = &self.websocket_url {
            return u.clone();
        }
        let base = self.url.trim_end_matches('/');
        let ws = if let Some(rest) = base.strip_prefix("https://") {
            format!("wss://{rest}")
        } else if let Some(rest) = base.strip_prefix("http://") {
            format!("ws://{rest}")
        } else {
            base.to_string()
        };
        format!("{ws}/api/v4/websocket")
    }

    /// The admin password from the config or the named environment variable.
    pub fn admin_password(&self) -> Option<String> {
        if let Some(var) = &self.admin_password_env {
            if let Ok(v) = std::env::var(var) {
                return Some(v);
            }
        }
        self.admin_password.clone()
    }
}

/// The data set `setup` creates and the users act on.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatasetConfig {
    pub teams: u32,
    /// Users in the data set (the run may simulate fewer).
    pub users: u64,
    #[serde(default = "default_team_prefix")]
    pub team_prefix: String,
    #[serde(default = "default_user_prefix")]
    pub user_prefix: String,
    /// Password of every data-set user.
    #[serde(default = "default_user_password")]
    pub user_password: String,
    /// Channel groups per team: `count` channels of `members` users each.
    pub channels: Vec<ChannelGroup>,
    /// Posts created in each channel by `setup`, so reads have something to read.
    #[serde(default)]
    pub posts_per_channel: u32,
}

fn default_team_prefix() -> String {
    "lt-team".into()
}
fn default_user_prefix() -> String {
    "lt-user".into()
}
fn default_user_password() -> String {
    "Lt-Passw0rd!".into()
}

/// `count` channels per team with `members` members each (members are spread deterministically
/// over the team's users, so a user's channels do not depend on which agent simulates it).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChannelGroup {
    pub count: u32,
    pub members: u64,
    #[serde(default)]
    pub private: bool,
}

/// Which users this run simulates and for how long.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UsersConfig {
    /// Simulated users (across all agents when `ltops` splits the run).
    pub count: u64,
    /// Index of the first data-set user to simulate; agents get disjoint slices.
    #[serde(default)]
    pub offset: u64,
    #[serde(default, with = "duration_str")]
    pub ramp_up: Duration,
    #[serde(with = "duration_str")]
    pub duration: Duration,
}

/// Closed model: each user acts on its own timer. Open model: posts arrive at a global rate
/// whatever the server's speed (other actions still follow the users' timers).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    Closed,
    Open,
}

/// A share of users whose mean interval is multiplied by `factor` (bigger is less active).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateFactor {
    pub weight: u32,
    pub factor: f64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BehaviourConfig {
    pub mode: Mode,
    /// Mean time between a user's actions.
    #[serde(with = "duration_str")]
    pub mean_interval: Duration,
    /// Each wait is uniform in `mean_interval ± interval_jitter` (before the rate factor).
    #[serde(default, with = "duration_str")]
    pub interval_jitter: Duration,
    /// Distribution of per-user rate factors; empty means every user has factor 1.
    #[serde(default)]
    pub rate_factors: Vec<RateFactor>,
    /// Action name → weight; see [`Action::MIXABLE`].
    pub mix: BTreeMap<String, u32>,
    /// Fraction of posts that reply to a recent post.
    #[serde(default)]
    pub reply_fraction: f64,
    /// Fraction of posts preceded by `user_typing`.
    #[serde(default)]
    pub typing_fraction: f64,
    /// Open model only: posts per second across all users of the run.
    #[serde(default)]
    pub posts_per_second: Option<f64>,
}

impl BehaviourConfig {
    /// The mix as typed actions (validated configs only contain known names).
    pub fn action_weights(&self) -> Vec<(Action, u32)> {
        self.mix
            .iter()
            .filter_map(|(k, w)| Action::from_name(k).map(|a| (a, *w)))
            .filter(|(_, w)| *w > 0)
            .collect()
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunConfig {
    /// Same seed, same schedule.
    #[serde(default = "default_seed")]
    pub seed: u64,
    /// Interval between results records.
    #[serde(default = "default_interval", with = "duration_str")]
    pub interval: Duration,
    /// Pass/fail thresholds for `ltparse` (e.g. `create_post.p99<200ms`).
    #[serde(default)]
    pub thresholds: Vec<String>,
}

fn default_seed() -> u64 {
    1
}
fn default_interval() -> Duration {
    Duration::from_secs(10)
}

impl Default for RunConfig {
    fn default() -> Self {
        Self {
            seed: default_seed(),
            interval: default_interval(),
            thresholds: Vec::new(),
        }
    }
}

/// Built-in presets: name, one-line description, TOML.
pub const PRESETS: &[(&str, &str, &str)] = &[
    (
        "quick",
        "a minute, a few hundred lively users: smoke test and demo",
        include_str!("../presets/quick.toml"),
    ),
    (
        "standard-day",
        "the published standard day: ~30 posts and ~300 reads per user per 12 h, ~20 receivers",
        include_str!("../presets/standard-day.toml"),
    ),
    (
        "extreme",
        "the published extreme test: 2,000-member channels, 21 posts/s across all users",
        include_str!("../presets/extreme.toml"),
    ),
];

fn merge_tables(base: &mut toml::Table, over: toml::Table) {
    for (k, v) in over {
        match (base.get_mut(&k), v) {
            (Some(toml::Value::Table(b)), toml::Value::Table(o)) => merge_tables(b, o),
            (_, v) => {
                base.insert(k, v);
            }
        }
    }
}

impl WorkloadConfig {
    /// Reads, merges with its preset and validates a config file.
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
            file: file.clone(),
            source,
        })?;
        Self::from_toml_str(&text, &file)
    }

    /// A preset on its own (validated), e.g. for `ltops loadtest --quick`.
    pub fn preset(name: &str) -> Result<Self, ConfigError> {
        Self::from_toml_str(&format!("preset = {name:?}\n"), &format!("<preset {name}>"))
    }

    /// Parses `text` (named `file` in errors), applies its preset and validates.
    pub fn from_toml_str(text: &str, file: &str) -> Result<Self, ConfigError> {
        let invalid = |line: Option<usize>, key: &str, message: String| ConfigError::Invalid {
            file: file.to_string(),
            line,
            key: key.to_string(),
            message,
        };
        let user: toml::Table = text.parse().map_err(|e: toml::de::Error| {
            let line = e.span().map(|s| crate::toml_span::line_at(text, s.start));
            invalid(line, "(syntax)", e.message().to_string())
        })?;
        let mut merged = match user.get("preset") {
            None => toml::Table::new(),
            Some(toml::Value::String(name)) => {
                let (_, _, preset) =
                    PRESETS.iter().find(|(n, _, _)| n == name).ok_or_else(|| {
                        let names: Vec<&str> = PRESETS.iter().map(|(n, _, _)| *n).collect();
                        invalid(
                            crate::toml_span::key_line(text, "preset"),
                            "preset",
                            format!(
                                "unknown preset {name:?}; expected one of {}",
                                names.join(", ")
                            ),
                        )
                    })?;
                preset.parse::<toml::Table>().map_err(|e| {
                    invalid(None, "preset", format!("built-in preset is broken: {e}"))
                })?
            }
            Some(_) => {
                return Err(invalid(
                    crate::toml_span::key_line(text, "preset"),
                    "preset",
                    "must be a string, e.g. preset = \"quick\"".into(),
                ))
            }
        };
        merge_tables(&mut merged, user);
        let config: WorkloadConfig = serde_path_to_error::deserialize(toml::Value::Table(merged))
            .map_err(|e| {
            let mut key = e.path().to_string();
            let mut msg = e.inner().message().to_string();
            if let Some(field) = msg
                .strip_prefix("missing field `")
                .and_then(|rest| rest.split('`').next())
            {
                // serde reports a missing field at its parent's path ("." at the top); name the
                // field itself so the user knows exactly what to add.
                key = if key == "." {
                    field.to_string()
                } else {
                    format!("{key}.{field}")
                };
                msg.push_str(" (add it, or start from a preset: preset = \"quick\")");
            }
            invalid(crate::toml_span::nearest_line(text, &key), &key, msg)
        })?;
        config.validate().map_err(|(key, message)| {
            invalid(crate::toml_span::nearest_line(text, &key), &key, message)
        })?;
        Ok(config)
    }

    /// Checks what serde cannot: ranges, names and consistency. Returns the offending key.
    pub fn validate(&self) -> Result<(), (String, String)> {
        let err = |k: &str, m: String| Err((k.to_string(), m));
        let url = self.target.url.as_str();
        if !(url.starts_with("http://") || url.starts_with("https://")) || url.len() < 10 {
            return err(
                "target.url",
                format!("{url:?} is not an http(s) URL; write e.g. \"http://127.0.0.1:8065\""),
            );
        }
        if let Some(ws) = &self.target.websocket_url {
            if !(ws.starts_with("ws://") || ws.starts_with("wss://")) {
                return err(
                    "target.websocket_url",
                    format!("{ws:?} must start with ws:// or wss://"),
                );
            }
        }
        if self.target.request_timeout.is_zero() {
            return err("target.request_timeout", "must be more than 0".into());
        }
        let d = &self.dataset;
        if d.teams == 0 {
            return err("dataset.teams", "must be at least 1".into());
        }
        if d.users == 0 {
            return err("dataset.users", "must be at least 1".into());
        }
        if d.channels.is_empty() {
            return err(
                "dataset.channels",
                "needs at least one group, e.g. [[dataset.channels]] count = 10, members = 20"
                    .into(),
            );
        }
        let users_per_team = d.users.div_ceil(u64::from(d.teams));
        for (i, g) in d.channels.iter().enumerate() {
            if g.count == 0 {
                return err(
                    &format!("dataset.channels[{i}].count"),
                    "must be at least 1".into(),
                );
            }
            if g.members == 0 || g.members > users_per_team {
                return err(
                    &format!("dataset.channels[{i}].members"),
                    format!(
                        "must be between 1 and the users per team ({users_per_team} = dataset.users / dataset.teams)"
                    ),
                );
            }
        }
        for (k, v) in [
            ("dataset.team_prefix", &d.team_prefix),
            ("dataset.user_prefix", &d.user_prefix),
        ] {
            if v.is_empty()
                || v.len() > 40
                || !v
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
            {
                return err(
                    k,
                    format!("{v:?} must be 1-40 characters of a-z, 0-9 and -"),
                );
            }
        }
        if d.user_password.len() < 5 {
            return err(
                "dataset.user_password",
                "must be at least 5 characters".into(),
            );
        }
        let u = &self.users;
        if u.count == 0 {
            return err("users.count", "must be at least 1".into());
        }
        if u.offset + u.count > d.users {
            return err(
                "users.count",
                format!(
                    "users.offset + users.count = {} exceeds dataset.users = {}; simulate fewer users or grow the data set",
                    u.offset + u.count,
                    d.users
                ),
            );
        }
        if u.duration.is_zero() {
            return err("users.duration", "must be more than 0, e.g. \"60s\"".into());
        }
        if u.ramp_up > u.duration {
            return err(
                "users.ramp_up",
                "must not be longer than users.duration".into(),
            );
        }
        let b = &self.behaviour;
        if b.mean_interval < Duration::from_millis(1) {
            return err("behaviour.mean_interval", "must be at least 1ms".into());
        }
        if b.interval_jitter > b.mean_interval {
            return err(
                "behaviour.interval_jitter",
                "must not exceed behaviour.mean_interval (waits would go negative)".into(),
            );
        }
        for (i, f) in b.rate_factors.iter().enumerate() {
            if !(f.factor.is_finite() && f.factor > 0.0) {
                return err(
                    &format!("behaviour.rate_factors[{i}].factor"),
                    "must be a positive number".into(),
                );
            }
        }
        if !b.rate_factors.is_empty() && b.rate_factors.iter().all(|f| f.weight == 0) {
            return err(
                "behaviour.rate_factors",
                "at least one weight must be above 0".into(),
            );
        }
        let names: Vec<&str> = Action::MIXABLE.iter().map(|a| a.name()).collect();
        for k in b.mix.keys() {
            if !names.contains(&k.as_str()) {
                return err(
                    &format!("behaviour.mix.{k}"),
                    format!("unknown action; expected one of {}", names.join(", ")),
                );
            }
        }
        if b.mix.values().all(|w| *w == 0) && b.mode == Mode::Closed {
            return err(
                "behaviour.mix",
                "at least one action needs a weight above 0".into(),
            );
        }
        for (k, v) in [
            ("behaviour.reply_fraction", b.reply_fraction),
            ("behaviour.typing_fraction", b.typing_fraction),
        ] {
            if !(0.0..=1.0).contains(&v) {
                return err(k, format!("{v} must be between 0 and 1"));
            }
        }
        match (b.mode, b.posts_per_second) {
            (Mode::Open, None) => {
                return err(
                    "behaviour.posts_per_second",
                    "required when behaviour.mode = \"open\"".into(),
                )
            }
            (_, Some(r)) if !(r.is_finite() && r > 0.0) => {
                return err(
                    "behaviour.posts_per_second",
                    "must be a positive number".into(),
                )
            }
            _ => {}
        }
        if self.run.interval < Duration::from_millis(100) {
            return err("run.interval", "must be at least 100ms".into());
        }
        Ok(())
    }

    /// The settings a results header records (never credentials).
    pub fn run_settings(
        &self,
        users: u64,
        user_offset: u64,
        total_users: u64,
        agents: u32,
    ) -> RunSettings {
        let b = &self.behaviour;
        RunSettings {
            target: self.target.url.clone(),
            users,
            user_offset,
            total_users,
            agents,
            duration_ms: self.users.duration.as_millis() as u64,
            ramp_up_ms: self.users.ramp_up.as_millis() as u64,
            mode: match b.mode {
                Mode::Closed => "closed".into(),
                Mode::Open => "open".into(),
            },
            mean_interval_ms: b.mean_interval.as_millis() as u64,
            interval_jitter_ms: b.interval_jitter.as_millis() as u64,
            posts_per_second: b.posts_per_second,
            action_mix: b.mix.clone(),
            preset: self.preset.clone(),
            seed: self.run.seed,
            load_runtimes: None,
        }
    }

    /// Splits `users` into `agents` disjoint, contiguous slices `(offset, count)`, in order, the
    /// first ones one larger when it does not divide evenly. Agents with nothing get `count` 0.
    pub fn split_users(&self, agents: u32) -> Vec<(u64, u64)> {
        let n = u64::from(agents.max(1));
        let total = self.users.count;
        let mut out = Vec::with_capacity(n as usize);
        let mut offset = self.users.offset;
        for i in 0..n {
            let count = total / n + u64::from(i < total % n);
            out.push((offset, count));
            offset += count;
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presets_are_valid() {
        for (name, _, _) in PRESETS {
            let c = WorkloadConfig::preset(name).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(c.preset.as_deref(), Some(*name));
        }
    }

    #[test]
    fn file_overrides_preset() {
        let c = WorkloadConfig::from_toml_str(
            "preset = \"quick\"\n[users]\ncount = 7\n[behaviour]\ninterval_jitter = \"250ms\"\n",
            "x.toml",
        )
        .expect("valid");
        assert_eq!(c.users.count, 7);
        assert_eq!(c.behaviour.interval_jitter, Duration::from_millis(250));
        assert_eq!(c.run_settings(7, 0, 7, 1).interval_jitter_ms, 250);
    }

    fn err_of(text: &str) -> ConfigError {
        WorkloadConfig::from_toml_str(text, "w.toml").expect_err("should be rejected")
    }

    #[test]
    fn mistakes_name_file_key_and_line() {
        let e = err_of("preset = \"quick\"\n[behaviour.mix]\npostt = 3\n");
        assert_eq!(e.key(), Some("behaviour.mix.postt"));
        assert!(
            e.to_string()
                .starts_with("w.toml:3: behaviour.mix.postt: unknown action"),
            "{e}"
        );

        let e = err_of("preset = \"quick\"\n[users]\nduration = \"ten\"\n");
        assert_eq!(e.key(), Some("users.duration"), "{e}");
        assert!(e.to_string().contains("\"500ms\""), "{e}");

        let e = err_of("preset = \"quick\"\n[users]\ncout = 3\n");
        assert!(e.to_string().contains("unknown field `cout`"), "{e}");

        let e = err_of("preset = \"nope\"\n");
        assert_eq!(e.key(), Some("preset"));

        let e = err_of("[target]\nurl = \"http://x:1\"\n");
        assert!(e.to_string().contains("missing field"), "{e}");
        assert_eq!(e.key(), Some("dataset"), "{e}");
        let e = err_of("preset = \"quick\"\n[[dataset.channels]]\ncount = 1\n");
        assert_eq!(e.key(), Some("dataset.channels[0].members"), "{e}");

        let e = err_of("preset = \"quick\"\n[target]\nurl = \"ftp://x\"\n");
        assert_eq!(e.key(), Some("target.url"));

        let e = err_of("preset = \"quick\"\n[users]\ncount = 100000000\n");
        assert_eq!(e.key(), Some("users.count"));

        let e = err_of("preset = \"quick\"\n[behaviour]\nmode = \"open\"\n");
        assert_eq!(e.key(), Some("behaviour.posts_per_second"));

        // The line is that of the key in its own table, not of a same-named key elsewhere.
        let e = err_of(
            "preset = \"quick\"\n[[dataset.channels]]\ncount = 2\nmembers = 5\n[users]\nramp_up = \"1s\"\ncount = 0\n",
        );
        assert!(e.to_string().starts_with("w.toml:7: users.count:"), "{e}");
        let e = err_of(
            "preset = \"quick\"\n[users]\ncount = 3\n[[dataset.channels]]\ncount = 0\nmembers = 5\n",
        );
        assert!(
            e.to_string()
                .starts_with("w.toml:5: dataset.channels[0].count:"),
            "{e}"
        );
        // A missing key is reported at the table that lacks it.
        let e = err_of("preset = \"quick\"\n[users]\ncount = 3\n[[dataset.channels]]\ncount = 1\n");
        assert!(
            e.to_string()
                .starts_with("w.toml:4: dataset.channels[0].members:"),
            "{e}"
        );

        let e = err_of("this is = = not toml");
        assert_eq!(e.key(), Some("(syntax)"));
        assert!(e.to_string().starts_with("w.toml:1:"), "{e}");
    }

    #[test]
    fn split_is_disjoint_and_complete() {
        let mut c = WorkloadConfig::preset("quick").expect("quick");
        c.users.count = 10;
        c.users.offset = 5;
        let s = c.split_users(3);
        assert_eq!(s, vec![(5, 4), (9, 3), (12, 3)]);
        assert_eq!(s.iter().map(|(_, n)| n).sum::<u64>(), 10);
    }

    #[test]
    fn websocket_url_is_derived() {
        let c = WorkloadConfig::preset("quick").expect("quick");
        assert_eq!(
            c.target.websocket_url(),
            "ws://127.0.0.1:8065/api/v4/websocket"
        );
    }
}
