//! The real binary: exit codes, stdin, and bad input (truncated, corrupt, unknown kinds, newer
//! schema major, empty).
#![allow(clippy::unwrap_used)]

mod support;

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use loadtest_contract::results::schema_version;
use loadtest_contract::Record;
use support::{generate, jsonl, write_jsonl, write_run, RunSpec};

fn ltparse(args: &[&str], stdin: Option<&[u8]>) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_ltparse"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn ltparse");
    {
        let mut si = child.stdin.take().expect("stdin");
        if let Some(b) = stdin {
            // The child may exit early on bad input; a broken pipe is fine then.
            let _ = si.write_all(b);
        }
    }
    child.wait_with_output().expect("wait")
}

fn code(o: &Output) -> i32 {
    o.status.code().expect("exit code")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn args_for<'a>(files: &'a [PathBuf], extra: &[&'a str]) -> Vec<String> {
    let mut v = vec!["results".to_string()];
    for f in files {
        v.push("--file".into());
        v.push(f.display().to_string());
    }
    v.extend(extra.iter().map(|s| s.to_string()));
    v
}

fn run_files(files: &[PathBuf], extra: &[&str]) -> Output {
    let a = args_for(files, extra);
    let refs: Vec<&str> = a.iter().map(String::as_str).collect();
    ltparse(&refs, None)
}

fn fixture(dir: &Path) -> (Vec<PathBuf>, Vec<PathBuf>) {
    let run = write_run(dir, &RunSpec::new("run-1"));
    let mut slow = RunSpec::new("run-slow");
    slow.latency_factor = 2.0;
    let slow = write_run(dir, &slow);
    (run, slow)
}

#[test]
fn exit_codes_pass_thresholds_regression_both() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (run, slow) = fixture(dir.path());
    let o = run_files(&run, &[]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert!(stdout(&o).contains("Run run-1"));

    let o = run_files(
        &run,
        &["--threshold", "create_post.count>0", "-t", "throughput>1/s"],
    );
    assert_eq!(code(&o), 0, "{}", stderr(&o));

    let o = run_files(&run, &["--threshold", "create_post.p99<1ms"]);
    assert_eq!(code(&o), 3);
    assert!(stdout(&o).contains("FAIL"));

    let mut extra: Vec<&str> = Vec::new();
    let base: Vec<String> = run.iter().map(|p| p.display().to_string()).collect();
    for b in &base {
        extra.push("--baseline");
        extra.push(b);
    }
    let o = run_files(&slow, &extra);
    assert_eq!(code(&o), 4, "{}", stdout(&o));
    assert!(stdout(&o).contains("REGRESSION"));

    // The fast run against the slow baseline: improvements only, pass.
    let sbase: Vec<String> = slow.iter().map(|p| p.display().to_string()).collect();
    let mut e2: Vec<&str> = Vec::new();
    for b in &sbase {
        e2.push("--baseline");
        e2.push(b);
    }
    let o = run_files(&run, &e2);
    assert_eq!(code(&o), 0, "{}", stdout(&o));

    extra.extend(["--threshold", "create_post.p99<1ms"]);
    let o = run_files(&slow, &extra);
    assert_eq!(code(&o), 5);
}

#[test]
fn usage_errors_exit_2() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (run, _) = fixture(dir.path());
    for bad in [
        "creat_post.p99<1s",
        "create_post.p98<1s",
        "create_post.p99<5%",
    ] {
        let o = run_files(&run, &["--threshold", bad]);
        assert_eq!(code(&o), 2, "{bad}");
        assert!(stderr(&o).contains("invalid threshold"), "{}", stderr(&o));
    }
    let o = run_files(&run, &["--display", "pdf"]);
    assert_eq!(code(&o), 2);
    let o = run_files(&[dir.path().join("nope.jsonl")], &[]);
    assert_eq!(code(&o), 2);
    assert!(stderr(&o).contains("nope.jsonl"), "{}", stderr(&o));
    let o = ltparse(&["results", "--noise-rel", "lots"], Some(b""));
    assert_eq!(code(&o), 2);
}

#[test]
fn help_documents_exit_codes() {
    let o = ltparse(&["results", "--help"], None);
    assert_eq!(code(&o), 0);
    let h = stdout(&o);
    for needle in [
        "Exit codes",
        "3  at least one threshold failed",
        "4  regression",
        "--aggregate",
    ] {
        assert!(h.contains(needle), "{needle} in\n{h}");
    }
}

