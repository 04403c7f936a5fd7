//! Flynn's edge router, on pingora.
//!
//! - [`table`]: the route table: immutable snapshots, incremental edits, host and path matching.
//! - [`sync`]: keeps the table in step with the store (list, watch, re-list).
//! - [`proxy`]: where a request is routed: pingora's phases, headers, error answers.
//! - [`tls`]: certificates from the store, chosen per handshake by SNI.
//! - [`tcp`]: TCP routes, a listener per route port; [`proxy_protocol`]: PROXY v1/v2.
//! - [`backend`]: a service's instances and the choice of one (P2C, leader).
//! - [`admin`], [`metrics`]: `/metrics`, `/health` and `/backends`; [`registration`]: the
//!   router's key under `<prefix>/routers/`, for deploys.
//! - [`alloc`]: how the allocator gives memory back;
//! - [`server`]: assembles it all; [`config`]: the binary's flags.

pub mod access_log;
pub mod admin;
pub mod alloc;
pub mod backend;
pub mod config;
pub mod drain;
pub mod limits;
pub mod metrics;
pub mod proxy;
pub mod proxy_protocol;
pub mod registration;
pub mod server;
pub mod sync;
pub mod table;
pub mod tcp;
pub mod tls;
