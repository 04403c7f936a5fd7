//! Service instances: register an address (permanent, or with a TTL kept alive by
//! heartbeats), list, deregister. The router balances over what is registered here, so a route
//! can point at a process the platform does not run.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use flynn_store::StoreError;
use serde::{Deserialize, Serialize};

use super::db::{self, Versioned};
use super::error::{ApiError, ApiResult};
use super::extract::Body;
use super::types::{InstanceView, NewInstance, ServiceView};
use super::validate;
use super::{ApiState, Shared};

/// Longest TTL a registration may ask for (a day).
const MAX_TTL_SECONDS: u64 = 86_400;

/// The stored instance: the router's `Instance` plus what the API shows.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct StoredInstance {
    id: String,
    addr: SocketAddr,
    #[serde(default)]
    meta: BTreeMap<String, String>,
    #[serde(default)]
    ttl_seconds: Option<u64>,
    #[serde(default)]
    registered_at: Option<String>,
}

fn view(service: &str, stored: StoredInstance) -> InstanceView {
    InstanceView {
        id: stored.id,
        service: service.to_owned(),
        addr: stored.addr,
        meta: stored.meta,
        ttl_seconds: stored.ttl_seconds,
        registered_at: stored.registered_at,
    }
}

/// The default instance id: the address, made safe for a key (`127.0.0.1:9000` →
/// `127.0.0.1-9000`), so registering the same address twice updates one instance.
pub fn id_for(addr: &SocketAddr) -> String {
    let ip = addr.ip().to_string().replace(':', "_");
    format!("{ip}-{}", addr.port())
}

pub async fn list(State(state): State<ApiState>) -> ApiResult<Json<Vec<ServiceView>>> {
    let listing = state.db.store.range(&state.db.keys.services()).await?;
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    for kv in &listing.kvs {
        if let Some((service, _)) = state.db.keys.parse_instance(&kv.key) {
            *counts.entry(service.to_owned()).or_default() += 1;
        }
    }
    Ok(Json(
        counts
            .into_iter()
            .map(|(name, instances)| ServiceView { name, instances })
            .collect(),
    ))
}

async fn instances_of(state: &Shared, service: &str) -> ApiResult<Vec<Versioned<StoredInstance>>> {
    validate::service(service)?;
    let mut instances = state
        .db
        .list::<StoredInstance>(&state.db.keys.service(service))
        .await?;
    // The leader (registered first) first.
    instances.sort_by_key(|i| i.create_revision);
    Ok(instances)
}

pub async fn instances(
    State(state): State<ApiState>,
    Path(service): Path<String>,
) -> ApiResult<Json<Vec<InstanceView>>> {
    Ok(Json(
        instances_of(&state, &service)
            .await?
            .into_iter()
            .map(|i| view(&service, i.value))
            .collect(),
    ))
}

async fn load(state: &Shared, service: &str, id: &str) -> ApiResult<Versioned<StoredInstance>> {
    let missing = || {
        ApiError::not_found(format!(
            "instance {id:?} of service {service:?} is not registered (or its TTL ran out)"
        ))
    };
    if validate::service(service).is_err() || validate::ident("id", id, 100).is_err() {
        return Err(missing());
    }
    state
        .db
        .get::<StoredInstance>(&state.db.keys.instance(service, id))
        .await?
        .ok_or_else(missing)
}

pub async fn instance(
    State(state): State<ApiState>,
    Path((service, id)): Path<(String, String)>,
) -> ApiResult<Json<InstanceView>> {
    Ok(Json(view(
        &service,
        load(&state, &service, &id).await?.value,
    )))
}

pub async fn register(
    State(state): State<ApiState>,
    Path(service): Path<String>,
    Body(new): Body<NewInstance>,
) -> ApiResult<(StatusCode, Json<InstanceView>)> {
    validate::service(&service)?;
    let addr: SocketAddr = new.addr.trim().parse().map_err(|_| {
        ApiError::invalid(
            "addr",
            format!(
                "invalid address {:?}: expected ip:port, such as 127.0.0.1:9000",
                new.addr
            ),
        )
    })?;
    if addr.port() == 0 {
        return Err(ApiError::invalid("addr", "the port cannot be 0"));
    }
    let id = match new.id {
        Some(id) => {
            validate::ident("id", &id, 100)?;
            id
        }
        None => id_for(&addr),
    };
    if new.ttl_seconds == Some(0) || new.ttl_seconds.is_some_and(|t| t > MAX_TTL_SECONDS) {
        return Err(ApiError::invalid(
            "ttl_seconds",
            format!("the TTL must be 1-{MAX_TTL_SECONDS} seconds (leave it out for a permanent registration)"),
        ));
    }
    let key = state.db.keys.instance(&service, &id);
    let previous = state.db.store.get(&key).await?;
    let lease = match new.ttl_seconds {
        Some(ttl) => Some(state.db.store.grant_lease(Duration::from_secs(ttl)).await?),
        None => None,
    };
    let stored = StoredInstance {
        id: id.clone(),
        addr,
        meta: new.meta,
        ttl_seconds: new.ttl_seconds,
        registered_at: Some(db::now()),
    };
    state.db.put(&key, &stored, lease).await?;
    if let Some(old) = previous
        .and_then(|kv| kv.lease)
        .filter(|l| Some(*l) != lease)
    {
        revoke(state.db.store.as_ref(), old).await;
    }
    Ok((StatusCode::CREATED, Json(view(&service, stored))))
}

pub async fn heartbeat(
    State(state): State<ApiState>,
    Path((service, id)): Path<(String, String)>,
) -> ApiResult<Json<InstanceView>> {
    let instance = load(&state, &service, &id).await?;
    if let Some(lease) = instance.lease {
        match state.db.store.keep_alive(lease).await {
            Ok(()) => {}
            Err(StoreError::LeaseNotFound(_)) => {
                return Err(ApiError::not_found(format!(
                    "instance {id:?} of service {service:?} is not registered (its TTL ran out)"
                )))
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(Json(view(&service, instance.value)))
}

pub async fn deregister(
    State(state): State<ApiState>,
    Path((service, id)): Path<(String, String)>,
) -> ApiResult<Json<InstanceView>> {
    let instance = load(&state, &service, &id).await?;
    state
        .db
        .delete(&state.db.keys.instance(&service, &id))
        .await?;
    if let Some(lease) = instance.lease {
        revoke(state.db.store.as_ref(), lease).await;
    }
    Ok(Json(view(&service, instance.value)))
}

async fn revoke(store: &dyn flynn_store::Store, lease: flynn_store::LeaseId) {
    match store.revoke_lease(lease).await {
        Ok(()) | Err(StoreError::LeaseNotFound(_)) => {}
        Err(e) => tracing::warn!(lease, error = %e, "cannot revoke an instance's lease"),
    }
}

#[cfg(test)]
mod tests {
    use super::id_for;

    #[test]
    fn ids_from_addresses() {
        assert_eq!(id_for(&"127.0.0.1:9000".parse().unwrap()), "127.0.0.1-9000");
        assert_eq!(id_for(&"[::1]:80".parse().unwrap()), "__1-80");
    }
}