#[test]
fn stdin_concatenation_with_aggregate() {
    let a = jsonl(
        &generate(&RunSpec::new("run-a"))
            .into_iter()
            .flat_map(|(_, r)| r)
            .collect::<Vec<_>>(),
    );
    let b = jsonl(
        &generate(&RunSpec::new("run-b"))
            .into_iter()
            .flat_map(|(_, r)| r)
            .collect::<Vec<_>>(),
    );
    let both = [a.clone(), b].concat();
    // `cat a b | ltparse results --aggregate --display json`
    let o = ltparse(
        &["results", "--aggregate", "--display", "json"],
        Some(&both),
    );
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).expect("json");
    assert_eq!(v["runs"].as_array().expect("runs").len(), 1);
    assert_eq!(
        v["runs"][0]["run_ids"],
        serde_json::json!(["run-a", "run-b"])
    );
    // Without --aggregate: text shows both in turn, other displays say what to do.
    let o = ltparse(&["results"], Some(&both));
    assert_eq!(code(&o), 0);
    assert!(stdout(&o).contains("Run run-a") && stdout(&o).contains("Run run-b"));
    let o = ltparse(&["results", "--display", "markdown"], Some(&both));
    assert_eq!(code(&o), 2);
    assert!(stderr(&o).contains("--aggregate"), "{}", stderr(&o));
    // One run on stdin is fine in any display.
    let o = ltparse(&["results", "-d", "markdown"], Some(&a));
    assert_eq!(code(&o), 0, "{}", stderr(&o));
}

#[test]
fn output_file_is_written() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (run, _) = fixture(dir.path());
    let out = dir.path().join("report.html");
    let o = run_files(
        &run,
        &["--display", "html", "--output", out.to_str().expect("utf8")],
    );
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert!(stdout(&o).is_empty());
    assert!(std::fs::read_to_string(&out)
        .expect("written")
        .contains("<svg"));
}

fn records(spec: &RunSpec) -> Vec<Record> {
    generate(spec).into_iter().flat_map(|(_, r)| r).collect()
}

#[test]
fn empty_input_is_a_clear_error() {
    let o = ltparse(&["results"], Some(b""));
    assert_eq!(code(&o), 2);
    assert!(
        stderr(&o).contains("no results records in <stdin>"),
        "{}",
        stderr(&o)
    );
    let o = ltparse(&["results"], Some(b"\n\n  \n"));
    assert_eq!(code(&o), 2);
}

#[test]
fn garbage_line_names_file_and_line() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut bytes = jsonl(&records(&RunSpec::new("run-1")));
    let lines = bytes.iter().filter(|&&b| b == b'\n').count();
    bytes.extend_from_slice(b"this is not json\n");
    bytes.extend(jsonl(&records(&RunSpec::new("run-2"))));
    let p = dir.path().join("bad.jsonl");
    std::fs::write(&p, bytes).expect("write");
    let o = run_files(&[p], &[]);
    assert_eq!(code(&o), 2);
    let e = stderr(&o);
    assert!(e.contains(&format!("bad.jsonl:{}:", lines + 1)), "{e}");
    assert!(e.contains("expected one results record per line"), "{e}");
}

#[test]
fn malformed_record_names_what_was_expected() {
    let o = ltparse(
        &["results"],
        Some(b"{\"kind\":\"interval\",\"run_id\":\"r\"}\n"),
    );
    assert_eq!(code(&o), 2);
    assert!(
        stderr(&o).contains("<stdin>:1: malformed interval record"),
        "{}",
        stderr(&o)
    );
    assert!(!stderr(&o).contains("panicked"));
}

#[test]
fn truncated_last_line_is_a_warning_and_the_run_is_cut_short() {
    let mut spec = RunSpec::new("run-1");
    spec.agents = 1;
    let recs = records(&spec);
    // Drop the summary and cut the last interval mid-line, as a killed agent would.
    let mut bytes = jsonl(&recs[..recs.len() - 1]);
    let cut = bytes.len() - 100;
    bytes.truncate(cut);
    let o = ltparse(&["results"], Some(&bytes));
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert!(
        stderr(&o).contains("incomplete last line"),
        "{}",
        stderr(&o)
    );
    assert!(stdout(&o).contains("CUT SHORT"));
    assert!(stdout(&o).contains("WARNING: run cut short"));
}

#[test]
fn unknown_kinds_warn_once_per_kind() {
    let mut bytes = jsonl(&records(&RunSpec::new("run-1")));
    for _ in 0..3 {
        bytes.extend_from_slice(b"{\"kind\":\"hologram\",\"x\":1}\n");
        bytes.extend_from_slice(b"{\"kind\":\"smell\"}\n");
    }
    let o = ltparse(&["results"], Some(&bytes));
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let e = stderr(&o);
    assert_eq!(e.matches("\"hologram\"").count(), 1, "{e}");
    assert_eq!(e.matches("\"smell\"").count(), 1, "{e}");
}

