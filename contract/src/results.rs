//! The results file: JSON Lines, one record per line, written by each agent and read by `ltparse`.
//!
//! A file (or a concatenation of files: `cat a.jsonl b.jsonl` is valid input) holds, per agent, one
//! [`RunHeader`], an [`IntervalRecord`] every interval (flushed as it is written, so a killed agent
//! leaves usable results) and a final [`SummaryRecord`]. A reader that meets a record kind it does
//! not know skips it (a newer minor version may add kinds); a header with a newer *major* schema
//! version is an error, because its records may mean something else.
//!
//! The field-by-field description lives in `contract/schema/results.schema.json`; tests check
//! that what the writer produces validates against it.

use std::collections::BTreeMap;
use std::io::{BufRead, Write};

use serde::{Deserialize, Serialize};

use crate::histogram::{HistogramError, LatencyHistogram};

/// Major version: bumped when a reader of the previous major would misread a file.
pub const SCHEMA_MAJOR: u32 = 1;
/// Minor version: bumped when fields or record kinds are added; older readers skip them.
pub const SCHEMA_MINOR: u32 = 4;

/// The schema version string written in every header, e.g. `"1.0"`.
pub fn schema_version() -> String {
    format!("{SCHEMA_MAJOR}.{SCHEMA_MINOR}")
}

/// One line of a results file.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Record {
    Header(RunHeader),
    Interval(IntervalRecord),
    Summary(SummaryRecord),
    /// Schema 1.3: one server instance's own figures over one interval.
    Server(ServerRecord),
}

impl Record {
    pub fn run_id(&self) -> &str {
        match self {
            Record::Header(h) => &h.run_id,
            Record::Interval(i) => &i.run_id,
            Record::Summary(s) => &s.run_id,
            Record::Server(s) => &s.run_id,
        }
    }

    pub fn agent_id(&self) -> &str {
        match self {
            Record::Header(h) => &h.agent_id,
            Record::Interval(i) => &i.agent_id,
            Record::Summary(s) => &s.agent_id,
            Record::Server(s) => &s.instance,
        }
    }
}

/// What one server instance reported about itself over one interval of a run: sampled from its
/// `/metrics` by the coordinator (`ltops`) every `run.interval` and written to
/// `results/<run-id>/server.jsonl`, so the server's side travels with the run without a
/// Prometheus (schema 1.3). Counts are the increase during the interval; gauges its end value.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ServerRecord {
    pub run_id: String,
    /// The instance, e.g. `server-0`.
    pub instance: String,
    /// 0-based index of the sample in the run.
    pub index: u64,
    /// Coordinator wall clock, Unix milliseconds.
    pub start_ms: i64,
    pub end_ms: i64,
    /// CPU time the process used during the interval (user + system).
    pub cpu_seconds: f64,
    pub rss_bytes: u64,
    pub websocket_connections: u64,
    /// Tasks alive on its runtime.
    pub tasks: u64,
    pub requests: u64,
    pub errors_5xx: u64,
    pub posts: u64,
    /// Events published to its hub, and queued to connections (one per recipient).
    pub broadcasts: u64,
    pub deliveries: u64,
    /// Events not queued to a connection (queue full, typing dropped at half full).
    pub dropped: u64,
    pub db_operations: u64,
    pub db_seconds: f64,
}

/// First record of every agent's results: who ran what, against what, from when.
/// Never holds credentials.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunHeader {
    /// `"MAJOR.MINOR"`, see [`SCHEMA_MAJOR`].
    pub schema_version: String,
    pub run_id: String,
    pub agent_id: String,
    /// Name of the program that wrote the file, e.g. `loadtest-agent`.
    pub tool: String,
    pub tool_version: String,
    /// Agent wall clock at the start of the run, Unix milliseconds.
    pub started_at_ms: i64,
    /// Length of an interval record, milliseconds.
    pub interval_ms: u64,
    /// Agent clock minus coordinator clock as measured by `ltops`, milliseconds (0 standalone).
    #[serde(default)]
    pub clock_offset_ms: i64,
    pub settings: RunSettings,
}

