//! An emulated HubSpot: the CRM v3 objects API for contacts and leads,
//! properties, OAuth and private-app auth, rate limits, Webhooks v3 with
//! signed delivery and retries, a lagging search index, fault knobs and a
//! control API. Built from HubSpot's OpenAPI documents and
//! `shared/design/CRM_API_FACTS.md` §1; where they are silent the code says
//! which way it went.
//!
//! # Layout
//! - `state` — apps, accounts, tokens, budgets, counters
//! - `model` — records, properties, merges, on the shared history, unique
//!   index and search view (`crate::sandbox::{history, unique_index, search_lag}`)
//! - `gate` — auth, rate limits, headers and 429 bodies in front of the CRM
//!   API, on the shared `crate::sandbox::gate`
//! - `objects`, `search`, `properties`, `oauth` — HubSpot's endpoints
//! - `associations` — lead ↔ contact edges and the v4 batch read
//! - `webhooks` — management API, events and their signed envelope for the
//!   shared `crate::sandbox::webhook_delivery`
//! - `signature` — v1/v2/v3 signing
//! - `control` — `/_sandbox/...`; `seed` — deterministic data

pub mod associations;
pub mod control;
pub mod error;
pub mod gate;
pub mod model;
pub mod oauth;
pub mod objects;
pub mod properties;
pub mod search;
pub mod seed;
pub mod signature;
pub mod state;
pub mod webhooks;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use axum::Router;
use axum::response::IntoResponse;
use axum::routing::{get, patch, post};

use crate::sandbox::faults::{FaultSettings, Faults};
use error::ApiError;
use state::{App, HubSpotState, Limits, RuntimeSettings, Tokens, lock};
use webhooks::WebhookSender;

/// The largest control-API body: above axum's 2 MB default, so a test can
/// play a careless user pasting megabytes into a field (HubSpot's own
/// limits on a value are not emulated: what crmsync does with one is).
const CONTROL_MAX_BODY_BYTES: usize = 64 * 1024 * 1024;

