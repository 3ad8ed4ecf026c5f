//! Integration tests: one binary, real HTTP on loopback.

mod support;

mod sandbox_cli;
mod sandbox_hubspot_associations;
mod sandbox_hubspot_auth;
mod sandbox_hubspot_faults;
mod sandbox_hubspot_objects;
mod sandbox_hubspot_ratelimit;
mod sandbox_hubspot_search;
mod sandbox_hubspot_webhooks;
mod sandbox_latency;

mod fleet;
mod services;

mod sync_full;

mod api;
mod cli;
mod conformance;
mod connections;
mod convergence;
mod crash_safety;
mod dead_letters;
mod health;
mod hostile;
mod hubspot_client;
mod hubspot_leads;
mod key_rotation;
mod migrations;
mod oauth_connect;
mod periodic;
mod push;
mod push_latency;
mod rate_budget;
mod reliability;
mod scheduler;
mod secrets_canary;
mod shared_portal;
mod store_security;
mod strategies;
mod sweep;
mod sync_faults;
mod tracing_export;
mod webhook_ingress;
