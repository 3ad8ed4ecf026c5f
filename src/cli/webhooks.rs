//! `crmsync webhooks register`: points the public app's webhooks at ingress
//! and subscribes to every event the sync needs (Webhooks v3 API, developer
//! API key). Private apps cannot be managed through the API, so for each
//! private-app connection it prints what to set up in HubSpot's UI.

use crate::app;
use crate::config::Settings;
use crate::domain::{ConnectionStatus, CrmObject, ProviderKind};
use crate::providers::hubspot::HubspotClient;
use crate::providers::hubspot::subscriptions::{Wanted, wanted};
use crate::store::Credentials;
use anyhow::{Context, bail};
use std::process::ExitCode;
use std::sync::Arc;

/// Arguments of `crmsync webhooks register`.
#[derive(Debug, clap::Args)]
pub struct RegisterArgs {
    /// Where HubSpot delivers (default: CRMSYNC__INGRESS__PUBLIC_URL +
    /// `/webhooks/hubspot`). Keep it free of a query string: HubSpot's v3
    /// signature rules for one are undocumented.
    #[arg(long)]
    target_url: Option<String>,
    /// Concurrent deliveries HubSpot may make per account: 6 to 100.
    /// HubSpot documents only the minimum (more than 5); the maximum is
    /// crmsync's, so one account cannot hold more of ingress's connections.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(6..=100))]
    max_concurrent_requests: u32,
}

fn target(settings: &Settings, args: &RegisterArgs) -> anyhow::Result<String> {
    let url = match (&args.target_url, &settings.ingress.public_url) {
        (Some(url), _) => url.clone(),
        (None, Some(base)) => format!("{}/webhooks/hubspot", base.trim_end_matches('/')),
        (None, None) => bail!(
            "no target URL: pass --target-url https://…/webhooks/hubspot or set CRMSYNC__INGRESS__PUBLIC_URL"
        ),
    };
    let parsed = reqwest::Url::parse(&url).with_context(|| format!("{url:?} is not a URL"))?;
    if parsed.query().is_some() {
        bail!("the target URL must not have a query string: {url}");
    }
    if !matches!(parsed.scheme(), "https" | "http") {
        bail!("the target URL must be http(s): {url}");
    }
    Ok(url)
}

fn describe(subscriptions: &[Wanted]) -> String {
    subscriptions
        .iter()
        .map(|w| format!("      - {w}"))
        .collect::<Vec<_>>()
        .join("\n")
}

pub(super) async fn register(settings: &Settings, args: RegisterArgs) -> anyhow::Result<ExitCode> {
    let target = target(settings, &args)?;
    let store = app::open_store(settings, false).await?;
    // Private-app connections, and the objects every connection syncs.
    let mut private = Vec::new();
    let mut objects: Vec<CrmObject> = Vec::new();
    for (tenant, id) in store.connection_directory().await? {
        let row = store.connection(tenant, id).await?;
        if row.provider != ProviderKind::Hubspot || row.status == ConnectionStatus::Deleted {
            continue;
        }
        objects.extend(row.settings.objects.iter().map(|m| m.crm_object));
        if matches!(
            store.credentials(&row),
            Ok(Credentials::PrivateAppToken { .. })
        ) {
            private.push(row);
        }
    }
    if objects.is_empty() {
        objects.push(CrmObject::Contacts);
    }
    objects.sort();
    objects.dedup();
    let subscriptions = wanted(&objects);

    let hubspot = &settings.hubspot;
    match (hubspot.app_id, &hubspot.developer_api_key) {
        (Some(app_id), Some(key)) => {
            let client = HubspotClient::new(hubspot.clone(), Arc::default())?;
            let done = client
                .register_webhooks(
                    app_id,
                    key,
                    &target,
                    args.max_concurrent_requests,
                    &subscriptions,
                )
                .await
                .context("HubSpot's webhook management API refused the registration")?;
            say!("app {app_id}: webhooks go to {target}");
            say!(
                "  {} subscriptions created, {} activated, {} already in place",
                done.created.len(),
                done.activated.len(),
                done.kept
            );
            for w in done.created.iter().chain(&done.activated) {
                say!("  + {w}");
            }
            if hubspot.client_secret.is_none() {
                say!(
                    "  note: ingress verifies the app's deliveries with CRMSYNC__HUBSPOT__CLIENT_SECRET, which is not set here"
                );
            }
        }
        _ if private.is_empty() => bail!(
            "nothing to register: set CRMSYNC__HUBSPOT__APP_ID and CRMSYNC__HUBSPOT__DEVELOPER_API_KEY \
             (the developer account's API key) to register the public app's webhooks"
        ),
        _ => say!(
            "public app: skipped (set CRMSYNC__HUBSPOT__APP_ID and CRMSYNC__HUBSPOT__DEVELOPER_API_KEY to register it)"
        ),
    }
    if !private.is_empty() {
        say!();
        say!(
            "Private apps manage webhooks only in HubSpot's UI. For each connection below, open\n\
             HubSpot → Settings → Integrations → Private Apps → (the app) → Webhooks, and set:"
        );
        for row in &private {
            say!();
            say!(
                "  connection {} (portal {}, tenant {})",
                row.id,
                row.external_account_id,
                row.tenant
            );
            // The connection's own route: only its secret is tried there.
            say!(
                "    Target URL: {}/{}",
                target.trim_end_matches('/'),
                row.id
            );
            say!("    Subscriptions:\n{}", describe(&subscriptions));
            if row.has_webhook_secret() {
                say!("    Webhook secret: set");
            } else {
                say!(
                    "    Then give crmsync the app's client secret, which signs its webhooks:\n      \
                     curl -X PATCH $API/v1/connections/{} -H \"authorization: Bearer $TENANT_TOKEN\" \\\n        \
                     -H 'content-type: application/json' -d '{{\"webhookSecret\": \"<the app's client secret>\"}}'",
                    row.id
                );
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
