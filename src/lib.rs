//! crmsync keeps a SaaS platform's leads and contacts in two-way sync with
//! its customers' CRMs. This crate holds all of its logic; the binaries in
//! `workers/` are thin mains.
//!
//! # Layout
//! - [`config`] — layered settings, validated at start-up.
//! - [`domain`] — ids, closed sets, canonical fields and cursors.
//! - [`sync`] — the pure core: pull decisions and the three-way merge.
//! - [`secrets`] — credentials sealed at rest.
//! - [`store`] — sqlx repositories (Postgres with row-level security, SQLite).
//! - [`providers`] — CRM adapters (HubSpot), budgets and provider errors.
//! - [`jobs`] — `full_sync`, `delta_sync`, `process_webhook`, `push_changes`, the
//!   periodic `detect_conflicts`, `retry_failed`, `cleanup_logs`, `health_check`;
//!   error policy.
//! - [`queue`] — apalis backends (Redis, SQLite) behind one handle; workers.
//! - [`ingress`] — verified webhook intake: routes, dedupe, enqueue.
//! - [`scheduler`] — enqueues due delta syncs, once per tick fleet-wide, and the
//!   periodic jobs, once per period fleet-wide.
//! - [`telemetry`] — logs, metrics, `/metrics` and `/health`.
//! - [`api`] — the platform API: leads and contacts, bearer token per tenant.
//! - [`app`] — start-up wiring shared by the binaries.
//! - [`cli`] — the `crmsync` operator commands, `dev` included.
//! - [`sandbox`] — emulated CRMs that tests, benchmarks and `crmsync dev`
//!   talk to over real HTTP.

pub mod api;
pub mod app;
pub mod cli;
pub mod config;
pub mod domain;
pub mod http_server;
pub mod ingress;
pub mod jobs;
pub mod providers;
pub mod queue;
pub mod ratelimit;
pub mod sandbox;
pub mod scheduler;
pub mod secrets;
pub mod store;
pub mod sync;
pub mod telemetry;
