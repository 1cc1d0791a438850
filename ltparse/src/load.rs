//! Reading results: any number of named inputs (files, stdin, in-memory buffers) are streamed
//! record by record and folded into per-run state as they go, so memory grows with the number
//! of runs, agents, actions and intervals, never with the size of the input.
//!
//! Records are grouped by run id; inside a run, each agent's totals come from its summary record
//! or, when the agent was killed before writing one, are rebuilt from its interval records (and
//! the run is marked cut short). Per-interval histograms are kept in a sparse form (only the
//! buckets that hold samples) so that the timeline of a long run stays small.

use std::cell::Cell;
use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::rc::Rc;

use loadtest_contract::histogram::HistogramError;
use loadtest_contract::results::{
    ActionStats, DeliveryStats, ErrorCounts, Gauges, IntervalRecord, Item, ReadError, RunHeader,
    ScheduleStats, ServerRecord, StopReason, SummaryRecord, Totals,
};
use loadtest_contract::{LatencyHistogram, Record, ResultsReader};

use crate::Error;

/// One named source of results records.
pub struct Input<'a> {
    /// Shown in messages (`file:line: …`).
    pub name: String,
    pub reader: Box<dyn BufRead + 'a>,
}

impl<'a> Input<'a> {
    /// Opens a file (buffered); the error names the path.
    pub fn file(path: &Path) -> Result<Input<'static>, Error> {
        let name = path.display().to_string();
        if path.is_dir() {
            return Err(Error::Usage(format!(
                "{name} is a directory; pass the results files in it, e.g. --file {name}/*.jsonl"
            )));
        }
        let f = std::fs::File::open(path).map_err(|source| Error::Io {
            path: name.clone(),
            source,
        })?;
        Ok(Input {
            name,
            reader: Box::new(BufReader::with_capacity(256 * 1024, f)),
        })
    }

    /// Standard input, named `<stdin>` in messages.
    pub fn stdin() -> Input<'static> {
        Input {
            name: "<stdin>".into(),
            reader: Box::new(BufReader::with_capacity(256 * 1024, std::io::stdin())),
        }
    }

    /// Any buffered reader (tests, `ltops` reading from memory).
    pub fn from_reader(name: impl Into<String>, reader: impl BufRead + 'a) -> Self {
        Input {
            name: name.into(),
            reader: Box::new(reader),
        }
    }
}

/// Adds the sorted `(value, count)` buckets of `other` to `into` (a sorted merge; counts of equal
/// values are summed with `add`).
fn merge_buckets<V: Copy + Ord, N: Copy>(
    into: &mut Vec<(V, N)>,
    other: &[(V, N)],
    add: impl Fn(N, N) -> N,
) {
    if other.is_empty() {
        return;
    }
    if into.is_empty() {
        into.extend_from_slice(other);
        return;
    }
    let mut out = Vec::with_capacity(into.len() + other.len());
    let (mut i, mut j) = (0, 0);
    while i < into.len() && j < other.len() {
        let (a, b) = (into[i], other[j]);
        match a.0.cmp(&b.0) {
            std::cmp::Ordering::Less => {
                out.push(a);
                i += 1;
            }
            std::cmp::Ordering::Greater => {
                out.push(b);
                j += 1;
            }
            std::cmp::Ordering::Equal => {
                out.push((a.0, add(a.1, b.1)));
                i += 1;
                j += 1;
            }
        }
    }
    out.extend_from_slice(&into[i..]);
    out.extend_from_slice(&other[j..]);
    *into = out;
}

/// A histogram reduced to its non-empty buckets `(highest equivalent value µs, count)`, sorted by
/// value: a few hundred bytes instead of the ~190 KB of a dense HDR histogram with the contract's
/// range, which is what lets the per-interval timeline of a long run fit in memory. Converting
/// back re-records every bucket into the contract's layout, so nothing is lost.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Sparse(Vec<(u64, u64)>);

impl Sparse {
    pub fn of(h: &LatencyHistogram) -> Self {
        Sparse(
            h.as_hdr()
                .iter_recorded()
                .map(|v| (v.value_iterated_to(), v.count_at_value()))
                .collect(),
        )
    }

    /// Adds `other`'s buckets (a sorted merge).
    pub fn merge(&mut self, other: &Sparse) {
        merge_buckets(&mut self.0, &other.0, u64::saturating_add);
    }

