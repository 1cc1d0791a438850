//! The binary's contract with its caller: configuration mistakes exit with status 2 and a
//! message naming the file, line and key; `--help` documents the exit codes.

use std::process::Command;

fn agent() -> Command {
    Command::new(env!("CARGO_BIN_EXE_loadtest-agent"))
}

#[test]
fn every_kind_of_config_mistake_names_its_key_and_exits_2() {
    let dir = tempfile::tempdir().expect("tempdir");
    // (mistake appended to a valid quick-preset config, key the error must name)
    let cases = [
        ("[behaviour.mix]\npostt = 3\n", "behaviour.mix.postt"),
        ("[users]\nduration = \"ten\"\n", "users.duration"),
        (
            "[behaviour]\ninterval_jitter = \"250\"\n",
            "behaviour.interval_jitter",
        ),
        (
            "[behaviour]\nmean_interval = \"1s\"\ninterval_jitter = \"2s\"\n",
            "behaviour.interval_jitter",
        ),
        ("[users]\ncount = 100000000\n", "users.count"),
        ("[users]\ncout = 3\n", "cout"),
        ("[target]\nurl = \"ftp://x\"\n", "target.url"),
        (
            "[behaviour]\nmode = \"open\"\n",
            "behaviour.posts_per_second",
        ),
        (
            "[behaviour]\nreply_fraction = 1.5\n",
            "behaviour.reply_fraction",
        ),
        (
            "[[behaviour.rate_factors]]\nweight = 1\nfactor = -2.0\n",
            "behaviour.rate_factors[0].factor",
        ),
        ("[run]\ninterval = \"1ms\"\n", "run.interval"),
        (
            "[dataset]\nuser_prefix = \"Bad Prefix\"\n",
            "dataset.user_prefix",
        ),
    ];
    for (i, (mistake, key)) in cases.iter().enumerate() {
        let path = dir.path().join(format!("bad{i}.toml"));
        std::fs::write(&path, format!("preset = \"quick\"\n{mistake}")).expect("write");
        let out = agent()
            .args(["run", "--skip-setup", "--config"])
            .arg(&path)
            .output()
            .expect("run the agent");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "case {i} ({key}): {stderr}");
        assert!(
            stderr.contains(key),
            "case {i}: expected {key:?} in {stderr}"
        );
        assert!(
            stderr.contains(&format!("bad{i}.toml")),
            "case {i}: file not named: {stderr}"
        );
    }
}

#[test]
fn missing_file_and_bad_override_exit_2() {
    let out = agent()
        .args(["run", "--config", "/nonexistent/w.toml"])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("w.toml");
    std::fs::write(&path, "preset = \"quick\"\n").expect("write");
    let out = agent()
        .args(["run", "--skip-setup", "--users", "0", "--config"])
        .arg(&path)
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("users.count"));
}

#[test]
fn help_documents_exit_codes() {
    let out = agent().arg("--help").output().expect("help");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("2 = bad configuration"), "{text}");
}
