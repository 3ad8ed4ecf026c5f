//! Hostile input: api.
