//! HubSpot: the read side (list, search, batch read), account details and
//! OAuth refresh, plus the default property mapping.

mod client;
pub mod mapping;

pub use client::{ChangeQuery, HubspotClient, Page, RefreshedTokens};
