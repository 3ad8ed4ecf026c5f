//! The whole emulated HubSpot: apps (developer side), accounts (portals) with
//! their data, tokens, rate budgets and counters. Shared by every handler
//! behind an `Arc`; each account has its own locks so accounts never contend.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::associations::Associations;
use super::model::{ObjectStore, ObjectType};
use crate::sandbox::faults::Faults;
use crate::sandbox::gate::CoolDown;
pub use crate::sandbox::webhook_delivery::WebhookCounters;
use crate::sandbox::window::RollingWindow;

pub use crate::sandbox::{lock, now_ms};

/// An account's request budgets (facts sheet §1.4).
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Limits {
    /// Requests per app in any 10 seconds (HubSpot free/starter private apps: 100).
    pub per_ten_seconds: u64,
    /// Requests per account per day, private apps only (250,000).
    pub daily: u64,
    /// Search requests per account per second (5).
    pub search_per_second: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            per_ten_seconds: 100,
            daily: 250_000,
            search_per_second: 5,
        }
    }
}

/// The rate budget's live state for one account.
#[derive(Debug)]
pub struct Budget {
    /// Per app id: the rolling 10-second window.
    pub windows: HashMap<u64, RollingWindow>,
    /// Search requests in the last second.
    pub search: RollingWindow,
    /// Calls counted today.
    pub daily_used: u64,
    /// The day `daily_used` counts (UTC; HubSpot uses the account's zone).
    pub day: chrono::NaiveDate,
    /// The cool-down the last 429 asked for, per budget (0: the 10-second
    /// window, 1: search): when it was answered and until when a client
    /// should send nothing more on that budget.
    pub cool_downs: [Option<CoolDown>; 2],
}

impl Budget {
    fn new() -> Self {
        Self {
            windows: HashMap::new(),
            search: RollingWindow::new(Duration::from_secs(1)),
            daily_used: 0,
            day: chrono::Utc::now().date_naive(),
            cool_downs: [None, None],
        }
    }

    /// Rolls the daily counter over at midnight.
    pub fn roll_day(&mut self) {
        let today = chrono::Utc::now().date_naive();
        if today != self.day {
            self.day = today;
            self.daily_used = 0;
        }
    }
}

pub use crate::sandbox::gate::COOL_DOWN_GRACE;

/// Per-account counters, readable through the control API for assertions.
#[derive(Debug, Default, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Counters {
    /// Requests served, by `METHOD /route`.
    pub requests: BTreeMap<String, u64>,
    /// 429 answers by policy (`TEN_SECONDLY_ROLLING`, `DAILY`, `SEARCH`, `INJECTED`).
    pub rate_limited: BTreeMap<String, u64>,
    /// 5xx and timeouts injected by the fault knobs.
    pub faults_injected: u64,
    /// Answers by status class (`2xx`, `4xx`, `429`, `5xx`).
    pub responses: BTreeMap<String, u64>,
    /// Requests that arrived during a cool-down a 429 asked for — more than
    /// [`COOL_DOWN_GRACE`] after the 429 went out (requests already in
    /// flight then are not the client's fault). A well-behaved fleet keeps
    /// this at 0.
    pub requests_in_cool_down: u64,
    /// The same by `METHOD /route`: which caller ignored the cool-down.
    pub cool_down_routes: BTreeMap<String, u64>,
    /// Property values apps changed in updates, by property.
    pub app_changed_values: BTreeMap<String, u64>,
    /// Property values apps sent in updates that the record already held,
    /// by property (see `ObjectStore::app_unchanged_values`).
    pub app_unchanged_values: BTreeMap<String, u64>,
    /// Webhook delivery figures.
    pub webhooks: WebhookCounters,
}

/// The mutable CRM data of one account.
#[derive(Debug)]
pub struct AccountData {
    /// Next record id (shared by all object types, as HubSpot ids are unique per account).
    pub next_id: u64,
    /// Contacts.
    pub contacts: ObjectStore,
    /// Leads.
    pub leads: ObjectStore,
    /// Lead ↔ contact edges: HubSpot requires every lead to have a contact.
    pub associations: Associations,
}

impl AccountData {
    /// The unchanged values apps sent, both object types together.
    pub fn app_unchanged_values(&self) -> BTreeMap<String, u64> {
        let mut all = self.contacts.app_unchanged_values.clone();
        for (name, n) in &self.leads.app_unchanged_values {
            *all.entry(name.clone()).or_default() += n;
        }
        all
    }

    /// Forgets the unchanged-value tallies (counters reset).
    pub fn reset_tallies(&mut self) {
        self.contacts.app_unchanged_values.clear();
        self.leads.app_unchanged_values.clear();
    }

    fn new(portal_id: u64) -> Self {
        Self {
            next_id: 1000 + (portal_id % 1000) * 1_000_000,
            contacts: ObjectStore::new(ObjectType::Contacts),
            leads: ObjectStore::new(ObjectType::Leads),
            associations: Associations::default(),
        }
    }

