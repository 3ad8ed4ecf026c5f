//! CRM adapters behind one contract. Each adapter turns HTTP into
//! [`ProviderError`] at its boundary and takes its base URL from
//! configuration, so every provider can be pointed at a sandbox; budgets
//! pace calls per account.
//!
//! The core reaches a CRM only through [`Provider`], a dispatch over
//! [`ProviderKind`]: adding a CRM adds one arm to it, and the compiler lists
//! every `match` to update. Types the core and adapters exchange are in
//! [`types`]; what differs in kind between CRMs is declared in
//! [`Capabilities`], which the core branches on.

pub mod error;
pub mod hubspot;
pub mod intake;
pub mod throttle;
pub mod types;

pub use error::ProviderError;
pub use types::{
    Capabilities, ChangePage, FeedLimits, FeedPosition, FeedRead, Page, Partition, RefreshedTokens,
    ReservedRead, Update, Upserted,
};

use crate::config::Settings;
use crate::domain::{CrmId, CrmObject, ProviderKind, RecordFields};
use crate::ratelimit::Budgets;
use crate::sync::Incoming;
use chrono::{DateTime, Utc};
use hubspot::HubspotClient;
use secrecy::SecretString;
use serde_json::{Map, Value};
use std::sync::Arc;

/// One client per CRM for a process (each shared by all connections).
#[derive(Debug, Clone)]
pub struct Providers {
    /// HubSpot.
    pub hubspot: HubspotClient,
}

impl Providers {
    /// Every adapter, from settings; `budgets` is shared by all of them.
    pub fn new(settings: &Settings, budgets: Arc<Budgets>) -> Result<Self, ProviderError> {
        Ok(Self {
            hubspot: HubspotClient::new(settings.hubspot.clone(), budgets)?,
        })
    }

    /// The adapter for `kind`.
    pub fn get(&self, kind: ProviderKind) -> Provider {
        match kind {
            ProviderKind::Hubspot => Provider::Hubspot(self.hubspot.clone()),
        }
    }
}

/// A new connection's settings: the objects each CRM syncs by default and
/// the strategy that suits its change times (`ARCHITECTURE.md`).
pub fn default_settings(kind: ProviderKind) -> crate::store::ConnectionSettings {
    match kind {
        ProviderKind::Hubspot => hubspot::default_settings(),
    }
}

/// The budget an operator watches for an account (the one most of its
/// calls draw on): its name among the fleet's budgets, its window, and
/// the limits it is configured to, as the api shows them.
#[derive(Debug, Clone)]
pub struct WatchedBudget {
    /// The budget's name (its key in Redis, under the namespace).
    pub name: String,
    /// Its window.
    pub window: std::time::Duration,
    /// Its configured limits, by the api's field names.
    pub limits: serde_json::Map<String, serde_json::Value>,
}

/// The budget an operator watches for `account` of a CRM of `kind`.
pub fn watched_budget(kind: ProviderKind, settings: &Settings, account: &str) -> WatchedBudget {
    match kind {
        ProviderKind::Hubspot => hubspot::client::watched_budget(&settings.hubspot, account),
    }
}

/// One CRM's adapter; every operation the core needs, dispatched.
#[derive(Debug, Clone)]
pub enum Provider {
    /// HubSpot CRM v3.
    Hubspot(HubspotClient),
}

impl Provider {
    /// Which CRM.
    pub fn kind(&self) -> ProviderKind {
        match self {
            Provider::Hubspot(_) => ProviderKind::Hubspot,
        }
    }

    /// How this CRM differs in kind.
    pub fn capabilities(&self) -> Capabilities {
        match self {
            Provider::Hubspot(_) => hubspot::CAPABILITIES,
        }
    }

    /// The same adapter for background work (full-sync pages, sweeps): its
    /// calls take only free budget slots, so interactive work goes first.
    pub fn background(&self) -> Self {
        match self {
            Provider::Hubspot(c) => Provider::Hubspot(c.background()),
        }
    }

    /// The account a token belongs to, as the connection stores it; with
    /// `account`, asked within that account's budget (a health check).
    pub async fn identify(
        &self,
        account: Option<&str>,
        token: &SecretString,
    ) -> Result<String, ProviderError> {
        match self {
            Provider::Hubspot(c) => match account {
                Some(portal) => c.check_account(portal, token).await,
                None => c.portal_id(token).await,
            }
            .map(|portal| portal.to_string()),
        }
    }

    /// New tokens for a refresh token.
    pub async fn refresh(
        &self,
        refresh_token: &SecretString,
    ) -> Result<RefreshedTokens, ProviderError> {
        match self {
            Provider::Hubspot(c) => c.refresh(refresh_token).await,
        }
    }