/// Everything the sandbox starts with; the `crmsync-sandbox` flags fill it.
#[derive(Debug, Clone, clap::Args)]
pub struct SandboxConfig {
    /// The start-up account's portal id (`portalId`, `hub_id`).
    #[arg(long, default_value_t = 62515)]
    pub portal_id: u64,
    /// The public app's id: `appId` in webhooks, `sourceId` of its writes.
    #[arg(long, default_value_t = 54321)]
    pub app_id: u64,
    /// The app's OAuth client id.
    #[arg(long, default_value = "sandbox-client-id")]
    pub client_id: String,
    /// The app's OAuth client secret, also the webhook signing key.
    #[arg(long, default_value = "sandbox-client-secret")]
    pub client_secret: String,
    /// A private-app token for the start-up account (never expires).
    #[arg(long, default_value = "pat-na1-00000000-0000-4000-8000-000000000000")]
    pub private_app_token: String,
    /// The developer API key (`hapikey`) for the Webhooks v3 management API.
    #[arg(long, default_value = "sandbox-developer-key")]
    pub developer_api_key: String,
    /// Contacts to create at start-up (deterministic from --seed).
    #[arg(long, default_value_t = 0)]
    pub seed_contacts: u64,
    /// Leads to create at start-up.
    #[arg(long, default_value_t = 0)]
    pub seed_leads: u64,
    /// Seed for generated data and fault dice.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// OAuth access-token lifetime, seconds (HubSpot: 1800).
    #[arg(long, default_value_t = 1800)]
    pub token_ttl_secs: u64,
    /// Delay before a write shows in search results, milliseconds.
    #[arg(long, default_value_t = 2000)]
    pub index_lag_ms: u64,
    /// Requests per app per rolling 10 seconds.
    #[arg(long = "rate-limit-per-10s", default_value_t = 100)]
    pub per_ten_seconds: u64,
    /// Requests per account per day (private-app tokens).
    #[arg(long, default_value_t = 250_000)]
    pub daily_limit: u64,
    /// Search requests per account per second.
    #[arg(long, default_value_t = 5)]
    pub search_limit_per_sec: u64,
    /// Sets the app's webhook target and subscribes it to every contact and lead event.
    #[arg(long)]
    pub webhook_target: Option<String>,
    /// Webhook request timeout, milliseconds (HubSpot: 5000).
    #[arg(long, default_value_t = 5000)]
    pub webhook_timeout_ms: u64,
    /// Webhook retries after the first attempt (HubSpot: 10).
    #[arg(long, default_value_t = 10)]
    pub webhook_max_retries: u32,
    /// First webhook retry delay, milliseconds; doubles per retry.
    #[arg(long, default_value_t = 1000)]
    pub webhook_retry_base_ms: u64,
    /// Longest webhook retry delay, milliseconds.
    #[arg(long, default_value_t = 60_000)]
    pub webhook_retry_max_ms: u64,
    /// In-flight webhook requests per account for --webhook-target (HubSpot default 10).
    #[arg(long, default_value_t = 10)]
    pub webhook_max_concurrent: u64,
    /// Share of API requests answered 503.
    #[arg(long, default_value_t = 0.0)]
    pub error_rate: f64,
    /// Share of API requests answered 429 regardless of budget.
    #[arg(long, default_value_t = 0.0)]
    pub rate_limit_rate: f64,
    /// Share of API requests that hang (client timeout).
    #[arg(long, default_value_t = 0.0)]
    pub timeout_rate: f64,
    /// Latency added to every API call (not to /_sandbox), milliseconds.
    #[arg(long, default_value_t = 0)]
    pub latency_ms: u64,
    /// Up to this many milliseconds more per call, uniformly drawn from the
    /// seeded die (so a call never answers before --latency-ms).
    #[arg(long, default_value_t = 0)]
    pub latency_jitter_ms: u64,
    /// Share of webhook batches delivered twice.
    #[arg(long, default_value_t = 0.0)]
    pub webhook_duplicate_rate: f64,
    /// Share of webhook batches shuffled and delayed.
    #[arg(long, default_value_t = 0.0)]
    pub webhook_reorder_rate: f64,
    /// Share of webhook batches never sent.
    #[arg(long, default_value_t = 0.0)]
    pub webhook_drop_rate: f64,
}

impl Default for SandboxConfig {
    fn default() -> Self {
        #[derive(clap::Parser)]
        struct Wrapper {
            #[command(flatten)]
            config: SandboxConfig,
        }
        <Wrapper as clap::Parser>::parse_from(["sandbox"]).config
    }
}

impl SandboxConfig {
    fn limits(&self) -> Limits {
        Limits {
            per_ten_seconds: self.per_ten_seconds,
            daily: self.daily_limit,
            search_per_second: self.search_limit_per_sec,
        }
    }

    fn faults(&self) -> FaultSettings {
        FaultSettings {
            error_rate: self.error_rate,
            rate_limit_rate: self.rate_limit_rate,
            timeout_rate: self.timeout_rate,
            latency_ms: self.latency_ms,
            latency_jitter_ms: self.latency_jitter_ms,
            webhook_duplicate_rate: self.webhook_duplicate_rate,
            webhook_reorder_rate: self.webhook_reorder_rate,
            webhook_drop_rate: self.webhook_drop_rate,
        }
    }

    /// A configuration for tests: limits too high to matter, no index lag,
    /// fast webhook retries.
    pub fn for_tests() -> Self {
        Self {
            per_ten_seconds: 1_000_000,
            daily_limit: 100_000_000,
            search_limit_per_sec: 1_000_000,
            index_lag_ms: 0,
            // Quick retries, spread over ~5 s: a suite saturating the CPU
            // can keep an ingress busy for seconds, and HubSpot itself
            // retries for a day.
            webhook_retry_base_ms: 20,
            webhook_retry_max_ms: 1000,
            ..Self::default()
        }
    }
}

/// Property names the `--webhook-target` shortcut subscribes to.
const SUBSCRIBED_CONTACT_PROPERTIES: &[&str] = &[
    "email",
    "firstname",
    "lastname",
    "company",
    "jobtitle",
    "phone",
    "hs_lead_status",
];
const SUBSCRIBED_LEAD_PROPERTIES: &[&str] = &[
    "hs_lead_name",
    "hs_lead_type",
    "hs_lead_label",
    "hs_pipeline_stage",
];

