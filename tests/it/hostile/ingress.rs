//! Hostile input: ingress.