    /// Re-records the buckets into `scratch` (reset first) and returns it.
    pub fn fill<'h>(&self, scratch: &'h mut LatencyHistogram) -> &'h LatencyHistogram {
        scratch.reset();
        for &(v, n) in &self.0 {
            scratch.record_n_us(v, n);
        }
        scratch
    }

    pub fn count(&self) -> u64 {
        self.0.iter().map(|(_, n)| n).sum()
    }

    /// Adds the buckets to a dense histogram.
    pub fn add_to(&self, h: &mut LatencyHistogram) {
        for &(v, n) in &self.0 {
            h.record_n_us(v, n);
        }
    }
}

/// Sub-buckets per power of two kept by [`Coarse`]: values are rounded up to within 1/64
/// (≤ 1.6 %) of themselves.
const COARSE_SUB_BITS: u32 = 6;

/// A histogram for the per-interval timeline only: values rounded to 6 significant bits
/// (≤ 1.6 % high) and stored as `u32` pairs. A busy interval merged over many agents holds a
/// few hundred buckets instead of thousands, which keeps a long multi-agent run's timeline in
/// tens of megabytes. Run totals never go through this type: they stay exact.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Coarse(Vec<(u32, u32)>);

impl Coarse {
    fn quantize(v: u64) -> u32 {
        let v = v.min(u64::from(u32::MAX));
        let bits = 64 - v.leading_zeros();
        let q = if bits <= COARSE_SUB_BITS + 1 {
            v
        } else {
            let shift = bits - COARSE_SUB_BITS - 1;
            ((v >> shift) << shift) | ((1u64 << shift) - 1)
        };
        u32::try_from(q).unwrap_or(u32::MAX)
    }

    pub fn of(s: &Sparse) -> Self {
        let mut out: Vec<(u32, u32)> = Vec::new();
        for &(v, n) in &s.0 {
            let q = Self::quantize(v);
            let n = u32::try_from(n).unwrap_or(u32::MAX);
            match out.last_mut() {
                Some(last) if last.0 == q => last.1 = last.1.saturating_add(n),
                _ => out.push((q, n)),
            }
        }
        Coarse(out)
    }

    pub fn merge(&mut self, other: &Coarse) {
        merge_buckets(&mut self.0, &other.0, u32::saturating_add);
    }

    /// Samples.
    pub fn count(&self) -> u64 {
        self.0.iter().map(|&(_, n)| u64::from(n)).sum()
    }