/// The workload settings a report shows next to the numbers.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunSettings {
    /// Server URL the users talked to (no credentials).
    pub target: String,
    /// Simulated users on this agent.
    pub users: u64,
    /// Index of this agent's first user in the data set.
    pub user_offset: u64,
    /// Users across all agents of the run.
    pub total_users: u64,
    /// Agents in the run.
    pub agents: u32,
    pub duration_ms: u64,
    pub ramp_up_ms: u64,
    /// `closed` (each user acts on its own timer) or `open` (a global arrival rate).
    pub mode: String,
    pub mean_interval_ms: u64,
    pub interval_jitter_ms: u64,
    /// Open-model arrival rate across all users, when `mode` is `open`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub posts_per_second: Option<f64>,
    /// Action name → weight.
    pub action_mix: BTreeMap<String, u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preset: Option<String>,
    pub seed: u64,
    /// Load runtimes (threads) the agent ran its users on (schema 1.4). Each has an idle probe, so
    /// the schedule's `probe_lag` holds this many probes' wake-ups; absent means one, as every
    /// agent before 1.4 had.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub load_runtimes: Option<u32>,
}

impl RunSettings {
    /// Idle probes behind this agent's `probe_lag`: one per load runtime.
    pub fn probes(&self) -> u32 {
        self.load_runtimes.unwrap_or(1).max(1)
    }
}

/// Errors of one action, by class.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorCounts {
    /// No answer within the request timeout.
    pub timeout: u64,
    /// Could not connect (refused, reset, DNS, TLS).
    pub connect: u64,
    pub http_4xx: u64,
    pub http_5xx: u64,
    /// An answer that is not what the protocol says (bad JSON, unexpected frame).
    pub protocol: u64,
}

impl ErrorCounts {
    pub fn total(&self) -> u64 {
        self.timeout + self.connect + self.http_4xx + self.http_5xx + self.protocol
    }

    pub fn add(&mut self, o: &ErrorCounts) {
        self.timeout += o.timeout;
        self.connect += o.connect;
        self.http_4xx += o.http_4xx;
        self.http_5xx += o.http_5xx;
        self.protocol += o.protocol;
    }
}

/// Outcome class of one attempted action.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ErrorClass {
    Timeout,
    Connect,
    Http4xx,
    Http5xx,
    Protocol,
}

impl ErrorCounts {
    pub fn count(&mut self, class: ErrorClass) {
        match class {
            ErrorClass::Timeout => self.timeout += 1,
            ErrorClass::Connect => self.connect += 1,
            ErrorClass::Http4xx => self.http_4xx += 1,
            ErrorClass::Http5xx => self.http_5xx += 1,
            ErrorClass::Protocol => self.protocol += 1,
        }
    }
}

/// Counts and latencies of one action over some span of time.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ActionStats {
    /// Successful completions.
    pub ok: u64,
    pub errors: ErrorCounts,
    /// Time from actually sending to the complete answer, successes only.
    pub service_time: LatencyHistogram,
    /// Time from the *intended* start (the schedule) to the complete answer, successes only:
    /// includes any time the action waited because the agent fell behind
    /// (coordinated-omission correct).
    pub response_time: LatencyHistogram,
}

impl ActionStats {
    pub fn hits(&self) -> u64 {
        self.ok + self.errors.total()
    }

    pub fn merge(&mut self, o: &ActionStats) -> Result<(), HistogramError> {
        self.ok += o.ok;
        self.errors.add(&o.errors);
        self.service_time.merge(&o.service_time)?;
        self.response_time.merge(&o.response_time)
    }
}

/// End-to-end delivery of posts to the simulated receivers: from the sender's send time (carried
/// in the post's props) to receipt of the `posted` event on each receiver's WebSocket.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct DeliveryStats {
    /// Deliveries owed: for each acknowledged post, the receivers this agent simulates that were
    /// connected and members of the channel.
    pub expected: u64,
    /// First receipts of an expected post by a receiver.
    pub received: u64,
    /// Expected deliveries that never arrived by the end of the run (summary only; 0 in intervals).
    pub missing: u64,
    /// Receipts of a post a receiver had already received.
    pub duplicate: u64,
    /// Delivery latency, successes only.
    pub latency: LatencyHistogram,
    /// First receipts by this agent's users of posts sent by *other* agents of the same run
    /// (schema 1.1). Nothing is expected or missing for them: the sender's agent cannot see
    /// other agents' receivers.
    #[serde(default)]
    pub remote_received: u64,
    /// Latency of the remote receipts: receipt time minus send time, both converted to the
    /// coordinator's clock with each agent's clock offset (accuracy bounded by the offset error).
    #[serde(default)]
    pub remote_latency: LatencyHistogram,
}

