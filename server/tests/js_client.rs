//! Compatibility with the official Mattermost JavaScript client: runs `server/tests/js` (Node's
//! built-in test runner, `@mattermost/client` and `ws` from npm) against an in-process server.
//! `npm ci` runs only when `node_modules` is missing. Without node/npm the test is skipped with a
//! note, except under `CI=true`, where that is a failure.
#![allow(clippy::unwrap_used)]

use std::path::PathBuf;
use std::process::Command;

fn have(tool: &str) -> bool {
    Command::new(tool)
        .arg("--version")
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn official_js_client_posts_and_receives() {
    if !have("node") || !have("npm") {
        if std::env::var("CI").as_deref() == Ok("true") {
            panic!("node and npm are required in CI (apt-get install nodejs npm)");
        }
        eprintln!("note: skipping the Mattermost JS client test: node/npm not installed");
        return;
    }
    let js = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/js");
    if !js.join("node_modules/@mattermost/client").exists() {
        let st = tokio::task::spawn_blocking({
            let js = js.clone();
            move || {
                Command::new("npm")
                    .args(["ci", "--no-audit", "--no-fund"])
                    .current_dir(js)
                    .status()
            }
        })
        .await
        .unwrap()
        .unwrap();
        assert!(st.success(), "npm ci failed in {}", js.display());
    }
    let dir = tempfile::tempdir().unwrap();
    let server = chat_server::testing::start_sqlite(dir.path())
        .await
        .unwrap();
    let url = server.url.clone();
    let out = tokio::task::spawn_blocking(move || {
        Command::new("node")
            .args(["--test", "client.test.js"])
            .env("CHAT_SERVER_URL", url)
            .current_dir(js)
            .output()
    })
    .await
    .unwrap()
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "node --test failed\n{stdout}\n{stderr}"
    );
    assert!(stdout.contains("# pass 1"), "{stdout}");
    server.stop().await.unwrap();
}