    /// Value at quantile `q` (the smallest bucket whose cumulative count reaches `q × count`),
    /// µs; 0 when empty. Computed on the few buckets directly rather than through a dense HDR
    /// histogram, which would walk ~23,000 buckets per quantile.
    pub fn quantile_us(&self, q: f64) -> u64 {
        let total = self.count();
        if total == 0 {
            return 0;
        }
        let rank = ((q.clamp(0.0, 1.0) * total as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for &(v, n) in &self.0 {
            seen += u64::from(n);
            if seen >= rank {
                return u64::from(v);
            }
        }
        self.max_us()
    }

    pub fn max_us(&self) -> u64 {
        self.0.last().map_or(0, |&(v, _)| u64::from(v))
    }

    pub fn mean_us(&self) -> f64 {
        let total = self.count();
        if total == 0 {
            return 0.0;
        }
        let sum: f64 = self
            .0
            .iter()
            .map(|&(v, n)| f64::from(v) * f64::from(n))
            .sum();
        sum / total as f64
    }
}

/// One action in one interval of the timeline, summed over the run's agents.
#[derive(Clone, Debug, Default)]
pub struct TimelineAction {
    pub ok: u64,
    pub errors: ErrorCounts,
    pub response_time: Coarse,
}

/// One interval index of a run, summed over its agents.
#[derive(Clone, Debug, Default)]
pub struct IntervalAgg {
    pub index: u64,
    /// Agents that reported this interval.
    pub agents: u32,
    /// Longest interval length among the agents, milliseconds.
    pub length_ms: u64,
    pub actions: BTreeMap<String, TimelineAction>,
    pub delivery_expected: u64,
    pub delivery_received: u64,
    pub delivery_latency: Coarse,
    pub scheduled: u64,
    pub late: u64,
    /// Gauges summed over agents (they ran side by side).
    pub gauges: Gauges,
}

impl IntervalAgg {
    /// What the timeline keeps of one interval record (as one agent's share): counters, and
    /// response-time and delivery histograms in [`Coarse`] form (the only latencies the
    /// per-interval views show).
    fn of(r: &IntervalRecord) -> Self {
        IntervalAgg {
            index: r.index,
            agents: 1,
            length_ms: u64::try_from(r.end_ms.saturating_sub(r.start_ms)).unwrap_or(0),
            actions: r
                .actions
                .iter()
                .map(|(name, s)| {
                    let a = TimelineAction {
                        ok: s.ok,
                        errors: s.errors,
                        response_time: Coarse::of(&Sparse::of(&s.response_time)),
                    };
                    (name.clone(), a)
                })
                .collect(),
            delivery_expected: r.delivery.expected,
            delivery_received: r.delivery.received,
            delivery_latency: Coarse::of(&Sparse::of(&r.delivery.latency)),
            scheduled: r.schedule.actions,
            late: r.schedule.late,
            gauges: r.gauges,
        }
    }

    fn add_gauges(&mut self, g: &Gauges) {
        self.gauges.active_users += g.active_users;
        self.gauges.websocket_connections += g.websocket_connections;
        self.gauges.deliveries_received += g.deliveries_received;
        self.gauges.reconnects += g.reconnects;
    }

    fn absorb(&mut self, o: IntervalAgg) {
        self.agents += o.agents;
        self.length_ms = self.length_ms.max(o.length_ms);
        for (name, s) in o.actions {
            let a = self.actions.entry(name).or_default();
            a.ok += s.ok;
            a.errors.add(&s.errors);
            a.response_time.merge(&s.response_time);
        }
        self.delivery_expected += o.delivery_expected;
        self.delivery_received += o.delivery_received;
        self.delivery_latency.merge(&o.delivery_latency);
        self.scheduled += o.scheduled;
        self.late += o.late;
        self.add_gauges(&o.gauges);
    }
}

/// What is known about one agent of a run once everything is read.
#[derive(Clone, Debug)]
pub struct AgentInfo {
    pub run_id: String,
    pub agent_id: String,
    /// Input the agent's first record came from.
    pub source: String,
    pub header: Option<RunHeader>,
    /// `None` when the agent wrote no summary (killed): its totals were rebuilt from intervals.
    pub stop_reason: Option<StopReason>,
    /// Interval records read.
    pub intervals: u64,
    /// Interval count the summary claims, when there is one.
    pub summary_intervals: Option<u64>,
    /// How long the agent ran, milliseconds.
    pub elapsed_ms: u64,
}

impl AgentInfo {
    pub fn cut_short(&self) -> bool {
        self.stop_reason.is_none()
    }
}

/// Everything read about one run (or, after [`Loaded::aggregate`], several runs merged).
#[derive(Clone, Debug, Default)]
pub struct RunData {
    pub run_ids: Vec<String>,
    pub agents: Vec<AgentInfo>,
    /// All agents' totals merged exactly.
    pub totals: Totals,
    /// Per interval index, all agents merged.
    pub intervals: BTreeMap<u64, IntervalAgg>,
    /// Wall time the run's throughput is divided by, milliseconds: the longest agent of a run
    /// (agents run side by side); the sum over runs when several runs are aggregated (they
    /// ran one after the other).
    pub elapsed_ms: u64,
    pub started_at_ms: Option<i64>,
    /// The server instances' own figures (schema 1.3), in input order.
    pub servers: Vec<ServerRecord>,
}

impl RunData {
    /// The first header seen, for the settings report.
    pub fn header(&self) -> Option<&RunHeader> {
        self.agents.iter().find_map(|a| a.header.as_ref())
    }

    pub fn cut_short(&self) -> bool {
        self.agents.iter().any(AgentInfo::cut_short)
    }

    /// Merges another run into this one (exact: histograms add).
    pub fn absorb(&mut self, o: RunData) -> Result<(), Error> {
        self.run_ids.extend(o.run_ids);
        self.agents.extend(o.agents);
        self.totals.merge(&o.totals).map_err(hist_err)?;
        for (idx, agg) in o.intervals {
            self.intervals.entry(idx).or_default().absorb(agg);
            if let Some(a) = self.intervals.get_mut(&idx) {
                a.index = idx;
            }
        }
        self.servers.extend(o.servers);
        self.elapsed_ms += o.elapsed_ms;
        self.started_at_ms = match (self.started_at_ms, o.started_at_ms) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        Ok(())
    }
}

/// All runs found in the inputs, in order of first appearance.
#[derive(Clone, Debug, Default)]
pub struct Loaded {
    pub runs: Vec<RunData>,
    /// Things the user should know that do not stop the report (unknown record kinds, an
    /// incomplete last line); print them on stderr.
    pub warnings: Vec<String>,
    /// Records read.
    pub records: u64,
    /// Input names, for messages.
    pub sources: Vec<String>,
}

impl Loaded {
    /// All runs merged into one.
    pub fn aggregate(self) -> Result<RunData, Error> {
        let mut runs = self.runs.into_iter();
        let mut first = runs.next().unwrap_or_default();
        for r in runs {
            first.absorb(r)?;
        }
        Ok(first)
    }
}

fn hist_err(e: HistogramError) -> Error {
    Error::Invalid(format!("cannot merge histograms: {e}"))
}

#[derive(Default)]
struct AgentState {
    source: String,
    header: Option<RunHeader>,
    summary: Option<(i64, i64, StopReason, u64)>,
    /// Interval totals, kept only until the agent's summary arrives (then they are redundant).
    /// Dense: adding same-layout HDR histograms is a tight loop, cheaper than any sparse form.
    pending: Option<Totals>,
    seen: BTreeSet<u64>,
    first_start_ms: Option<i64>,
    last_end_ms: Option<i64>,
}

#[derive(Default)]
struct RunState {
    run_id: String,
    agents: BTreeMap<String, AgentState>,
    totals: Totals,
    intervals: BTreeMap<u64, IntervalAgg>,
    servers: Vec<ServerRecord>,
}

/// Tracks the last byte the reader consumed, to tell a line cut at the very end of an input (a
/// writer killed mid-line: warn and go on) from a malformed line in the middle (an error).
struct Track<R> {
    inner: R,
    last: Rc<Cell<Option<u8>>>,
}

impl<R: BufRead> Read for Track<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        if n > 0 {
            self.last.set(Some(buf[n - 1]));
        }
        Ok(n)
    }
}