impl DeliveryStats {
    pub fn merge(&mut self, o: &DeliveryStats) -> Result<(), HistogramError> {
        self.expected += o.expected;
        self.received += o.received;
        self.missing += o.missing;
        self.duplicate += o.duplicate;
        self.remote_received += o.remote_received;
        self.latency.merge(&o.latency)?;
        self.remote_latency.merge(&o.remote_latency)
    }
}

/// How well the agent kept to its schedule, and whose fault lateness was.
///
/// An action starts late either because the user's previous request was still waiting for the
/// server at its intended time (the *server's* delay: the response time counted from the
/// intended start already holds it) or because the agent's runtime did not get to it in time
/// (the *generator's* delay: then the agent measured a load it did not offer, and everything it
/// timed includes time it was not running). `late_waiting`, `generator_lag`, `probe_lag` and
/// the CPU figures (schema 1.2) tell them apart; files from older agents lack them.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ScheduleStats {
    /// Actions started.
    pub actions: u64,
    /// Actions that started later than the lateness threshold after their intended time.
    pub late: u64,
    /// Start lag of every action (actual start − intended start).
    pub lag: LatencyHistogram,
    /// Paced actions whose user's previous request was answered more than the lateness
    /// threshold after their intended start: late because of the server.
    #[serde(default)]
    pub late_waiting: u64,
    /// The generator's own share of each paced action's start lag: from when it could start
    /// (its intended time, or the previous answer if later) to when it started.
    #[serde(default)]
    pub generator_lag: LatencyHistogram,
    /// Timer lateness of an idle probe task that wakes every 50 ms on the agent's runtime:
    /// large when the runtime is busy or the process is starved of CPU.
    #[serde(default)]
    pub probe_lag: LatencyHistogram,
    /// CPU time the agent process used (user + system), milliseconds.
    #[serde(default)]
    pub cpu_ms: u64,
    /// CPU time it could have used: wall time × the CPUs available to it, milliseconds.
    #[serde(default)]
    pub cpu_capacity_ms: u64,
}

/// Lateness above which an action counts as late, milliseconds.
pub const LATE_THRESHOLD_MS: u64 = 100;

/// Whose lateness it was: the rules the agent's log and `ltparse`'s report share. The generator
/// fell behind when its own start lag p99 exceeds this, µs…
pub const GENERATOR_LAG_P99_US: u64 = LATE_THRESHOLD_MS * 1000;
/// …or its CPU share exceeds this…
pub const CPU_STARVED_SHARE: f64 = 0.95;
/// …or its idle probe was late beyond this (timer granularity and scheduling noise below it), µs,
/// for more than a share of the time each reader chooses (a single interval tolerates more).
pub const PROBE_TOLERATED_US: u64 = 10_000;
/// Otherwise, the server stalled when more than this share of actions waited for it.
pub const WAITING_SHARE: f64 = 0.01;
/// A generator whose runtimes were delayed while its CPU share stayed below this was delayed by
/// the machine (other processes on its cores), not by its own work: the remedy is cores of its own.
pub const MACHINE_DELAY_CPU_SHARE: f64 = 0.5;

impl ScheduleStats {
    pub fn merge(&mut self, o: &ScheduleStats) -> Result<(), HistogramError> {
        self.actions += o.actions;
        self.late += o.late;
        self.late_waiting += o.late_waiting;
        self.cpu_ms += o.cpu_ms;
        self.cpu_capacity_ms += o.cpu_capacity_ms;
        self.lag.merge(&o.lag)?;
        self.generator_lag.merge(&o.generator_lag)?;
        self.probe_lag.merge(&o.probe_lag)
    }
}

