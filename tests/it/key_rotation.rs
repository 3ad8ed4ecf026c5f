//! `crmsync secrets rotate`: every credential and webhook secret moves to the
//! new key while the old one still opens them; afterwards the new key alone
//! opens everything, the old one alone nothing, and neither key nor
//! credential ever appears in the command's output.

use crate::fleet::{Fleet, on_both_backends};
use crate::support::TOKEN;
use crmsync::secrets::EncryptionKey;
use crmsync::store::WebhookCredential;
use secrecy::{ExposeSecret, SecretString};
use serde_json::Value;
use std::process::Output;

const WEBHOOK_SECRET: &str = "whsec-rotation-canary-5c1d";

/// `crmsync secrets rotate --json` on the fleet's store with a key ring.
fn rotate(fleet: &Fleet, current: &SecretString, previous: Option<&SecretString>) -> Output {
    let mut command = fleet.command(env!("CARGO_BIN_EXE_crmsync"));
    command.env("CRMSYNC__SECRETS__ENCRYPTION_KEY", current.expose_secret());
    if let Some(previous) = previous {
        command.env(
            "CRMSYNC__SECRETS__PREVIOUS_ENCRYPTION_KEYS",
            previous.expose_secret(),
        );
    }
    command
        .args(["secrets", "rotate", "--json"])
        .output()
        .expect("run crmsync")
}

fn totals(output: &Output) -> Value {
    serde_json::from_slice(&output.stdout).unwrap_or_else(|e| {
        panic!(
            "{e}: {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        )
    })
}

/// The fleet's connection as a store opened with `current` (+ `previous`)
/// reads it: (token, webhook secret), or the error.
async fn open_with(
    fleet: &Fleet,
    current: &SecretString,
    previous: Option<&SecretString>,
) -> Result<(String, String), String> {
    let mut settings = fleet.settings.clone();
    settings.secrets.encryption_key = Some(current.clone());
    settings.secrets.previous_encryption_keys = previous.cloned();
    let store = crmsync::app::open_store(&settings, false)
        .await
        .map_err(|e| e.to_string())?;
    let row = store
        .connection(fleet.tenant, fleet.connection)
        .await
        .map_err(|e| e.to_string())?;
    let opened = store
        .credentials(&row)
        .map_err(|e| e.to_string())
        .and_then(|c| {
            let token = c
                .bearer()
                .map(|t| t.expose_secret().to_string())
                .unwrap_or_default();
            let secret = match store.webhook_credential(&row).map_err(|e| e.to_string())? {
                Some(WebhookCredential::HmacSecret(s)) => Some(s.expose_secret().to_string()),
                _ => None,
            };
            Ok((token, secret.unwrap_or_default()))
        });
    store.close().await;
    opened
}

on_both_backends! {
    async fn rotating_the_key_re_encrypts_every_secret_and_the_old_key_can_then_go(backend) {
        let fleet = Fleet::start(backend, 0).await;
        fleet
            .store
            .set_webhook_secret(fleet.tenant, fleet.connection, Some(&SecretString::from(WEBHOOK_SECRET)))
            .await
            .expect("webhook secret");
        let old = fleet.settings.secrets.encryption_key.clone().expect("key");
        let new = EncryptionKey::generate().expect("key");
        let expected = Ok((TOKEN.to_string(), WEBHOOK_SECRET.to_string()));
        // The embedded store keeps its key in a file beside it.
        let key_file = fleet
            .settings
            .database
            .url
            .strip_prefix("sqlite://")
            .map(|db| std::path::PathBuf::from(db).with_extension("key"));
        if let Some(file) = &key_file {
            std::fs::write(file, old.expose_secret()).expect("key file");
        }

        let output = rotate(&fleet, &new, Some(&old));
        assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
        let done = totals(&output);
        assert_eq!((done["connections"].as_u64(), done["resealed"].as_u64(), done["current"].as_u64()), (Some(1), Some(2), Some(0)), "{done}");
        let printed = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
        for secret in [TOKEN, WEBHOOK_SECRET, old.expose_secret(), new.expose_secret()] {
            assert!(!printed.contains(secret), "the output shows a secret");
        }

        assert_eq!(open_with(&fleet, &new, None).await, expected, "the new key alone opens everything");
        if let Some(file) = &key_file {
            // The next start without the environment reads the new key.
            assert_eq!(std::fs::read_to_string(file).expect("key file"), new.expose_secret());
            let aside = file.with_extension("key.old");
            assert_eq!(std::fs::read_to_string(aside).expect("old key file"), old.expose_secret());
        }
        assert!(open_with(&fleet, &old, None).await.is_err(), "the old key alone opens nothing");

        // Again: nothing left to do.
        let again = totals(&rotate(&fleet, &new, Some(&old)));
        assert_eq!((again["resealed"].as_u64(), again["current"].as_u64()), (Some(0), Some(2)), "{again}");

        // A ring without the key that sealed them: refused, the connection named.
        let stranger = EncryptionKey::generate().expect("key");
        let lost = rotate(&fleet, &stranger, Some(&old));
        assert_eq!(lost.status.code(), Some(1));
        assert_eq!(totals(&lost)["undecryptable"][0], fleet.connection.to_string());
        assert_eq!(open_with(&fleet, &new, None).await, expected, "a failed rotation changes nothing");
        fleet.finish().await;
    }
}
