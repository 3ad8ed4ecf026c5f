//! Hostile input: records.
