//! End to end for `--type aws` against the EC2 emulator `moto` (PyPI `moto[server,ec2]`, run
//! here as `moto_server` on 127.0.0.1, one per test), through the real `ltops` binary. Real AWS
//! cannot be used from this machine; the emulator answers the same EC2 API (VPCs, subnets,
//! gateways, routes, security groups, key pairs, RunInstances with tags and user data, waiters),
//! and `MOTO_EC2_ENABLE_INSTANCE_TYPE_VALIDATION=true` makes it reject an unknown instance type,
//! which is how a create is interrupted half-way.
//!
//! What the emulator's instances report as addresses cannot be reached, so `deploy` and
//! `loadtest` over SSH are covered by `tests/ssh.rs` on real SSH hosts, not here. What `ltops`
//! created and left behind is checked independently of `ltops`, with boto3 (the SDK moto comes
//! with) reading every resource type by tag.
//!
//! Without `moto_server` the tests skip with a note, except under `CI=true`, where they fail.
#![allow(clippy::unwrap_used)]

mod util;

use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use util::moto::Moto;
use util::{text, Env};

/// The emulator, and `ltops` run against it.
struct Ec2 {
    m: Moto,
}

impl std::ops::Deref for Ec2 {
    type Target = Moto;
    fn deref(&self) -> &Moto {
        &self.m
    }
}

impl Ec2 {
    fn start() -> Option<Ec2> {
        Moto::start(true).map(|m| Ec2 { m })
    }

    /// `ltops` against the emulator with static test credentials and nothing of the machine's
    /// own AWS configuration.
    fn command(&self, env: &Env, args: &[&str]) -> Command {
        let mut c = env.cmd(args);
        for v in [
            "AWS_PROFILE",
            "AWS_REGION",
            "AWS_DEFAULT_REGION",
            "AWS_SESSION_TOKEN",
        ] {
            c.env_remove(v);
        }
        c.env("HOME", env.home.path())
            .env("AWS_ENDPOINT_URL", &self.url)
            .env("AWS_ACCESS_KEY_ID", "test")
            .env("AWS_SECRET_ACCESS_KEY", "test")
            .env("AWS_EC2_METADATA_DISABLED", "true");
        c
    }

    /// Runs `ltops` to the end against the emulator.
    fn ltops(&self, env: &Env, args: &[&str]) -> Output {
        let out = self.command(env, args).output().unwrap();
        eprintln!(
            "$ ltops {}\n[exit {:?}]\n{}",
            args.join(" "),
            out.status.code(),
            text(&out)
        );
        out
    }

    /// What exists with tag `key=value`, read with boto3: live instances, VPCs, subnets,
    /// gateways, route tables, security groups, key pairs, and the SSH ingress CIDRs.
    fn inventory(&self, key: &str, value: &str) -> serde_json::Value {
        self.boto3(CHECK, &[key, value])
    }
}

const CHECK: &str = r#"
import json, sys, boto3
url, key, value = sys.argv[1:4]
c = boto3.client("ec2", region_name="us-east-1", endpoint_url=url)
f = [{"Name": "tag:" + key, "Values": [value]}]
inst = [i for r in c.describe_instances(Filters=f)["Reservations"] for i in r["Instances"]
        if i["State"]["Name"] != "terminated"]
sgs = c.describe_security_groups(Filters=f)["SecurityGroups"]
print(json.dumps({
  "instances": sorted(next(t["Value"] for t in i["Tags"] if t["Key"] == "ltops:role") + "-" + i["InstanceType"] for i in inst),
  "vpcs": len(c.describe_vpcs(Filters=f)["Vpcs"]),
  "subnets": len(c.describe_subnets(Filters=f)["Subnets"]),
  "gateways": len(c.describe_internet_gateways(Filters=f)["InternetGateways"]),
  "route_tables": len(c.describe_route_tables(Filters=f)["RouteTables"]),
  "security_groups": len(sgs),
  "key_pairs": len(c.describe_key_pairs(Filters=f)["KeyPairs"]),
  "ssh_from": sorted(r["CidrIp"] for g in sgs for p in g["IpPermissions"] if p.get("FromPort") == 22 for r in p.get("IpRanges", [])),
  "open_to_world": sorted(str(p.get("FromPort")) for g in sgs for p in g["IpPermissions"] for r in p.get("IpRanges", []) if r["CidrIp"] == "0.0.0.0/0"),
}))
"#;

