//! Every workload example at the repository root must load and validate, so the documentation
//! never shows a config that the tools reject.

use loadtest_contract::WorkloadConfig;

#[test]
fn every_example_toml_validates() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");
    let mut seen = 0;
    for entry in std::fs::read_dir(&dir).expect("examples/ exists") {
        let path = entry.expect("dir entry").path();
        if path.extension().and_then(|e| e.to_str()) != Some("toml") {
            continue;
        }
        WorkloadConfig::from_file(&path).unwrap_or_else(|e| panic!("{e}"));
        seen += 1;
    }
    assert!(seen >= 1, "no workload examples found in {}", dir.display());
}