/// Point-in-time gauges at the end of an interval, plus per-interval event counts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Gauges {
    pub active_users: u64,
    pub websocket_connections: u64,
    /// WebSocket `posted` events received during the interval (all of them, expected or not).
    pub deliveries_received: u64,
    /// WebSocket reconnects during the interval (planned and after drops).
    pub reconnects: u64,
}

/// Statistics of one interval of one agent.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct IntervalRecord {
    pub run_id: String,
    pub agent_id: String,
    /// 0-based index of the interval in the run.
    pub index: u64,
    pub start_ms: i64,
    pub end_ms: i64,
    /// Action name → statistics; actions with no attempts in the interval may be absent.
    pub actions: BTreeMap<String, ActionStats>,
    pub delivery: DeliveryStats,
    pub schedule: ScheduleStats,
    pub gauges: Gauges,
}

/// Why an agent's run ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StopReason {
    /// Ran for the configured duration.
    Completed,
    /// Stopped early by the operator (ctrl-c, `ltops` stop).
    Interrupted,
    /// The agent gave up (for example it could not reach the server at all).
    Failed,
}

/// Totals of a whole run of one agent (or, in `ltparse`, of several merged).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Totals {
    pub actions: BTreeMap<String, ActionStats>,
    pub delivery: DeliveryStats,
    pub schedule: ScheduleStats,
    pub reconnects: u64,
    pub peak_active_users: u64,
    pub peak_websocket_connections: u64,
}

impl Totals {
    /// Adds an interval's statistics: counters add, histograms merge exactly, gauges keep peaks.
    pub fn add_interval(&mut self, i: &IntervalRecord) -> Result<(), HistogramError> {
        for (name, stats) in &i.actions {
            self.actions.entry(name.clone()).or_default().merge(stats)?;
        }
        self.delivery.merge(&i.delivery)?;
        self.schedule.merge(&i.schedule)?;
        self.reconnects += i.gauges.reconnects;
        self.peak_active_users = self.peak_active_users.max(i.gauges.active_users);
        self.peak_websocket_connections = self
            .peak_websocket_connections
            .max(i.gauges.websocket_connections);
        Ok(())
    }

    /// Adds another set of totals (another agent's, another run's): peaks add too, since the
    /// agents ran side by side.
    pub fn merge(&mut self, o: &Totals) -> Result<(), HistogramError> {
        for (name, stats) in &o.actions {
            self.actions.entry(name.clone()).or_default().merge(stats)?;
        }
        self.delivery.merge(&o.delivery)?;
        self.schedule.merge(&o.schedule)?;
        self.reconnects += o.reconnects;
        self.peak_active_users += o.peak_active_users;
        self.peak_websocket_connections += o.peak_websocket_connections;
        Ok(())
    }
}

/// Last record of an agent's results.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SummaryRecord {
    pub run_id: String,
    pub agent_id: String,
    pub started_at_ms: i64,
    pub ended_at_ms: i64,
    pub stop_reason: StopReason,
    /// Interval records written before this summary.
    pub intervals: u64,
    pub totals: Totals,
}

/// Writes records as JSON Lines, flushing after each so that a killed writer loses at most the
/// interval in progress.
pub struct ResultsWriter<W: Write> {
    out: W,
}

impl<W: Write> ResultsWriter<W> {
    pub fn new(out: W) -> Self {
        Self { out }
    }

    pub fn write(&mut self, record: &Record) -> std::io::Result<()> {
        self.write_line(record).map(drop)
    }

    /// Writes `record` and returns its line (without the newline), for a caller that keeps what
    /// it wrote without serializing it again.
    pub fn write_line(&mut self, record: &Record) -> std::io::Result<String> {
        let mut line = serde_json::to_string(record).map_err(std::io::Error::other)?;
        line.push('\n');
        self.out.write_all(line.as_bytes())?;
        self.out.flush()?;
        line.pop();
        Ok(line)
    }

    pub fn into_inner(self) -> W {
        self.out
    }
}

/// A malformed or unusable line, with where it is.
#[derive(Debug, thiserror::Error)]
#[error("{source_name}:{line}: {message}")]
pub struct ReadError {
    /// File name (or `<stdin>`).
    pub source_name: String,
    /// 1-based line number.
    pub line: u64,
    pub message: String,
}