    /// The store for one object type.
    pub fn store(&mut self, object: ObjectType) -> &mut ObjectStore {
        match object {
            ObjectType::Contacts => &mut self.contacts,
            ObjectType::Leads => &mut self.leads,
        }
    }

    /// Allocates a record id.
    pub fn allocate_id(&mut self) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        id
    }
}

/// One HubSpot account (portal).
#[derive(Debug)]
pub struct Account {
    /// The portal id (`portalId`, `hub_id`).
    pub portal_id: u64,
    /// Records.
    pub data: Mutex<AccountData>,
    /// Budgets in force.
    pub limits: Mutex<Limits>,
    /// Budget use.
    pub budget: Mutex<Budget>,
    /// Counters.
    pub counters: Mutex<Counters>,
    /// Apps installed here: their webhooks fire for this account's changes.
    pub installed_apps: Mutex<BTreeSet<u64>>,
    /// Answers held back on a test's request, to make a race explicit.
    pub holds: Holds,
}

/// Holds back the answers of chosen API routes until a test releases them:
/// the request is carried out (a read reads, a write writes) and only its
/// answer waits. A test arms a hold, waits until a request is held, does
/// what must happen "meanwhile", then releases — a race made explicit,
/// not left to timing.
#[derive(Debug)]
pub struct Holds {
    /// Route (`"POST /crm/v3/objects/{object_type}/batch/read"`) → answers
    /// still to hold.
    armed: Mutex<std::collections::BTreeMap<String, u32>>,
    /// Answers waiting now.
    waiting: Mutex<u32>,
    /// Bumped by each release; a held answer waits for the next value.
    released: tokio::sync::watch::Sender<u64>,
}

impl Default for Holds {
    fn default() -> Self {
        Self {
            armed: Mutex::new(std::collections::BTreeMap::new()),
            waiting: Mutex::new(0),
            released: tokio::sync::watch::Sender::new(0),
        }
    }
}

impl Holds {
    /// Holds the next `count` answers of `route`.
    pub fn arm(&self, route: &str, count: u32) {
        *lock(&self.armed).entry(route.to_string()).or_default() += count;
    }

    /// (Route → answers still to hold, answers waiting now).
    pub fn status(&self) -> (std::collections::BTreeMap<String, u32>, u32) {
        (lock(&self.armed).clone(), *lock(&self.waiting))
    }

    /// Lets every waiting answer go and disarms the rest.
    pub fn release(&self) {
        lock(&self.armed).clear();
        self.released.send_modify(|generation| *generation += 1);
    }

    /// Waits for a release if `route` is armed (using up one hold).
    pub async fn pass(&self, route: &str) {
        {
            let mut armed = lock(&self.armed);
            match armed.get_mut(route) {
                Some(left) if *left > 0 => {
                    *left -= 1;
                    if *left == 0 {
                        armed.remove(route);
                    }
                }
                _ => return,
            }
        }
        let mut released = self.released.subscribe();
        *lock(&self.waiting) += 1;
        // A dropped sender (the sandbox going away) also lets it go.
        let _ = released.changed().await;
        *lock(&self.waiting) -= 1;
    }
}

impl Account {
    /// The counters, with the tallies kept beside the records filled in.
    pub fn counters(&self) -> Counters {
        let mut counters = lock(&self.counters).clone();
        counters.app_unchanged_values = lock(&self.data).app_unchanged_values();
        counters
    }

    /// Zeroes the counters and the tallies kept beside the records.
    pub fn reset_counters(&self) {
        *lock(&self.counters) = Counters::default();
        lock(&self.data).reset_tallies();
    }

    /// A fresh, empty account.
    pub fn new(portal_id: u64, limits: Limits) -> Self {
        Self {
            portal_id,
            data: Mutex::new(AccountData::new(portal_id)),
            limits: Mutex::new(limits),
            budget: Mutex::new(Budget::new()),
            counters: Mutex::new(Counters::default()),
            installed_apps: Mutex::new(BTreeSet::new()),
            holds: Holds::default(),
        }
    }
}

/// Webhook settings of an app (`/webhooks/v3/{appId}/settings`).
#[derive(Debug, Clone)]
pub struct WebhookSettings {
    /// Where events are POSTed.
    pub target_url: String,
    /// In-flight requests per account (HubSpot default 10).
    pub max_concurrent_requests: u64,
    /// Throttling period (`SECONDLY` or `ROLLING_MINUTE`).
    pub period: String,
    /// Epoch ms.
    pub created_ms: i64,
    /// Epoch ms.
    pub updated_ms: i64,
}

/// One webhook subscription of an app.
#[derive(Debug, Clone)]
pub struct Subscription {
    /// Id.
    pub id: u64,
    /// `contact.creation`, `object.propertyChange`, ...
    pub event_type: String,
    /// For `*.propertyChange`.
    pub property_name: Option<String>,
    /// For `object.*` (e.g. `0-136` for leads).
    pub object_type_id: Option<String>,
    /// Paused subscriptions deliver nothing.
    pub active: bool,
    /// Epoch ms.
    pub created_ms: i64,
    /// Epoch ms.
    pub updated_ms: i64,
}

