//! Uniqueness through the store: whoever creates a claim key first (compare-and-swap with
//! "must not exist") owns the name, domain + path or port. No read-then-write race, across
//! requests and across controllers.
//!
//! Dependencies (a path route on its domain's `/` route, a route on its certificate) use
//! [`bump`]: the dependent is written first, then the parent's mod revision is bumped; a
//! delete of the parent reads its revision, checks for dependents, and deletes only if the
//! revision is unchanged. Either the delete sees the dependent, or the bump fails (and the
//! dependent is rolled back), or the delete fails and retries.

use std::collections::BTreeSet;

use flynn_store::Revision;
use serde::{Deserialize, Serialize};

use super::db::{self, Db};
use super::error::{ApiError, ApiResult};
use super::Shared;

/// The value of a claim key.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Claim {
    /// The route id (domain + path, port) or app id (name) that holds it.
    pub owner: String,
    /// When it was claimed (Unix ms).
    #[serde(default)]
    pub at_ms: u64,
}

/// A claim whose owner does not exist this long after it was taken is left over from a
/// request that died half-way, and may be taken over.
const ORPHAN_AFTER_MS: u64 = 10_000;
/// Attempts at a compare-and-swap that keeps losing to concurrent writers.
const ATTEMPTS: usize = 100;

/// Takes `key` for `owner`; `Err(holder)` if someone else holds it. `owner_key` names the key
/// whose existence proves a holder is real (its route or app).
pub async fn claim(
    db: &Db,
    key: &str,
    owner: &str,
    owner_key: impl Fn(&str) -> String,
) -> ApiResult<Result<Revision, String>> {
    let mine = Claim {
        owner: owner.to_owned(),
        at_ms: db::now_ms(),
    };
    for _ in 0..ATTEMPTS {
        if let Some(revision) = db.swap(key, 0, &mine, None).await? {
            return Ok(Ok(revision));
        }
        let Some(current) = db.get::<Claim>(key).await? else {
            continue; // released meanwhile: try again
        };
        let stale = db::now_ms().saturating_sub(current.value.at_ms) > ORPHAN_AFTER_MS;
        if stale
            && db
                .store
                .get(&owner_key(&current.value.owner))
                .await?
                .is_none()
        {
            tracing::warn!(%key, holder = %current.value.owner, "taking over an orphaned claim");
            if let Some(revision) = db.swap(key, current.mod_revision, &mine, None).await? {
                return Ok(Ok(revision));
            }
            continue;
        }
        return Ok(Err(current.value.owner));
    }
    Err(ApiError::conflict(format!(
        "too many concurrent changes to {key}; try again"
    )))
}

/// Gives up `key` if `owner` still holds it.
pub async fn release(db: &Db, key: &str, owner: &str) -> ApiResult<()> {
    for _ in 0..ATTEMPTS {
        let Some(current) = db.get::<Claim>(key).await? else {
            return Ok(());
        };
        if current.value.owner != owner {
            return Ok(());
        }
        if db.delete_if(key, current.mod_revision).await? {
            return Ok(());
        }
    }
    Err(ApiError::conflict(format!(
        "too many concurrent changes to {key}; try again"
    )))
}

/// Bumps `key`'s mod revision if it exists (see the module docs); false if it does not.
pub async fn bump(db: &Db, key: &str) -> ApiResult<bool> {
    for _ in 0..ATTEMPTS {
        let Some(kv) = db.store.get(key).await? else {
            return Ok(false);
        };
        if db.touch(key, kv.mod_revision).await? {
            return Ok(true);
        }
    }
    Err(ApiError::conflict(format!(
        "too many concurrent changes to {key}; try again"
    )))
}

/// Takes a TCP port for route `owner`: `wanted`, or the first free one of the range.
pub async fn claim_port(state: &Shared, owner: &str, wanted: Option<u16>) -> ApiResult<u16> {
    let db = &state.db;
    let config = &state.config;
    let route_key = |id: &str| db.keys.route(id);
    if let Some(port) = wanted {
        if !config.tcp_ports.contains(&port) {
            return Err(ApiError::invalid(
                "port",
                format!(
                    "port {port} is outside the TCP route range {}-{}",
                    config.tcp_ports.start(),
                    config.tcp_ports.end()
                ),
            ));
        }
        if config.reserved_ports.contains(&port) {
            return Err(ApiError::invalid(
                "port",
                format!("port {port} is reserved (the router or the controller listens on it)"),
            ));
        }
        return match claim(db, &db.tcp_claim(port), owner, route_key).await? {
            Ok(_) => Ok(port),
            Err(holder) => Err(ApiError::conflict(format!(
                "port {port} is already taken by route {holder}"
            ))),
        };
    }
    let taken: BTreeSet<u16> = db
        .store
        .range(&db.tcp_claims())
        .await?
        .kvs
        .iter()
        .filter_map(|kv| kv.key.rsplit('/').next()?.parse().ok())
        .collect();
    for port in config.tcp_ports.clone() {
        if taken.contains(&port) || config.reserved_ports.contains(&port) {
            continue;
        }
        if claim(db, &db.tcp_claim(port), owner, route_key)
            .await?
            .is_ok()
        {
            return Ok(port);
        }
    }
    Err(ApiError::conflict(format!(
        "no free TCP port left in {}-{}: every port of the range is taken or reserved; \
         remove a TCP route or give a port outside the range",
        config.tcp_ports.start(),
        config.tcp_ports.end()
    )))
}
