//! Flynn's control plane.
//!
//! - [`api`]: the controller API (axum), over the store that the router watches.
//! - [`cli`]: the `flynn` command line, a client of the API.
//! - [`server`]: `flynn server`, router and controller in one process.

pub mod api;
pub mod cli;
pub mod server;