fn empty() -> serde_json::Value {
    serde_json::json!({
        "instances": [], "vpcs": 0, "subnets": 0, "gateways": 0, "route_tables": 0,
        "security_groups": 0, "key_pairs": 0, "ssh_from": [], "open_to_world": []
    })
}

const ALLOW: &str = "198.51.100.7/32";

fn create_args<'a>(name: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut v = vec![
        "create",
        "--name",
        name,
        "--type",
        "aws",
        "--region",
        "us-east-1",
        "--allow-ssh-from",
        ALLOW,
    ];
    v.extend_from_slice(extra);
    v
}

/// The full lifecycle: create records and tags everything (SSH only from the given CIDR, the
/// private key only on this machine), status reads the instances back with a cost estimate,
/// delete removes it all and the leak check finds nothing.
#[test]
fn create_status_delete_leaves_nothing_behind() {
    let Some(moto) = Ec2::start() else { return };
    let env = Env::new();
    let out = moto.ltops(
        &env,
        &create_args("cloud", &["--app-count", "2", "--agents", "2"]),
    );
    assert!(out.status.success());
    let t = text(&out);
    for what in [
        "created VPC vpc-",
        "created subnet subnet-",
        "created internet gateway igw-",
        "created route table rtb-",
        "created security group sg-",
        "created key pair ltops-cloud-",
        "nginx in front",
    ] {
        assert!(t.contains(what), "missing {what:?}");
    }
    let st = env.state("cloud");
    let id = st.cluster_id.clone();
    assert_eq!(
        st.components.len(),
        8,
        "2 servers, postgres, nginx, 2 agents, prometheus and grafana (on by default)"
    );
    let found = moto.inventory("ltops:cluster-id", &id);
    assert_eq!(
        found["instances"],
        serde_json::json!([
            "agent-c6i.xlarge",
            "agent-c6i.xlarge",
            "app-c6i.xlarge",
            "app-c6i.xlarge",
            "db-m6i.large",
            "metrics-m6i.large",
            "proxy-c6i.large"
        ])
    );
    for k in [
        "vpcs",
        "subnets",
        "gateways",
        "route_tables",
        "security_groups",
        "key_pairs",
    ] {
        assert_eq!(found[k], 1, "{k}");
    }
    assert_eq!(found["ssh_from"], serde_json::json!([ALLOW]));
    assert_eq!(found["open_to_world"], serde_json::json!([]));

    // The private key stays in the cluster's directory, readable by its owner only; the state
    // file holds no key material.
    use std::os::unix::fs::PermissionsExt;
    let dir = env.home.path().join("clusters/cloud");
    let mode = std::fs::metadata(dir.join("id_ed25519"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    let toml = std::fs::read_to_string(dir.join("cluster.toml")).unwrap();
    assert!(!toml.contains("PRIVATE KEY"));
    assert!(toml.contains("type = \"aws\""));

    let out = moto.ltops(&env, &["status", "cloud"]);
    assert!(out.status.success());
    let t = text(&out);
    assert_eq!(
        t.matches(" running  ").count(),
        7,
        "seven running instances"
    );
    assert!(
        t.contains("estimated cost: $0.96/hour"),
        "2×0.17+0.096+0.085+2×0.17+0.096: {t}"
    );
    assert!(
        t.contains("prometheus: on ") && t.contains("ssh -N -L 9090:10.60.1."),
        "where Prometheus runs and the tunnel to it: {t}"
    );
    assert!(t.contains("list prices of 2024-06"));
    assert!(t.contains("not deployed yet"));

    // A second create of the same name is refused, not resumed.
    let out = moto.ltops(&env, &create_args("cloud", &[]));
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out).contains("already exists"));

    // `stop` keeps the instances, and says they keep billing.
    let out = moto.ltops(&env, &["stop", "cloud"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("its 7 EC2 instance(s) in us-east-1 keep running, and billing"),
        "{}",
        text(&out)
    );
    let out = moto.ltops(&env, &["status", "cloud"]);
    assert_eq!(text(&out).matches(" running  ").count(), 7);

    let out = moto.ltops(&env, &["delete", "cloud", "--yes"]);
    assert!(out.status.success());
    let t = text(&out);
    assert!(t.contains(&format!(
        "leak check: nothing tagged ltops:cluster-id={id} is left in us-east-1"
    )));
    assert_eq!(t.matches("removed instance i-").count(), 7);
    assert_eq!(moto.inventory("ltops:cluster-id", &id), empty());
    assert!(!dir.exists());

    // Deleting again: nothing recorded, and a hint for a lost state.
    let out = moto.ltops(&env, &["delete", "cloud", "--yes"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out).contains("--type aws --region REGION"));
}

/// A create stopped half-way (the emulator rejects the agents' instance type after the VPC,
/// the security group and two instances exist) keeps what it made recorded: a deploy is
/// refused, `delete` removes it all; another such create is resumed with a corrected type.
#[test]
fn an_interrupted_create_is_deleted_or_resumed() {
    let Some(moto) = Ec2::start() else { return };
    let env = Env::new();
    let out = moto.ltops(&env, &create_args("half", &["--agent-type", "x9.nope"]));
    assert_eq!(out.status.code(), Some(1));
    let t = text(&out);
    assert!(t.contains("launching agent-0 (x9.nope)"), "names the step");
    assert!(t.contains("run the same `ltops create` again to resume"));
    let st = env.state("half");
    let id = st.cluster_id.clone();
    let found = moto.inventory("ltops:cluster-id", &id);
    assert_eq!(found["vpcs"], 1);
    assert_eq!(found["security_groups"], 1);
    assert_eq!(
        found["instances"],
        serde_json::json!(["app-c6i.xlarge", "db-m6i.large"])
    );
    let toml = std::fs::read_to_string(env.home.path().join("clusters/half/cluster.toml")).unwrap();
    assert!(toml.contains("vpc = \"vpc-"), "the VPC is recorded");
    assert!(toml.contains("security_group = \"sg-"));

    let out = moto.ltops(&env, &["deploy", "-c", "half"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out).contains("did not finish"));
    let out = moto.ltops(&env, &["status", "half"]);
    assert!(text(&out).contains("create: not finished"));

    let out = moto.ltops(&env, &["delete", "half", "--yes"]);
    assert!(out.status.success());
    assert_eq!(moto.inventory("ltops:cluster-id", &id), empty());

    // Resume: the shape cannot change, a corrected instance type can.
    let out = moto.ltops(&env, &create_args("again", &["--agent-type", "x9.nope"]));
    assert_eq!(out.status.code(), Some(1));
    let id = env.state("again").cluster_id;
    let out = moto.ltops(&env, &create_args("again", &["--agents", "3"]));
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out).contains("--agents: the interrupted create"));
    let out = moto.ltops(&env, &create_args("again", &["--no-metrics"]));
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out).contains(
            "--no-metrics: the interrupted create of \"again\" was started with --metrics"
        ),
        "{}",
        text(&out)
    );
    // A create stopped between an API's answer and its record: the ids are gone from the
    // state, the resources carry the tag. The resume adopts them instead of making new ones;
    // likewise a gateway attached and a route table associated that the state does not know of
    // (AWS refuses a second attachment with Resource.AlreadyAssociated).
    let file = env.home.path().join("clusters/again/cluster.toml");
    let toml = std::fs::read_to_string(&file).unwrap();
    assert!(toml.contains("gateway_attached = true"), "{toml}");
    assert!(
        toml.contains("route_table_association = \"rtbassoc-"),
        "{toml}"
    );
    let forgotten: String = toml
        .lines()
        .filter(|l| {
            !l.starts_with("vpc = ")
                && !l.starts_with("security_group = ")
                && !l.starts_with("route_table_association = ")
        })
        .map(|l| {
            format!(
                "{}\n",
                l.replace("gateway_attached = true", "gateway_attached = false")
            )
        })
        .collect();
    assert_ne!(forgotten, toml);
    std::fs::write(&file, forgotten).unwrap();
    let out = moto.ltops(&env, &create_args("again", &["--agent-type", "c6i.large"]));
    assert!(out.status.success());
    let t = text(&out);
    assert!(t.contains("resuming the create"));
    assert_eq!(
        t.matches("created instance").count(),
        2,
        "only the missing ones: agent-0 and metrics-0"
    );
    assert!(!t.contains("created VPC"));
    assert!(t.contains("adopted what carries the cluster's tag but was not recorded: VPC vpc-"));
    assert!(t.contains("the gateway's attachment to the VPC, route table association rtbassoc-"));
    let found = moto.inventory("ltops:cluster-id", &id);
    assert_eq!(
        found["instances"],
        serde_json::json!([
            "agent-c6i.large",
            "app-c6i.xlarge",
            "db-m6i.large",
            "metrics-m6i.large"
        ])
    );
    assert_eq!(found["vpcs"], 1, "the VPC was adopted, not made again");
    assert_eq!(found["security_groups"], 1);
    assert_eq!(found["ssh_from"], serde_json::json!([ALLOW]));
    let out = moto.ltops(&env, &["delete", "again", "--yes"]);
    assert!(out.status.success());
    assert_eq!(moto.inventory("ltops:cluster-id", &id), empty());
}