/// The running emulator: cheap to clone, shared by every handler.
#[derive(Debug, Clone)]
pub struct Sandbox {
    /// Data, tokens, budgets.
    pub state: Arc<HubSpotState>,
    /// Webhook sender.
    pub webhooks: Arc<WebhookSender>,
    /// Start-up configuration.
    pub config: Arc<SandboxConfig>,
}

impl Sandbox {
    /// Builds the emulator in its start-up state. Must run inside a Tokio
    /// runtime (webhook delivery spawns tasks).
    pub fn new(config: SandboxConfig) -> Result<Self, String> {
        let faults = config.faults();
        faults.validate()?;
        let tuning = webhooks::tuning(
            Duration::from_millis(config.webhook_timeout_ms),
            config.webhook_max_retries,
            Duration::from_millis(config.webhook_retry_base_ms),
            Duration::from_millis(config.webhook_retry_max_ms),
        );
        let state = HubSpotState {
            accounts: RwLock::new(BTreeMap::new()),
            apps: Mutex::new(BTreeMap::new()),
            tokens: Mutex::new(Tokens::default()),
            runtime: Mutex::new(RuntimeSettings {
                index_lag_ms: config.index_lag_ms,
                token_ttl_secs: config.token_ttl_secs,
            }),
            faults: Faults::new(faults, config.seed),
            default_limits: Mutex::new(config.limits()),
            next_event_id: std::sync::atomic::AtomicU64::new(1),
        };
        let sandbox = Self {
            state: Arc::new(state),
            webhooks: Arc::new(WebhookSender::new(tuning, webhooks::USER_AGENT)),
            config: Arc::new(config),
        };
        sandbox.reset()?;
        Ok(sandbox)
    }

    /// Puts the emulator back in its start-up state.
    pub fn reset(&self) -> Result<(), String> {
        let config = &self.config;
        self.webhooks.reset_queues();
        *self
            .state
            .accounts
            .write()
            .unwrap_or_else(|p| p.into_inner()) = BTreeMap::new();
        *lock(&self.state.tokens) = Tokens::default();
        *lock(&self.state.runtime) = RuntimeSettings {
            index_lag_ms: config.index_lag_ms,
            token_ttl_secs: config.token_ttl_secs,
        };
        *lock(&self.state.default_limits) = config.limits();
        self.state.faults.set(config.faults());
        let mut apps = BTreeMap::new();
        apps.insert(
            config.app_id,
            App {
                app_id: config.app_id,
                client_id: config.client_id.clone(),
                client_secret: config.client_secret.clone(),
                developer_api_key: config.developer_api_key.clone(),
                settings: None,
                subscriptions: Vec::new(),
                next_subscription_id: 1,
            },
        );
        *lock(&self.state.apps) = apps;
        let account = self.state.ensure_account(config.portal_id);
        self.install_app(config.portal_id, config.app_id);
        control::add_private_app_token(self, config.portal_id, config.private_app_token.clone());
        if config.seed_contacts > 0 || config.seed_leads > 0 {
            seed::seed(
                &account,
                config.seed_contacts,
                config.seed_leads,
                config.seed,
            );
        }
        if let Some(target) = &config.webhook_target {
            self.subscribe_everything(target)
                .map_err(|e| format!("--webhook-target: {}", e.body["message"]))?;
        }
        Ok(())
    }

