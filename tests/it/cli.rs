//! The real `crmsync` and `crmsync-worker` binaries, run as child processes
//! in an empty folder with the embedded (SQLite) defaults.

use crate::fleet::Killed;
use crate::support::{PORTAL, TOKEN, TestSandbox};
use crmsync::sandbox::hubspot::SandboxConfig;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// An empty working folder, removed at the end.
struct Workdir(PathBuf);

impl Workdir {
    fn new() -> Self {
        let dir =
            std::env::temp_dir().join(format!("crmsync-cli-{}", uuid::Uuid::now_v7().simple()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        Self(dir)
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for Workdir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A command for `binary` in `dir` with no inherited crmsync configuration.
fn command(binary: &str, dir: &Path, env: &[(&str, &str)]) -> Command {
    let mut command = Command::new(binary);
    command.current_dir(dir).stdin(Stdio::null());
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("CRMSYNC") {
            command.env_remove(key);
        }
    }
    command.env_remove("RUST_LOG");
    for (k, v) in env {
        command.env(k, v);
    }
    command
}

/// Runs `crmsync ARGS` to its end.
fn crmsync(dir: &Path, env: &[(&str, &str)], args: &[&str]) -> Output {
    command(env!("CARGO_BIN_EXE_crmsync"), dir, env)
        .args(args)
        .output()
        .expect("run crmsync")
}

/// The same, off the async runtime (the sandbox answers on it meanwhile).
async fn crmsync_async(dir: &Path, env: &[(&str, &str)], args: &[&str]) -> Output {
    let dir = dir.to_path_buf();
    let env: Vec<(String, String)> = env
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    tokio::task::spawn_blocking(move || {
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        crmsync(&dir, &env, &args)
    })
    .await
    .expect("crmsync task")
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn succeeded(output: &Output) -> &Output {
    assert!(
        output.status.success(),
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        output.status.code(),
        stdout(output),
        stderr(output)
    );
    output
}

fn status_json(dir: &Path, env: &[(&str, &str)]) -> Value {
    let output = crmsync(dir, env, &["status", "--json"]);
    serde_json::from_str(&stdout(succeeded(&output))).expect("status --json prints JSON")
}

#[test]
fn tenant_create_json_prints_the_id_name_and_a_token() {
    let dir = Workdir::new();
    let output = crmsync(dir.path(), &[], &["tenant", "create", "acme", "--json"]);
    let body: Value = serde_json::from_str(stdout(succeeded(&output)).trim()).expect("JSON");
    assert_eq!(body["name"], "acme");
    let id = body["id"].as_str().expect("id");
    assert!(id.parse::<uuid::Uuid>().is_ok(), "id is a UUID: {id}");
    let token = body["token"].as_str().expect("token");
    assert!(token.starts_with("cst_") && token.len() > 20, "{token}");
}

#[test]
fn tenant_create_prints_tenant_and_token_lines_and_refuses_a_duplicate_name() {
    let dir = Workdir::new();
    let output = crmsync(dir.path(), &[], &["tenant", "create", "acme"]);
    let text = stdout(succeeded(&output));
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 2, "{text}");
    let id = lines[0]
        .strip_prefix("tenant ")
        .expect("a `tenant <id>` line");
    assert!(id.parse::<uuid::Uuid>().is_ok(), "{id}");
    let token = lines[1]
        .strip_prefix("token ")
        .expect("a `token <token>` line");
    assert!(token.starts_with("cst_"), "{token}");

    let duplicate = crmsync(dir.path(), &[], &["tenant", "create", "acme"]);
    assert!(!duplicate.status.success(), "a duplicate name must fail");
    let message = stderr(&duplicate);
    assert!(
        message.contains("\"acme\""),
        "the message names the tenant: {message}"
    );
    assert!(message.contains("already exists"), "{message}");

    // A different name is still fine, and gets a different token.
    let other = crmsync(dir.path(), &[], &["tenant", "create", "globex", "--json"]);
    let body: Value = serde_json::from_str(stdout(succeeded(&other)).trim()).expect("JSON");
    assert_ne!(body["token"].as_str(), Some(token));
}

#[test]
fn a_bad_configuration_value_stops_the_cli_naming_its_variable() {
    let dir = Workdir::new();
    let output = crmsync(
        dir.path(),
        &[("CRMSYNC__SYNC__FULL_PAGE_SIZE", "500")],
        &["status"],
    );
    assert!(!output.status.success(), "{}", stdout(&output));
    let message = stderr(&output);
    assert!(
        message.contains("CRMSYNC__SYNC__FULL_PAGE_SIZE"),
        "{message}"
    );
    assert!(
        stdout(&output).is_empty(),
        "nothing else printed: {}",
        stdout(&output)
    );
}

#[test]
fn numbers_out_of_their_range_are_refused_naming_the_flag_and_the_range() {
    let dir = Workdir::new();
    let cases: [(&[&str], &str, &str); 6] = [
        (
            &["dev", "--delta-interval", "4"],
            "--delta-interval",
            "5..=86400",
        ),
        (
            &["dev", "--exit-after", "604801"],
            "--exit-after",
            "0..=604800",
        ),
        (
            &[
                "connect",
                "hubspot",
                "--private-app-token",
                TOKEN,
                "--expires-in",
                "0",
            ],
            "--expires-in",
            "1..=86400",
        ),
        (
            &[
                "connect",
                "hubspot",
                "--private-app-token",
                TOKEN,
                "--portal-id",
                "0",
            ],
            "--portal-id",
            "1..",
        ),
        (
            &["webhooks", "register", "--max-concurrent-requests", "5"],
            "--max-concurrent-requests",
            "6..=100",
        ),
        (
            &["webhooks", "register", "--max-concurrent-requests", "101"],
            "--max-concurrent-requests",
            "6..=100",
        ),
    ];
    for (args, flag, range) in cases {
        let output = crmsync(dir.path(), &[], args);
        assert_eq!(
            output.status.code(),
            Some(2),
            "{args:?}: {}",
            stdout(&output)
        );
        let message = stderr(&output);
        assert!(
            message.contains(flag) && message.contains(range),
            "{args:?}: {message}"
        );
        assert!(stdout(&output).is_empty(), "{args:?}: {}", stdout(&output));
    }
    let made: Vec<_> = std::fs::read_dir(dir.path())
        .expect("workdir")
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert!(
        made.is_empty(),
        "refused before anything was made: {made:?}"
    );
}

#[test]
fn an_unknown_configuration_key_stops_the_cli_naming_the_key() {
    let dir = Workdir::new();
    let output = crmsync(
        dir.path(),
        &[("CRMSYNC__DATABASE__URLL", "sqlite://x.db")],
        &["status"],
    );
    assert!(!output.status.success(), "{}", stdout(&output));
    let message = stderr(&output);
    assert!(message.contains("urll"), "{message}");
}

#[test]
fn status_json_in_a_fresh_folder_prints_an_empty_list() {
    let dir = Workdir::new();
    assert_eq!(status_json(dir.path(), &[]), Value::Array(Vec::new()));
    let plain = crmsync(dir.path(), &[], &["status"]);
    assert!(
        stdout(succeeded(&plain)).contains("no connections yet"),
        "{}",
        stdout(&plain)
    );
}

/// `crmsync status --json | grep -q …` under `set -o pipefail`: a reader
/// that has stopped reading must not turn into a panic and a failed command.
#[test]
fn a_reader_that_stops_early_is_not_an_error() {
    let dir = Workdir::new();
    for args in [&["status"][..], &["status", "--json"], &["--version"]] {
        let (reader, writer) = std::io::pipe().expect("pipe");
        drop(reader);
        let output = command(env!("CARGO_BIN_EXE_crmsync"), dir.path(), &[])
            .args(args)
            .stdout(writer)
            .stderr(Stdio::piped())
            .output()
            .expect("run crmsync");
        assert!(
            output.status.success(),
            "crmsync {args:?} into a closed pipe: {:?}, {}",
            output.status,
            stderr(&output)
        );
        assert!(!stderr(&output).contains("panicked"), "{}", stderr(&output));
    }
}

#[test]
fn help_points_newcomers_at_dev() {
    let dir = Workdir::new();
    let output = crmsync(dir.path(), &[], &["--help"]);
    let text = stdout(succeeded(&output));
    assert!(text.contains("crmsync dev"), "{text}");
    assert!(text.contains("dev "), "the dev command is listed: {text}");
}

#[test]
fn the_worker_and_crmsync_help_list_every_job_kind() {
    let dir = Workdir::new();
    let crmsync_help = stdout(succeeded(&crmsync(dir.path(), &[], &["--help"])));
    let worker = command(env!("CARGO_BIN_EXE_crmsync-worker"), dir.path(), &[])
        .arg("--help")
        .output()
        .expect("run crmsync-worker");
    let worker_help = stdout(succeeded(&worker));
    for kind in crmsync::jobs::JobKind::ALL {
        assert!(
            crmsync_help.contains(kind.stem()),
            "crmsync --help: {crmsync_help}"
        );
        assert!(
            worker_help.contains(kind.stem()),
            "crmsync-worker --help: {worker_help}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_then_full_sync_with_a_worker_process_shows_in_status() {
    const CONTACTS: u64 = 250;
    let sandbox = TestSandbox::with(SandboxConfig {
        seed_contacts: CONTACTS,
        ..SandboxConfig::for_tests()
    })
    .await;
    let dir = Workdir::new();
    let env = [
        ("CRMSYNC__HUBSPOT__API_BASE_URL", sandbox.base.as_str()),
        ("CRMSYNC__QUEUE__POLL_INTERVAL_MS", "20"),
    ];

    let connect = crmsync_async(
        dir.path(),
        &env,
        &["connect", "hubspot", "--private-app-token", TOKEN],
    )
    .await;
    let id = stdout(succeeded(&connect)).trim().to_string();
    assert!(id.parse::<uuid::Uuid>().is_ok(), "a connection id: {id:?}");
    assert!(
        !stdout(&connect).contains(TOKEN) && !stderr(&connect).contains(TOKEN),
        "the token is never echoed"
    );

    let status = status_json(dir.path(), &env);
    let list = status.as_array().expect("a list");
    assert_eq!(list.len(), 1, "{status:#}");
    let entry = &list[0];
    for field in [
        "id",
        "provider",
        "status",
        "records",
        "lastRun",
        "cursors",
        "lagSeconds",
    ] {
        assert!(
            entry.get(field).is_some(),
            "status --json has {field}: {entry:#}"
        );
    }
    assert_eq!(entry["id"], id.as_str());
    assert_eq!(entry["provider"], "hubspot");
    assert_eq!(entry["status"], "active");
    assert_eq!(entry["externalAccountId"], PORTAL.to_string());
    assert_eq!(entry["records"], 0);
    assert!(entry["lastRun"].is_null(), "{entry:#}");

    // A delta before any full sync is refused with the way forward.
    let delta = crmsync_async(dir.path(), &env, &["sync", &id]).await;
    assert!(!delta.status.success(), "{}", stdout(&delta));
    let message = stderr(&delta);
    assert!(message.contains("no full sync yet"), "{message}");
    assert!(message.contains("--full"), "{message}");

    let _worker = Killed(
        command(env!("CARGO_BIN_EXE_crmsync-worker"), dir.path(), &env)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn crmsync-worker"),
    );
    let started = Instant::now();
    let sync = crmsync_async(dir.path(), &env, &["sync", &id, "--full"]).await;
    succeeded(&sync);
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "the full sync took {:?}",
        started.elapsed()
    );
    assert!(stdout(&sync).contains("succeeded"), "{}", stdout(&sync));

    let status = status_json(dir.path(), &env);
    let entry = &status[0];
    assert_eq!(entry["records"], CONTACTS, "{entry:#}");
    assert_eq!(entry["lastRun"]["status"], "succeeded", "{entry:#}");
    assert_eq!(entry["lastRun"]["kind"], "full_sync", "{entry:#}");
    assert_eq!(entry["lastRun"]["created"], CONTACTS, "{entry:#}");
    assert!(entry["cursors"]["contacts"].is_object(), "{entry:#}");
    assert!(entry["lagSeconds"].is_i64(), "{entry:#}");

    // Now a delta is accepted and runs on the worker.
    let delta = crmsync_async(dir.path(), &env, &["sync", &id]).await;
    succeeded(&delta);
    let status = status_json(dir.path(), &env);
    assert_eq!(status[0]["lastRun"]["kind"], "delta_sync", "{status:#}");
    assert_eq!(status[0]["lastRun"]["status"], "succeeded", "{status:#}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhooks_register_subscribes_the_app_once_and_explains_private_apps() {
    use crate::support::{APP_ID, DEV_KEY};
    let sandbox = TestSandbox::with(SandboxConfig::for_tests()).await;
    let dir = Workdir::new();
    let target = "https://sync.example.com/webhooks/hubspot";
    let bare = [("CRMSYNC__HUBSPOT__API_BASE_URL", sandbox.base.as_str())];
    // Nothing to register yet: a clear error, not a silent success.
    let refused = crmsync_async(
        dir.path(),
        &bare,
        &["webhooks", "register", "--target-url", target],
    )
    .await;
    assert!(!refused.status.success());
    assert!(
        stderr(&refused).contains("CRMSYNC__HUBSPOT__DEVELOPER_API_KEY"),
        "{}",
        stderr(&refused)
    );
    let bad = crmsync_async(
        dir.path(),
        &bare,
        &[
            "webhooks",
            "register",
            "--target-url",
            "https://x.io/hook?a=1",
        ],
    )
    .await;
    assert!(stderr(&bad).contains("query string"), "{}", stderr(&bad));

    let app_id = APP_ID.to_string();
    let env = [
        ("CRMSYNC__HUBSPOT__API_BASE_URL", sandbox.base.as_str()),
        ("CRMSYNC__HUBSPOT__APP_ID", app_id.as_str()),
        ("CRMSYNC__HUBSPOT__DEVELOPER_API_KEY", DEV_KEY),
    ];
    let first = crmsync_async(
        dir.path(),
        &env,
        &["webhooks", "register", "--target-url", target],
    )
    .await;
    let text = stdout(succeeded(&first));
    assert!(text.contains(target), "{text}");
    assert!(
        !text.contains(DEV_KEY) && !stderr(&first).contains(DEV_KEY),
        "the key is never printed"
    );
    let subscriptions = sandbox
        .get(&format!(
            "/webhooks/v3/{APP_ID}/subscriptions?hapikey={DEV_KEY}"
        ))
        .await;
    let list = subscriptions.body["results"]
        .as_array()
        .expect("subscriptions")
        .clone();
    let wanted =
        crmsync::providers::hubspot::subscriptions::wanted(&[crmsync::domain::CrmObject::Contacts]);
    assert_eq!(list.len(), wanted.len(), "{list:?}");
    assert!(list.iter().all(|s| s["active"] == true), "{list:?}");
    assert!(list.iter().any(
        |s| s["eventType"] == "contact.propertyChange" && s["propertyName"] == "hs_lead_status"
    ));
    let settings = sandbox
        .get(&format!("/webhooks/v3/{APP_ID}/settings?hapikey={DEV_KEY}"))
        .await;
    assert_eq!(settings.body["targetUrl"], target, "{:?}", settings.body);

    // Again: nothing new. And a private-app connection gets UI instructions.
    let connect = crmsync_async(
        dir.path(),
        &env,
        &["connect", "hubspot", "--private-app-token", TOKEN],
    )
    .await;
    let connection = stdout(succeeded(&connect)).trim().to_string();
    let again = crmsync_async(
        dir.path(),
        &env,
        &["webhooks", "register", "--target-url", target],
    )
    .await;
    let text = stdout(succeeded(&again));
    assert!(
        text.contains("0 subscriptions created, 0 activated"),
        "{text}"
    );
    assert!(text.contains(&format!("connection {connection}")), "{text}");
    assert!(text.contains("webhookSecret"), "{text}");
    let after = sandbox
        .get(&format!(
            "/webhooks/v3/{APP_ID}/subscriptions?hapikey={DEV_KEY}"
        ))
        .await;
    assert_eq!(
        after.body["results"].as_array().map(Vec::len),
        Some(wanted.len())
    );
}