impl Subscription {
    /// The `SubscriptionResponse` JSON.
    pub fn to_json(&self) -> Value {
        let mut out = json!({
            "id": self.id.to_string(),
            "eventType": self.event_type,
            "active": self.active,
            "createdAt": super::model::iso_ms(self.created_ms),
            "updatedAt": super::model::iso_ms(self.updated_ms),
        });
        if let Some(p) = &self.property_name {
            out["propertyName"] = json!(p);
        }
        if let Some(t) = &self.object_type_id {
            out["objectTypeId"] = json!(t);
        }
        out
    }
}

/// A public app registered with the developer account.
#[derive(Debug, Clone)]
pub struct App {
    /// App id (`appId`, `sourceId` of its writes).
    pub app_id: u64,
    /// OAuth client id.
    pub client_id: String,
    /// OAuth client secret; also the webhook signing key.
    pub client_secret: String,
    /// The developer account's API key (`hapikey`) that manages this app.
    pub developer_api_key: String,
    /// Webhook settings, once set.
    pub settings: Option<WebhookSettings>,
    /// Webhook subscriptions.
    pub subscriptions: Vec<Subscription>,
    /// Next subscription id.
    pub next_subscription_id: u64,
}

/// How a token authenticates.
#[derive(Debug, Clone, PartialEq)]
pub enum TokenKind {
    /// `pat-...`: never expires.
    PrivateApp,
    /// An OAuth access token.
    OAuth {
        /// When it stops working.
        expires_at: Instant,
        /// Epoch ms of issue.
        issued_ms: i64,
        /// The installing user.
        user_id: u64,
    },
}

/// What a bearer token stands for.
#[derive(Debug, Clone)]
pub struct TokenInfo {
    /// The account it opens.
    pub portal_id: u64,
    /// The app it belongs to (its writes are attributed to this app).
    pub app_id: u64,
    /// Scopes granted.
    pub scopes: Vec<String>,
    /// Kind and lifetime.
    pub kind: TokenKind,
}

/// An OAuth refresh token's grant.
#[derive(Debug, Clone)]
pub struct RefreshGrant {
    /// Account.
    pub portal_id: u64,
    /// App.
    pub app_id: u64,
    /// Installing user.
    pub user_id: u64,
    /// Scopes.
    pub scopes: Vec<String>,
}

/// An authorization code waiting to be exchanged.
#[derive(Debug, Clone)]
pub struct AuthCode {
    /// The grant it will produce.
    pub grant: RefreshGrant,
    /// Must match the exchange's `redirect_uri`.
    pub redirect_uri: String,
}

/// Settings the control API may change at run time.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RuntimeSettings {
    /// Delay before a write is visible to search, ms.
    pub index_lag_ms: u64,
    /// OAuth access-token lifetime, s.
    pub token_ttl_secs: u64,
}

/// Every token the sandbox issued.
#[derive(Debug, Default)]
pub struct Tokens {
    /// Bearer tokens.
    pub access: HashMap<String, TokenInfo>,
    /// Refresh tokens.
    pub refresh: HashMap<String, RefreshGrant>,
    /// Authorization codes.
    pub codes: HashMap<String, AuthCode>,
}

/// The emulator's shared state.
#[derive(Debug)]
pub struct HubSpotState {
    /// Accounts by portal id.
    pub accounts: RwLock<BTreeMap<u64, Arc<Account>>>,
    /// Apps by app id.
    pub apps: Mutex<BTreeMap<u64, App>>,
    /// Tokens.
    pub tokens: Mutex<Tokens>,
    /// Run-time settings.
    pub runtime: Mutex<RuntimeSettings>,
    /// Fault knobs.
    pub faults: Faults,
    /// Budgets given to accounts created later.
    pub default_limits: Mutex<Limits>,
    /// The next webhook `eventId` (never reset, so ids stay unique across resets).
    pub next_event_id: std::sync::atomic::AtomicU64,
}

impl HubSpotState {
    /// The account with this portal id.
    pub fn account(&self, portal_id: u64) -> Option<Arc<Account>> {
        self.accounts
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&portal_id)
            .cloned()
    }

    /// Creates an account, or returns the existing one.
    pub fn ensure_account(&self, portal_id: u64) -> Arc<Account> {
        let limits = *lock(&self.default_limits);
        let mut accounts = self.accounts.write().unwrap_or_else(|p| p.into_inner());
        accounts
            .entry(portal_id)
            .or_insert_with(|| Arc::new(Account::new(portal_id, limits)))
            .clone()
    }

    /// The search index lag now in force.
    pub fn index_lag(&self) -> Duration {
        Duration::from_millis(lock(&self.runtime).index_lag_ms)
    }

    /// The token's grant, if it is known (expired or not).
    pub fn token(&self, token: &str) -> Option<TokenInfo> {
        lock(&self.tokens).access.get(token).cloned()
    }
}