    /// Points the start-up app's webhooks at `target` and subscribes it to
    /// every contact event and every lead `object.*` event (active).
    pub fn subscribe_everything(&self, target: &str) -> Result<(), ApiError> {
        let app_id = self.config.app_id;
        webhooks::put_settings_for(
            self,
            app_id,
            target,
            self.config.webhook_max_concurrent.max(6),
            "SECONDLY",
        )?;
        let exists = |e: &ApiError| e.status == axum::http::StatusCode::CONFLICT;
        let add = |event: &str, property: Option<&str>, object: Option<&str>| {
            match webhooks::add_subscription(
                self,
                app_id,
                event,
                property.map(String::from),
                object.map(String::from),
                true,
            ) {
                Ok(_) => Ok(()),
                Err(e) if exists(&e) => Ok(()),
                Err(e) => Err(e),
            }
        };
        for event in [
            "contact.creation",
            "contact.deletion",
            "contact.merge",
            "contact.restore",
            "contact.privacyDeletion",
        ] {
            add(event, None, None)?;
        }
        for property in SUBSCRIBED_CONTACT_PROPERTIES {
            add("contact.propertyChange", Some(property), None)?;
        }
        for event in ["object.creation", "object.deletion", "object.restore"] {
            add(event, None, Some("0-136"))?;
        }
        for property in SUBSCRIBED_LEAD_PROPERTIES {
            add("object.propertyChange", Some(property), Some("0-136"))?;
        }
        Ok(())
    }

    /// The HTTP application.
    pub fn router(&self) -> Router {
        let crm = Router::new()
            .route(
                "/crm/v3/objects/{object_type}",
                get(objects::list).post(objects::create),
            )
            .route("/crm/v3/objects/{object_type}/search", post(search::search))
            .route("/crm/v3/objects/{object_type}/merge", post(objects::merge))
            .route(
                "/crm/v3/objects/{object_type}/gdpr-delete",
                post(objects::gdpr_delete),
            )
            .route(
                "/crm/v3/objects/{object_type}/batch/read",
                post(objects::batch_read),
            )
            .route(
                "/crm/v3/objects/{object_type}/batch/create",
                post(objects::batch_create),
            )
            .route(
                "/crm/v3/objects/{object_type}/batch/update",
                post(objects::batch_update),
            )
            .route(
                "/crm/v3/objects/{object_type}/batch/upsert",
                post(objects::batch_upsert),
            )
            .route(
                "/crm/v3/objects/{object_type}/batch/archive",
                post(objects::batch_archive),
            )
            .route(
                "/crm/v3/objects/{object_type}/{object_id}",
                get(objects::get_one)
                    .patch(objects::update)
                    .delete(objects::archive),
            )
            .route(
                "/crm/v3/properties/{object_type}",
                get(properties::list).post(properties::create),
            )
            .route(
                "/crm/v3/properties/{object_type}/{property_name}",
                get(properties::get_one).patch(properties::update),
            )
            .route(
                "/crm/v4/associations/{from_object_type}/{to_object_type}/batch/read",
                post(associations::batch_read),
            )
            .route("/account-info/v3/details", get(oauth::account_details))
            .route(
                "/account-info/v3/api-usage/daily/private-apps",
                get(oauth::daily_usage),
            )
            .route_layer(axum::middleware::from_fn_with_state(
                self.clone(),
                gate::gate,
            ));
        let open = Router::new()
            .route("/oauth/v1/token", post(oauth::token))
            .route("/oauth/v3/token", post(oauth::token))
            .route("/oauth/authorize", get(oauth::authorize_page))
            .route(
                "/oauth/v1/access-tokens/{token}",
                get(oauth::access_token_info),
            )
            .route(
                "/oauth/v1/refresh-tokens/{token}",
                get(oauth::refresh_token_info).delete(oauth::delete_refresh_token),
            )
            .route("/oauth/v3/token/introspect", post(oauth::introspect))
            .route("/oauth/v3/token/revoke", post(oauth::revoke))
            .route(
                "/webhooks/v3/{app_id}/settings",
                get(webhooks::get_settings)
                    .put(webhooks::put_settings)
                    .delete(webhooks::delete_settings),
            )
            .route(
                "/webhooks/v3/{app_id}/subscriptions",
                get(webhooks::list_subscriptions).post(webhooks::create_subscription),
            )
            .route(
                "/webhooks/v3/{app_id}/subscriptions/batch/update",
                post(webhooks::batch_update_subscriptions),
            )
            .route(
                "/webhooks/v3/{app_id}/subscriptions/{subscription_id}",
                get(webhooks::get_subscription)
                    .patch(webhooks::patch_subscription)
                    .delete(webhooks::delete_subscription),
            )
            .route_layer(axum::middleware::from_fn_with_state(
                self.clone(),
                gate::latency_only,
            ));
        let control = Router::new()
            .route("/_sandbox/health", get(control::health))
            .route("/_sandbox/reset", post(control::reset))
            .route(
                "/_sandbox/faults",
                get(control::get_faults).put(control::put_faults),
            )
            .route(
                "/_sandbox/settings",
                get(control::get_settings).put(control::put_settings),
            )
            .route("/_sandbox/oauth/codes", post(control::create_code))
            .route("/_sandbox/oauth/expire", post(control::expire_token))
            .route(
                "/_sandbox/accounts",
                get(control::list_accounts).post(control::create_account),
            )
            .route("/_sandbox/accounts/{portal_id}", get(control::get_account))
            .route(
                "/_sandbox/accounts/{portal_id}/seed",
                post(control::seed_account),
            )
            .route(
                "/_sandbox/accounts/{portal_id}/counters",
                get(control::get_counters).delete(control::reset_counters),
            )
            .route(
                "/_sandbox/accounts/{portal_id}/holds",
                get(control::get_holds).post(control::arm_hold),
            )
            .route(
                "/_sandbox/accounts/{portal_id}/holds/release",
                post(control::release_holds),
            )
            .route(
                "/_sandbox/accounts/{portal_id}/silent-update",
                post(control::silent_update),
            )
            .route(
                "/_sandbox/accounts/{portal_id}/limits",
                get(control::get_limits).put(control::put_limits),
            )
            .route(
                "/_sandbox/accounts/{portal_id}/objects/{object_type}",
                post(control::user_create),
            )
            .route(
                "/_sandbox/accounts/{portal_id}/objects/{object_type}/merge",
                post(control::user_merge),
            )
            .route(
                "/_sandbox/accounts/{portal_id}/objects/{object_type}/bulk-update",
                post(control::user_bulk_update),
            )
            .route(
                "/_sandbox/accounts/{portal_id}/objects/{object_type}/{object_id}",
                patch(control::user_update).delete(control::user_archive),
            )
            .route(
                "/_sandbox/accounts/{portal_id}/objects/{object_type}/{object_id}/restore",
                post(control::user_restore),
            )
            .layer(axum::extract::DefaultBodyLimit::max(CONTROL_MAX_BODY_BYTES));
        crm.merge(open)
            .merge(control)
            .fallback(not_found)
            .with_state(self.clone())
    }

