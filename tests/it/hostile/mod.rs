//! The hostile-input suite: what a hostile tenant, a careless CRM user or
//! a slow or forged client can send, each case asserting the clear 4xx or
//! the parked record, and that the connection's and the other tenants'
//! work goes on. Future providers extend it.

mod api;
mod ingress;
mod neighbour;
mod parked;
mod records;
mod wire;