/// Ctrl-c during a create, wherever it lands: the command stops (exit 130, or it had finished),
/// and the same create then completes, and delete leaves nothing.
#[test]
fn ctrl_c_during_a_create_leaves_a_resumable_cluster() {
    let Some(moto) = Ec2::start() else { return };
    let env = Env::new();
    let args = create_args("intr", &["--app-count", "3", "--agents", "4"]);
    let child = moto
        .command(&env, &args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Interrupt once the first resource is recorded (or the create is over).
    let file = env.home.path().join("clusters/intr/cluster.toml");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !std::fs::read_to_string(&file).is_ok_and(|t| t.contains("vpc = "))
        && Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(5));
    }
    let _ = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status();
    let out = child.wait_with_output().unwrap();
    eprintln!(
        "[interrupted create: exit {:?}]\n{}",
        out.status.code(),
        text(&out)
    );
    let code = out.status.code();
    assert!(matches!(code, Some(130) | Some(0)), "{code:?}");
    let id = env.state("intr").cluster_id;
    if code == Some(130) {
        assert!(text(&out).contains("run the same `ltops create` again to resume"));
        let out = moto.ltops(&env, &args);
        assert!(out.status.success());
    }
    let found = moto.inventory("ltops:cluster-id", &id);
    assert_eq!(
        found["instances"].as_array().unwrap().len(),
        10,
        "3 servers, postgres, nginx, 4 agents, metrics"
    );
    assert_eq!(found["vpcs"], 1);
    assert!(moto
        .ltops(&env, &["delete", "intr", "--yes"])
        .status
        .success());
    assert_eq!(moto.inventory("ltops:cluster-id", &id), empty());
}

