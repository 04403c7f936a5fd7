//! Flynn's control plane.
//!
//! - [`api`]: the controller API (axum), over the store that the router watches.
//! - [`cli`]: the `flynn` command line, a client of the API.
//! - [`scheduler`]: formations → jobs on hosts (one leader, elected through the store).
//! - [`host`]: the host agent, jobs → Docker containers, registered as service instances.
//! - [`server`]: `flynn server`, router, controller, scheduler and a host agent in one process.

pub mod api;
pub mod cli;
pub mod host;
pub mod scheduler;
pub mod server;