#[test]
fn newer_schema_major_is_a_clear_error() {
    let mut recs = records(&RunSpec::new("run-1"));
    if let Record::Header(h) = &mut recs[0] {
        let major: u32 = schema_version().split('.').next().unwrap().parse().unwrap();
        h.schema_version = format!("{}.0", major + 1);
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let p = dir.path().join("new.jsonl");
    write_jsonl(&p, &recs);
    let o = run_files(&[p], &[]);
    assert_eq!(code(&o), 2);
    assert!(stderr(&o).contains("new.jsonl:1:"), "{}", stderr(&o));
    assert!(stderr(&o).contains("upgrade ltparse"), "{}", stderr(&o));
}

#[test]
fn the_same_file_twice_is_an_error_not_a_double_count() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (run, _) = fixture(dir.path());
    let o = run_files(&[run[0].clone(), run[0].clone()], &[]);
    assert_eq!(code(&o), 2);
    assert!(stderr(&o).contains("given twice"), "{}", stderr(&o));
}

#[test]
fn thresholds_from_a_workload_config() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (run, _) = fixture(dir.path());
    let cfg = dir.path().join("w.toml");
    std::fs::write(
        &cfg,
        "preset = \"quick\"\n[run]\nthresholds = [\"create_post.p99<1ms\"]\n",
    )
    .expect("write");
    let o = run_files(&run, &["--config", cfg.to_str().expect("utf8")]);
    assert_eq!(code(&o), 3, "{}{}", stdout(&o), stderr(&o));
}

#[test]
fn unreadable_inputs_are_named_once_with_what_to_do() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (run, _) = fixture(dir.path());
    // A missing file: the OS reason once, not repeated by every layer of the error.
    let missing = dir.path().join("nope.jsonl");
    for extra in [&["--baseline"][..], &["-o"][..]] {
        let (files, arg) = if extra[0] == "-o" {
            (run.clone(), dir.path().join("no/such/dir/out.txt"))
        } else {
            (run.clone(), missing.clone())
        };
        let arg = arg.display().to_string();
        let o = run_files(&files, &[extra[0], &arg]);
        assert_eq!(code(&o), 2);
        let e = stderr(&o);
        assert_eq!(e.matches("No such file or directory").count(), 1, "{e}");
    }
    // A directory instead of a file says so and what to pass instead.
    let o = run_files(&[dir.path().to_path_buf()], &[]);
    assert_eq!(code(&o), 2);
    assert!(stderr(&o).contains("is a directory"), "{}", stderr(&o));
    // A file whose only line is incomplete: the error keeps the reason and the line.
    let p = dir.path().join("cut.jsonl");
    std::fs::write(&p, b"{\"kind\":\"header\",\"sche").expect("write");
    let o = run_files(&[p], &[]);
    assert_eq!(code(&o), 2);
    let e = stderr(&o);
    assert!(e.contains("cut.jsonl:1: incomplete last line"), "{e}");
    // A noise floor must be a finite number >= 0.
    for bad in ["NaN", "inf"] {
        let o = run_files(&run, &["--noise-throughput", bad]);
        assert_eq!(code(&o), 2, "{bad}: {}", stderr(&o));
    }
}

/// `--display junit`: one test case per threshold and per baseline metric, failures where the
/// verdict failed, the same exit code as the other displays, and well-formed XML (parsed by
/// Python's `xml.etree`).
#[test]
fn junit_lists_every_threshold_and_baseline_verdict() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (run, slow) = fixture(dir.path());
    let base: Vec<String> = run.iter().map(|p| p.display().to_string()).collect();
    let mut extra: Vec<&str> = vec![
        "-d",
        "junit",
        "-t",
        "create_post.p99<1ms",
        "-t",
        "*.error_rate<50%",
    ];
    for b in &base {
        extra.push("--baseline");
        extra.push(b);
    }
    let o = run_files(&slow, &extra);
    assert_eq!(code(&o), 5, "{}", stderr(&o));
    let xml = stdout(&o);
    assert!(xml.starts_with("<?xml"), "{xml}");
    assert!(xml.contains("name=\"create_post.p99&lt;1ms\""), "{xml}");
    assert!(xml.contains("<testsuite name=\"baseline\""), "{xml}");
    assert!(xml.contains("regression against run-1"), "{xml}");
    let cases = xml.matches("<testcase ").count();
    let failures = xml.matches("<failure ").count();
    assert!(
        cases > failures && failures >= 2,
        "{cases} cases, {failures} failures:\n{xml}"
    );
    let mut py = Command::new("python3")
        .args(["-c", "import sys, xml.etree.ElementTree as E; r = E.parse(sys.stdin).getroot(); print(r.get('tests'), r.get('failures'))"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("python3");
    py.stdin
        .take()
        .expect("stdin")
        .write_all(xml.as_bytes())
        .expect("write");
    let parsed = py.wait_with_output().expect("python3");
    assert!(parsed.status.success(), "not well-formed XML:\n{xml}");
    assert_eq!(
        String::from_utf8_lossy(&parsed.stdout).trim(),
        format!("{cases} {failures}")
    );
}
