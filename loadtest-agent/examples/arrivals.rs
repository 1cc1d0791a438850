//! When an open-model run's posts are due: the arrival times every agent of a run draws from
//! the config's seed, merged, in seconds from the run's start, one per line.
//!
//! ```sh
//! cargo run --release -p loadtest-agent --example arrivals -- f1.toml 2 > arrivals.txt
//! python3 bench/fanout_model.py --arrivals arrivals.txt 23.7
//! ```
//!
//! The arrivals are the agents' own (`schedule::Arrivals` with the stream and the share of the
//! rate each agent gets when `ltops` splits the users among AGENTS), so a run with the same seed
//! posts at these times, give or take the agents' start. `bench/fanout_model.py --arrivals` then
//! models the run's delivery latency per interval for that very schedule rather than for a fresh
//! Poisson stream.

use std::io::Write as _;
use std::path::Path;
use std::process::ExitCode;

use loadtest_agent::schedule::{agent_rate, Arrivals};
use loadtest_contract::workload::{Mode, WorkloadConfig};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [config, agents] = args.as_slice() else {
        eprintln!("usage: arrivals CONFIG AGENTS   (the workload file and the number of agents)");
        return ExitCode::from(2);
    };
    let agents = match agents.parse::<u32>() {
        Ok(n) if n >= 1 => n,
        _ => {
            eprintln!("AGENTS: {agents:?} is not a number of agents (1 or more)");
            return ExitCode::from(2);
        }
    };
    let cfg = match WorkloadConfig::from_file(Path::new(config)) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    let pps = cfg.behaviour.posts_per_second.unwrap_or(0.0);
    if cfg.behaviour.mode != Mode::Open || pps <= 0.0 {
        eprintln!(
            "{config}: behaviour.mode is not \"open\" with a posts_per_second: no arrivals to list"
        );
        return ExitCode::from(2);
    }
    let end = cfg.users.duration.as_secs_f64();
    // Listed in memory to be merged: a bound well above any real run (F1's is 12,649 posts).
    const MOST: f64 = 10_000_000.0;
    if pps * end > MOST {
        eprintln!(
            "{config}: behaviour.posts_per_second {pps} over users.duration {end} s is about {:.0} posts: \
             this lists at most {MOST:.0} (shorten users.duration)",
            pps * end
        );
        return ExitCode::from(2);
    }
    let mut times = Vec::new();
    for (offset, count) in cfg.split_users(agents) {
        let mut a = Arrivals::new(
            cfg.run.seed,
            offset,
            agent_rate(pps, count, cfg.users.count),
        );
        // As the dispatcher draws: the first post one gap after the start, then at each post
        // the next gap and the post's own draws (`Arrivals::post`, made for every post).
        let mut t = a.next_gap().as_secs_f64();
        while t < end {
            times.push(t);
            t += a.next_gap().as_secs_f64();
            a.post(0.0);
        }
    }
    times.sort_by(f64::total_cmp);
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    for t in times {
        if writeln!(out, "{t:.4}").is_err() {
            return ExitCode::FAILURE;
        }
    }
    if out.flush().is_err() {
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}