impl<R: BufRead> BufRead for Track<R> {
    fn fill_buf(&mut self) -> std::io::Result<&[u8]> {
        self.inner.fill_buf()
    }

    fn consume(&mut self, amt: usize) {
        if amt > 0 {
            // The buffer is already filled (consume follows fill_buf), so this does no I/O.
            if let Ok(buf) = self.inner.fill_buf() {
                if let Some(b) = buf.get(amt - 1) {
                    self.last.set(Some(*b));
                }
            }
        }
        self.inner.consume(amt);
    }
}

/// Reads every input to the end and groups its records by run and agent.
///
/// Errors: a malformed line (named `file:line`), a newer schema major, an I/O error, the same
/// agent's header, summary or interval appearing twice (the same file given twice), or no
/// records at all.
pub fn load<'a>(inputs: impl IntoIterator<Item = Input<'a>>) -> Result<Loaded, Error> {
    let mut runs: Vec<RunState> = Vec::new();
    let mut index: BTreeMap<String, usize> = BTreeMap::new();
    let mut warned_kinds: BTreeSet<String> = BTreeSet::new();
    let mut loaded = Loaded::default();

    for input in inputs {
        let name = input.name.clone();
        loaded.sources.push(name.clone());
        let last = Rc::new(Cell::new(None));
        let tracked = Track {
            inner: input.reader,
            last: Rc::clone(&last),
        };
        let mut reader = ResultsReader::new(tracked, name.clone()).peekable();
        while let Some(item) = reader.next() {
            let item = match item {
                Ok(i) => i,
                Err(e) => {
                    if is_cut_last_line(&e, &mut reader, &last) {
                        loaded.warnings.push(format!(
                            "{}:{}: incomplete last line ignored (the writer was probably stopped mid-write)",
                            e.source_name, e.line
                        ));
                        break;
                    }
                    return Err(Error::Read(e));
                }
            };
            let record = match item {
                Item::Record(r) => *r,
                Item::Unknown { kind, line } => {
                    if warned_kinds.insert(kind.clone()) {
                        loaded.warnings.push(format!(
                            "{name}:{line}: skipping records of unknown kind {kind:?} (written by a newer version?); further ones are skipped silently"
                        ));
                    }
                    continue;
                }
            };
            if let Err(m) = plausible(&record) {
                return Err(Error::Invalid(format!("{name}: {m}")));
            }
            loaded.records += 1;
            let run_id = record.run_id().to_owned();
            let slot = *index.entry(run_id.clone()).or_insert_with(|| {
                runs.push(RunState {
                    run_id: run_id.clone(),
                    ..RunState::default()
                });
                runs.len() - 1
            });
            let run = &mut runs[slot];
            // Server figures belong to the run, not to an agent.
            let record = match record {
                Record::Server(srv) => {
                    run.servers.push(srv);
                    continue;
                }
                other => other,
            };
            let agent_id = record.agent_id().to_owned();
            let agent = run
                .agents
                .entry(agent_id.clone())
                .or_insert_with(|| AgentState {
                    source: name.clone(),
                    ..AgentState::default()
                });
            let dup = |what: &str| {
                Error::Invalid(format!(
                    "{name}: a second {what} for agent {agent_id:?} of run {run_id:?} (was the same file given twice?)"
                ))
            };
            match record {
                Record::Header(h) => {
                    if agent.header.is_some() {
                        return Err(dup("header"));
                    }
                    agent.header = Some(h);
                }
                Record::Interval(i) => {
                    if !agent.seen.insert(i.index) {
                        return Err(dup(&format!("interval {}", i.index)));
                    }
                    agent.first_start_ms = Some(
                        agent
                            .first_start_ms
                            .map_or(i.start_ms, |s| s.min(i.start_ms)),
                    );
                    agent.last_end_ms =
                        Some(agent.last_end_ms.map_or(i.end_ms, |s| s.max(i.end_ms)));
                    if agent.summary.is_none() {
                        agent
                            .pending
                            .get_or_insert_with(Totals::default)
                            .add_interval(&i)
                            .map_err(hist_err)?;
                    }
                    let agg = run.intervals.entry(i.index).or_default();
                    agg.index = i.index;
                    agg.absorb(IntervalAgg::of(&i));
                }
                Record::Summary(s) => {
                    if agent.summary.is_some() {
                        return Err(dup("summary"));
                    }
                    let SummaryRecord {
                        started_at_ms,
                        ended_at_ms,
                        stop_reason,
                        intervals,
                        totals,
                        ..
                    } = s;
                    run.totals.merge(&totals).map_err(hist_err)?;
                    agent.pending = None;
                    agent.summary = Some((started_at_ms, ended_at_ms, stop_reason, intervals));
                }
                Record::Server(_) => {}
            }
        }
    }

    if loaded.records == 0 {
        let names = if loaded.sources.is_empty() {
            "<no input>".to_string()
        } else {
            loaded.sources.join(", ")
        };
        // The only line may have been dropped as incomplete: say so, or the reason is lost.
        let names = if loaded.warnings.is_empty() {
            names
        } else {
            format!("{names} ({})", loaded.warnings.join("; "))
        };
        return Err(Error::Empty(names));
    }

    for mut run in runs {
        let mut data = RunData {
            run_ids: vec![run.run_id.clone()],
            ..RunData::default()
        };
        for (agent_id, a) in std::mem::take(&mut run.agents) {
            if let Some(p) = &a.pending {
                run.totals.merge(p).map_err(hist_err)?;
            }
            let start = a
                .header
                .as_ref()
                .map(|h| h.started_at_ms)
                .or(a.first_start_ms);
            let elapsed = match a.summary {
                Some((s, e, _, _)) => e.saturating_sub(s),
                None => match (start, a.last_end_ms) {
                    (Some(s), Some(e)) => e.saturating_sub(s),
                    _ => 0,
                },
            };
            let elapsed_ms = u64::try_from(elapsed).unwrap_or(0);
            data.elapsed_ms = data.elapsed_ms.max(elapsed_ms);
            if let Some(s) = start {
                data.started_at_ms = Some(data.started_at_ms.map_or(s, |d| d.min(s)));
            }
            data.agents.push(AgentInfo {
                run_id: run.run_id.clone(),
                agent_id,
                source: a.source,
                header: a.header,
                stop_reason: a.summary.map(|s| s.2),
                intervals: a.seen.len() as u64,
                summary_intervals: a.summary.map(|s| s.3),
                elapsed_ms,
            });
        }
        data.totals = run.totals;
        data.intervals = run.intervals;
        data.servers = run.servers;
        loaded.runs.push(data);
    }
    Ok(loaded)
}