    /// Serves on `addr` until the returned task is aborted; returns the bound
    /// address (so `127.0.0.1:0` picks a free port).
    pub async fn spawn(
        self,
        addr: SocketAddr,
    ) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let bound = listener.local_addr()?;
        let app = self.router();
        let task = tokio::spawn(async move {
            if let Err(err) = axum::serve(listener, app).await {
                tracing::error!(error = %err, "sandbox server stopped");
            }
        });
        Ok((bound, task))
    }

    /// The live (not archived) records of one object type, id → current
    /// values, read in-process: no request, so no fault and no count.
    pub fn live_records(
        &self,
        portal_id: u64,
        object: model::ObjectType,
    ) -> std::collections::BTreeMap<u64, std::collections::BTreeMap<String, String>> {
        self.state
            .account(portal_id)
            .map(|a| {
                lock(&a.data)
                    .store(object)
                    .objects
                    .values()
                    .filter(|o| o.archived_ms.is_none())
                    .map(|o| (o.id, o.values.clone()))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Zeroes an account's counters (in-process).
    pub fn reset_counters(&self, portal_id: u64) {
        if let Some(a) = self.state.account(portal_id) {
            a.reset_counters();
        }
    }

    /// Per-account counters, for in-process assertions.
    pub fn counters(&self, portal_id: u64) -> Option<state::Counters> {
        self.state.account(portal_id).map(|a| a.counters())
    }
}

async fn not_found(uri: axum::http::Uri) -> axum::response::Response {
    ApiError::new(
        axum::http::StatusCode::NOT_FOUND,
        "OBJECT_NOT_FOUND",
        format!("No HubSpot API at {}", uri.path()),
    )
    .into_response()
}
