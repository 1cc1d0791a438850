//! Every workload config under `examples/` loads and validates, and its thresholds parse.

use std::path::Path;

use loadtest_contract::WorkloadConfig;

#[test]
fn every_example_config_is_valid() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");
    let mut checked = Vec::new();
    for entry in std::fs::read_dir(&dir).expect("examples/ exists") {
        let path = entry.expect("readable entry").path();
        if path.extension().is_some_and(|e| e == "toml") {
            let config = WorkloadConfig::from_file(&path)
                .unwrap_or_else(|e| panic!("{} is invalid: {e}", path.display()));
            for t in &config.run.thresholds {
                ltparse::parse_threshold(t)
                    .unwrap_or_else(|e| panic!("{}: threshold {t:?}: {e}", path.display()));
            }
            checked.push(path.file_name().map(|n| n.to_string_lossy().into_owned()));
        }
    }
    for name in [
        "quick.toml",
        "standard-day.toml",
        "extreme.toml",
        "capacity-check.toml",
    ] {
        assert!(
            checked.iter().any(|c| c.as_deref() == Some(name)),
            "examples/{name} is missing (found {checked:?})"
        );
    }
}