/// Two homes create a cluster of the same name; one loses its state directory and deletes by
/// tag (`--type aws`): its resources go, the other home's cluster is untouched and still
/// deletes cleanly.
#[test]
fn a_lost_state_is_deleted_by_tag_without_touching_a_namesake() {
    let Some(moto) = Ec2::start() else { return };
    let a = Env::new();
    let b = Env::new();
    // One without a metrics instance (`--no-metrics`), one with.
    assert!(moto
        .ltops(
            &a,
            &create_args("same", &["--no-metrics", "--metrics-type", "t3.medium"])
        )
        .status
        .success());
    assert!(moto.ltops(&b, &create_args("same", &[])).status.success());
    assert_eq!(
        moto.inventory("ltops:cluster-id", &b.state("same").cluster_id)["instances"],
        serde_json::json!([
            "agent-c6i.xlarge",
            "app-c6i.xlarge",
            "db-m6i.large",
            "metrics-m6i.large"
        ])
    );
    let id_a = a.state("same").cluster_id;
    let id_b = b.state("same").cluster_id;
    assert_ne!(id_a, id_b);
    std::fs::remove_dir_all(b.home.path().join("clusters/same")).unwrap();

    let out = moto.ltops(
        &b,
        &["delete", "same", "--type", "aws", "--region", "us-east-1"],
    );
    assert_eq!(out.status.code(), Some(2), "asks for --yes");
    let out = moto.ltops(
        &b,
        &[
            "delete",
            "same",
            "--type",
            "aws",
            "--region",
            "us-east-1",
            "--yes",
        ],
    );
    assert!(out.status.success());
    let t = text(&out);
    assert!(t.contains(&format!("found cluster id(s) {id_b} by tag")));
    assert!(!t.contains(&id_a));
    assert_eq!(moto.inventory("ltops:cluster-id", &id_b), empty());
    let left = moto.inventory("ltops:cluster-id", &id_a);
    assert_eq!(left["instances"].as_array().unwrap().len(), 3);
    assert_eq!(left["vpcs"], 1);

    let out = moto.ltops(&a, &["status", "same"]);
    assert_eq!(text(&out).matches(" running  ").count(), 3);
    assert!(moto
        .ltops(&a, &["delete", "same", "--yes"])
        .status
        .success());
    assert_eq!(moto.inventory("ltops:cluster-id", &id_a), empty());
    assert_eq!(moto.inventory("ltops:cluster", "same"), empty());
}

