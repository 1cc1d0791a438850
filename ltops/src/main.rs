//! The `ltops` binary: parses the command line and calls the library (`ltops::commands`).

use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand};
use ltops::commands::{self, create::CreateOptions, deploy::DeployOptions, loadtest};
use ltops::provider::aws::AwsOptions;
use ltops::provider::kubernetes::KubeOptions;
use ltops::provider::DeleteOptions;
use ltops::state::{ClusterType, Database, Home, Proxy, Role};

const EXIT_CODES: &str = "\
Exit codes:
  0    success (loadtest: thresholds and baseline passed)
  1    runtime failure (a process would not start, an agent died mid-run, I/O)
  2    bad input (unknown cluster, missing binary, invalid config or flag, a Kubernetes cluster too small)
  3    loadtest: a threshold failed              (same as ltparse)
  4    loadtest: regression against the baseline (same as ltparse)
  5    loadtest: thresholds failed and regression (same as ltparse)
  6    loadtest --find-capacity --min-capacity N: fewer than N users supported
  75   another ltops command holds the cluster's lock; try again when it is done
  130  interrupted by ctrl-c (loadtest keeps and summarizes the partial results)

State lives in $LTOPS_HOME (default ~/.ltops): clusters/<name>/cluster.toml, logs/, results/.";

#[derive(Parser)]
#[command(
    name = "ltops",
    version,
    about = "Create load-test clusters, deploy servers and agents, run coordinated load tests",
    long_about = "Create load-test clusters, deploy chat servers and load-test agents to them, run \
coordinated multi-agent load tests and keep their results.\n\n\
The quickest start, on a fresh machine:\n  cargo build --release --workspace && target/release/ltops loadtest --quick",
    after_help = EXIT_CODES
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// `create --type aws` flags.
#[derive(clap::Args)]
struct AwsArgs {
    /// aws: the region [default: AWS_REGION or the profile's].
    #[arg(long)]
    region: Option<String>,
    /// aws: the AWS profile [default: `ltops` if it exists, else the SDK's chain: env, shared config, SSO].
    #[arg(long)]
    profile: Option<String>,
    /// aws: instance type of the server instances [default: c6i.xlarge].
    #[arg(long)]
    app_type: Option<String>,
    /// aws: instance type of the agents [default: c6i.xlarge].
    #[arg(long)]
    agent_type: Option<String>,
    /// aws: instance type of the PostgreSQL instance [default: m6i.large].
    #[arg(long)]
    db_type: Option<String>,
    /// aws: instance type of the nginx instance [default: c6i.large].
    #[arg(long)]
    proxy_type: Option<String>,
    /// aws: instance type of the metrics instance (Prometheus) [default: m6i.large].
    #[arg(long)]
    metrics_type: Option<String>,
    /// aws: the machine image (x86_64 Debian or Ubuntu) [default: the region's newest Debian, looked up].
    #[arg(long)]
    ami: Option<String>,
    /// aws: where SSH to the instances is allowed from [default: this machine's public address/32].
    #[arg(long, value_name = "CIDR")]
    allow_ssh_from: Option<String>,
}

impl AwsArgs {
    fn options(self) -> AwsOptions {
        AwsOptions {
            region: self.region,
            profile: self.profile,
            app_type: self.app_type,
            agent_type: self.agent_type,
            db_type: self.db_type,
            proxy_type: self.proxy_type,
            metrics_type: self.metrics_type,
            ami: self.ami,
            allow_ssh_from: self.allow_ssh_from,
            cluster_id: None,
        }
    }
}

