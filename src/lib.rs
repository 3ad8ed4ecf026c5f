//! crmsync keeps a SaaS platform's leads and contacts in two-way sync with
//! its customers' CRMs. This crate holds all of its logic; the binaries in
//! `workers/` are thin mains.
//!
//! # Layout
//! - [`sandbox`] — emulated CRMs (HubSpot first) that tests, benchmarks and
//!   `crmsync dev` talk to over real HTTP.
//!
//! The rest of the shape (`config`, `domain`, `sync`, `providers`, `store`,
//! `queue`, `jobs`, `ingress`, `api`) lands with the issues that need it; see
//! `shared/design/ARCHITECTURE.md`.

pub mod sandbox;
