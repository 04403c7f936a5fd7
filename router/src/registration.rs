//! The router's own registration: `<prefix>/routers/<id>` = `{"id", "admin": "ip:port"}` under
//! a lease kept alive, written once the table has been loaded from the store. Deploys list the
//! live routers there and ask each one's admin listener (`/backends`) whether it serves a new
//! instance yet and whether an old one is drained.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use flynn_store::{Keys, LeaseId, Store, StoreError};
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;

use crate::metrics::Metrics;
use crate::server::StoreSource;

/// The lease of a router's registration: a router that dies stops counting within this long.
pub const LEASE_TTL: Duration = Duration::from_secs(5);

/// `<prefix>/routers/`.
pub fn routers_prefix(keys: &Keys) -> String {
    format!("{}/routers/", keys.prefix())
}

/// A router's key.
pub fn router_key(keys: &Keys, id: &str) -> String {
    format!("{}{id}", routers_prefix(keys))
}

/// A fresh router id: `router-<12 hex digits>`.
pub fn new_id() -> String {
    format!(
        "router-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..12]
    )
}

/// The address others reach the admin listener at: an unspecified IP becomes loopback.
pub fn advertised(admin: SocketAddr) -> SocketAddr {
    if admin.ip().is_unspecified() {
        let ip = match admin {
            SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
            SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
        };
        SocketAddr::new(ip, admin.port())
    } else {
        admin
    }
}

/// The background service that registers the router and keeps its lease alive.
pub struct Registration {
    pub store: StoreSource,
    pub keys: Keys,
    pub id: String,
    pub admin: SocketAddr,
    pub metrics: Arc<Metrics>,
}

#[async_trait]
impl BackgroundService for Registration {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let work = async {
            let store = self.store.open().await;
            // Only a router with a table counts: one that has not loaded it yet would hold
            // deploys up for nothing.
            while !self.metrics.synced_once() {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            self.run(store.as_ref()).await;
        };
        // On shutdown the lease is left to expire: requests still draining keep counting.
        tokio::select! {
            () = work => {}
            _ = shutdown.changed() => {}
        }
    }
}

impl Registration {
    fn value(&self) -> Vec<u8> {
        serde_json::to_vec(&serde_json::json!({
            "id": self.id,
            "admin": self.admin.to_string(),
        }))
        .unwrap_or_default()
    }

    async fn register(&self, store: &dyn Store) -> Result<LeaseId, StoreError> {
        let lease = store.grant_lease(LEASE_TTL).await?;
        store
            .put(&router_key(&self.keys, &self.id), self.value(), Some(lease))
            .await?;
        Ok(lease)
    }

    /// Registers, then keeps the lease alive; registers again whenever the lease is lost.
    async fn run(&self, store: &dyn Store) {
        let mut lease = None;
        loop {
            match lease {
                None => match self.register(store).await {
                    Ok(new) => {
                        tracing::info!(router = %self.id, admin = %self.admin, "router registered");
                        lease = Some(new);
                    }
                    Err(e) => tracing::warn!(error = %e, "cannot register the router"),
                },
                Some(current) => match store.keep_alive(current).await {
                    Ok(()) => {}
                    Err(StoreError::LeaseNotFound(_)) => {
                        tracing::warn!(router = %self.id, "the router's lease expired; registering again");
                        lease = None;
                        continue;
                    }
                    Err(e) => tracing::warn!(error = %e, "cannot keep the router's lease alive"),
                },
            }
            tokio::time::sleep(LEASE_TTL / 3).await;
        }
    }
}