/// `create --type kubernetes` flags.
#[derive(clap::Args)]
struct KubeArgs {
    /// kubernetes: the kubeconfig context [default: the current one].
    #[arg(long)]
    context: Option<String>,
    /// kubernetes: the namespace [default: ltops-NAME, created and labelled].
    #[arg(long)]
    namespace: Option<String>,
    /// kubernetes: put the cluster into an existing --namespace (delete removes only its labelled objects).
    #[arg(long)]
    use_existing_namespace: bool,
    /// kubernetes: the product image (Dockerfile) [default: ghcr.io/chat-loadtest/chat-loadtest:VERSION].
    #[arg(long)]
    image: Option<String>,
    /// kubernetes: an existing database: the Secret NAME[:KEY] holding its URL [default key: database-url].
    #[arg(long, value_name = "NAME[:KEY]")]
    database_url_secret: Option<String>,
    /// kubernetes: the storage class of PostgreSQL's volume [default: the cluster's default class].
    #[arg(long)]
    storage_class: Option<String>,
    /// kubernetes: the size of PostgreSQL's volume [default: 10Gi].
    #[arg(long)]
    storage: Option<String>,
    /// kubernetes: the simulated users to size CPU and memory for [default: 1000].
    #[arg(long)]
    users: Option<u64>,
    /// kubernetes: the URL agents load instead of the server Service's cluster name (an ingress, say).
    #[arg(long, value_name = "URL")]
    server_url: Option<String>,
}

impl KubeArgs {
    fn options(self) -> KubeOptions {
        KubeOptions {
            context: self.context,
            namespace: self.namespace,
            use_existing_namespace: self.use_existing_namespace,
            image: self.image,
            database_url_secret: self.database_url_secret,
            storage_class: self.storage_class,
            storage: self.storage,
            users: self.users,
            server_url: self.server_url,
        }
    }
}

