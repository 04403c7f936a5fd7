//! Flynn's control plane.
//!
//! - [`api`]: the controller API (axum), over the store that the router watches.
pub mod api;