    /// Why OAuth connect cannot start (the app's client id or secret is not
    /// configured: the message names the keys), or `Ok`.
    pub fn oauth_ready(&self) -> Result<(), String> {
        match self {
            Provider::Hubspot(c) => match (c.oauth_client_id(), c.has_client_secret()) {
                (Some(_), true) => Ok(()),
                _ => Err(
                    "OAuth connect to HubSpot needs the app's CRMSYNC__HUBSPOT__CLIENT_ID \
                          and CRMSYNC__HUBSPOT__CLIENT_SECRET"
                        .into(),
                ),
            },
        }
    }

    /// Whether the CRM's consent page takes a PKCE challenge.
    pub fn uses_pkce(&self) -> bool {
        match self {
            Provider::Hubspot(_) => hubspot::oauth::PKCE,
        }
    }

    /// The CRM's consent page for crmsync's app, sending the user back to
    /// `callback` with `state` (and the PKCE `challenge`, if it takes one).
    pub fn authorize_url(&self, callback: &str, state: &str, challenge: Option<&str>) -> String {
        match self {
            Provider::Hubspot(c) => hubspot::oauth::authorize_url(
                c.oauth_authorize_base(),
                c.oauth_client_id().unwrap_or_default(),
                callback,
                state,
                challenge,
            ),
        }
    }

    /// Exchanges an authorization code: the account it is for, as the
    /// connection stores it, and the tokens.
    pub async fn exchange_code(
        &self,
        code: &str,
        callback: &str,
        verifier: Option<&str>,
    ) -> Result<(String, RefreshedTokens), ProviderError> {
        match self {
            Provider::Hubspot(c) => {
                let got = c.exchange_code(code, callback, verifier).await?;
                Ok((
                    got.portal_id.to_string(),
                    RefreshedTokens {
                        access_token: got.access_token,
                        refresh_token: got.refresh_token,
                        expires_in: got.expires_in,
                    },
                ))
            }
        }
    }

    /// A new access token for server-to-server client credentials (at the
    /// account's `instance`, where the CRM has them).
    pub async fn mint(
        &self,
        _instance: Option<&str>,
        _client_id: &str,
        _client_secret: &SecretString,
    ) -> Result<RefreshedTokens, ProviderError> {
        match self {
            // Refused as a credential error, so the connection asks to be
            // connected again, with a kind HubSpot takes.
            Provider::Hubspot(_) => Err(ProviderError::Unauthorized(
                "HubSpot has no client-credentials grant; connect with OAuth or a private-app token"
                    .into(),
            )),
        }
    }

