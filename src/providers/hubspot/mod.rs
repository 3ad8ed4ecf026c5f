//! HubSpot: the read side (list, search, batch read), account details and
//! OAuth refresh, the default property mapping, and webhook verification.

mod client;
mod leads;
pub mod mapping;
pub mod subscriptions;
pub mod throttle;
pub mod webhook;

pub use client::{
    BURST_WINDOW, ChangeQuery, HubspotClient, Page, RefreshedTokens, ReservedRead, Update, Upserted,
};