/// What the reader found on one line.
#[derive(Clone, Debug, PartialEq)]
pub enum Item {
    Record(Box<Record>),
    /// A record kind this version does not know (written by a newer minor version): skip it,
    /// and tell the user once.
    Unknown {
        kind: String,
        line: u64,
    },
}

/// Streaming reader: one line in memory at a time.
pub struct ResultsReader<R: BufRead> {
    input: R,
    source_name: String,
    line_no: u64,
    buf: String,
}

impl<R: BufRead> ResultsReader<R> {
    pub fn new(input: R, source_name: impl Into<String>) -> Self {
        Self {
            input,
            source_name: source_name.into(),
            line_no: 0,
            buf: String::new(),
        }
    }

    fn error(&self, message: impl Into<String>) -> ReadError {
        ReadError {
            source_name: self.source_name.clone(),
            line: self.line_no,
            message: message.into(),
        }
    }

    fn parse_line(&self, line: &str) -> Result<Item, ReadError> {
        #[derive(Deserialize)]
        struct Peek<'a> {
            #[serde(borrow)]
            kind: Option<std::borrow::Cow<'a, str>>,
            #[serde(borrow)]
            schema_version: Option<std::borrow::Cow<'a, str>>,
        }
        let peek: Peek<'_> = serde_json::from_str(line).map_err(|e| {
            self.error(format!(
                "not a JSON object ({e}); expected one results record per line"
            ))
        })?;
        let kind = peek.kind.ok_or_else(|| {
            self.error("record has no \"kind\" field; expected header, interval or summary")
        })?;
        if !matches!(kind.as_ref(), "header" | "interval" | "summary" | "server") {
            return Ok(Item::Unknown {
                kind: kind.into_owned(),
                line: self.line_no,
            });
        }
        if kind == "header" {
            let version = peek
                .schema_version
                .ok_or_else(|| self.error("header has no \"schema_version\""))?;
            check_version(&version).map_err(|m| self.error(m))?;
        }
        let record: Record = serde_json::from_str(line)
            .map_err(|e| self.error(format!("malformed {kind} record: {e}")))?;
        Ok(Item::Record(Box::new(record)))
    }
}

/// Accepts any version with our major; a newer major is an error that says what to do.
pub fn check_version(version: &str) -> Result<(), String> {
    let major = version
        .split('.')
        .next()
        .and_then(|m| m.parse::<u32>().ok())
        .ok_or_else(|| format!("schema_version {version:?} is not MAJOR.MINOR"))?;
    if major > SCHEMA_MAJOR {
        return Err(format!(
            "results schema version {version} is newer than this tool understands ({}); upgrade ltparse",
            schema_version()
        ));
    }
    if major < SCHEMA_MAJOR {
        return Err(format!(
            "results schema version {version} is older than this tool supports ({})",
            schema_version()
        ));
    }
    Ok(())
}

impl<R: BufRead> Iterator for ResultsReader<R> {
    type Item = Result<Item, ReadError>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            self.buf.clear();
            match self.input.read_line(&mut self.buf) {
                Ok(0) => return None,
                Ok(_) => {}
                Err(e) => {
                    self.line_no += 1;
                    return Some(Err(self.error(format!("cannot read: {e}"))));
                }
            }
            self.line_no += 1;
            let line = self.buf.trim();
            if line.is_empty() {
                continue;
            }
            let line = line.to_owned();
            return Some(self.parse_line(&line));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn sample_header() -> RunHeader {
        RunHeader {
            schema_version: schema_version(),
            run_id: "run-1".into(),
            agent_id: "agent-0".into(),
            tool: "test".into(),
            tool_version: "0.0.0".into(),
            started_at_ms: 1_700_000_000_000,
            interval_ms: 10_000,
            clock_offset_ms: 0,
            settings: RunSettings {
                target: "http://127.0.0.1:8065".into(),
                users: 10,
                user_offset: 0,
                total_users: 10,
                agents: 1,
                duration_ms: 60_000,
                ramp_up_ms: 0,
                mode: "closed".into(),
                mean_interval_ms: 1_000,
                interval_jitter_ms: 100,
                posts_per_second: None,
                action_mix: BTreeMap::from([("create_post".into(), 1)]),
                preset: None,
                seed: 1,
                load_runtimes: None,
            },
        }
    }