    /// One page of every record of `object`, from `after` (`limit` clamped
    /// to the CRM's list page).
    pub async fn list_page(
        &self,
        account: &str,
        token: &SecretString,
        object: CrmObject,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Page, ProviderError> {
        let limit = limit.clamp(1, self.capabilities().list_page_max);
        match self {
            Provider::Hubspot(c) => c.list_page(account, token, object, after, limit).await,
        }
    }

    /// How a full sync of `object` splits into partitions listed side by
    /// side: at most `wanted`, none smaller than about one `page`; one
    /// [`Partition::Whole`] where the CRM cannot list by id range.
    pub async fn partitions(
        &self,
        account: &str,
        token: &SecretString,
        object: CrmObject,
        wanted: u32,
        page: u32,
    ) -> Result<Vec<Partition>, ProviderError> {
        match self {
            Provider::Hubspot(c) => c.partitions(account, token, object, wanted, page).await,
        }
    }

    /// One page of `partition` of `object`, from `after` (a token an
    /// earlier page of the same partition returned); `limit` is clamped to
    /// what the CRM serves for that kind of page.
    pub async fn partition_page(
        &self,
        account: &str,
        token: &SecretString,
        object: CrmObject,
        partition: &Partition,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Page, ProviderError> {
        let caps = self.capabilities();
        let limit = match partition {
            Partition::Whole => limit.min(caps.list_page_max),
            Partition::Ids { .. } => limit.min(caps.partition_page_max),
        }
        .max(1);
        match self {
            Provider::Hubspot(c) => {
                c.partition_page(account, token, object, partition, after, limit)
                    .await
            }
        }
    }

    /// Requests one [`Self::list_page`] of `limit` records costs: what a
    /// caller pacing its own share of the budget counts per page.
    pub fn list_page_requests(&self, object: CrmObject, limit: u32) -> u32 {
        match self {
            Provider::Hubspot(_) => HubspotClient::list_page_requests(
                object,
                limit.clamp(1, self.capabilities().list_page_max),
            ),
        }
    }

    /// Waits for `requests` slots of the account's budget at `share` of
    /// crmsync's part of it (the conflict sweep's own pace).
    pub async fn pace_share(
        &self,
        account: &str,
        share: f64,
        requests: u32,
    ) -> Result<(), ProviderError> {
        match self {
            Provider::Hubspot(c) => c.pace_share(account, share, requests).await,
        }
    }

    /// The feed position of changes from `since` on.
    pub fn feed_since(&self, since: DateTime<Utc>) -> FeedPosition {
        match self {
            Provider::Hubspot(_) => hubspot::changes::position_since(since),
        }
    }

    /// The first read at `position`, unless the feed is read up to `until`.
    pub fn open_feed(
        &self,
        position: &FeedPosition,
        until: DateTime<Utc>,
    ) -> Result<Option<FeedRead>, ProviderError> {
        match self {
            Provider::Hubspot(_) => hubspot::changes::open(position, until),
        }
    }

    /// One page of `object`'s change feed.
    pub async fn change_page(
        &self,
        account: &str,
        token: &SecretString,
        object: CrmObject,
        read: &FeedRead,
        limits: FeedLimits,
    ) -> Result<ChangePage, ProviderError> {
        match self {
            Provider::Hubspot(c) => c.change_page(account, token, object, read, limits).await,
        }
    }

    /// Waits for a budget slot for one read ahead of deciding what to read.
    pub async fn reserve_read(&self, account: &str) -> Result<ReservedRead, ProviderError> {
        match self {
            Provider::Hubspot(c) => c.reserve_read(account).await,
        }
    }

    /// Current state of records by id (missing ids are left out); with
    /// `with_history`, per-field change times too where the CRM keeps them.
    pub async fn read(
        &self,
        account: &str,
        token: &SecretString,
        object: CrmObject,
        ids: &[CrmId],
        with_history: bool,
        reserved: Option<ReservedRead>,
    ) -> Result<Vec<Incoming>, ProviderError> {
        match self {
            Provider::Hubspot(c) => {
                c.batch_read(account, token, object, ids, with_history, reserved)
                    .await
            }
        }
    }

    /// The leads whose person is one of `persons` (see
    /// [`Capabilities::person_object`]), read with their persons.
    pub async fn read_leads_of_persons(
        &self,
        account: &str,
        token: &SecretString,
        persons: &[CrmId],
        with_history: bool,
        reserved: Option<ReservedRead>,
    ) -> Result<Vec<Incoming>, ProviderError> {
        match self {
            Provider::Hubspot(c) => {
                c.read_leads_of_contacts(account, token, persons, with_history, reserved)
                    .await
            }
        }
    }

    /// Makes sure the CRM has the fields crmsync writes (our record id, the
    /// source marker).
    pub async fn ensure_fields(
        &self,
        account: &str,
        token: &SecretString,
        object: CrmObject,
    ) -> Result<(), ProviderError> {
        match self {
            Provider::Hubspot(c) => c.ensure_properties(account, token, object).await,
        }
    }

    /// Creates or finds records by our record id: a repeat after a crash
    /// finds the record instead of creating a second one.
    pub async fn upsert(
        &self,
        account: &str,
        token: &SecretString,
        object: CrmObject,
        inputs: &[(String, Map<String, Value>)],
    ) -> Result<Vec<Upserted>, ProviderError> {
        match self {
            Provider::Hubspot(c) => c.batch_upsert(account, token, object, inputs).await,
        }
    }

    /// Patches linked records; answers each one's CRM modified time.
    pub async fn update(
        &self,
        account: &str,
        token: &SecretString,
        object: CrmObject,
        inputs: &[Update],
    ) -> Result<Vec<(CrmId, DateTime<Utc>)>, ProviderError> {
        match self {
            Provider::Hubspot(c) => c.batch_update(account, token, object, inputs).await,
        }
    }

    /// Deletes (archives) records.
    pub async fn archive(
        &self,
        account: &str,
        token: &SecretString,
        object: CrmObject,
        ids: &[CrmId],
    ) -> Result<(), ProviderError> {
        match self {
            Provider::Hubspot(c) => c.batch_archive(account, token, object, ids).await,
        }
    }

    /// The CRM values of a record born on the platform, with the marker
    /// saying so.
    pub fn values_to_create(&self, object: CrmObject, fields: &RecordFields) -> Map<String, Value> {
        match self {
            Provider::Hubspot(_) => {
                let mut properties = hubspot::mapping::to_properties(object, fields);
                properties.insert(
                    hubspot::mapping::SOURCE_SYSTEM_PROPERTY.into(),
                    "platform".into(),
                );
                properties
            }
        }
    }

    /// The CRM values that turn `current` into `target`.
    pub fn values_to_patch(
        &self,
        object: CrmObject,
        current: &RecordFields,
        target: &RecordFields,
    ) -> Map<String, Value> {
        match self {
            Provider::Hubspot(_) => hubspot::mapping::patch_properties(object, current, target),
        }
    }

    /// What `fields` read back as once written (values the CRM normalises).
    pub fn round_trip(&self, object: CrmObject, fields: &RecordFields) -> RecordFields {
        match self {
            Provider::Hubspot(_) => hubspot::mapping::round_trip(object, fields),
        }
    }
}