/// Bad flags and a hand-edited state file get an error naming what to fix, before anything is
/// created.
#[test]
fn bad_input_names_the_flag_or_the_key() {
    let Some(moto) = Ec2::start() else { return };
    let env = Env::new();
    for (args, want) in [
        (vec!["--allow-ssh-from", "0.0.0.0/99"], "--allow-ssh-from"),
        (vec!["--allow-ssh-from", "me"], "--allow-ssh-from"),
        (vec!["--app-type", "c6i large;rm"], "--app-type"),
        (vec!["--metrics-type", "m6i large"], "--metrics-type"),
        (vec!["--ami", "ami-doesnotexist"], "--ami ami-doesnotexist"),
        (
            vec!["--app-count", "2", "--database", "sqlite"],
            "--app-count",
        ),
    ] {
        let mut all = vec![
            "create",
            "--name",
            "bad",
            "--type",
            "aws",
            "--region",
            "us-east-1",
        ];
        all.extend(args);
        if !all.contains(&"--allow-ssh-from") {
            all.extend(["--allow-ssh-from", ALLOW]);
        }
        let out = moto.ltops(&env, &all);
        assert_eq!(out.status.code(), Some(2), "{all:?}");
        assert!(text(&out).contains(want), "{all:?}: wants {want:?}");
        assert!(!env.home.path().join("clusters/bad/cluster.toml").exists());
    }
    // No region anywhere: say how to give one.
    let out = moto.ltops(
        &env,
        &[
            "create",
            "--name",
            "bad",
            "--type",
            "aws",
            "--allow-ssh-from",
            ALLOW,
        ],
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out).contains("pass --region"));
    assert_eq!(moto.inventory("ltops:cluster", "bad"), empty());

    // A hand-edited region is refused with the file and key.
    assert!(moto.ltops(&env, &create_args("edit", &[])).status.success());
    let file = env.home.path().join("clusters/edit/cluster.toml");
    let toml = std::fs::read_to_string(&file).unwrap();
    std::fs::write(
        &file,
        toml.replace("region = \"us-east-1\"", "region = \"us east 1\""),
    )
    .unwrap();
    let out = moto.ltops(&env, &["delete", "edit", "--yes"]);
    assert_eq!(out.status.code(), Some(2));
    let t = text(&out);
    let line = toml
        .lines()
        .position(|l| l.starts_with("region ="))
        .unwrap()
        + 1;
    assert!(
        t.contains(&format!("cluster.toml:{line}: provider.region")),
        "{t}"
    );
    std::fs::write(&file, toml).unwrap();
    assert!(moto
        .ltops(&env, &["delete", "edit", "--yes"])
        .status
        .success());
}

/// A profile named `ltops` in the shared config is used when no `--profile` is given (its
/// region too).
#[test]
fn the_ltops_profile_is_the_default() {
    let Some(moto) = Ec2::start() else { return };
    let env = Env::new();
    let aws = env.home.path().join(".aws");
    std::fs::create_dir_all(&aws).unwrap();
    std::fs::write(
        aws.join("config"),
        "[default]\nregion = eu-north-1\n[profile ltops]\nregion = us-east-1\n",
    )
    .unwrap();
    let out = moto.ltops(
        &env,
        &[
            "create",
            "--name",
            "prof",
            "--type",
            "aws",
            "--allow-ssh-from",
            ALLOW,
        ],
    );
    assert!(out.status.success());
    assert!(text(&out).contains("region us-east-1"));
    let toml = std::fs::read_to_string(env.home.path().join("clusters/prof/cluster.toml")).unwrap();
    assert!(toml.contains("profile = \"ltops\""), "{toml}");
    let id = env.state("prof").cluster_id;
    assert_eq!(
        moto.inventory("ltops:cluster-id", &id)["instances"]
            .as_array()
            .unwrap()
            .len(),
        4,
        "app, db, agent, metrics"
    );
    assert!(moto
        .ltops(&env, &["delete", "prof", "--yes"])
        .status
        .success());
    assert_eq!(moto.inventory("ltops:cluster-id", &id), empty());
}
