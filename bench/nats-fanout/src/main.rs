//! `nats-fanout`: subscribers and a paced publisher on NATS, one JSON report line on stdout
//! (see the library's documentation; `bench/f1.py --nats` runs it).
//!
//! Exit codes: 0 done, 1 the servers could not be reached or refused, 2 bad arguments.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;

#[derive(Parser)]
#[command(
    name = "nats-fanout",
    about = "Many NATS subscribers and one paced publisher (periodic or Poisson); prints one JSON report line"
)]
struct Cli {
    /// Servers, comma-separated HOST:PORT; subscribers go round them, the publisher uses the first.
    #[arg(long, value_delimiter = ',', required = true)]
    servers: Vec<SocketAddr>,
    /// Subscriber connections this process holds.
    #[arg(long, default_value_t = 0)]
    subscribers: usize,
    /// Global index of this process's first subscriber.
    #[arg(long, default_value_t = 0)]
    first: usize,
    /// Subscribers per subject.
    #[arg(long, default_value_t = 2000)]
    members: usize,
    /// Subjects (`ch.0` …).
    #[arg(long, default_value_t = 15)]
    subjects: usize,
    /// Messages per second to publish (0: this process only subscribes).
    #[arg(long, default_value_t = 0.0)]
    rate: f64,
    /// How the publisher spaces messages: `periodic` (every 1/rate s) or `poisson` (exponential
    /// gaps, as the F1 agents' open model posts).
    #[arg(long, value_enum, default_value_t = ArrivalsArg::Periodic)]
    arrivals: ArrivalsArg,
    /// Seed of the Poisson schedule (one seed, one schedule).
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Latency is also reported per interval of this length (whole seconds, aligned to the epoch).
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    interval: Duration,
    /// Payload bytes (the send time and padding).
    #[arg(long, default_value_t = 700)]
    payload: usize,
    /// Wait this long after subscribing before publishing (a cluster's servers exchange interest).
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    settle: Duration,
    /// How long to publish.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    publish: Duration,
    /// How long to listen once subscribed (count the publishing time and a drain).
    #[arg(long, default_value = "70s", value_parser = humantime::parse_duration)]
    listen: Duration,
    #[arg(long, default_value_t = 200)]
    connect_concurrency: usize,
    #[arg(long, default_value = "120s", value_parser = humantime::parse_duration)]
    connect_timeout: Duration,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum ArrivalsArg {
    Periodic,
    Poisson,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let opts = nats_fanout::Options {
        servers: cli.servers,
        subscribers: cli.subscribers,
        first: cli.first,
        members: cli.members,
        subjects: cli.subjects,
        rate: cli.rate,
        arrivals: match cli.arrivals {
            ArrivalsArg::Periodic => nats_fanout::Arrivals::Periodic,
            ArrivalsArg::Poisson => nats_fanout::Arrivals::Poisson { seed: cli.seed },
        },
        interval: cli.interval,
        payload: cli.payload,
        settle: cli.settle,
        publish: cli.publish,
        listen: cli.listen,
        connect_concurrency: cli.connect_concurrency,
        connect_timeout: cli.connect_timeout,
    };
    if let Err(e) = opts.validate() {
        eprintln!("nats-fanout: {e}");
        return ExitCode::from(2);
    }
    nats_fanout::raise_nofile();
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("nats-fanout: starting the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    // One thread: a lean client's whole cost, on one core.
    let result = rt.block_on(nats_fanout::run(opts, |n| eprintln!("ready {n}")));
    match result.map(|r| serde_json::to_string(&r)) {
        Ok(Ok(line)) => {
            println!("{line}");
            ExitCode::SUCCESS
        }
        Ok(Err(e)) => {
            eprintln!("nats-fanout: {e}");
            ExitCode::from(1)
        }
        Err(e) => {
            eprintln!("nats-fanout: {e}");
            ExitCode::from(1)
        }
    }
}