    fn read_all(text: &str) -> Vec<Result<Item, ReadError>> {
        ResultsReader::new(text.as_bytes(), "t.jsonl").collect()
    }

    #[test]
    fn written_records_read_back() {
        let mut w = ResultsWriter::new(Vec::new());
        let mut stats = ActionStats {
            ok: 3,
            ..ActionStats::default()
        };
        stats.service_time.record_us(1500);
        stats.response_time.record_us(1600);
        let interval = IntervalRecord {
            run_id: "run-1".into(),
            agent_id: "agent-0".into(),
            index: 0,
            start_ms: 1,
            end_ms: 2,
            actions: BTreeMap::from([("create_post".into(), stats)]),
            delivery: DeliveryStats::default(),
            schedule: ScheduleStats::default(),
            gauges: Gauges::default(),
        };
        let records = vec![Record::Header(sample_header()), Record::Interval(interval)];
        for r in &records {
            w.write(r).expect("write");
        }
        let text = String::from_utf8(w.into_inner()).expect("utf8");
        let back: Vec<Record> = read_all(&text)
            .into_iter()
            .map(|i| match i.expect("ok") {
                Item::Record(r) => *r,
                Item::Unknown { .. } => panic!("unexpected unknown"),
            })
            .collect();
        assert_eq!(back, records);
    }

    #[test]
    fn delivery_reads_1_0_without_remote_fields_and_ignores_unknown_ones() {
        let mut d = DeliveryStats {
            received: 2,
            remote_received: 3,
            ..DeliveryStats::default()
        };
        d.remote_latency.record_us(7_000);
        let mut v = serde_json::to_value(&d).expect("json");
        let back: DeliveryStats = serde_json::from_value(v.clone()).expect("1.1");
        assert_eq!(back, d);
        let obj = v.as_object_mut().expect("object");
        obj.remove("remote_received");
        obj.remove("remote_latency");
        obj.insert("from_the_future".into(), serde_json::json!(1));
        let old: DeliveryStats = serde_json::from_value(v).expect("1.0");
        assert_eq!((old.received, old.remote_received), (2, 0));
        assert!(old.remote_latency.is_empty());
        let mut sum = old.clone();
        sum.merge(&d).expect("merge");
        assert_eq!((sum.received, sum.remote_received), (4, 3));
        assert_eq!(sum.remote_latency.count(), 1);
    }

    #[test]
    fn unknown_kind_is_skipped_with_its_line() {
        let items = read_all("\n{\"kind\":\"future_thing\",\"x\":1}\n");
        assert!(matches!(&items[0], Ok(Item::Unknown { kind, line: 2 }) if kind == "future_thing"));
    }

    #[test]
    fn malformed_lines_name_file_and_line() {
        let items = read_all("{\"kind\":\"header\"\n");
        let err = items[0].as_ref().expect_err("error");
        assert_eq!(err.line, 1);
        assert!(err.to_string().starts_with("t.jsonl:1:"), "{err}");
        let items = read_all("[1,2]\n");
        assert!(items[0].is_err());
        let items = read_all("{\"x\":1}\n");
        assert!(items[0].as_ref().expect_err("e").message.contains("kind"));
    }

    #[test]
    fn newer_major_is_an_error_newer_minor_is_fine() {
        let mut h = sample_header();
        h.schema_version = "2.0".into();
        let line = serde_json::to_string(&Record::Header(h.clone())).expect("ser");
        let err = read_all(&line)[0]
            .as_ref()
            .expect_err("newer major")
            .to_string();
        assert!(err.contains("upgrade ltparse"), "{err}");
        h.schema_version = format!("{SCHEMA_MAJOR}.{}", SCHEMA_MINOR + 5);
        let line = serde_json::to_string(&Record::Header(h)).expect("ser");
        assert!(read_all(&line)[0].is_ok());
    }
}