// Parsed once per process: the size of `Create`'s many provider flags does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
enum Command {
    /// Record a new cluster and provision what it needs.
    #[command(
        long_about = "Record a new cluster in the state directory and provision what it needs before \
a deploy. --type names the provider: `local` runs everything as processes on this machine (for \
--database postgres: a private PostgreSQL, initialized and started in the cluster's directory); `ssh` \
runs on hosts you already have, listed with their roles (app, db, agent, proxy, metrics) in an --inventory \
file, reached with the system OpenSSH client (your ~/.ssh/config, agent, jump hosts and known_hosts \
apply; new host keys are accepted on first contact and checked afterwards). `aws` provisions EC2: \
a VPC, subnet, internet gateway, route table, a security group (SSH only from --allow-ssh-from), a \
key pair generated in the cluster's directory and one instance per component, all tagged with the \
cluster's name and id; every resource is recorded as soon as it exists, so an interrupted create is \
resumed by running it again, and `delete` removes everything by id and by tag, then checks nothing \
is left. `kubernetes` runs the server, a PostgreSQL StatefulSet and the agents as pods in an existing \
cluster (--context, default the kubeconfig's current one), in a namespace of their own (`ltops-NAME`, \
or an existing one with --use-existing-namespace), sized for --users and checked against the nodes' \
allocatable resources before anything is created.\n\n\
For ssh clusters the defaults come from the inventory: one agent per `agent` host, one server \
instance per `app` host, PostgreSQL when there is a `db` host or a database_url, nginx when there is a \
`proxy` host, and Prometheus with Grafana (unless --no-metrics) on the `metrics` host, else beside \
the first agent. For aws clusters: 1 agent, 1 server instance, PostgreSQL on its own instance, nginx \
when --app-count is above 1, and a metrics instance with Prometheus and Grafana (unless --no-metrics).",
        after_help = "Examples:\n  ltops create --name laptop --agents 2\n  ltops create --name pg --database postgres --app-count 2 --agents 4\n  ltops create --name lab --type ssh --inventory hosts.toml --app-count 2 --agents 2 --proxy nginx\n  ltops create --name cloud --type aws --region eu-west-1 --app-count 2 --agents 3\n  ltops create --name tf --type ssh --inventory-from-terraform terraform/aws\n  ltops create --name k8s --type kubernetes --context prod-eu --app-count 2 --agents 4 --users 20000\n\n\
An inventory (TOML):\n  [defaults]\n  user = \"loadtest\"\n  identity_file = \"~/.ssh/id_ed25519\"\n  [[host]]\n  address = \"10.20.0.2\"\n  roles = [\"app\", \"db\"]\n  [[host]]\n  address = \"10.20.0.3\"\n  roles = [\"agent\", \"proxy\"]\n\
See ltops/README.md for every key."
    )]
    Create {
        /// Cluster name (letters, digits, - and _).
        #[arg(long)]
        name: String,
        /// Provider: where the cluster runs.
        #[arg(long = "type", value_enum, default_value_t = ClusterType::Local)]
        kind: ClusterType,
        /// Number of load-test agents [default: local 2; ssh one per agent host].
        #[arg(long)]
        agents: Option<u32>,
        /// Database of the chat server(s) [default: sqlite; ssh: postgres with a db host].
        #[arg(long, value_enum)]
        database: Option<Database>,
        /// Server instances (more than one needs --database postgres) [default: local 1; ssh one per app host].
        #[arg(long)]
        app_count: Option<u32>,
        /// A reverse proxy in front of the server instances (ssh: on the `proxy` host).
        #[arg(long, value_enum)]
        proxy: Option<Proxy>,
        /// The hosts of an ssh cluster and their roles (TOML, or JSON from `terraform output -json`).
        #[arg(long, value_name = "FILE")]
        inventory: Option<PathBuf>,
        /// An ssh cluster's hosts from the `ltops_inventory` output of a Terraform directory (terraform/aws).
        #[arg(long, value_name = "DIR", conflicts_with = "inventory")]
        inventory_from_terraform: Option<PathBuf>,
        #[command(flatten)]
        aws: AwsArgs,
        #[command(flatten)]
        kube: KubeArgs,
        /// Run a Prometheus that scrapes every server and agent, and (except locally) a Grafana
        /// with the dashboards of dashboards/; `ltops status` prints their URLs. Opt-in for local
        /// clusters (Debian's `prometheus` package), on by default for ssh clusters (on the host
        /// with the role `metrics`, else the first agent host), aws (a metrics instance) and
        /// kubernetes (pods of the official images).
        #[arg(long, conflicts_with = "no_metrics")]
        metrics: bool,
        /// No Prometheus and no Grafana in an ssh, aws or kubernetes cluster.
        #[arg(long)]
        no_metrics: bool,
    },
    /// Start (or restart) a cluster's servers and agents.
    #[command(
        long_about = "Start, or restart, every server instance and agent of a cluster from the given \
binaries (default: `chat-server` and `loadtest-agent` next to the `ltops` executable, i.e. what \
`cargo build --release --workspace` produced), wait until each answers its health check, and \
optionally record a workload config as the cluster's default for `loadtest`.",
        after_help = "Example:\n  ltops deploy -c laptop --config examples/standard-day.toml\n  ltops deploy -c laptop --server ./my/chat-server --agent ./my/loadtest-agent"
    )]
    Deploy {
        /// Cluster name.
        #[arg(short = 'c', long = "cluster")]
        cluster: String,
        /// Path of the `chat-server` binary.
        #[arg(long)]
        server: Option<PathBuf>,
        /// Path of the `loadtest-agent` binary.
        #[arg(long)]
        agent: Option<PathBuf>,
        /// Workload config (TOML) to use by default in `ltops loadtest`.
        #[arg(long)]
        config: Option<PathBuf>,
        /// kubernetes: print the objects it would apply instead of applying them (with -o yaml).
        #[arg(long)]
        dry_run: bool,
        /// The format of --dry-run's output.
        #[arg(short = 'o', long = "output", value_enum, requires = "dry_run")]
        output: Option<ltops::commands::deploy::Output>,
    },
    /// Run a coordinated load test and print its summary.
    #[command(
        long_about = "Run a coordinated load test: prepare the data set once (recorded in the cluster's \
state; --force-setup redoes it), split the users into disjoint slices across the agents, measure each \
agent's clock offset, start every agent at the same instant, show live progress, stop at the end or on \
ctrl-c (partial results are kept), collect every agent's results into results/<run-id>/ and print the \
ltparse summary. The exit code follows ltparse: 0 pass, 3 thresholds failed, 4 regression, 5 both; \
1 when an agent was lost.\n\n\
--quick creates (or reuses) the local cluster `quick` (2 agents, SQLite), deploys it when it is not \
running, and runs the `quick` preset: about a minute with a few hundred users.",
        after_help = "Examples:\n  ltops loadtest --quick\n  ltops loadtest -c laptop --config examples/standard-day.toml --users 2000 --duration 5m\n  ltops loadtest -c laptop --threshold 'create_post.p99<200ms' --baseline ~/.ltops/results/laptop/RUN_ID"
    )]
    Loadtest(loadtest::LoadtestOptions),
    /// Show clusters: components, addresses, health, data set, last run.
    #[command(
        long_about = "Show every cluster (or one): its type and shape, each component with its address, \
where it runs (a PID locally, user@host for ssh) and health (running and answering its health check), \
metrics URLs, the data-set state and the last run with its verdict. Takes no lock, so it works while a \
load test runs.",
        after_help = "Example:\n  ltops status\n  ltops status quick"
    )]
    Status {
        /// Only this cluster.
        name: Option<String>,
    },
    /// Open a shell (or run a command) in a component's environment.
    #[command(
        long_about = "Open a shell, or run a command, in a component's environment: its working directory \
with LTOPS_CLUSTER, LTOPS_ROLE, LTOPS_INDEX, LTOPS_URL, LTOPS_LOG (and LTOPS_METRICS_URL for servers, \
LTOPS_TOKEN_FILE for agents) set. For `local` clusters a shell on this machine (plus LTOPS_PID, and \
DATABASE_URL for postgres); for `ssh` clusters a real SSH session on the component's host. Exits with \
the command's exit code.",
        after_help = "Example:\n  ltops ssh server -c quick\n  ltops ssh agent -c quick -i 1 -- 'curl -s -H \"Authorization: Bearer $(cat $LTOPS_TOKEN_FILE)\" $LTOPS_URL/v1/run/status'"
    )]
    Ssh {
        /// Component role.
        #[arg(value_enum)]
        role: Role,
        #[arg(short = 'c', long = "cluster")]
        cluster: String,
        /// Component index (0-based).
        #[arg(short = 'i', long = "index", default_value_t = 0)]
        index: u32,
        /// Command to run instead of a shell (after `--`).
        #[arg(last = true)]
        cmd: Vec<String>,
    },
    /// Print (or follow) a component's log.
    #[command(
        long_about = "Print a component's log (stdout and stderr of its process), or its last lines, \
and optionally follow it until ctrl-c.",
        after_help = "Example:\n  ltops logs agent -c quick -i 1 --follow\n  ltops logs server -c quick -n 50"
    )]
    Logs {
        #[arg(value_enum)]
        role: Role,
        #[arg(short = 'c', long = "cluster")]
        cluster: String,
        #[arg(short = 'i', long = "index", default_value_t = 0)]
        index: u32,
        /// Keep printing new lines until ctrl-c.
        #[arg(short = 'f', long)]
        follow: bool,
        /// Only the last N lines.
        #[arg(short = 'n', long = "lines")]
        lines: Option<usize>,
    },
    /// Stop a cluster's components and keep everything else (state, data, results).
    #[command(
        long_about = "Stop every component of the cluster (agents, then servers, then its database and \
proxy) and keep everything else: its state, its database's data, its results and, for aws, its \
instances (which keep billing; `ltops delete` removes them). `ltops deploy -c NAME` starts the \
components again. On kubernetes the workloads are scaled to zero; objects and volumes stay.",
        after_help = "Example:\n  ltops stop quick\n  ltops deploy -c quick"
    )]
    Stop { name: String },
    /// Stop everything a cluster started and remove its state (its results stay unless --purge-results).
    #[command(
        long_about = "Stop every process the cluster started (SIGTERM, SIGKILL after 10 s), stop its \
PostgreSQL and proxy, remove what it installed on remote hosts, and remove its state directory. Its \
results (LTOPS_HOME/results/NAME/RUN_ID, baselines included) are kept unless --purge-results is given; \
`delete NAME --purge-results --yes` also removes the results of a cluster already deleted. A host that cannot be reached is reported and the state is kept, so the delete can be \
repeated; --forget-unreachable removes the state anyway and lists what may be left on those hosts. \
Asks for confirmation on a terminal; elsewhere --yes is required.",
        after_help = "Example:\n  ltops delete quick --yes"
    )]
    Delete {
        name: String,
        /// Do not ask for confirmation.
        #[arg(long, short = 'y')]
        yes: bool,
        /// Remove the cluster even if some hosts cannot be reached (what runs there is listed).
        #[arg(long)]
        forget_unreachable: bool,
        /// Remove the cluster's results too (kept by default).
        #[arg(long)]
        purge_results: bool,
        /// With no state for NAME: delete what a cluster of this type left behind, found by its
        /// tags (aws: the name and this home's owner tag, or --cluster-id).
        #[arg(long = "type", value_enum)]
        kind: Option<ClusterType>,
        /// aws: the region of a cluster without state.
        #[arg(long)]
        region: Option<String>,
        /// aws: the AWS profile [default: `ltops` if it exists, else the SDK's chain].
        #[arg(long)]
        profile: Option<String>,
        /// aws: delete exactly the cluster with this id (its `ltops:cluster-id` tag).
        #[arg(long)]
        cluster_id: Option<String>,
    },
}

