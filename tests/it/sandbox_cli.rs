//! `crmsync-sandbox --crm`: which CRMs one process emulates.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

#[test]
fn an_unknown_crm_is_refused_naming_the_known_ones() {
    let output = Command::new(env!("CARGO_BIN_EXE_crmsync-sandbox"))
        .args(["--crm", "hubspot,salesforse", "--listen", "127.0.0.1:0"])
        .output()
        .expect("run crmsync-sandbox");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("unknown CRM \"salesforse\"; known: hubspot"),
        "{stderr}"
    );
}

#[test]
fn crm_hubspot_serves_hubspot_with_the_other_flags_still_honoured() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_crmsync-sandbox"))
        .args([
            "--crm",
            "hubspot",
            "--listen",
            "127.0.0.1:0",
            "--portal-id",
            "777",
            "--latency-ms",
            "5",
            "--latency-jitter-ms",
            "5",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("run crmsync-sandbox");
    let mut line = String::new();
    let read = BufReader::new(child.stdout.take().expect("stdout")).read_line(&mut line);
    let _ = child.kill();
    let _ = child.wait();
    read.expect("read the start-up line");
    assert!(
        line.starts_with("crmsync-sandbox: HubSpot emulator on http://127.0.0.1:")
            && line.contains("(portal 777)"),
        "{line}"
    );
}
