//! HubSpot: the read side (list, search, batch read), account details and
//! OAuth refresh, the default property mapping, and webhook verification.

pub(crate) mod changes;
pub(crate) mod client;
mod leads;
pub mod mapping;
pub mod oauth;
pub mod partitions;
pub mod subscriptions;
pub mod throttle;
pub mod webhook;

pub use client::{
    BURST_WINDOW, ChangeQuery, HubspotClient, Page, RefreshedTokens, ReservedRead, Update, Upserted,
};

/// How HubSpot differs in kind (see [`crate::providers::Capabilities`]).
pub const CAPABILITIES: crate::providers::Capabilities = crate::providers::Capabilities {
    field_times: true,
    person_object: Some((
        crate::domain::CrmObject::Leads,
        crate::domain::CrmObject::Contacts,
    )),
    batch_size: 100,
    history_batch_size: 50,
    // List endpoints: at most 100 (UNVERIFIED, CRM_API_FACTS §HubSpot);
    // search: at most 200 [doc].
    list_page_max: 100,
    partition_page_max: 200,
};

/// HubSpot contacts → platform leads, newest field wins (HubSpot keeps
/// per-field change times).
pub fn default_settings() -> crate::store::ConnectionSettings {
    crate::store::ConnectionSettings {
        objects: vec![crate::store::ObjectMapping {
            crm_object: crate::domain::CrmObject::Contacts,
            record_kind: crate::domain::RecordKind::Lead,
        }],
        strategy: crate::sync::ConflictStrategy::NewestWins,
    }
}