async fn run(cli: Cli) -> ltops::Result<i32> {
    let home = Home::from_env()?;
    match cli.command {
        Command::Create {
            name,
            kind,
            agents,
            database,
            app_count,
            proxy,
            inventory,
            inventory_from_terraform,
            aws,
            kube,
            metrics,
            no_metrics,
        } => {
            commands::create::create(
                &home,
                &CreateOptions {
                    name,
                    kind,
                    agents,
                    database,
                    app_count,
                    proxy,
                    inventory,
                    inventory_from_terraform,
                    aws: aws.options(),
                    kube: kube.options(),
                    metrics: match (metrics, no_metrics) {
                        (true, _) => Some(true),
                        (_, true) => Some(false),
                        _ => None,
                    },
                },
            )
            .await
        }
        Command::Deploy {
            cluster,
            server,
            agent,
            config,
            dry_run,
            output,
        } => {
            commands::deploy::deploy(
                &home,
                &DeployOptions {
                    cluster,
                    server,
                    agent,
                    config,
                    dry_run: dry_run.then(|| output.unwrap_or_default()),
                },
            )
            .await
        }
        Command::Loadtest(opts) => loadtest::loadtest(&home, &opts).await,
        Command::Status { name } => commands::status::status(&home, name.as_deref()).await,
        Command::Ssh {
            role,
            cluster,
            index,
            cmd,
        } => commands::ssh::ssh(&home, &cluster, role, index, cmd).await,
        Command::Logs {
            role,
            cluster,
            index,
            follow,
            lines,
        } => commands::logs::logs(&home, &cluster, role, index, follow, lines).await,
        Command::Stop { name } => commands::stop::stop(&home, &name).await,
        Command::Delete {
            name,
            yes,
            forget_unreachable,
            purge_results,
            kind,
            region,
            profile,
            cluster_id,
        } => {
            let lost = kind.map(|kind| commands::delete::Lost {
                kind,
                aws: AwsOptions {
                    region,
                    profile,
                    cluster_id,
                    ..Default::default()
                },
            });
            commands::delete::delete(
                &home,
                commands::delete::DeleteRequest {
                    name,
                    yes,
                    opts: DeleteOptions { forget_unreachable },
                    purge_results,
                    lost,
                },
            )
            .await
        }
    }
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    ltops::interrupt::install(rt.handle());
    let code = match rt.block_on(run(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("ltops: error: {e}");
            e.exit_code()
        }
    };
    rt.shutdown_timeout(Duration::from_millis(100));
    std::process::exit(code);
}