/// True when `e` is about the last line of its input and that line has no newline: the input
/// was cut mid-write, which is how a killed agent leaves its file.
fn is_cut_last_line<I: Iterator>(
    e: &ReadError,
    rest: &mut std::iter::Peekable<I>,
    last: &Rc<Cell<Option<u8>>>,
) -> bool {
    if e.message.starts_with("cannot read") {
        return false;
    }
    rest.peek().is_none() && last.get() != Some(b'\n')
}

/// Largest count accepted in one record (about 10^12): far above anything a run produces, and
/// low enough that adding up millions of records can never overflow a `u64`.
const MAX_COUNT: u64 = 1 << 40;

/// Rejects records whose counts could only come from corruption, before any arithmetic on them.
fn plausible(r: &Record) -> Result<(), String> {
    fn check(what: &str, v: u64) -> Result<(), String> {
        if v > MAX_COUNT {
            return Err(format!("implausible {what} count {v} (corrupt file?)"));
        }
        Ok(())
    }
    /// An action's error classes and latency samples (its `ok` is checked by the caller).
    fn action(name: &str, a: &ActionStats) -> Result<(), String> {
        for e in [
            a.errors.timeout,
            a.errors.connect,
            a.errors.http_4xx,
            a.errors.http_5xx,
            a.errors.protocol,
        ] {
            check(name, e)?;
        }
        check(name, a.response_time.count())?;
        check(name, a.service_time.count())
    }
    fn delivery_schedule(d: &DeliveryStats, s: &ScheduleStats) -> Result<(), String> {
        for v in [
            d.expected,
            d.received,
            d.missing,
            d.duplicate,
            d.latency.count(),
        ] {
            check("delivery", v)?;
        }
        for v in [s.actions, s.late, s.lag.count()] {
            check("schedule", v)?;
        }
        Ok(())
    }
    fn totals(t: &Totals) -> Result<(), String> {
        for (name, a) in &t.actions {
            check(name, a.ok)?;
            check(name, a.errors.total())?;
            action(name, a)?;
        }
        delivery_schedule(&t.delivery, &t.schedule)?;
        for v in [
            t.reconnects,
            t.peak_active_users,
            t.peak_websocket_connections,
        ] {
            check("gauge", v)?;
        }
        Ok(())
    }
    match r {
        Record::Header(_) => Ok(()),
        Record::Server(s) => {
            for v in [
                s.index,
                s.requests,
                s.errors_5xx,
                s.posts,
                s.broadcasts,
                s.deliveries,
                s.dropped,
                s.db_operations,
                s.websocket_connections,
                s.tasks,
            ] {
                check("server", v)?;
            }
            let seconds = |v: f64| v.is_finite() && v >= 0.0;
            if !(seconds(s.cpu_seconds) && seconds(s.db_seconds)) {
                return Err(format!(
                    "{}: implausible CPU or database seconds",
                    s.instance
                ));
            }
            Ok(())
        }
        Record::Summary(s) => {
            check("interval", s.intervals)?;
            totals(&s.totals)
        }
        Record::Interval(i) => {
            check("interval index", i.index)?;
            for (name, a) in &i.actions {
                check(name, a.ok)?;
                action(name, a)?;
            }
            delivery_schedule(&i.delivery, &i.schedule)?;
            let g = &i.gauges;
            for v in [
                g.active_users,
                g.websocket_connections,
                g.deliveries_received,
                g.reconnects,
            ] {
                check("gauge", v)?;
            }
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn coarse_rounds_up_by_at_most_one_64th_and_keeps_order() {
        let mut prev = 0;
        for v in (0..5_000_000u64)
            .step_by(97)
            .chain([u64::from(u32::MAX), u64::MAX])
        {
            let q = u64::from(Coarse::quantize(v));
            let v = v.min(u64::from(u32::MAX));
            assert!(q >= v, "{v} -> {q}");
            assert!(
                q as f64 <= v as f64 * (1.0 + 1.0 / 64.0) + 1.0,
                "{v} -> {q}"
            );
            assert!(q >= prev);
            prev = q;
        }
    }

    #[test]
    fn sparse_round_trips_exactly_and_merges_like_hdr() {
        let mut a = LatencyHistogram::new();
        let mut b = LatencyHistogram::new();
        for i in 1..5_000u64 {
            a.record_us(i * 37 % 90_000 + 1);
            b.record_us(i * 53 % 70_000 + 1);
        }
        let mut s = Sparse::of(&a);
        s.merge(&Sparse::of(&b));
        let mut scratch = LatencyHistogram::new();
        let mut both = a.clone();
        both.merge(&b).expect("same layout");
        assert_eq!(s.fill(&mut scratch), &both);
        assert_eq!(s.count(), both.count());
    }
}
